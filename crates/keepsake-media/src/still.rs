//! Stills: the format from the first bytes, the size from the header, the rest from EXIF.

use crate::civil::unix_ms;
use crate::{MediaInfo, MediaKind};
use exif::{In, Tag, Value};
use std::io::Cursor;

/// The still formats this crate recognises by their first bytes.
pub(crate) fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let at = |i: usize, magic: &[u8]| bytes.get(i..i + magic.len()) == Some(magic);
    if at(0, &[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        Some("webp")
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        Some("gif")
    } else if at(0, b"II*\0") || at(0, b"MM\0*") {
        Some("tiff")
    } else if at(4, b"ftyp")
        && ["heic", "heix", "heim", "heis", "mif1", "msf1", "avif"]
            .iter()
            .any(|brand| at(8, brand.as_bytes()))
    {
        Some("heic")
    } else {
        None
    }
}

fn text(exif: &exif::Exif, tag: Tag) -> Option<String> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Ascii(parts) => {
            let s = String::from_utf8_lossy(parts.first()?)
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string();
            (!s.is_empty()).then_some(s)
        }
        _ => None,
    }
}

fn uint(exif: &exif::Exif, tag: Tag) -> Option<u32> {
    exif.get_field(tag, In::PRIMARY)?.value.get_uint(0)
}

/// "+02:00" → +120 minutes.
fn offset_minutes(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

/// When it was taken, and the offset from UTC the camera recorded with it.
fn capture_time(exif: &exif::Exif) -> Option<(i64, Option<i64>)> {
    let (when, offset_tag) = [
        (Tag::DateTimeOriginal, Tag::OffsetTimeOriginal),
        (Tag::DateTimeDigitized, Tag::OffsetTimeDigitized),
        (Tag::DateTime, Tag::OffsetTime),
    ]
    .into_iter()
    .find_map(|(t, o)| Some((text(exif, t)?, o)))?;
    let dt = exif::DateTime::from_ascii(when.as_bytes()).ok()?;
    let local = unix_ms(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)?;
    let offset = text(exif, offset_tag).and_then(|o| offset_minutes(&o));
    Some((local - offset.unwrap_or(0) * 60_000, offset))
}

/// Height above sea level in centimetres, from `GPSAltitude` and its reference (1: below).
fn altitude_cm(exif: &exif::Exif) -> Option<i32> {
    let Value::Rational(parts) = &exif.get_field(Tag::GPSAltitude, In::PRIMARY)?.value else {
        return None;
    };
    let metres = parts.first().filter(|r| r.denom != 0)?.to_f64();
    let below = exif
        .get_field(Tag::GPSAltitudeRef, In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        == Some(1);
    let cm = (metres * 100.0).round() * if below { -1.0 } else { 1.0 };
    // Below the Dead Sea or above an airliner is a broken field, not a place.
    (-50_000.0..=2_000_000.0).contains(&cm).then_some(cm as i32)
}

fn degrees(exif: &exif::Exif, tag: Tag, reference: Tag, negative: &str) -> Option<f64> {
    let Value::Rational(parts) = &exif.get_field(tag, In::PRIMARY)?.value else {
        return None;
    };
    let [d, m, s] = parts.as_slice() else {
        return None;
    };
    if d.denom == 0 || m.denom == 0 || s.denom == 0 {
        return None;
    }
    let value = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
    let sign = if text(exif, reference).as_deref() == Some(negative) {
        -1.0
    } else {
        1.0
    };
    value.is_finite().then_some(sign * value)
}

fn gps(exif: &exif::Exif) -> Option<(f64, f64)> {
    let lat = degrees(exif, Tag::GPSLatitude, Tag::GPSLatitudeRef, "S")?;
    let lon = degrees(exif, Tag::GPSLongitude, Tag::GPSLongitudeRef, "W")?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// What a still says about itself, or `None` if it is not a still this crate recognises.
pub(crate) fn probe(bytes: &[u8]) -> Option<MediaInfo> {
    let format = sniff(bytes)?;
    let mut info = MediaInfo {
        kind: MediaKind::Photo,
        format,
        ..MediaInfo::unknown()
    };
    let exif = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok();
    // The header's size when this build decodes the format; else what EXIF says.
    let header = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    let header = header.or_else(|| {
        if format == "heic" {
            crate::bmff::heif_size(bytes)
        } else {
            None
        }
    });
    let (mut width, mut height) = match header {
        Some((w, h)) => (Some(w), Some(h)),
        None => (None, None),
    };
    if let Some(exif) = &exif {
        if let Some((taken, offset)) = capture_time(exif) {
            info.capture_time_ms = Some(taken);
            info.utc_offset_minutes = offset.and_then(|o| i16::try_from(o).ok());
        }
        info.lens = text(exif, Tag::LensModel);
        info.altitude_cm = altitude_cm(exif);
        info.orientation = uint(exif, Tag::Orientation)
            .and_then(|o| u8::try_from(o).ok())
            .filter(|o| (1..=8).contains(o))
            .unwrap_or(1);
        info.make = text(exif, Tag::Make);
        info.model = text(exif, Tag::Model);
        info.gps = gps(exif);
        info.content_identifier = exif
            .get_field(Tag::MakerNote, exif::In::PRIMARY)
            .and_then(|f| match &f.value {
                exif::Value::Undefined(bytes, _) => apple_content_identifier(bytes),
                _ => None,
            });
        if width.is_none() {
            width = uint(exif, Tag::PixelXDimension);
            height = uint(exif, Tag::PixelYDimension);
        }
    }
    // Orientations 5–8 turn the picture a quarter: it is shown the other way round.
    if info.orientation >= 5 {
        std::mem::swap(&mut width, &mut height);
    }
    info.width = width;
    info.height = height;
    Some(info)
}

/// The content identifier in an Apple MakerNote (`Apple iOS\0`, a version, a byte order
/// and an IFD whose offsets count from the note's start): tag 0x0011, a UUID string.
pub(crate) fn apple_content_identifier(note: &[u8]) -> Option<String> {
    if note.get(..10)? != b"Apple iOS\0" {
        return None;
    }
    let big = match note.get(12..14)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = note.get(at..at + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = note.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let count = usize::from(u16_at(14)?).min(256);
    (0..count).find_map(|i| {
        let entry = 16 + i * 12;
        // Tag 0x0011, ASCII (type 2); a UUID never fits the 4 bytes of an inline value.
        if u16_at(entry)? != 0x0011 || u16_at(entry + 2)? != 2 {
            return None;
        }
        let len = usize::try_from(u32_at(entry + 4)?).ok()?;
        let at = usize::try_from(u32_at(entry + 8)?).ok()?;
        let raw = note.get(at..at.checked_add(len)?)?;
        let text = std::str::from_utf8(raw).ok()?.trim_end_matches('\0').trim();
        (!text.is_empty() && text.len() <= 128).then(|| text.to_string())
    })
}
