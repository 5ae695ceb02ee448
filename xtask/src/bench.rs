//! `cargo xtask bench <name> [--short]`: runs the `bench` package in a release build.

use crate::ci::cargo;
use anyhow::{Result, bail};
use std::path::Path;

/// Builds the benchmarks optimised and runs the named one.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    // Whole processes syncing a folder: driven from here, like `cargo xtask it`.
    if args.first().map(String::as_str) == Some("sync") {
        return crate::it::bench_sync(root, args.iter().any(|a| a == "--short"));
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
