//! `cargo xtask demo`: a server and two devices as separate processes, and the story of
//! what sync does and says, one line per step.

use crate::it::{release_harness_with, wait_for};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn step(n: &mut u32, text: &str) {
    *n += 1;
    println!("demo {n:>2}. {text}");
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            bail!("demo: gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn log_has(work: &Path, device: &str, text: &str) -> Result<bool> {
    Ok(std::fs::read_to_string(work.join(format!("{device}.log")))
        .unwrap_or_default()
        .contains(text))
}

fn set_conditions(work: &Path, device: &str, json: &str) -> Result<()> {
    std::fs::write(work.join(format!("{device}-data/conditions.json")), json)?;
    Ok(())
}

/// Real photos when ffmpeg is installed, photo-sized noise otherwise.
fn take_photo(work: &Path, name: &str, seed: u64, len: usize) -> Result<Vec<u8>> {
    let beside = work.join(format!("{name}.tmp"));
    let made = name.ends_with(".JPG")
        && Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!(
                "testsrc2=size=1920x1080:rate=1:duration=1,hue=h={}",
                seed * 40
            ))
            .args(["-frames:v", "1", "-f", "mjpeg"])
            .arg(&beside)
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&beside, data)?;
    }
    let data = std::fs::read(&beside)?;
    std::fs::rename(&beside, work.join("a").join(name))?;
    Ok(data)
}

/// Runs the demo.
pub fn run(root: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let work = tmp.path();
    let mut n = 0;
    let quota = 40_000_000u64;
    let (h, server) = release_harness_with(root, work, &["--free-plan-bytes", &quota.to_string()])?;
    step(
        &mut n,
        &format!(
            "a Keepsake server on {} (free plan {} MB); devices \"camera\" (A) and \"viewer\" (B) enrolled",
            h.url(),
            quota / 1_000_000
        ),
    );
    let _a = h.sync("a")?;
    let _b = h.sync("b")?;
    let mut photos = Vec::new();
    for (i, name) in [
        "IMG_0001.JPG",
        "IMG_0002.JPG",
        "IMG_0003.JPG",
        "VID_0004.MOV",
    ]
    .iter()
    .enumerate()
    {
        photos.push((
            name.to_string(),
            take_photo(work, name, i as u64 + 1, 3_000_000)?,
        ));
    }
    for (name, data) in &photos {
        wait_for(
            &work.join("b"),
            name,
            data,
            Instant::now() + Duration::from_secs(60),
        )?;
    }
    step(&mut n, "4 photos taken on A appear on B, byte for byte");

    // Made on B, as its owner would, through B's own journal: B's agent sends them.
    h.run_ok(&["device", "favorite", "IMG_0001.JPG", "--data", "b-data"])?;
    h.run_ok(&["device", "album", "create", "Holiday", "--data", "b-data"])?;
    wait_until("B to know its new album", Duration::from_secs(30), || {
        Ok(h.run_ok(&["device", "ls", "--data", "b-data"])?
            .contains("\"Holiday\""))
    })?;
    for photo in ["IMG_0001.JPG", "IMG_0003.JPG"] {
        h.run_ok(&[
            "device", "album", "add", "Holiday", photo, "--data", "b-data",
        ])?;
    }
    wait_until(
        "the favourite and album to reach A",
        Duration::from_secs(30),
        || {
            let on_a = h.run_ok(&["device", "ls", "--data", "a-data"])?;
            Ok(on_a
                .lines()
                .any(|l| l.contains("*-") && l.contains("IMG_0001.JPG") && l.contains("[Holiday]"))
                && on_a
                    .lines()
                    .any(|l| l.contains("IMG_0003.JPG") && l.contains("[Holiday]")))
        },
    )?;
    step(
        &mut n,
        "on B, IMG_0001 made a favourite and an album \"Holiday\" of IMG_0001 and IMG_0003: A shows both",
    );

    std::fs::remove_file(work.join("a/IMG_0002.JPG"))?;
    wait_until("the delete to reach B", Duration::from_secs(30), || {
        Ok(!work.join("b/IMG_0002.JPG").exists())
    })?;
    let parked = std::fs::read_dir(work.join("b-data/state/recently-deleted"))?.count();
    step(
        &mut n,
        &format!(
            "IMG_0002 deleted on A: gone from B's folder, in B's Recently Deleted ({parked} item)"
        ),
    );
    h.run_ok(&["device", "restore", "IMG_0002.JPG", "--data", "b-data"])?;
    wait_for(
        &work.join("b"),
        "IMG_0002.JPG",
        &photos[1].1,
        Instant::now() + Duration::from_secs(30),
    )?;
    wait_for(
        &work.join("a"),
        "IMG_0002.JPG",
        &photos[1].1,
        Instant::now() + Duration::from_secs(30),
    )?;
    step(
        &mut n,
        "restored from B's Recently Deleted: back on B and on A, byte for byte",
    );

    set_conditions(work, "a", r#"{"battery_percent": 8, "charging": false}"#)?;
    let low = take_photo(work, "IMG_0005.JPG", 5, 2_000_000)?;
    wait_until("A to say why it waits", Duration::from_secs(30), || {
        log_has(work, "a", "LOW_BATTERY")
    })?;
    std::thread::sleep(Duration::from_secs(1));
    if work.join("b/IMG_0005.JPG").exists() {
        bail!("a photo travelled on a low battery");
    }
    step(
        &mut n,
        "A on 8% battery, not charging: it waits, saying LOW_BATTERY; B does not get IMG_0005",
    );
    set_conditions(work, "a", r#"{"battery_percent": 8, "charging": true}"#)?;
    wait_for(
        &work.join("b"),
        "IMG_0005.JPG",
        &low,
        Instant::now() + Duration::from_secs(30),
    )?;
    step(&mut n, "A plugged in: IMG_0005 reaches B without a restart");

    set_conditions(work, "a", r#"{"network": "cellular"}"#)?;
    let cell = take_photo(work, "IMG_0006.JPG", 6, 2_000_000)?;
    wait_until("A to wait for Wi-Fi", Duration::from_secs(30), || {
        log_has(work, "a", "CELLULAR_NOT_ALLOWED")
    })?;
    step(
        &mut n,
        "A on mobile data without permission: it waits, saying CELLULAR_NOT_ALLOWED",
    );
    set_conditions(work, "a", r#"{"network": "wifi"}"#)?;
    wait_for(
        &work.join("b"),
        "IMG_0006.JPG",
        &cell,
        Instant::now() + Duration::from_secs(30),
    )?;
    step(&mut n, "A back on Wi-Fi: IMG_0006 reaches B");

    take_photo(work, "VID_0007.MOV", 7, 45_000_000)?;
    wait_until("the quota reason", Duration::from_secs(60), || {
        log_has(work, "a", "QUOTA_EXCEEDED")
    })?;
    step(
        &mut n,
        "a 45 MB video does not fit the free plan: A says QUOTA_EXCEEDED before sending a byte of it",
    );

    drop(server);
    let _old = h.server_with(&["--min-client-version", "9.9.0"])?;
    let out = h.command().args(["devices"]).output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    let line = said
        .lines()
        .find(|l| l.contains("CLIENT_TOO_OLD"))
        .context("the outdated client was not told")?;
    step(
        &mut n,
        &format!(
            "the server now needs 9.9.0; this {} client is told: {}",
            env!("CARGO_PKG_VERSION"),
            line.trim()
        ),
    );
    println!("demo: done — every step above ran against real processes over gRPC");
    Ok(())
}
