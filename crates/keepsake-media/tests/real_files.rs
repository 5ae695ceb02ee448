//! Metadata and derivatives of files made by real tools (ffmpeg, exiftool, heif-enc), which
//! `cargo xtask media` generates and points `KEEPSAKE_MEDIA_DIR` at. Ignored otherwise.

use keepsake_media::{MediaKind, PREVIEW_EDGE, THUMBNAIL_EDGE, derive, probe};
use std::path::PathBuf;

fn file(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(
        std::env::var("KEEPSAKE_MEDIA_DIR").expect("run through `cargo xtask media`"),
    );
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
#[ignore = "needs files from `cargo xtask media`"]
fn real_files_say_when_how_big_and_which_way_up() {
    /// name, kind, format, capture time (UTC ms), displayed size, orientation
    type Case = (&'static str, MediaKind, &'static str, i64, (u32, u32), u8);
    let cases: [Case; 6] = [
        (
            "rotated.jpg",
            MediaKind::Photo,
            "jpeg",
            1_683_213_630_000,
            (800, 1200),
            6,
        ),
        (
            "still.png",
            MediaKind::Photo,
            "png",
            1_641_092_645_000,
            (640, 480),
            1,
        ),
        (
            "still.webp",
            MediaKind::Photo,
            "webp",
            1_614_834_367_000,
            (640, 480),
            1,
        ),
        (
            "still.heic",
            MediaKind::Photo,
            "heic",
            1_608_832_800_000,
            (1200, 800),
            1,
        ),
        (
            "clip.mp4",
            MediaKind::Video,
            "mp4",
            1_565_157_904_000,
            (640, 360),
            1,
        ),
        (
            "clip.mov",
            MediaKind::Video,
            "mov",
            1_565_157_904_000,
            (360, 640),
            8,
        ),
    ];
    for (name, kind, format, when, (w, h), orientation) in cases {
        let info = probe(&file(name));
        println!("{name}: {info:?}");
        assert_eq!((info.kind, info.format), (kind, format), "{name}");
        assert_eq!(info.capture_time_ms, Some(when), "{name}");
        assert_eq!((info.width, info.height), (Some(w), Some(h)), "{name}");
        assert_eq!(info.orientation, orientation, "{name}");
    }
    let jpeg = probe(&file("rotated.jpg"));
    assert_eq!(jpeg.make.as_deref(), Some("KeepsakeCam"));
    let (lat, lon) = jpeg.gps.unwrap();
    assert!((lat - 48.8584).abs() < 1e-4 && (lon - 2.2945).abs() < 1e-4);
    let clip = probe(&file("clip.mp4"));
    assert!(clip.duration_ms.is_some_and(|d| (1900..=2100).contains(&d)));
}

#[test]
#[ignore = "needs files from `cargo xtask media`"]
fn real_previews_decode_upright_at_the_right_size() {
    let made = derive(&file("rotated.jpg"), &[THUMBNAIL_EDGE, PREVIEW_EDGE]).unwrap();
    assert_eq!((made[0].width, made[0].height), (171, 256));
    assert_eq!(
        (made[1].width, made[1].height),
        (800, 1200),
        "never scaled up"
    );
    for name in ["still.png", "still.webp", "photo.jpg"] {
        let d = &derive(&file(name), &[THUMBNAIL_EDGE]).unwrap()[0];
        let decoded = image::load_from_memory(&d.jpeg).unwrap();
        assert_eq!(d.width.max(d.height), THUMBNAIL_EDGE, "{name}");
        assert_eq!((decoded.width(), decoded.height()), (d.width, d.height));
    }
}
