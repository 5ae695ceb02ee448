//! Project automation, run as `cargo xtask <command>`.

mod bench;
mod chaos;
mod ci;
mod codegen;
mod demo;
mod fuzz;
mod it;
mod media;
mod peers;
mod python;
mod sim;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>
  codegen [--check]     regenerate (or check) the committed gRPC code from proto/
  ci                    everything CI runs: fmt, codegen check, architecture, clippy, tests, crash sweep, python client, short bench
  arch                  check the dependency rules of ARCHITECTURE.md
  python                the Python grpcio client against a real server
  demo                  a server and two devices as processes: the story of sync, step by step
  it [--short] [--seed N] [--seconds N] [--kills N]  real server and devices: kill -9, then N targeted kills (agent mid-upload, server mid-commit) and a chaos loop (3 agents, proxy cuts, full disk, skewed clocks)
  fuzz [--seconds N]    every cargo-fuzz target (manifests, deltas, wire messages, file names) for N s each
  sim [--seeds N] [--from S] [--jobs J]  deterministic simulation: cloud and devices under crashes, partitions, lost and repeated calls
  media                 generate real media (ffmpeg, exiftool) and check delta sizes against rsync
  bench <store|policy|delta|library|media|sync> [--short]  measured against same-run baselines (release build)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = codegen::workspace_root();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root, rest.iter().any(|a| a == "--check")),
        Some("ci") => ci::ci(&root),
        Some("arch") => ci::architecture(&root),
        Some("python") => python::run(&root),
        Some("it") => it::run(&root, rest),
        Some("demo") => demo::run(&root),
        Some("media") => media::media(&root),
        Some("sim") => sim::run(&root, rest),
        Some("fuzz") => fuzz::run(&root, rest),
        Some("bench") => bench::run(&root, rest),
        _ => bail!("{USAGE}"),
    }
}
