//! Metadata and derivatives on files built here: a JPEG with real EXIF (written with the
//! EXIF crate's writer), a PNG, and an MP4/MOV header laid out box by box.

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};
use image::{ImageEncoder, Rgb, RgbImage};
use keepsake_media::{MediaKind, PREVIEW_EDGE, THUMBNAIL_EDGE, derive, probe, probe_reader};
use proptest::prelude::*;
use std::io::{Read, Seek, SeekFrom};

/// A picture whose top-left quarter is red and the rest blue, so orientation shows.
fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        if x < width / 4 && y < height / 4 {
            Rgb([250, 0, 0])
        } else {
            Rgb([0, 0, 250])
        }
    })
}

fn jpeg_with_exif(width: u32, height: u32, fields: &[Field]) -> Vec<u8> {
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90)
        .write_image(
            picture(width, height).as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let mut writer = Writer::new();
    for f in fields {
        writer.push_field(f);
    }
    let mut tiff = std::io::Cursor::new(Vec::new());
    writer.write(&mut tiff, false).unwrap();
    let tiff = tiff.into_inner();
    // APP1 "Exif\0\0" + TIFF, right after the start-of-image marker.
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((tiff.len() + 8) as u16).to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&plain[2..]);
    out
}

fn ascii(tag: Tag, s: &str) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Ascii(vec![s.as_bytes().to_vec()]),
    }
}

fn rationals(tag: Tag, parts: &[(u32, u32)]) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Rational(
            parts
                .iter()
                .map(|&(num, denom)| Rational { num, denom })
                .collect(),
        ),
    }
}

fn camera_photo(orientation: u16) -> Vec<u8> {
    jpeg_with_exif(
        600,
        400,
        &[
            ascii(Tag::Make, "Keepsake Optics"),
            ascii(Tag::Model, "KX-1"),
            ascii(Tag::DateTimeOriginal, "2023:07:14 09:30:15"),
            ascii(Tag::OffsetTimeOriginal, "+02:00"),
            Field {
                tag: Tag::Orientation,
                ifd_num: In::PRIMARY,
                value: Value::Short(vec![orientation]),
            },
            ascii(Tag::GPSLatitudeRef, "S"),
            rationals(Tag::GPSLatitude, &[(33, 1), (51, 1), (3600, 100)]),
            ascii(Tag::GPSLongitudeRef, "E"),
            rationals(Tag::GPSLongitude, &[(151, 1), (12, 1), (0, 1)]),
        ],
    )
}

#[test]
fn a_jpeg_says_when_where_and_with_what_it_was_taken() {
    let info = probe(&camera_photo(1));
    assert_eq!((info.kind, info.format), (MediaKind::Photo, "jpeg"));
    // 09:30:15 at +02:00 is 07:30:15 UTC.
    assert_eq!(info.capture_time_ms, Some(1_689_319_815_000));
    assert_eq!(
        (info.width, info.height, info.orientation),
        (Some(600), Some(400), 1)
    );
    assert_eq!(info.make.as_deref(), Some("Keepsake Optics"));
    assert_eq!(info.model.as_deref(), Some("KX-1"));
    let (lat, lon) = info.gps.unwrap();
    assert!(
        (lat - -33.86).abs() < 1e-9 && (lon - 151.2).abs() < 1e-9,
        "{lat} {lon}"
    );
}

#[test]
fn a_turned_photo_reports_the_size_it_is_shown_at() {
    let info = probe(&camera_photo(6));
    assert_eq!(
        (info.width, info.height, info.orientation),
        (Some(400), Some(600), 6)
    );
}

#[test]
fn a_png_without_exif_has_a_size_and_no_capture_time() {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            picture(33, 21).as_raw(),
            33,
            21,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let info = probe(&png);
    assert_eq!((info.kind, info.format), (MediaKind::Photo, "png"));
    assert_eq!((info.width, info.height), (Some(33), Some(21)));
    assert_eq!(info.capture_time_ms, None);
}

