//! Project automation, run as `cargo xtask <command>`.
//!
//! # In detail
//!
//! `codegen`, `ci`, `arch`, `python`, `demo` (the two-device story with real processes), `bench
//! sync` (first sync and capture latency with real agents), `it` (real processes: a server and
//! two `keepsake sync` devices — started with `--stream-from-kib 1024 --stream-batch-kib 256`,
//! so most photos take the streamed path and the run checks that some did both ways from the
//! agents' `keepsake_device::streamed` events — one per file as it starts, so passes a kill cut
//! short count too — SIGKILL of either device and of the server at seeded random moments,
//! convergence and no-duplicate checks; then the camera turns on Optimize Storage and is killed
//! while taking photos — every photo missing from it must already be committed, and it ends
//! within its budget), `media` (real JPEG/MP4 via ffmpeg + exiftool, compared with rsync),
//! `bench`, `peers` (`cargo xtask bench`: a seeded phone library; Keepsake's server and agents
//! behind counting proxies against syncthing, an rsync daemon and restic from Debian, with cp,
//! chunk+hash and discard-stream baselines; CPU and peak memory from /proc); it depends on none
//! of the project's crates, so `codegen` builds even when the code it replaces does not; `it`
//! ends with `chaos` (three agents behind killable TCP proxies, skewed clocks via
//! `KEEPSAKE_CLOCK_SKEW_MS`, server restarts onto a full disk; targeted kills timed by the
//! server's paired debug events — `chunk stream opened/ended/broken`, `commit begins/answered`
//! — and the store's count of chunks re-sent that the account already held); `sim` (runs
//! `keepsake-sim`), `fuzz` (cargo-fuzz over `tests/fuzz`), and `ci` prints each step's time

mod bench;
mod bench_backends;
mod chaos;
mod ci;
mod codegen;
mod demo;
mod fleet;
mod fuzz;
mod it;
mod media;
mod peers;
mod python;
mod services;
mod sim;
mod testrun;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>
  codegen [--check]     regenerate (or check) the committed gRPC code from proto/
  ci                    everything CI runs: fmt, codegen check, architecture, clippy, tests, crash sweep, python client, short bench
  arch                  check the dependency rules of ARCHITECTURE.md
  python                the Python grpcio client against a real server
  demo                  a server and two devices as processes: the story of sync, step by step
  it [--short] [--seed N] [--seconds N] [--kills N] [--backend embedded|postgres-s3]  real server and devices: kill -9, then N targeted kills (agent mid-upload, server mid-commit) and a chaos loop (3 agents, proxy cuts, full disk, skewed clocks)
  fuzz [--seconds N]    every cargo-fuzz target (manifests, deltas, wire messages, file names) for N s each
  sim [--seeds N] [--from S] [--jobs J]  deterministic simulation: cloud and devices under crashes, partitions, lost and repeated calls
  services CMD ARGS..   run CMD beside a throwaway PostgreSQL cluster and an S3 server (KEEPSAKE_TEST_POSTGRES, KEEPSAKE_TEST_S3, AWS_* set)
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
        Some("it") => match rest
            .iter()
            .position(|a| a == "--nodes")
            .and_then(|i| rest.get(i + 1))
        {
            Some(n) => fleet::run(
                &root,
                rest,
                n.parse()
                    .map_err(|_| anyhow::anyhow!("--nodes {n:?} is not a number"))?,
            ),
            None if rest.iter().any(|a| a == "--apart") => fleet::run(&root, rest, 3),
            None => it::run(&root, rest),
        },
        Some("demo") => demo::run(&root),
        Some("media") => media::media(&root),
        Some("sim") => sim::run(&root, rest),
        Some("fuzz") => fuzz::run(&root, rest),
        Some("bench") => bench::run(&root, rest),
        Some("services") => services::with_services(&root, rest),
        _ => bail!("{USAGE}"),
    }
}
