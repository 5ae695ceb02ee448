//! `media`: previews per second for 12-megapixel JPEGs, on one core and on two, against
//! decoding the same JPEG alone (the floor any preview pays) in the same run.

use anyhow::Result;
use image::{ImageEncoder, Rgb, RgbImage};
use keepsake_media::{PREVIEW_EDGE, THUMBNAIL_EDGE, derive};
use std::time::Instant;

/// A 4032×3024 JPEG of a phone camera's size: gradients and fine noise everywhere.
fn twelve_megapixels(seed: u32) -> Vec<u8> {
    let (w, h) = (4032u32, 3024u32);
    let picture = RgbImage::from_fn(w, h, |x, y| {
        let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed).rotate_left(7);
        // Gradients with a little sensor noise: about the size of a phone's 12 MP JPEG.
        Rgb([
            (x / 16 + (n & 15)) as u8,
            (y / 12 + (n >> 8 & 15)) as u8,
            ((x + y) / 28 + (n >> 16 & 15)) as u8,
        ])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(picture.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("encoding into memory");
    jpeg
}

fn per_second(photos: &[Vec<u8>], threads: usize, work: fn(&[u8])) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for part in photos.chunks(photos.len().div_ceil(threads)) {
            s.spawn(move || part.iter().for_each(|p| work(p)));
        }
    });
    photos.len() as f64 / started.elapsed().as_secs_f64()
}

fn preview(photo: &[u8]) {
    let made = derive(photo, &[THUMBNAIL_EDGE, PREVIEW_EDGE]).expect("a preview");
    assert_eq!(made[1].width.max(made[1].height), PREVIEW_EDGE);
}

fn decode(photo: &[u8]) {
    let image = image::load_from_memory(photo).expect("a JPEG");
    assert_eq!(image.width(), 4032);
}

/// Runs the benchmark and prints its table.
pub fn run(short: bool) -> Result<()> {
    let n = if short { 4 } else { 16 };
    let photos: Vec<Vec<u8>> = (0..n).map(twelve_megapixels).collect();
    let mib = photos.iter().map(Vec::len).sum::<usize>() as f64 / n as f64 / (1 << 20) as f64;
    println!("media: {n} JPEGs of 4032x3024 ({mib:.1} MiB each); thumbnail 256 + preview 2048");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, 2] {
        let base = per_second(&photos, threads, decode);
        let made = per_second(&photos, threads, preview);
        println!(
            "media: {threads} thread(s) on {cores} cores: {made:.2} previews/s; decode alone {base:.2}/s; ratio {:.2}",
            made / base
        );
    }
    Ok(())
}
