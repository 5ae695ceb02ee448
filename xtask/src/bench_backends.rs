//! `cargo xtask bench backends [--short] [--sync-only]`: the first sync of one seeded
//! library with the server on the embedded default and on PostgreSQL + S3, in the same run,
//! beside the S3 server's own raw rate — the same bytes PUT and GET by curl (SigV4), no
//! Keepsake between — then the 100,000-asset feed on each database (`--sync-only`: not).

use crate::it::{Rng, folder, random_bytes, release_harness, release_server_env};
use crate::services::{BUCKET, Postgres, S3Server};
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn write_library(dir: &Path, items: usize, mean: usize) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(7);
    let mut total = 0;
    for i in 0..items {
        let len = mean / 2 + rng.below(mean as u64) as usize;
        std::fs::write(
            dir.join(format!("IMG_{i:05}.JPG")),
            random_bytes(&mut rng, len),
        )?;
        total += len as u64;
    }
    Ok(total)
}

/// Writes back what earlier steps left dirty in the page cache, so no timed step pays for
/// the writes of the one before (suspected when the PostgreSQL + S3 run was slower after
/// the embedded one than alone; measured, it changed nothing — kept as hygiene).
fn settle() -> Result<()> {
    if !Command::new("sync").status()?.success() {
        bail!("sync failed");
    }
    Ok(())
}

/// Seconds from both agents starting until B holds A's library.
pub(crate) fn first_sync(h: &crate::it::Harness, work: &Path) -> Result<f64> {
    let want = folder(&work.join("a"))?;
    settle()?;
    let t = Instant::now();
    let camera = h.sync("a")?;
    let viewer = h.sync("b")?;
    crate::it::wait_for_folder(&work.join("b"), &want, t + Duration::from_secs(1800))?;
    drop((camera, viewer));
    Ok(t.elapsed().as_secs_f64())
}

/// PUT then GET every file of `dir` with curl, `jobs` at a time: the bucket's own rate.
fn raw_s3(s3: &S3Server, dir: &Path, jobs: usize) -> Result<(f64, f64)> {
    let files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let time = |put: bool| -> Result<f64> {
        settle()?;
        let t = Instant::now();
        for batch in files.chunks(jobs) {
            let children: Vec<_> = batch
                .iter()
                .map(|f| {
                    let name = f
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string();
                    let url = format!("{}/{BUCKET}/raw/{name}", s3.endpoint);
                    let mut c = Command::new("curl");
                    c.args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                        .arg("keepsake-test:keepsake-test-secret")
                        // curl signs but does not hash the body; S3 wants the header.
                        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
                    if put {
                        c.arg("-T").arg(f);
                    } else {
                        c.args(["-o", "/dev/null"]);
                    }
                    c.arg(url).spawn()
                })
                .collect::<Result<_, _>>()?;
            for mut child in children {
                if !child.wait()?.success() {
                    bail!("curl against the S3 server failed");
                }
            }
        }
        Ok(t.elapsed().as_secs_f64())
    };
    Ok((time(true)?, time(false)?))
}

pub fn run(root: &Path, short: bool, sync_only: bool) -> Result<()> {
    let (items, mean) = if short { (60, 2 << 20) } else { (300, 2 << 20) };
    let tmp_root = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp_root)?;

    let embedded_dir = tempfile::tempdir_in(&tmp_root)?;
    let (h, server) = release_harness(root, embedded_dir.path())?;
    let total = write_library(&embedded_dir.path().join("a"), items, mean)?;
    std::thread::sleep(Duration::from_millis(1100));
    let embedded_s = first_sync(&h, embedded_dir.path())?;
    drop(server);

    let pg = Postgres::start(root)?;
    let s3 = S3Server::start_release(root)?;
    let raw_before = cpu_by_command();
    let (put_s, get_s) = raw_s3(&s3, &embedded_dir.path().join("a"), 4)?;
    let raw_cpu = cpu_spent(&raw_before, &cpu_by_command());
    let cloud_dir = tempfile::tempdir_in(&tmp_root)?;
    let env: Vec<(String, String)> = s3
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let blobs = s3.url();
    let (h, server) = release_server_env(
        root,
        cloud_dir.path(),
        &["--database", &pg.url, "--blobs", &blobs],
        &env,
    )?;
    h.run_ok(&["device", "enroll", "--name", "camera", "--data", "a-data"])?;
    h.run_ok(&["device", "enroll", "--name", "viewer", "--data", "b-data"])?;
    write_library(&cloud_dir.path().join("a"), items, mean)?;
    std::thread::sleep(Duration::from_millis(1100));
    let cpu_before = cpu_by_command();
    let cloud_s = first_sync(&h, cloud_dir.path())?;
    let cpu = cpu_spent(&cpu_before, &cpu_by_command());
    drop(server);

    // The feed a fresh device follows, on each database (the packs on disk: it reads none).
    let feed = |postgres: bool| -> Result<()> {
        let mut c = crate::bench::bench_binary(root);
        c.arg("library");
        if short {
            c.arg("--short");
        }
        if postgres {
            c.env("KEEPSAKE_BENCH_POSTGRES", &pg.url);
        }
        if !c.status()?.success() {
            bail!("bench library failed");
        }
        Ok(())
    };
    if !sync_only {
        feed(false)?;
        feed(true)?;
    }

    let mib = total as f64 / f64::from(1 << 20);
    println!("bench backends: {items} photos, {mib:.0} MiB, release build, loopback, same run");
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| first sync A -> B, embedded (SQLite + files) | {embedded_s:.1} s |");
    println!("| first sync A -> B, PostgreSQL + S3 (s3s-fs) | {cloud_s:.1} s |");
    println!(
        "| raw S3: PUT of the same bytes by curl, 4 at a time | {put_s:.1} s ({:.0} MiB/s) |",
        mib / put_s
    );
    println!(
        "| raw S3: GET of them | {get_s:.1} s ({:.0} MiB/s) |",
        mib / get_s
    );
    println!(
        "| CPU-s in the PostgreSQL + S3 first sync: Keepsake (server and both agents) / PostgreSQL / S3 server | {:.1} / {:.1} / {:.1} |",
        cpu("keepsake"),
        cpu("postgres"),
        cpu("keepsake-s3")
    );
    println!(
        "| CPU-s of the S3 server in the raw PUT + GET | {:.1} |",
        raw_cpu("keepsake-s3")
    );
    println!();
    println!(
        "PostgreSQL + S3 / embedded = {:.2}; raw PUT+GET / PostgreSQL + S3 first sync = {:.2} (target >= 0.7)",
        cloud_s / embedded_s,
        (put_s + get_s) / cloud_s
    );
    Ok(())
}

/// CPU-seconds used so far by each command name, among the processes alive now (with
/// the children they reaped: PostgreSQL's ended backends count).
fn cpu_by_command() -> BTreeMap<String, f64> {
    let mut by_command = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return by_command;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(command) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        *by_command.entry(command.trim().to_string()).or_insert(0.0) +=
            crate::peers::measure::cpu_s(pid);
    }
    by_command
}

/// CPU-seconds each command used between two readings; processes that were not yet
/// running at the first count from zero.
fn cpu_spent(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> impl Fn(&str) -> f64 + use<> {
    let spent: BTreeMap<String, f64> = after
        .iter()
        .map(|(command, t)| {
            (
                command.clone(),
                t - before.get(command).copied().unwrap_or(0.0),
            )
        })
        .collect();
    move |command| spent.get(command).copied().unwrap_or(0.0).max(0.0)
}
