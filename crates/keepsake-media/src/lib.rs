//! What a photo or video is, read from its bytes: kind, capture time, displayed size,
//! orientation, camera make and model, and place — for JPEG, PNG, WebP, HEIC (EXIF only;
//! decoding HEIC needs a system library and is left out of the default build) and
//! MP4/MOV — plus oriented JPEG thumbnails and previews of stills.
//!
//! Everything here takes bytes that came from somewhere untrusted: parsers are bounded,
//! never panic on bad input, and say what they could not read instead of guessing. The
//! capture time orders a library; a file's name is only data.
//!
//! ```
//! use keepsake_media::{probe, MediaKind};
//! let info = probe(b"not a photo at all");
//! assert_eq!(info.kind, MediaKind::Unknown);
//! assert_eq!(info.capture_time_ms, None);
//! ```

mod bmff;
pub mod civil;
mod derive;
mod still;

pub use derive::{Derivative, PREVIEW_EDGE, THUMBNAIL_EDGE, derive};

use std::io::{Read, Seek, SeekFrom};

/// Photo, video, or something this crate does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A still image.
    Photo,
    /// A movie (MP4, MOV and other ISO base media files).
    Video,
    /// Not a format this crate reads.
    Unknown,
}

/// What a file says about itself. Anything it does not say is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    /// Photo, video or unknown.
    pub kind: MediaKind,
    /// The container: "jpeg", "png", "webp", "heic", "mp4", "mov", "gif", "tiff"…
    pub format: &'static str,
    /// When it was taken (Unix ms). EXIF times without an offset are read as UTC.
    pub capture_time_ms: Option<i64>,
    /// Width as displayed (after orientation).
    pub width: Option<u32>,
    /// Height as displayed (after orientation).
    pub height: Option<u32>,
    /// The EXIF orientation (1 = upright … 8); 1 when absent.
    pub orientation: u8,
    /// Camera maker.
    pub make: Option<String>,
    /// Camera model.
    pub model: Option<String>,
    /// Latitude and longitude in degrees, when recorded.
    pub gps: Option<(f64, f64)>,
    /// A movie's length in milliseconds.
    pub duration_ms: Option<u64>,
    /// Apple's content identifier: a Live Photo's still (MakerNote) and its movie (QuickTime
    /// `com.apple.quicktime.content.identifier`) carry the same one.
    pub content_identifier: Option<String>,
    /// The lens, as the file names it.
    pub lens: Option<String>,
    /// Height above sea level, in centimetres (negative below).
    pub altitude_cm: Option<i32>,
    /// The capture time's offset from UTC where the camera recorded it (its time zone).
    pub utc_offset_minutes: Option<i16>,
    /// A movie's video codec ("H.264", "HEVC", "AV1", …).
    pub codec: Option<&'static str>,
}

impl MediaInfo {
    fn unknown() -> Self {
        Self {
            kind: MediaKind::Unknown,
            format: "unknown",
            capture_time_ms: None,
            width: None,
            height: None,
            orientation: 1,
            make: None,
            model: None,
            gps: None,
            duration_ms: None,
            content_identifier: None,
            lens: None,
            altitude_cm: None,
            utc_offset_minutes: None,
            codec: None,
        }
    }
}

/// Why a derivative could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The bytes are not a still image this build decodes (a video, HEIC without the
    /// system library, a damaged file).
    #[error("cannot decode this image: {0}")]
    Decode(String),
    /// The image is larger than this crate will decode (a guard against decompression bombs).
    #[error("the image is {width}x{height}; at most {limit} pixels are decoded")]
    TooLarge {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The pixel limit.
        limit: u64,
    },
}

/// Bytes from a file's start that [`probe_reader`] reads of anything not a movie (EXIF
/// lives in a still's first 64 KiB).
const HEAD_BYTES: u64 = 4 << 20;

/// The largest movie box [`probe_reader`] reads into memory: a phone's `moov` is a few MiB
/// even for an hour of video.
const MAX_HEADER_BOX: u64 = 64 << 20;

/// Like [`probe`], for a file too large to hold in memory: of a movie only its `ftyp`,
/// `moov` and `meta` boxes are read — a phone writes `moov` after gigabytes of frames —
/// and of anything else its first 4 MiB. Fails only when reading does.
pub fn probe_reader<R: Read + Seek>(reader: &mut R) -> std::io::Result<MediaInfo> {
    let len = reader.seek(SeekFrom::End(0))?;
    let mut start = Vec::new();
    reader.seek(SeekFrom::Start(0))?;
    reader.by_ref().take(8).read_to_end(&mut start)?;
    if len <= HEAD_BYTES || start.get(4..8) != Some(b"ftyp") {
        let mut head = Vec::new();
        reader.seek(SeekFrom::Start(0))?;
        reader.by_ref().take(HEAD_BYTES).read_to_end(&mut head)?;
        return Ok(probe(&head));
    }
    let mut kept = Vec::new();
    let mut at = 0u64;
    for _ in 0..bmff::MAX_BOXES {
        let Some((kind, size)) = bmff::box_header(reader, at, len)? else {
            break;
        };
        if [b"ftyp", b"moov", b"meta"].contains(&&kind) {
            if size > MAX_HEADER_BOX {
                break;
            }
            reader.seek(SeekFrom::Start(at))?;
            reader.by_ref().take(size).read_to_end(&mut kept)?;
        }
        at += size;
    }
    Ok(probe(&kept))
}

/// Reads what the bytes say about themselves. Never fails: what cannot be read is `None`.
pub fn probe(bytes: &[u8]) -> MediaInfo {
    if let Some(info) = bmff::probe(bytes) {
        return info;
    }
    still::probe(bytes).unwrap_or_else(MediaInfo::unknown)
}
