//! MP4 and MOV (ISO base media files): capture time and length from `mvhd`, the picture's
//! size and rotation from the first visual track's `tkhd`. A bounded walk over boxes; a
//! damaged box ends the walk with what was read so far.

use crate::civil::from_1904;
use crate::{MediaInfo, MediaKind};

/// At most this many boxes are looked at (a file of empty boxes cannot make us spin).
pub(crate) const MAX_BOXES: usize = 4096;

struct Atom<'a> {
    kind: [u8; 4],
    body: &'a [u8],
}

/// The boxes directly inside `data`, in order, stopping at the first malformed one.
fn boxes<'a>(data: &'a [u8], budget: &mut usize) -> Vec<Atom<'a>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() && *budget > 0 {
        *budget -= 1;
        let size32 = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let kind = [data[at + 4], data[at + 5], data[at + 6], data[at + 7]];
        let (header, size) = match size32 {
            0 => (8, data.len() - at),
            1 => {
                let Some(large) = data.get(at + 8..at + 16) else {
                    break;
                };
                let large = u64::from_be_bytes(large.try_into().unwrap_or_default());
                match usize::try_from(large) {
                    Ok(s) => (16, s),
                    Err(_) => break,
                }
            }
            n => (8, n as usize),
        };
        let Some(end) = at
            .checked_add(size)
            .filter(|e| *e <= data.len() && size >= header)
        else {
            break;
        };
        out.push(Atom {
            kind,
            body: &data[at + header..end],
        });
        at = end;
    }
    out
}

/// The kind and whole size of the top-level box at `at` in a file of `len` bytes, read
/// from `reader`; `None` past the end or for a box that does not fit.
pub(crate) fn box_header<R: std::io::Read + std::io::Seek>(
    reader: &mut R,
    at: u64,
    len: u64,
) -> std::io::Result<Option<([u8; 4], u64)>> {
    if at.saturating_add(8) > len {
        return Ok(None);
    }
    reader.seek(std::io::SeekFrom::Start(at))?;
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let kind = [header[4], header[5], header[6], header[7]];
    let (header_len, size) = match u32::from_be_bytes([header[0], header[1], header[2], header[3]])
    {
        0 => (8, len - at),
        1 => {
            if at + 16 > len {
                return Ok(None);
            }
            let mut large = [0u8; 8];
            reader.read_exact(&mut large)?;
            (16, u64::from_be_bytes(large))
        }
        n => (8, u64::from(n)),
    };
    let fits = size >= header_len && at.checked_add(size).is_some_and(|end| end <= len);
    Ok(fits.then_some((kind, size)))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// (creation time, duration in ms) from a movie header.
fn mvhd(body: &[u8]) -> (Option<i64>, Option<u64>) {
    let version = body.first().copied().unwrap_or(0);
    let (created, timescale, duration) = if version == 1 {
        (be_u64(body, 4), be_u32(body, 20), be_u64(body, 24))
    } else {
        (
            be_u32(body, 4).map(u64::from),
            be_u32(body, 12),
            be_u32(body, 16).map(u64::from),
        )
    };
    let ms = match (timescale, duration) {
        (Some(scale), Some(d)) if scale > 0 => Some(d.saturating_mul(1000) / u64::from(scale)),
        _ => None,
    };
    (created.and_then(from_1904), ms)
}

/// (width, height, quarter turns) from a track header, if the track has a picture.
fn tkhd(body: &[u8]) -> Option<(u32, u32, u8)> {
    let version = *body.first()?;
    let matrix_at = if version == 1 { 52 } else { 40 };
    let m = |i: usize| be_u32(body, matrix_at + 4 * i).map(|v| v as i32);
    let (a, b, c, d) = (m(0)?, m(1)?, m(3)?, m(4)?);
    let width = be_u32(body, matrix_at + 36)? >> 16;
    let height = be_u32(body, matrix_at + 40)? >> 16;
    if width == 0 || height == 0 {
        return None;
    }
    const ONE: i32 = 0x1_0000;
    let turns = match (a, b, c, d) {
        (0, ONE, x, 0) if x == -ONE => 1,
        (x, 0, 0, y) if x == -ONE && y == -ONE => 2,
        (0, x, ONE, 0) if x == -ONE => 3,
        _ => 0,
    };
    Some((width, height, turns))
}

/// The size of a HEIF file's largest image (its primary picture; thumbnails are smaller),
/// from the `ispe` properties under `meta/iprp/ipco`.
pub(crate) fn heif_size(data: &[u8]) -> Option<(u32, u32)> {
    let mut budget = MAX_BOXES;
    let top = boxes(data, &mut budget);
    let meta = top.iter().find(|b| &b.kind == b"meta")?;
    // `meta` is a full box: version and flags come before its children.
    let iprp = boxes(meta.body.get(4..)?, &mut budget)
        .into_iter()
        .find(|b| &b.kind == b"iprp")?;
    let ipco = boxes(iprp.body, &mut budget)
        .into_iter()
        .find(|b| &b.kind == b"ipco")?;
    boxes(ipco.body, &mut budget)
        .into_iter()
        .filter(|b| &b.kind == b"ispe")
        .filter_map(|b| Some((be_u32(b.body, 4)?, be_u32(b.body, 8)?)))
        .max_by_key(|(w, h)| u64::from(*w) * u64::from(*h))
}

/// The codec of a picture track, by its first sample description (`mdia/minf/stbl/stsd`).
fn codec(trak: &[u8], budget: &mut usize) -> Option<&'static str> {
    let mut body = trak;
    for kind in [b"mdia", b"minf", b"stbl", b"stsd"] {
        body = boxes(body, budget)
            .into_iter()
            .find(|b| &b.kind == kind)?
            .body;
    }
    // Version and flags, the entry count, then the first entry's size and format.
    Some(match body.get(12..16)? {
        b"avc1" | b"avc3" => "H.264",
        b"hvc1" | b"hev1" => "HEVC",
        b"av01" => "AV1",
        b"vp09" => "VP9",
        b"vp08" => "VP8",
        b"mp4v" => "MPEG-4",
        b"apcn" | b"apch" | b"apcs" | b"apco" | b"ap4h" | b"ap4x" => "ProRes",
        b"jpeg" | b"mjpa" | b"mjpb" => "Motion JPEG",
        _ => "other",
    })
}

