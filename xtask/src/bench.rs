//! `cargo xtask bench [<name>] [--short]`: without a name, Keepsake against its peers
//! (`peers.rs`); `sync` drives whole processes; `compare REV` measures the code at REV and
//! the code here in the same run; the rest run the `bench` package in a release build.

use crate::ci::cargo;
use anyhow::{Result, bail};
use std::path::Path;

/// Builds the benchmarks optimised and runs the named one.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    // Whole processes syncing a folder: driven from here, like `cargo xtask it`.
    match args.first().map(String::as_str) {
        Some("sync") => return crate::it::bench_sync(root, args.iter().any(|a| a == "--short")),
        Some("backends") => {
            return crate::bench_backends::run(
                root,
                args.iter().any(|a| a == "--short"),
                args.iter().any(|a| a == "--sync-only"),
            );
        }
        Some("compare") => return compare(root, &args[1..]),
        Some("nodes") => return crate::fleet::bench(root, args.iter().any(|a| a == "--short")),
        // Without a name: Keepsake against syncthing, rsync and restic.
        None | Some("peers") | Some("--short") | Some("--mib") => {
            return crate::peers::run(root, args);
        }
        _ => {}
    }
    let status = bench_binary(root).args(args).status()?;
    if !status.success() {
        bail!("benchmark failed");
    }
    Ok(())
}

/// `cargo run` of the in-process `bench` package, optimised, in the tree at `tree`; the
/// caller adds the benchmark's name and its arguments.
pub(crate) fn bench_binary(tree: &Path) -> std::process::Command {
    let mut command = cargo();
    command
        .current_dir(tree)
        .args(["run", "--quiet", "--release", "-p", "bench", "--"]);
    command
}

/// One figure picked out of a `bench sync` run.
type Pick = fn(&crate::it::SyncFigures) -> f64;

/// `cargo xtask bench compare REV [--short] [--rounds N] [NAME ...]`: the same benchmarks
/// for the code at REV (a worktree under target/) and the code here, alternating old and
/// new so the machine's drift falls on both: whole-process `sync` figures as medians and
/// a ratio, then each named in-process benchmark's output, old then new.
fn compare(root: &Path, args: &[String]) -> Result<()> {
    let Some(rev) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("usage: cargo xtask bench compare REV [--short] [--rounds N] [NAME ...]");
    };
    let short = args.iter().any(|a| a == "--short");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    // Names of in-process benchmarks: every word that is neither a flag nor a flag's value.
    let named: Vec<&String> = args[1..]
        .iter()
        .zip(&args[..args.len() - 1])
        .filter(|(word, before)| !word.starts_with("--") && before.as_str() != "--rounds")
        .map(|(word, _)| word)
        .collect();
    let base = root.join("target/bench-base");
    // A worktree already at REV is reused with its build: only a new REV checks out anew.
    let wanted = git_rev(root, rev)?;
    if base.exists() && git_rev(&base, "HEAD").ok().as_deref() != Some(wanted.as_str()) {
        let status = std::process::Command::new("git")
            .current_dir(&base)
            .args(["checkout", "--detach", "--force", &wanted])
            .status()?;
        if !status.success() {
            bail!("cannot check out {rev} in {}", base.display());
        }
    } else if !base.exists() {
        let status = std::process::Command::new("git")
            .current_dir(root)
            .args(["worktree", "add", "--detach", "--force"])
            .arg(&base)
            .arg(&wanted)
            .status()?;
        if !status.success() {
            bail!("cannot check out {rev} into {}", base.display());
        }
    }
    let mut old = Vec::new();
    let mut new = Vec::new();
    for round in 1..=rounds {
        for (label, tree, into) in [
            ("old", &base, &mut old),
            ("new", &root.to_path_buf(), &mut new),
        ] {
            let f = crate::it::sync_figures(tree, short)?;
            println!(
                "round {round} {label}: first sync {:.2} s (cp {:.2} s), capture p50 {:.0} ms p99 {:.0} ms",
                f.first_s, f.cp_s, f.p50_ms, f.p99_ms
            );
            into.push(f);
        }
    }
    let median = |v: &[crate::it::SyncFigures], pick: Pick| {
        let mut xs: Vec<f64> = v.iter().map(pick).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    println!("\nbench compare {rev} (old) against the working tree (new), {rounds} rounds each:");
    println!("| figure | old | new | new / old |");
    println!("|---|---|---|---|");
    let figures: [(&str, Pick); 4] = [
        ("first sync / cp", |f| f.first_s / f.cp_s),
        ("first sync, s", |f| f.first_s),
        ("capture -> B p50, ms", |f| f.p50_ms),
        ("capture -> B p99, ms", |f| f.p99_ms),
    ];
    for (name, pick) in figures {
        let (o, n) = (median(&old, pick), median(&new, pick));
        println!("| {name} | {o:.2} | {n:.2} | {:.2} |", n / o);
    }
    for name in named {
        for (label, tree) in [("old", &base), ("new", &root.to_path_buf())] {
            println!("\n==> {name} ({label})");
            let status = bench_binary(tree).arg(name.as_str()).status()?;
            if !status.success() {
                bail!("benchmark {name} failed on the {label} code");
            }
        }
    }
    Ok(())
}

/// The commit `rev` names in the repository at `dir`.
fn git_rev(dir: &Path, rev: &str) -> Result<String> {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()?;
    if !out.status.success() {
        bail!("{rev} names no commit");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
