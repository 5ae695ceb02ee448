//! Thumbnails and previews: decoded once, turned upright by the EXIF orientation, scaled
//! to a long edge (never up), encoded as JPEG.

use crate::MediaError;
use image::{DynamicImage, ImageReader};
use std::io::Cursor;

/// The long edge of a thumbnail.
pub const THUMBNAIL_EDGE: u32 = 256;
/// The long edge of a preview.
pub const PREVIEW_EDGE: u32 = 2048;
/// Larger pictures are refused rather than decoded (a 100-megapixel guard).
const MAX_PIXELS: u64 = 100_000_000;
const QUALITY: u8 = 85;

/// One encoded derivative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivative {
    /// The long edge it was asked for.
    pub edge: u32,
    /// Its width (upright).
    pub width: u32,
    /// Its height (upright).
    pub height: u32,
    /// The JPEG bytes.
    pub jpeg: Vec<u8>,
}

fn upright(image: DynamicImage, orientation: u8) -> DynamicImage {
    match orientation {
        2 => image.fliph(),
        3 => image.rotate180(),
        4 => image.flipv(),
        5 => image.rotate90().fliph(),
        6 => image.rotate90(),
        7 => image.rotate270().fliph(),
        8 => image.rotate270(),
        _ => image,
    }
}

fn encode(image: &DynamicImage, edge: u32) -> Result<Derivative, MediaError> {
    let rgb = image.to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&rgb)
        .map_err(|e| MediaError::Decode(e.to_string()))?;
    Ok(Derivative {
        edge,
        width: rgb.width(),
        height: rgb.height(),
        jpeg,
    })
}

/// Upright JPEGs of a still, one per long edge asked for (largest first is cheapest: each
/// smaller one is scaled from the one before).
pub fn derive(bytes: &[u8], edges: &[u32]) -> Result<Vec<Derivative>, MediaError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| MediaError::Decode(e.to_string()))?;
    let (width, height) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| MediaError::Decode(e.to_string()))?
        .into_dimensions()
        .map_err(|e| MediaError::Decode(e.to_string()))?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(MediaError::TooLarge {
            width,
            height,
            limit: MAX_PIXELS,
        });
    }
    let decoded = reader
        .decode()
        .map_err(|e| MediaError::Decode(e.to_string()))?;
    let mut current = upright(decoded, crate::probe(bytes).orientation);
    let mut sorted: Vec<u32> = edges.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::new();
    for edge in sorted {
        if current.width().max(current.height()) > edge {
            // Area averaging: every source pixel counts once, which is what a downscale
            // needs, at a fraction of a convolution filter's cost.
            current = current.thumbnail(edge, edge);
        }
        out.push(encode(&current, edge)?);
    }
    // In the order asked.
    out.sort_by_key(|d| edges.iter().position(|e| *e == d.edge));
    Ok(out)
}