fn atom(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

/// A movie header: `ftyp`, then `moov` with `mvhd` and one video track's `tkhd`.
fn movie(brand: &[u8; 4], created_1904: u32, quarter_turn: bool) -> Vec<u8> {
    let mut mvhd = vec![0u8; 4];
    mvhd.extend_from_slice(&created_1904.to_be_bytes()); // creation
    mvhd.extend_from_slice(&created_1904.to_be_bytes()); // modification
    mvhd.extend_from_slice(&600u32.to_be_bytes()); // timescale
    mvhd.extend_from_slice(&3_000u32.to_be_bytes()); // duration: 5 s
    mvhd.extend_from_slice(&[0u8; 80]);
    let mut tkhd = vec![0u8; 40];
    let one = 0x1_0000i32;
    let matrix: [i32; 9] = if quarter_turn {
        [0, one, 0, -one, 0, 0, 0, 0, 0x4000_0000]
    } else {
        [one, 0, 0, 0, one, 0, 0, 0, 0x4000_0000]
    };
    for m in matrix {
        tkhd.extend_from_slice(&m.to_be_bytes());
    }
    tkhd.extend_from_slice(&(1920u32 << 16).to_be_bytes());
    tkhd.extend_from_slice(&(1080u32 << 16).to_be_bytes());
    let trak = atom(b"trak", &atom(b"tkhd", &tkhd));
    let moov = atom(b"moov", &[atom(b"mvhd", &mvhd), trak].concat());
    let mut ftyp_body = brand.to_vec();
    ftyp_body.extend_from_slice(&[0, 0, 2, 0]);
    [
        atom(b"ftyp", &ftyp_body),
        atom(b"free", b""),
        moov,
        atom(b"mdat", &[7u8; 64]),
    ]
    .concat()
}

#[test]
fn a_movie_says_when_it_was_made_how_long_and_which_way_up() {
    // 2020-01-01T00:00:00Z in QuickTime seconds.
    let created = 2_082_844_800u32 + 1_577_836_800;
    let mp4 = probe(&movie(b"isom", created, false));
    assert_eq!((mp4.kind, mp4.format), (MediaKind::Video, "mp4"));
    assert_eq!(mp4.capture_time_ms, Some(1_577_836_800_000));
    assert_eq!(mp4.duration_ms, Some(5_000));
    assert_eq!(
        (mp4.width, mp4.height, mp4.orientation),
        (Some(1920), Some(1080), 1)
    );
    let mov = probe(&movie(b"qt  ", created, true));
    assert_eq!(mov.format, "mov");
    assert_eq!(
        (mov.width, mov.height, mov.orientation),
        (Some(1080), Some(1920), 6)
    );
}

/// A file of `len` bytes, zeros except where `parts` say, that counts the bytes read from
/// it: a 5 GiB movie without 5 GiB.
struct Sparse {
    parts: Vec<(u64, Vec<u8>)>,
    len: u64,
    pos: u64,
    read: u64,
}

impl Read for Sparse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        buf[..n].fill(0);
        for (at, bytes) in &self.parts {
            let end = at + bytes.len() as u64;
            let (from, to) = (self.pos.max(*at), (self.pos + n as u64).min(end));
            if from < to {
                buf[(from - self.pos) as usize..(to - self.pos) as usize]
                    .copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
            }
        }
        self.pos += n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

impl Seek for Sparse {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(at) => at,
            SeekFrom::End(back) => self.len.saturating_add_signed(back),
            SeekFrom::Current(by) => self.pos.saturating_add_signed(by),
        };
        Ok(self.pos)
    }
}

/// `movie`'s layout (ftyp, free, moov, mdat) rewritten as a phone's: ftyp, free, an
/// mdat of `frames` zero bytes, then the moov (damaged or not) — sparse.
fn behind_frames(movie: &[u8], frames: u64) -> Sparse {
    let moov_len = u32::from_be_bytes(movie[24..28].try_into().unwrap()) as usize;
    let moov = movie[24..(24 + moov_len).min(movie.len())].to_vec();
    let mut mdat = 1u32.to_be_bytes().to_vec();
    mdat.extend_from_slice(b"mdat");
    mdat.extend_from_slice(&(frames + 16).to_be_bytes());
    let moov_at = 24 + frames + 16;
    Sparse {
        len: moov_at + moov.len() as u64,
        parts: vec![(0, movie[..24].to_vec()), (24, mdat), (moov_at, moov)],
        pos: 0,
        read: 0,
    }
}

