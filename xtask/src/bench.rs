//! `cargo xtask bench <name> [--short]`: runs the `bench` package in a release build.

use crate::ci::cargo;
use anyhow::{Result, bail};
use std::path::Path;

/// Builds the benchmarks optimised and runs the named one.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
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