/// The QuickTime metadata key of a Live Photo's movie.
const CONTENT_IDENTIFIER: &[u8] = b"com.apple.quicktime.content.identifier";

/// The text value of metadata key `wanted` in a QuickTime `meta` box (`hdlr` `mdta`, the
/// keys in `keys`, the values in `ilst` items numbered by key, each in a `data` box).
fn quicktime_key(meta: &[u8], wanted: &[u8], budget: &mut usize) -> Option<String> {
    let inner = boxes(meta, budget);
    let keys = inner.iter().find(|b| &b.kind == b"keys")?.body;
    // Version and flags, then a count, then (size, namespace, name) per key.
    let count = be_u32(keys, 4)?.min(1024);
    let mut at = 8usize;
    let mut index = None;
    for n in 1..=count {
        let size = usize::try_from(be_u32(keys, at)?).ok()?;
        let name = keys.get(at + 8..at.checked_add(size)?)?;
        if size < 8 {
            return None;
        }
        if name == wanted {
            index = Some(n);
            break;
        }
        at += size;
    }
    let index = index?;
    let ilst = inner.iter().find(|b| &b.kind == b"ilst")?.body;
    let item = boxes(ilst, budget)
        .into_iter()
        .find(|b| b.kind == index.to_be_bytes())?;
    let data = boxes(item.body, budget)
        .into_iter()
        .find(|b| &b.kind == b"data")?;
    // Type (1: UTF-8) and locale, then the value.
    if be_u32(data.body, 0)? != 1 {
        return None;
    }
    let text = std::str::from_utf8(data.body.get(8..)?).ok()?.trim();
    (!text.is_empty() && text.len() <= 128).then(|| text.to_string())
}

/// What a movie says about itself, or `None` if the bytes are not a movie.
pub(crate) fn probe(data: &[u8]) -> Option<MediaInfo> {
    let mut budget = MAX_BOXES;
    let top = boxes(data, &mut budget);
    let ftyp = top.first().filter(|b| &b.kind == b"ftyp")?;
    let brand = ftyp.body.get(..4)?;
    // HEIF stills share the container: they are photos, read by the still path.
    if crate::still::sniff(data) == Some("heic") {
        return None;
    }
    let format = if brand == b"qt  " { "mov" } else { "mp4" };
    let mut info = MediaInfo {
        kind: MediaKind::Video,
        format,
        ..MediaInfo::unknown()
    };
    for moov in top.iter().filter(|b| &b.kind == b"moov") {
        for inner in boxes(moov.body, &mut budget) {
            match &inner.kind {
                b"mvhd" => {
                    let (created, duration) = mvhd(inner.body);
                    info.capture_time_ms = created;
                    info.duration_ms = duration;
                }
                b"meta" => {
                    if let Some(id) = quicktime_key(inner.body, CONTENT_IDENTIFIER, &mut budget) {
                        info.content_identifier = Some(id);
                    }
                }
                b"trak" if info.width.is_none() => {
                    let header = boxes(inner.body, &mut budget)
                        .into_iter()
                        .find(|b| &b.kind == b"tkhd")
                        .and_then(|b| tkhd(b.body));
                    if let Some((w, h, turns)) = header {
                        let (w, h) = if turns % 2 == 1 { (h, w) } else { (w, h) };
                        info.width = Some(w);
                        info.height = Some(h);
                        info.orientation = [1, 6, 3, 8][usize::from(turns)];
                        info.codec = codec(inner.body, &mut budget);
                    }
                }
                _ => {}
            }
        }
    }
    Some(info)
}