/// A phone writes a movie's header after its frames: reading it from a file must not read
/// the frames (the device probes videos too large to hold in memory this way).
#[test]
fn a_movie_whose_header_follows_gigabytes_of_frames_is_read_without_them() {
    let created = 2_082_844_800u32 + 1_577_836_800;
    let header = movie(b"isom", created, true);
    // The test movie is ftyp, free, moov, then a small mdat: move its moov after 5 GiB of mdat.
    let frames: u64 = 5 << 30;
    let mut file = behind_frames(&header, frames);
    let info = probe_reader(&mut file).unwrap();
    assert_eq!((info.kind, info.format), (MediaKind::Video, "mp4"));
    assert_eq!(info.capture_time_ms, Some(1_577_836_800_000));
    assert_eq!(
        (info.width, info.height, info.orientation),
        (Some(1080), Some(1920), 6)
    );
    // Box headers and the kept boxes only: not even the 4 MiB a still's head would take.
    assert!(file.read < 64 << 10, "read {} bytes", file.read);
    // A small file is probed whole, as `probe` would.
    let mut small = std::io::Cursor::new(header.clone());
    assert_eq!(probe_reader(&mut small).unwrap(), probe(&header));
}

#[test]
fn previews_and_thumbnails_are_upright_and_the_right_size() {
    let photo = jpeg_with_exif(
        3000,
        2000,
        &[Field {
            tag: Tag::Orientation,
            ifd_num: In::PRIMARY,
            value: Value::Short(vec![6]),
        }],
    );
    let made = derive(&photo, &[THUMBNAIL_EDGE, PREVIEW_EDGE]).unwrap();
    let (thumb, preview) = (&made[0], &made[1]);
    assert_eq!((preview.width, preview.height), (1365, 2048));
    assert_eq!((thumb.width, thumb.height), (171, 256));
    for d in [thumb, preview] {
        let decoded = image::load_from_memory(&d.jpeg).unwrap().to_rgb8();
        assert_eq!((decoded.width(), decoded.height()), (d.width, d.height));
        // Turned a quarter clockwise: the stored top-left corner is shown top-right.
        let top_right = decoded.get_pixel(d.width - 3, 2);
        let top_left = decoded.get_pixel(2, 2);
        assert!(top_right[0] > 200 && top_right[2] < 60, "{top_right:?}");
        assert!(top_left[2] > 200 && top_left[0] < 60, "{top_left:?}");
    }
    let small = derive(&camera_photo(1), &[PREVIEW_EDGE]).unwrap();
    assert_eq!(
        (small[0].width, small[0].height),
        (600, 400),
        "never scaled up"
    );
}

#[test]
fn a_video_or_garbage_is_no_still_to_derive() {
    assert!(derive(&movie(b"isom", 0, false), &[THUMBNAIL_EDGE]).is_err());
    assert!(derive(b"\xFF\xD8\xFF garbage", &[THUMBNAIL_EDGE]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Network input: any bytes, or a real file cut short or with bytes changed, reads as
    /// something (perhaps unknown) and never panics.
    #[test]
    fn probing_damaged_files_never_panics(
        which in 0usize..3,
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        noise in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = match which {
            0 => camera_photo(6),
            1 => movie(b"isom", 12345, true),
            _ => noise,
        };
        for (at, value) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
        }
        let len = if bytes.is_empty() { 0 } else { cut.index(bytes.len() + 1) };
        bytes.truncate(len);
        let info = probe(&bytes);
        prop_assert!((1..=8).contains(&info.orientation));
        let _ = derive(&bytes, &[THUMBNAIL_EDGE]);
    }

    /// A movie's header behind any length of frames, damaged or not, is read from the file
    /// without panicking, and undamaged says what the header alone says.
    #[test]
    fn a_header_behind_frames_reads_as_the_header_alone(
        frames in 0u64..(8 << 30),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut header = movie(b"isom", 2_082_844_800 + 1_577_836_800, true);
        let alone = probe(&header);
        let damaged = !flips.is_empty();
        for (at, value) in flips {
            let i = at.index(header.len());
            header[i] = value;
        }
        let info = probe_reader(&mut behind_frames(&header, frames)).unwrap();
        if !damaged {
            prop_assert_eq!(info, alone);
        }
    }
}
