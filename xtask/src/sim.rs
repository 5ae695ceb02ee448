//! `cargo xtask sim`: the deterministic simulation over many seeds.

use anyhow::Result;
use std::path::Path;

/// Seeds run when none are asked for: the hundred `cargo test` runs on every change.
pub const DEFAULT_SEEDS: &str = "100";

/// Runs `keepsake-sim` with `args` (`--seeds N --from S --jobs J --devices D --chaos-secs T`).
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut c = crate::ci::cargo();
    c.args(["run", "--quiet", "-p", "keepsake-sim", "--"]);
    if !args.iter().any(|a| a == "--seeds") {
        c.args(["--seeds", DEFAULT_SEEDS]);
    }
    c.args(args);
    crate::ci::run(root, "deterministic simulation", c)
}
