//! `cargo xtask bench [<name>] [--short]`: without a name, Keepsake against its peers
//! (`peers.rs`); `sync` drives whole processes; the rest run the `bench` package in a
//! release build.

use crate::ci::cargo;
use anyhow::{Result, bail};
use std::path::Path;

/// Builds the benchmarks optimised and runs the named one.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    // Whole processes syncing a folder: driven from here, like `cargo xtask it`.
    match args.first().map(String::as_str) {
        Some("sync") => return crate::it::bench_sync(root, args.iter().any(|a| a == "--short")),
        // Without a name: Keepsake against syncthing, rsync and restic.
        None | Some("peers") | Some("--short") | Some("--mib") => {
            return crate::peers::run(root, args);
        }
        _ => {}
    }
    let status = cargo()
        .current_dir(root)
        .args(["run", "--quiet", "--release", "-p", "bench", "--"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("benchmark failed");
    }
    Ok(())
}
