//! `cargo xtask fuzz [--seconds N] [--quick]`: every fuzz target under tests/fuzz for N
//! seconds each (`--quick`: only those that build without the device and transport).
//!
//! Installs cargo-fuzz if it is missing, seeds each target's corpus with the inputs the
//! tests use (hostile file names, a real manifest, wire messages), and runs libFuzzer with
//! AddressSanitizer (CI's `--quick` run without it). The corpus lives under target/, so runs
//! never dirty the tree; a crash leaves its input under tests/fuzz/artifacts/ and fails the
//! command.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// The targets, each a decoder of something that arrives over the network, and the
/// feature that builds it (the heavier ones pull in the device or the transport).
const TARGETS: &[(&str, Option<&str>)] = &[
    ("manifest", None),
    ("rsync_delta", None),
    ("file_name", Some("names")),
    ("wire", Some("wire")),
];

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let seconds: u64 = match args.iter().position(|a| a == "--seconds") {
        Some(i) => args
            .get(i + 1)
            .context("--seconds needs a number")?
            .parse()?,
        None => 60,
    };
    // CI's quick run: only the targets that build without the device and transport.
    let quick = args.iter().any(|a| a == "--quick");
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("tests/fuzz");
    let targets: Vec<_> = TARGETS
        .iter()
        .filter(|(_, feature)| !quick || feature.is_none())
        .collect();
    for (target, feature) in &targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        write_seeds(target, &corpus)?;
        println!("\n==> fuzz {target} for {seconds} s");
        let status = Command::new(crate::ci::cargo().get_program())
            .current_dir(root)
            // cargo-fuzz needs the sanitizer flags of a nightly compiler; this machine has
            // one stable toolchain, which accepts them when told it is bootstrapping.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            // CI's quick run fuzzes without AddressSanitizer: the targets are safe Rust,
            // where a panic is the bug, and the instrumented build cost most of the step.
            .args(if quick {
                &["--sanitizer", "none"][..]
            } else {
                &[][..]
            })
            .args(feature.map(|f| format!("--features={f}")))
            .arg(target)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                // One input running this long is a hang, the kind of bug this is for.
                "-timeout=10",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {target} found a crash (see tests/fuzz/artifacts/{target}/)");
        }
    }
    println!(
        "fuzz: {} targets, {seconds} s each, no crash",
        TARGETS.len()
    );
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let found = crate::ci::cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("==> installing cargo-fuzz");
        // A plain cargo: CI's lint wrapper would treat cargo-fuzz's own code as ours.
        let status = Command::new(crate::ci::cargo().get_program())
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// Starting inputs shaped like what the tests send.
fn write_seeds(target: &str, corpus: &Path) -> Result<()> {
    let seeds: Vec<Vec<u8>> = match target {
        "file_name" => [
            "IMG_0001.JPG",
            "../../../../etc/passwd",
            "..\\..\\windows\\system32",
            "\u{202e}gpj.exe\u{0}\u{feff}\u{1F4F7}",
            ".hidden",
            "a/b/c.heic",
            "   ",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "manifest" => {
            // The canonical encoding of a one-chunk manifest: magic, total length, file
            // hash, entry count, then (chunk id, length) per entry.
            let mut m = b"KSM1".to_vec();
            m.extend(5u64.to_le_bytes());
            m.extend([7u8; 32]);
            m.extend(1u32.to_le_bytes());
            m.extend([9u8; 32]);
            m.extend(5u32.to_le_bytes());
            vec![m]
        }
        "rsync_delta" => vec![b"\x04abcdrs\x026".to_vec(), vec![0u8; 64]],
        _ => vec![b"\x0a\x20".iter().copied().chain([1u8; 32]).collect()],
    };
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(corpus.join(format!("seed-{i}")), seed)?;
    }
    Ok(())
}
