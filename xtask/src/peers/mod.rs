//! `cargo xtask bench peers [--short] [--mib N] [--keepsake-only]`: Keepsake against the tools people would
//! use instead — syncthing, rsync and restic — on the same generated phone library, in the
//! same run, with raw baselines (cp, chunk+hash, a discard gRPC stream) measured beside them.
//!
//! The library is seeded: mostly 2–6 MB JPEG- and HEIC-like stills with EXIF, some 20–200 MB
//! MP4-like videos (default 2 GiB; `--short` 200 MB with videos of at most 60 MB). Every
//! tool starts from its own copy of the same bytes and gets the same edits: 1% of the files,
//! an EXIF date rewritten in place for stills and 1% of the bytes in the middle for videos.
//! Peers come from Debian (installed when missing, as the media step does).

use crate::chaos::Proxy;
use crate::it::{Proc, Rng, random_bytes};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod library;
pub(crate) mod measure;
mod ours;
mod report;
mod tools;

use library::*;
use measure::*;
use ours::*;
use report::*;
use tools::*;

const TOOLS: &[(&str, &str)] = &[
    ("syncthing", "syncthing"),
    ("restic", "restic"),
    ("rsync", "rsync"),
];

/// One file of the generated library.
#[derive(Clone)]
struct Item {
    name: String,
    video: bool,
}

/// What one measured step cost.
#[derive(Default, Clone, Copy)]
struct Cost {
    wall_s: f64,
    cpu_s: f64,
    /// Peak resident memory of the largest process involved, KiB.
    peak_kib: u64,
    /// Bytes that crossed loopback (both directions), where the tool has a wire.
    wire: Option<u64>,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let short = args.iter().any(|a| a == "--short");
    let mib: u64 = match args.iter().position(|a| a == "--mib") {
        Some(i) => args.get(i + 1).context("--mib needs a number")?.parse()?,
        None if short => 200,
        None => 2048,
    };
    crate::media::ensure(TOOLS)?;
    for package in ["keepsake", "bench"] {
        if !crate::ci::cargo()
            .current_dir(root)
            .args(["build", "--quiet", "--release", "-p", package])
            .status()?
            .success()
        {
            bail!("building {package} failed");
        }
    }
    let dir = root.join("target/bench-peers");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let lib = dir.join("library");
    let items = generate(&lib, mib << 20, 2026, short)?;
    let total = tree_bytes(&lib)?;
    let edited: Vec<Item> = items.iter().step_by(100).cloned().collect();
    println!(
        "bench peers: {} files ({} videos), {} MiB; {} files edited",
        items.len(),
        items.iter().filter(|i| i.video).count(),
        total >> 20,
        edited.len()
    );
    let bench = root.join("target/release/bench");

    // Baselines, same disk, same run.
    let cp = measured(Command::new("sh").arg("-c").arg(format!(
        "cp -r '{}' '{}' && sync",
        lib.display(),
        dir.join("cp").display()
    )))?;
    std::fs::remove_dir_all(dir.join("cp"))?;
    let chunk: serde_json::Value =
        serde_json::from_str(&measured(Command::new(&bench).arg("chunk").arg(&lib))?.stdout)?;
    let chunk_gib_s = gib(chunk["bytes"].as_u64().unwrap_or(0)) / seconds(&chunk);
    let discard: serde_json::Value = serde_json::from_str(
        &measured(Command::new(&bench).args(["discard", &mib.min(1024).to_string()]))?.stdout,
    )?;
    let discard_gib_s = gib(discard["bytes"].as_u64().unwrap_or(0)) / seconds(&discard);

    let ks = keepsake(root, &dir, &lib, &items, &edited, &bench, short)?;
    if args.iter().any(|a| a == "--keepsake-only") {
        // A quick look at Keepsake's own figures while working on them.
        println!(
            "keepsake server peak: {} MiB; reinstall wire {} KiB",
            ks.server_peak_kib >> 10,
            ks.reinstall.wire.unwrap_or(0) >> 10
        );
        return Ok(());
    }
    let rs = rsync(&dir, &lib, &items, &edited)?;
    let rt = restic(&dir, &lib, &edited)?;
    let st = syncthing(&dir, &lib, &items, &edited, short)?;

    report(&Report {
        files: items.len(),
        videos: items.iter().filter(|i| i.video).count(),
        total,
        edited: edited.len(),
        cp,
        chunk_gib_s,
        discard_gib_s,
        ks,
        rs,
        rt,
        st,
    });
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn seconds(v: &serde_json::Value) -> f64 {
    v["seconds"].as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------- the library

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_stats_are_read_with_their_thousands_separators() {
        let stats = "Number of files: 3\nLiteral data: 1,234,567 bytes\nTotal bytes sent: 89 \n";
        assert_eq!(stat_number(stats, "Literal data:"), 1_234_567);
        assert_eq!(stat_number(stats, "Total bytes sent:"), 89);
        assert_eq!(stat_number(stats, "Matched data:"), 0);
    }

    /// The still edit every tool gets is an EXIF date rewrite in place: same length, and only
    /// the 19 bytes of the date differ (else rsync's literal figure would measure our bug).
    #[test]
    fn a_still_edit_rewrites_only_the_exif_date() {
        let dir = tempfile::tempdir().unwrap();
        let item = Item {
            name: "IMG_00007.JPG".into(),
            video: false,
        };
        let before = jpeg_like(&mut Rng(1), 50_000, 7);
        std::fs::write(dir.path().join(&item.name), &before).unwrap();
        edit(dir.path(), &item, 1).unwrap();
        let after = std::fs::read(dir.path().join(&item.name)).unwrap();
        assert_eq!(before.len(), after.len());
        let differing: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(!differing.is_empty());
        assert!(
            differing
                .iter()
                .all(|&i| (EXIF_DATE_AT..EXIF_DATE_AT + 19).contains(&i)),
            "{differing:?}"
        );
        assert_eq!(&after[EXIF_DATE_AT..EXIF_DATE_AT + 4], b"2025");
    }
}
