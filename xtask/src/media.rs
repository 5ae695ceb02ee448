//! `cargo xtask media`: generates real media with Debian's ffmpeg, exiftool and heif-enc
//! (installing them, and rsync, when missing), runs the delta engine's real-media test
//! against rsync on the same pairs of files, and keepsake-media's metadata and preview test
//! on one file per format.

use crate::ci::cargo;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// The media step's tools and the Debian packages that hold them.
pub(crate) const TOOLS: &[(&str, &str)] = &[
    ("ffmpeg", "ffmpeg"),
    ("exiftool", "libimage-exiftool-perl"),
    ("rsync", "rsync"),
    ("heif-enc", "libheif-examples"),
];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the Debian packages behind any missing media tool (needs root, as on CI).
pub fn ensure_tools() -> Result<()> {
    ensure(TOOLS)
}

/// Installs the Debian package of each (tool, package) whose tool is missing.
pub fn ensure(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing {}", missing.join(" "));
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}",
        missing.join(" ")
    );
    let ok = Command::new("sh").args(["-c", &script]).status()?.success();
    if !ok {
        bail!(
            "could not install {}; install them and rerun",
            missing.join(" ")
        );
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Overwrites 1% of `path`'s bytes, in the middle, with a fixed pseudo-random pattern.
fn rewrite_region(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    let len = bytes.len() / 100;
    let start = bytes.len() / 2;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut bytes[start..start + len] {
        // xorshift: deterministic, so every run edits the same bytes.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Generates photo.jpg / edited-photo.jpg (EXIF-only edit) and video.mp4 /
/// edited-video.mp4 (1% region rewrite) into `dir`.
pub fn generate(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let f = |name: &str| dir.join(name);
    run(Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=4032x3024:rate=1",
        ])
        .args([
            "-vf",
            "noise=alls=25:allf=t:all_seed=7",
            "-frames:v",
            "1",
            "-q:v",
            "2",
        ])
        .arg(f("photo.jpg")))?;
    run(Command::new("exiftool")
        .args([
            "-q",
            "-overwrite_original",
            "-Make=KeepsakeCam",
            "-Model=One",
        ])
        .arg("-DateTimeOriginal=2024:06:01 12:00:00")
        .arg(f("photo.jpg")))?;
    std::fs::copy(f("photo.jpg"), f("edited-photo.jpg"))?;
    run(Command::new("exiftool")
        .args(["-q", "-overwrite_original", "-Rating=5", "-Artist=Alice"])
        .arg("-DateTimeOriginal=2024:06:02 08:30:00")
        .arg(f("edited-photo.jpg")))?;
    run(Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
        ])
        .args([
            "-vf",
            "noise=alls=20:allf=t:all_seed=11",
            "-t",
            "12",
            "-c:v",
            "libx264",
        ])
        .args([
            "-preset",
            "ultrafast",
            "-b:v",
            "80M",
            "-maxrate",
            "80M",
            "-bufsize",
            "80M",
        ])
        .arg(f("video.mp4")))?;
    std::fs::copy(f("video.mp4"), f("edited-video.mp4"))?;
    rewrite_region(&f("edited-video.mp4"))?;
    generate_formats(dir)
}

fn ffmpeg(args: &[&str], out: &Path) -> Result<()> {
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out))
}

fn exiftool(args: &[&str], file: &Path) -> Result<()> {
    run(Command::new("exiftool")
        .args(["-q", "-overwrite_original"])
        .args(args)
        .arg(file))
}

/// One file per format with known metadata, for keepsake-media's real-file test: a turned
/// JPEG with camera, offset time and GPS; PNG and WebP with EXIF times; HEIC from heif-enc;
/// MP4 and MOV (turned a quarter) with creation times.
fn generate_formats(dir: &Path) -> Result<()> {
    let f = |name: &str| dir.join(name);
    let still = |size: &str| format!("testsrc2=size={size}:rate=1");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &still("1200x800"),
            "-frames:v",
            "1",
            "-q:v",
            "3",
        ],
        &f("base.jpg"),
    )?;
    std::fs::copy(f("base.jpg"), f("rotated.jpg"))?;
    exiftool(
        &[
            "-n",
            "-Orientation=6",
            "-Make=KeepsakeCam",
            "-Model=Two",
            "-DateTimeOriginal=2023:05:04 10:20:30",
            "-OffsetTimeOriginal=-05:00",
            "-GPSLatitude=48.8584",
            "-GPSLatitudeRef=N",
            "-GPSLongitude=2.2945",
            "-GPSLongitudeRef=E",
        ],
        &f("rotated.jpg"),
    )?;
    let vga = still("640x480");
    ffmpeg(
        &["-f", "lavfi", "-i", &vga, "-frames:v", "1"],
        &f("still.png"),
    )?;
    exiftool(&["-DateTimeOriginal=2022:01:02 03:04:05"], &f("still.png"))?;
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &vga,
            "-frames:v",
            "1",
            "-c:v",
            "libwebp",
        ],
        &f("still.webp"),
    )?;
    exiftool(&["-DateTimeOriginal=2021:03:04 05:06:07"], &f("still.webp"))?;
    run(Command::new("heif-enc")
        .args(["-q", "80", "-o"])
        .arg(f("still.heic"))
        .arg(f("base.jpg"))
        .stdout(std::process::Stdio::null()))?;
    exiftool(&["-DateTimeOriginal=2020:12:24 18:00:00"], &f("still.heic"))?;
    let created = "creation_time=2019-08-07T06:05:04Z";
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-metadata",
            created,
        ],
        &f("clip.mp4"),
    )?;
    ffmpeg(
        &[
            "-i",
            &f("clip.mp4").to_string_lossy(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            "-metadata",
            created,
            "-f",
            "mov",
        ],
        &f("clip.mov"),
    )?;
    Ok(())
}

/// Installs tools, generates media under target/media, runs the real-media test.
pub fn media(root: &Path) -> Result<()> {
    println!("\n==> real-media delta check");
    ensure_tools()?;
    let dir = root.join("target/media");
    generate(&dir)?;
    // `--workspace` with a target filter resolves the features `cargo test --workspace` did,
    // so these runs reuse its build (`-p` would rebuild much of the graph).
    let status = cargo()
        .current_dir(root)
        .env("KEEPSAKE_MEDIA_DIR", &dir)
        .args([
            "test",
            "--workspace",
            "--test",
            "real_media",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .status()?;
    if !status.success() {
        bail!("the real-media delta test failed");
    }
    println!("\n==> real-media metadata and previews");
    let status = cargo()
        .current_dir(root)
        .env("KEEPSAKE_MEDIA_DIR", &dir)
        .args([
            "test",
            "--workspace",
            "--test",
            "real_files",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .status()?;
    if !status.success() {
        bail!("the real-media metadata test failed");
    }
    println!("\n==> the server's HEIC previews and video posters (heif-convert, ffmpeg)");
    let status = cargo()
        .current_dir(root)
        .env("KEEPSAKE_MEDIA_DIR", &dir)
        .args([
            "test",
            "--workspace",
            "--bin",
            "keepsake",
            "--",
            "--ignored",
            "heic_previews_and_video_posters",
        ])
        .status()?;
    if !status.success() {
        bail!("the server's derivative tools test failed");
    }
    Ok(())
}
