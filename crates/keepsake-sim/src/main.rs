//! `keepsake-sim`: runs simulated seeds and prints what each did.
//!
//! `keepsake-sim --seeds 100 [--from 0] [--devices 3] [--chaos-secs 20] [--jobs N]`; a failing seed
//! prints its violations and the end of its trace, and the run exits non-zero.

use anyhow::{Context, bail};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut seeds = 10u64;
    let mut from = 0u64;
    let mut devices = 3usize;
    let mut chaos_secs = 20u64;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => seeds = value()?.parse()?,
            "--from" => from = value()?.parse()?,
            "--devices" => devices = value()?.parse()?,
            "--chaos-secs" => chaos_secs = value()?.parse()?,
            "--jobs" => jobs = value()?.parse::<usize>()?.max(1),
            other => bail!("unknown flag {other}"),
        }
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut totals = (0usize, 0usize, 0u32, 0u32, 0u32, 0u64, 0u64, 0u64);
    if seeds > 1 {
        return in_processes(from, seeds, jobs, devices, chaos_secs);
    }
    let results = (from..from + seeds).map(|seed| {
        let mut options = keepsake_sim::SimOptions::new(seed);
        options.devices = devices;
        options.chaos = Duration::from_secs(chaos_secs);
        (seed, keepsake_sim::run(&options))
    });
    for (seed, outcome) in results {
        let o = outcome.with_context(|| format!("seed {seed}"))?;
        println!(
            "seed {seed:>6}: trace {} ({} events), {} photos and edits, {} copies, {} renames, {} assets, {} server and {} device crashes, {} cuts, {} lost replies, {} duplicate and {} late calls, settled in {} ms{}",
            o.trace_hash,
            o.events,
            o.captured,
            o.copies,
            o.renames,
            o.assets,
            o.server_crashes,
            o.device_crashes,
            o.partitions,
            o.faults.lost_replies,
            o.faults.duplicated,
            o.faults.late,
            o.settle_ms,
            if o.violations.is_empty() {
                ""
            } else {
                " — FAILED"
            }
        );
        totals.0 += o.captured;
        totals.1 += o.assets;
        totals.2 += o.server_crashes;
        totals.3 += o.device_crashes;
        totals.4 += o.partitions;
        totals.5 += o.faults.lost_replies;
        totals.6 += o.faults.duplicated;
        totals.7 += o.faults.late;
        if !o.violations.is_empty() {
            for v in &o.violations {
                println!("    {v}");
            }
            println!("    last events:");
            for line in &o.tail {
                println!("      {line}");
            }
            failed.push(seed);
        }
    }
    let totals = [
        totals.0 as u64,
        totals.1 as u64,
        totals.2 as u64,
        totals.3 as u64,
        totals.4 as u64,
        totals.5,
        totals.6,
        totals.7,
    ];
    println!("totals {}", totals.map(|t| t.to_string()).join(" "));
    summary(seeds, started, totals, &failed)
}

/// Runs every seed in a process of its own, `jobs` at a time, and prints them in order.
///
/// A process per seed, not a thread: a seed's trace was seen to change with what ran
/// before it in the same process, so only a fresh process makes every printed seed
/// replay exactly with `--seeds 1 --from SEED`.
fn in_processes(
    from: u64,
    seeds: u64,
    jobs: usize,
    devices: usize,
    chaos_secs: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let spawn = |seed: u64| {
        std::process::Command::new(&exe)
            .args(["--seeds", "1", "--from", &seed.to_string()])
            .args(["--devices", &devices.to_string()])
            .args(["--chaos-secs", &chaos_secs.to_string(), "--jobs", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
    };
    let mut running = std::collections::VecDeque::new();
    let mut next = from;
    let mut totals = [0u64; 8];
    let mut failed = Vec::new();
    while next < from + seeds || !running.is_empty() {
        while running.len() < jobs && next < from + seeds {
            running.push_back((next, spawn(next)?));
            next += 1;
        }
        let (seed, child) = running.pop_front().expect("one is running");
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            match line.strip_prefix("totals ") {
                Some(numbers) => {
                    for (total, n) in totals.iter_mut().zip(numbers.split(' ')) {
                        *total += n.parse::<u64>().unwrap_or(0);
                    }
                }
                None if line.contains(" seeds in ") => {}
                None => println!("{line}"),
            }
        }
        if !out.status.success() {
            failed.push(seed);
        }
    }
    summary(seeds, started, totals, &failed)
}

/// The closing line, and the exit status.
fn summary(seeds: u64, started: Instant, t: [u64; 8], failed: &[u64]) -> anyhow::Result<()> {
    println!(
        "{seeds} seeds in {:.1} s: {} photos taken and edits made, {} assets; {} server crashes, {} device crashes, {} link cuts, {} lost replies, {} duplicate and {} late calls; {} failed {failed:?}; 0 lost and 0 duplicated unless listed above",
        started.elapsed().as_secs_f64(),
        t[0],
        t[1],
        t[2],
        t[3],
        t[4],
        t[5],
        t[6],
        t[7],
        failed.len(),
    );
    if !failed.is_empty() {
        bail!(
            "{} of {seeds} seeds broke an invariant: {failed:?}",
            failed.len()
        );
    }
    Ok(())
}
