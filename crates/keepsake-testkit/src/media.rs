//! Live Photo halves as an iPhone writes them, made from scratch: a JPEG whose EXIF holds
//! an Apple MakerNote with the content identifier, and a QuickTime movie whose `moov/meta`
//! holds the same identifier under `com.apple.quicktime.content.identifier`. exiftool reads
//! both back (the end-to-end test checks it), so they are real files, not shapes we parse.

/// `jpeg` with an EXIF segment (Make "Apple", capture time, an Apple MakerNote carrying
/// `identifier`) inserted after its start-of-image marker.
pub fn live_photo_still(jpeg: &[u8], identifier: &str, taken: &str) -> Vec<u8> {
    assert_eq!(&jpeg[..2], [0xFF, 0xD8], "not a JPEG");
    // The MakerNote: header, version, byte order, one IFD entry, the UUID after it.
    let mut note = b"Apple iOS\0\0\x01MM".to_vec();
    let id = format!("{identifier}\0");
    note.extend(1u16.to_be_bytes());
    note.extend(0x0011u16.to_be_bytes());
    note.extend(2u16.to_be_bytes());
    note.extend((id.len() as u32).to_be_bytes());
    note.extend(((note.len() + 8) as u32).to_be_bytes());
    note.extend(0u32.to_be_bytes());
    note.extend(id.as_bytes());

    // TIFF: IFD0 (Make, ExifIFD pointer), then the Exif IFD (DateTimeOriginal, MakerNote),
    // then the values, every offset from the TIFF header.
    let make = b"Apple\0";
    let taken = format!("{taken}\0");
    let ifd0_at = 8u32;
    let exif_at = ifd0_at + 2 + 2 * 12 + 4;
    let values_at = exif_at + 2 + 2 * 12 + 4;
    let make_at = values_at;
    let taken_at = make_at + make.len() as u32;
    let note_at = taken_at + taken.len() as u32;
    let mut tiff = b"MM\0\x2a".to_vec();
    tiff.extend(ifd0_at.to_be_bytes());
    let entry = |t: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: u32| {
        t.extend(tag.to_be_bytes());
        t.extend(kind.to_be_bytes());
        t.extend(count.to_be_bytes());
        t.extend(value.to_be_bytes());
    };
    tiff.extend(2u16.to_be_bytes());
    entry(&mut tiff, 0x010F, 2, make.len() as u32, make_at);
    entry(&mut tiff, 0x8769, 4, 1, exif_at);
    tiff.extend(0u32.to_be_bytes());
    tiff.extend(2u16.to_be_bytes());
    entry(&mut tiff, 0x9003, 2, taken.len() as u32, taken_at);
    entry(&mut tiff, 0x927C, 7, note.len() as u32, note_at);
    tiff.extend(0u32.to_be_bytes());
    tiff.extend(make);
    tiff.extend(taken.as_bytes());
    tiff.extend(&note);

    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn atom(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend(kind);
    out.extend(body);
    out
}

/// A QuickTime movie of `duration_ms` (its header only: no frames) whose metadata carries
/// `identifier` as a Live Photo's movie does, plus `padding` bytes of media data.
pub fn live_photo_movie(identifier: &str, duration_ms: u32, padding: usize) -> Vec<u8> {
    let ftyp = atom(b"ftyp", b"qt  \0\0\x02\0qt  ");
    let mut mvhd = vec![0u8; 4];
    // Created and modified (seconds since 1904: 2024-05-01), time scale 1000, duration.
    let created: u32 = 3_797_409_600;
    mvhd.extend(created.to_be_bytes());
    mvhd.extend(created.to_be_bytes());
    mvhd.extend(1000u32.to_be_bytes());
    mvhd.extend(duration_ms.to_be_bytes());
    mvhd.extend([0u8; 80]);
    let key = b"com.apple.quicktime.content.identifier";
    let mut keys = vec![0u8; 4];
    keys.extend(1u32.to_be_bytes());
    keys.extend(((key.len() + 8) as u32).to_be_bytes());
    keys.extend(b"mdta");
    keys.extend(key);
    let mut data = 1u32.to_be_bytes().to_vec();
    data.extend(0u32.to_be_bytes());
    data.extend(identifier.as_bytes());
    let item = atom(&1u32.to_be_bytes(), &atom(b"data", &data));
    let mut hdlr = vec![0u8; 8];
    hdlr.extend(b"mdta");
    hdlr.extend([0u8; 13]);
    let meta = [
        atom(b"hdlr", &hdlr),
        atom(b"keys", &keys),
        atom(b"ilst", &item),
    ]
    .concat();
    // One HEVC picture track, 1920x1440 as an iPhone records a Live Photo's movie.
    let mut tkhd = vec![0u8; 40];
    for v in [0x1_0000u32, 0, 0, 0, 0x1_0000, 0, 0, 0, 0x4000_0000] {
        tkhd.extend(v.to_be_bytes());
    }
    tkhd.extend((1920u32 << 16).to_be_bytes());
    tkhd.extend((1440u32 << 16).to_be_bytes());
    let mut stsd = vec![0u8; 4];
    stsd.extend(1u32.to_be_bytes());
    stsd.extend(atom(b"hvc1", &[0u8; 78]));
    let stbl = atom(b"stbl", &atom(b"stsd", &stsd));
    let mdia = atom(b"mdia", &atom(b"minf", &stbl));
    let trak = atom(b"trak", &[atom(b"tkhd", &tkhd), mdia].concat());
    let moov = atom(
        b"moov",
        &[atom(b"mvhd", &mvhd), trak, atom(b"meta", &meta)].concat(),
    );
    [ftyp, atom(b"mdat", &vec![0x5a; padding]), moov].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest JPEG: one white pixel.
    fn pixel() -> Vec<u8> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode(&[255, 255, 255], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        jpeg
    }

    #[test]
    fn both_halves_carry_the_identifier_keepsake_media_reads() {
        let id = "5E8F2C7A-1B3D-4E5F-8A9B-0C1D2E3F4A5B";
        let still = keepsake_media::probe(&live_photo_still(&pixel(), id, "2024:05:01 10:00:00"));
        assert_eq!(still.content_identifier.as_deref(), Some(id));
        assert_eq!(still.make.as_deref(), Some("Apple"));
        assert_eq!(still.capture_time_ms, Some(1_714_557_600_000));
        let movie = keepsake_media::probe(&live_photo_movie(id, 2500, 1000));
        assert_eq!(movie.content_identifier.as_deref(), Some(id));
        assert_eq!(movie.kind, keepsake_media::MediaKind::Video);
        assert_eq!(movie.duration_ms, Some(2500));
        assert_eq!(movie.codec, Some("HEVC"));
        assert_eq!((movie.width, movie.height), (Some(1920), Some(1440)));
        let plain = keepsake_media::probe(&pixel());
        assert_eq!(plain.content_identifier, None);
    }
}
