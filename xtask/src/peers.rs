//! `cargo xtask bench peers [--short] [--mib N] [--keepsake-only]`: Keepsake against the tools people would
//! use instead — syncthing, rsync and restic — on the same generated phone library, in the
//! same run, with raw baselines (cp, chunk+hash, a discard gRPC stream) measured beside them.
//!
//! The library is seeded: mostly 2–6 MB JPEG- and HEIC-like stills with EXIF, some 20–200 MB
//! MP4-like videos (default 2 GiB; `--short` 200 MB with videos of at most 60 MB). Every
//! tool starts from its own copy of the same bytes and gets the same edits: 1% of the files,
//! an EXIF date rewritten in place for stills and 1% of the bytes in the middle for videos.
//! Peers come from Debian (installed when missing, as the media step does).

use crate::chaos::Proxy;
use crate::it::{Proc, Rng, random_bytes};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: &[(&str, &str)] = &[
    ("syncthing", "syncthing"),
    ("restic", "restic"),
    ("rsync", "rsync"),
];

/// One file of the generated library.
#[derive(Clone)]
struct Item {
    name: String,
    video: bool,
}

/// What one measured step cost.
#[derive(Default, Clone, Copy)]
struct Cost {
    wall_s: f64,
    cpu_s: f64,
    /// Peak resident memory of the largest process involved, KiB.
    peak_kib: u64,
    /// Bytes that crossed loopback (both directions), where the tool has a wire.
    wire: Option<u64>,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let short = args.iter().any(|a| a == "--short");
    let mib: u64 = match args.iter().position(|a| a == "--mib") {
        Some(i) => args.get(i + 1).context("--mib needs a number")?.parse()?,
        None if short => 200,
        None => 2048,
    };
    crate::media::ensure(TOOLS)?;
    for package in ["keepsake", "bench"] {
        if !crate::ci::cargo()
            .current_dir(root)
            .args(["build", "--quiet", "--release", "-p", package])
            .status()?
            .success()
        {
            bail!("building {package} failed");
        }
    }
    let dir = root.join("target/bench-peers");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let lib = dir.join("library");
    let items = generate(&lib, mib << 20, 2026, short)?;
    let total = tree_bytes(&lib)?;
    let edited: Vec<Item> = items.iter().step_by(100).cloned().collect();
    println!(
        "bench peers: {} files ({} videos), {} MiB; {} files edited",
        items.len(),
        items.iter().filter(|i| i.video).count(),
        total >> 20,
        edited.len()
    );
    let bench = root.join("target/release/bench");

    // Baselines, same disk, same run.
    let cp = measured(Command::new("sh").arg("-c").arg(format!(
        "cp -r '{}' '{}' && sync",
        lib.display(),
        dir.join("cp").display()
    )))?;
    std::fs::remove_dir_all(dir.join("cp"))?;
    let chunk: serde_json::Value =
        serde_json::from_str(&measured(Command::new(&bench).arg("chunk").arg(&lib))?.stdout)?;
    let chunk_gib_s = gib(chunk["bytes"].as_u64().unwrap_or(0)) / seconds(&chunk);
    let discard: serde_json::Value = serde_json::from_str(
        &measured(Command::new(&bench).args(["discard", &mib.min(1024).to_string()]))?.stdout,
    )?;
    let discard_gib_s = gib(discard["bytes"].as_u64().unwrap_or(0)) / seconds(&discard);

    let ks = keepsake(root, &dir, &lib, &items, &edited, &bench, short)?;
    if args.iter().any(|a| a == "--keepsake-only") {
        // A quick look at Keepsake's own figures while working on them.
        println!(
            "keepsake server peak: {} MiB; reinstall wire {} KiB",
            ks.server_peak_kib >> 10,
            ks.reinstall.wire.unwrap_or(0) >> 10
        );
        return Ok(());
    }
    let rs = rsync(&dir, &lib, &items, &edited)?;
    let rt = restic(&dir, &lib, &edited)?;
    let st = syncthing(&dir, &lib, &items, &edited, short)?;

    report(&Report {
        files: items.len(),
        videos: items.iter().filter(|i| i.video).count(),
        total,
        edited: edited.len(),
        cp,
        chunk_gib_s,
        discard_gib_s,
        ks,
        rs,
        rt,
        st,
    });
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn seconds(v: &serde_json::Value) -> f64 {
    v["seconds"].as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------- the library

/// Writes the seeded library into `dir`; `total` bytes, give or take one file.
fn generate(dir: &Path, total: u64, seed: u64, short: bool) -> Result<Vec<Item>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(seed);
    let (mut written, mut items) = (0u64, Vec::new());
    let max_video: u64 = if short { 60 << 20 } else { 200 << 20 };
    while written < total {
        let n = items.len() + 1;
        let video = rng.below(25) == 0 && total - written > 20 << 20;
        let (name, bytes) = if video {
            let len = (20 << 20) + rng.below(max_video - (20 << 20));
            let len = len.min(total - written).max(20 << 20);
            (format!("VID_{n:05}.MP4"), mp4_like(&mut rng, len as usize))
        } else {
            let len = (2_000_000 + rng.below(4_000_000)) as usize;
            if rng.below(5) == 0 {
                (format!("IMG_{n:05}.HEIC"), heic_like(&mut rng, len))
            } else {
                (format!("IMG_{n:05}.JPG"), jpeg_like(&mut rng, len, n))
            }
        };
        written += bytes.len() as u64;
        std::fs::write(dir.join(&name), bytes)?;
        items.push(Item { name, video });
    }
    Ok(items)
}

/// Offset of the EXIF DateTime string in a `jpeg_like` file (rewritten by the edit).
const EXIF_DATE_AT: usize = 2 + 4 + 6 + 8 + 2 + 3 * 12 + 4;

/// SOI, an APP1 Exif segment (TIFF header, IFD0 with Make, Model and DateTime), then
/// incompressible bytes standing for the entropy-coded image, then EOI.
fn jpeg_like(rng: &mut Rng, len: usize, n: usize) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    tiff.extend(3u16.to_le_bytes());
    let data_at = 8 + 2 + 3 * 12 + 4;
    let entry = |tiff: &mut Vec<u8>, tag: u16, count: u32, offset: u32| {
        tiff.extend(tag.to_le_bytes());
        tiff.extend(2u16.to_le_bytes()); // ASCII
        tiff.extend(count.to_le_bytes());
        tiff.extend(offset.to_le_bytes());
    };
    entry(&mut tiff, 0x010F, 8, data_at as u32 + 20); // Make
    entry(&mut tiff, 0x0110, 8, data_at as u32 + 28); // Model
    entry(&mut tiff, 0x0132, 20, data_at as u32); // DateTime
    tiff.extend(0u32.to_le_bytes());
    let day = 1 + n % 28;
    tiff.extend(format!("2026:10:{day:02} 12:{:02}:{:02}\0", n % 60, (n / 60) % 60).as_bytes());
    tiff.extend(b"Phone\0\0\0Model 1\0");
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    debug_assert_eq!(&out[EXIF_DATE_AT..EXIF_DATE_AT + 4], b"2026");
    out.extend(random_bytes(rng, len.saturating_sub(out.len() + 2)));
    out.extend([0xFF, 0xD9]);
    out
}

fn heic_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = 24u32.to_be_bytes().to_vec();
    out.extend(b"ftypheic\0\0\0\0mif1heic");
    let body = len.saturating_sub(out.len() + 8);
    out.extend(((body + 8) as u32).to_be_bytes());
    out.extend(b"mdat");
    out.extend(random_bytes(rng, body));
    out
}

fn mp4_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = 24u32.to_be_bytes().to_vec();
    out.extend(b"ftypisom\0\0\x02\0isommp42");
    // moov > mvhd (version 0): creation time in seconds since 1904, timescale, duration.
    let mut mvhd = vec![0u8; 4];
    mvhd.extend(3_850_000_000u32.to_be_bytes());
    mvhd.extend(3_850_000_000u32.to_be_bytes());
    mvhd.extend(600u32.to_be_bytes());
    mvhd.extend(6000u32.to_be_bytes());
    mvhd.extend([0u8; 80]);
    let mut moov = ((mvhd.len() + 8 + 8) as u32).to_be_bytes().to_vec();
    moov.extend(b"moov");
    moov.extend(((mvhd.len() + 8) as u32).to_be_bytes());
    moov.extend(b"mvhd");
    moov.extend(mvhd);
    out.extend(moov);
    let body = len.saturating_sub(out.len() + 8);
    out.extend(((body + 8) as u32).to_be_bytes());
    out.extend(b"mdat");
    out.extend(random_bytes(rng, body));
    out
}

/// The edit every tool gets: a still's EXIF date rewritten in place (same length, as a
/// photo app sets "date taken"), a video's middle 1% overwritten (a trim re-encoded in place).
fn edit(folder: &Path, item: &Item, round: u64) -> Result<()> {
    let path = folder.join(&item.name);
    let mut bytes = std::fs::read(&path)?;
    if item.video {
        let len = bytes.len() / 100;
        let start = bytes.len() / 2;
        let fresh = random_bytes(&mut Rng(round ^ 0xED17), len);
        bytes[start..start + len].copy_from_slice(&fresh);
    } else if item.name.ends_with(".JPG") {
        let date = format!("2025:0{}:1{} 08:30:00", 1 + round % 9, round % 10);
        bytes[EXIF_DATE_AT..EXIF_DATE_AT + 19].copy_from_slice(date.as_bytes());
    } else {
        // HEIC keeps its metadata in a box near the start; rewrite 64 bytes there.
        let fresh = random_bytes(&mut Rng(round ^ 0x4E1C), 64);
        bytes[40..104].copy_from_slice(&fresh);
    }
    let tmp = folder.join(format!(".{}.edit", item.name));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn copy_library(lib: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("cp -r '{}'/. '{}'", lib.display(), to.display()))
        .status()?
        .success();
    if !ok {
        bail!("copying the library to {}", to.display());
    }
    Ok(())
}

/// Bytes of the visible files of `dir`.
fn tree_bytes(dir: &Path) -> Result<u64> {
    Ok(sizes(dir)?.values().sum())
}

/// Name → length of the visible regular files (tools keep their state in dot files).
fn sizes(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if !name.starts_with('.') && meta.is_file() {
            out.insert(name, meta.len());
        }
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = match (std::fs::File::open(a), std::fs::File::open(b)) {
        (Ok(fa), Ok(fb)) => (fa, fb),
        _ => return Ok(false),
    };
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Which file each name is and when it last changed: equal before and after a comparison
/// means the comparison read the files that were there when it began.
fn identities(dir: &Path, names: &[String]) -> BTreeMap<String, (u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    names
        .iter()
        .filter_map(|n| {
            let m = std::fs::metadata(dir.join(n)).ok()?;
            let id = (
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            );
            Some((n.clone(), id))
        })
        .collect()
}

/// Waits until `target` holds every file of `source` byte for byte (sizes are polled every
/// 20 ms; contents are compared once the sizes agree), and returns when it first did: the
/// start of the comparison that passed, if no file changed while it ran. The comparison
/// itself is the benchmark's work, not the tool's — it reads 2 GiB, from the disk for a
/// tool that leaves nothing in the page cache — so the clock stops before it.
fn wait_same(source: &Path, target: &Path, names: &[String], limit: Duration) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    let want = sizes(source)?;
    loop {
        let began = Instant::now();
        if let Ok(have) = sizes(target)
            && names.iter().all(|n| have.get(n) == want.get(n))
        {
            let before = identities(target, names);
            let mut all = true;
            for n in names {
                if !same_file(&source.join(n), &target.join(n))? {
                    all = false;
                    break;
                }
            }
            if all && identities(target, names) == before {
                return Ok(began);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not match {} within {limit:?}",
                target.display(),
                source.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- process costs

/// CPU seconds a process and its reaped children used, from /proc (clock ticks of 10 ms).
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Peak resident memory (VmHWM) of a live process, KiB.
/// Bytes a process has had read from the disk so far (page cache hits not counted).
fn disk_read_bytes(pid: u32) -> u64 {
    proc_number(pid, "io", "read_bytes:")
}

fn peak_kib(pid: u32) -> u64 {
    proc_number(pid, "status", "VmHWM:")
}

/// The number after `key` in `/proc/PID/FILE` (units dropped), 0 if the process is gone.
fn proc_number(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A command run to its end: wall time, its CPU (this process's reaped-children counters
/// before and after), its peak memory (sampled every 5 ms) and its stdout.
struct Measured {
    cost: Cost,
    stdout: String,
}

fn measured(cmd: &mut Command) -> Result<Measured> {
    let me = std::process::id();
    let cpu_before = children_cpu_s(me);
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut err = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_kib(child.id()));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall_s = t.elapsed().as_secs_f64();
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {stderr}");
    }
    Ok(Measured {
        cost: Cost {
            wall_s,
            cpu_s: children_cpu_s(me) - cpu_before,
            peak_kib: peak,
            wire: None,
        },
        stdout: stdout + &stderr,
    })
}

/// CPU of this process's reaped children (cutime + cstime).
fn children_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .skip(13)
        .take(2)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum::<u64>() as f64
        / clock_ticks()
}

/// Long-running processes whose cost over a step is measured from /proc.
struct Watch<'a> {
    pids: Vec<u32>,
    /// Bytes on the wire so far, by whatever counts them (proxies, a peer's own counters).
    wire: Box<dyn Fn() -> u64 + 'a>,
    start: Instant,
    cpu0: f64,
    wire0: u64,
}

impl<'a> Watch<'a> {
    fn start(pids: Vec<u32>, wire: impl Fn() -> u64 + 'a) -> Self {
        let cpu0 = pids.iter().map(|p| cpu_s(*p)).sum();
        let wire0 = wire();
        Watch {
            pids,
            wire: Box::new(wire),
            start: Instant::now(),
            cpu0,
            wire0,
        }
    }

    /// The step's costs, its wall time ending at `done` (CPU and memory read now).
    fn stop_at(&self, done: Instant) -> Cost {
        Cost {
            wall_s: done.duration_since(self.start).as_secs_f64(),
            cpu_s: self.pids.iter().map(|p| cpu_s(*p)).sum::<f64>() - self.cpu0,
            peak_kib: self.pids.iter().map(|p| peak_kib(*p)).max().unwrap_or(0),
            wire: Some((self.wire)() - self.wire0),
        }
    }
}

// ---------------------------------------------------------------- Keepsake

struct KeepsakeFigures {
    first: Cost,
    /// Seconds until A's folder was all in the cloud (the first hop alone).
    ingest_s: f64,
    server_peak_kib: u64,
    edits: Cost,
    /// What A sent towards the cloud while the edits synced.
    edit_upload_wire: u64,
    /// A's link both ways meanwhile (signatures, the base manifest, the feed).
    edit_link_wire: u64,
    edit_latency_ms: Vec<f64>,
    reinstall: Cost,
    metadata: serde_json::Value,
    metadata_wire: u64,
    /// Every file renamed on A, until B had each under its new name.
    moves: Cost,
    /// Both devices' links meanwhile.
    moves_wire: u64,
}

fn keepsake(
    root: &Path,
    dir: &Path,
    lib: &Path,
    items: &[Item],
    edited: &[Item],
    bench: &Path,
    short: bool,
) -> Result<KeepsakeFigures> {
    println!("\n==> keepsake: server, camera A and viewer B, each device behind a counting proxy");
    let work = dir.join("keepsake");
    std::fs::create_dir_all(&work)?;
    let (h, server) = crate::it::release_server(root, &work, &[])?;
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(h.port))
        .collect::<Result<_>>()?;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        h.enroll_via(name, &proxies[i].url())?;
    }
    copy_library(lib, &work.join("a"))?;
    std::fs::create_dir_all(work.join("b"))?;
    let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();

    // 1. First sync A → cloud → B: from starting both agents until B holds every byte.
    let a = h.sync("a")?;
    let b = h.sync("b")?;
    let watch = Watch::start(vec![server.0.id(), a.0.id(), b.0.id()], || {
        proxies[0].bytes() + proxies[1].bytes()
    });
    let ingest = in_the_cloud(
        work.join("a-data/status.json"),
        items.len() as u64,
        watch.start,
    );
    let done = wait_same(
        &work.join("a"),
        &work.join("b"),
        &names,
        Duration::from_secs(3600),
    )?;
    let first = watch.stop_at(done);
    let ingest_s = ingest
        .join()
        .map_err(|_| anyhow::anyhow!("the status watcher panicked"))?
        .context("ingest")?;
    println!("keepsake ingest (A's folder in the cloud): {ingest_s:.1} s");
    println!(
        "keepsake first sync: {:.1} s; CPU server {:.1} s, A {:.1} s, B {:.1} s; peak memory server {} MiB (so far), A {} MiB, B {} MiB; server read {} MiB from the disk",
        first.wall_s,
        cpu_s(server.0.id()),
        cpu_s(a.0.id()),
        cpu_s(b.0.id()),
        peak_kib(server.0.id()) >> 10,
        peak_kib(a.0.id()) >> 10,
        peak_kib(b.0.id()) >> 10,
        disk_read_bytes(server.0.id()) >> 20
    );

    // 3. Edits of 1% of the files on A, until B holds the new bytes.
    let edit_names: Vec<String> = edited.iter().map(|i| i.name.clone()).collect();
    let (up0, link0) = (proxies[0].sent(), proxies[0].bytes());
    let watch = Watch::start(vec![server.0.id(), a.0.id(), b.0.id()], || {
        proxies[0].bytes() + proxies[1].bytes()
    });
    for item in edited {
        edit(&work.join("a"), item, 1)?;
    }
    let done = wait_same(
        &work.join("a"),
        &work.join("b"),
        &edit_names,
        Duration::from_secs(600),
    )?;
    let edits = watch.stop_at(done);
    let edit_upload_wire = proxies[0].sent() - up0;
    let edit_link_wire = proxies[0].bytes() - link0;
    println!(
        "keepsake 1% edits: {:.1} s; A sent {} B, {} B both ways",
        edits.wall_s, edit_upload_wire, edit_link_wire
    );

    // One still edited at a time: how long until B has it.
    let still = items
        .iter()
        .find(|i| i.name.ends_with(".JPG"))
        .context("the library has a JPEG")?;
    let mut edit_latency_ms = Vec::new();
    for round in 0..if short { 5 } else { 10 } {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        edit(&work.join("a"), still, 100 + round)?;
        let done = wait_same(
            &work.join("a"),
            &work.join("b"),
            std::slice::from_ref(&still.name),
            Duration::from_secs(60),
        )?;
        edit_latency_ms.push(done.duration_since(t).as_secs_f64() * 1000.0);
    }

    // 4. Metadata: favourites and album members changed as A's owner, until B's journal
    // shows the final state of each.
    let wire0 = proxies[1].bytes();
    let out = measured(
        Command::new(bench)
            .env("KEEPSAKE_PASSWORD", &h.password)
            .args(["edits", "--url", &proxies[0].url(), "--account", "me"])
            .args(["--count", if short { "2000" } else { "10000" }])
            .arg("--journal")
            .arg(work.join("b-data/state/journal.sqlite"))
            .args(["--probes", "20"]),
    )?;
    let metadata: serde_json::Value = serde_json::from_str(
        out.stdout
            .lines()
            .rfind(|l| l.starts_with('{'))
            .context("bench edits printed no result")?,
    )?;
    let metadata_wire = proxies[1].bytes() - wire0;
    println!("keepsake metadata: {metadata}");

    // 5. Moves: every file of A renamed, until B has each under its new name. A rename is
    // metadata: no photo's bytes travel, no asset is made or deleted.
    let assets_before = live_assets(&h)?;
    let moved: Vec<String> = names.iter().map(|n| format!("moved {n}")).collect();
    let wire0 = proxies[0].bytes() + proxies[1].bytes();
    let watch = Watch::start(vec![server.0.id(), a.0.id(), b.0.id()], || {
        proxies[0].bytes() + proxies[1].bytes()
    });
    for (from, to) in names.iter().zip(&moved) {
        std::fs::rename(work.join("a").join(from), work.join("a").join(to))?;
    }
    let done = wait_same(
        &work.join("a"),
        &work.join("b"),
        &moved,
        Duration::from_secs(600),
    )?;
    let moves = watch.stop_at(done);
    let moves_wire = proxies[0].bytes() + proxies[1].bytes() - wire0;
    let left_behind = names
        .iter()
        .filter(|n| work.join("b").join(n).exists())
        .count();
    let assets_after_moves = live_assets(&h)?;
    println!(
        "keepsake moves: {:.1} s, {} B both ways, {left_behind} old names left on B, live assets {assets_before} -> {assets_after_moves}",
        moves.wall_s, moves_wire
    );
    if left_behind > 0 || assets_after_moves != assets_before {
        bail!(
            "the moves made, lost or left files: {left_behind} old names on B, assets {assets_before} -> {assets_after_moves}"
        );
    }
    drop(b);

    // 2. Reinstall: device C enrolled over a folder that already holds the whole library.
    copy_library(&work.join("a"), &work.join("c"))?;
    let started_ms = now_ms();
    let c = h.sync("c")?;
    let watch = Watch::start(vec![server.0.id(), c.0.id()], || proxies[2].bytes());
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Ok(bytes) = std::fs::read(work.join("c-data/status.json"))
            && let Ok(s) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && s["last_pass_ms"].as_i64().unwrap_or(0) > started_ms
            && s["pending_files"].as_u64() == Some(0)
            && s["reason"].is_null()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the reinstalled device did not finish its first pass");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reinstall = watch.stop_at(Instant::now());
    let assets_after_reinstall = live_assets(&h)?;
    if assets_after_reinstall != assets_before || sizes(&work.join("c"))? != sizes(&work.join("a"))?
    {
        bail!(
            "the reinstall changed the library: live assets {assets_before} -> {assets_after_reinstall}, or C's names differ from A's"
        );
    }
    let server_peak_kib = peak_kib(server.0.id());
    drop((a, c, server));
    Ok(KeepsakeFigures {
        first,
        ingest_s,
        server_peak_kib,
        edits,
        edit_upload_wire,
        edit_link_wire,
        edit_latency_ms,
        reinstall,
        metadata,
        metadata_wire,
        moves,
        moves_wire,
    })
}

/// Live assets in the library, as `keepsake library ls` lists them.
fn live_assets(h: &crate::it::Harness) -> Result<usize> {
    let out = h.command().args(["library", "ls"]).output()?;
    if !out.status.success() {
        bail!(
            "keepsake library ls failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("live"))
        .count())
}

/// Seconds from `since` until the agent whose status file is `status` ends a pass having
/// uploaded `files` in all: its folder is in the cloud (the pass also read the feed, a few
/// milliseconds here). Polled: the agent writes it once a pass.
fn in_the_cloud(
    status: PathBuf,
    files: u64,
    since: Instant,
) -> std::thread::JoinHandle<Result<f64>> {
    std::thread::spawn(move || {
        while since.elapsed() < Duration::from_secs(3600) {
            if let Ok(text) = std::fs::read_to_string(&status)
                && let Ok(s) = serde_json::from_str::<serde_json::Value>(&text)
                && s["uploaded"].as_u64().unwrap_or(0) >= files
            {
                return Ok(since.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("A never said its folder was all in the cloud")
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------- rsync

struct RsyncFigures {
    first: Cost,
    edits: Cost,
    edit_literal: u64,
}

fn rsync(dir: &Path, lib: &Path, items: &[Item], edited: &[Item]) -> Result<RsyncFigures> {
    println!("\n==> rsync: a daemon on loopback, pushed to like a backup target");
    let work = dir.join("rsync");
    let (src, dst) = (work.join("src"), work.join("dst"));
    copy_library(lib, &src)?;
    std::fs::create_dir_all(&dst)?;
    let port = crate::it::free_port()?;
    let conf = work.join("rsyncd.conf");
    // A daemon started as root drops to `nobody`; this one writes as whoever runs the bench.
    let id = |flag: &str| -> Result<String> {
        let out = Command::new("id").arg(flag).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = {}\ngid = {}\npid file = {}\n[photos]\npath = {}\nread only = no\n",
            id("-u")?,
            id("-g")?,
            work.join("rsyncd.pid").display(),
            dst.display()
        ),
    )?;
    let daemon = Proc(
        Command::new("rsync")
            .args(["--daemon", "--no-detach", &format!("--port={port}")])
            .arg(format!("--config={}", conf.display()))
            .arg("--address=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("rsync://127.0.0.1:{port}/photos/");
    wait_port(port)?;
    let push = |what: &str| -> Result<(Cost, String)> {
        let cpu0 = cpu_s(daemon.0.id());
        let m = measured(
            Command::new("rsync")
                .args(["-a", "--stats", "--no-whole-file"])
                .arg(format!("{}/", src.display()))
                .arg(&url),
        )?;
        let mut cost = m.cost;
        cost.cpu_s += cpu_s(daemon.0.id()) - cpu0;
        let sent = stat_number(&m.stdout, "Total bytes sent:");
        let received = stat_number(&m.stdout, "Total bytes received:");
        cost.wire = Some(sent + received);
        println!("rsync {what}: {:.1} s", cost.wall_s);
        Ok((cost, m.stdout))
    };
    let (first, _) = push("first copy")?;
    let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
    let _ = wait_same(&src, &dst, &names, Duration::from_secs(5))?;
    // rsync's quick check compares whole-second mtimes: an edit in the same second as the
    // copy it was pushed from looks unchanged and is skipped (the short run sent 0 bytes).
    std::thread::sleep(Duration::from_millis(1100));
    for item in edited {
        edit(&src, item, 1)?;
    }
    let (edits, stats) = push("after 1% edits")?;
    let edit_literal = stat_number(&stats, "Literal data:");
    drop(daemon);
    Ok(RsyncFigures {
        first,
        edits,
        edit_literal,
    })
}

/// A number from rsync's --stats ("Literal data: 1,234 bytes").
fn stat_number(stats: &str, label: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.replace(',', "").parse().ok())
        .unwrap_or(0)
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listened on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------- restic

struct ResticFigures {
    first: Cost,
    repo_bytes: u64,
    edits: Cost,
    added_bytes: u64,
}

fn restic(dir: &Path, lib: &Path, edited: &[Item]) -> Result<ResticFigures> {
    println!("\n==> restic: backups to a local repository");
    let work = dir.join("restic");
    let (src, repo) = (work.join("src"), work.join("repo"));
    copy_library(lib, &src)?;
    let restic = |args: &[&str]| {
        let mut c = Command::new("restic");
        c.env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", work.join("cache"))
            .arg("--repo")
            .arg(&repo)
            .args(["--quiet", "--no-lock"])
            .args(args);
        c
    };
    measured(&mut restic(&["init"]))?;
    let backup = |what: &str| -> Result<(Cost, u64)> {
        let mut c = restic(&["backup", "--json"]);
        c.arg(&src);
        let m = measured(&mut c)?;
        let added = m
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .and_then(|v| v["data_added"].as_u64())
            .unwrap_or(0);
        println!("restic {what}: {:.1} s", m.cost.wall_s);
        Ok((m.cost, added))
    };
    let (first, _) = backup("first backup")?;
    let repo_bytes = du(&repo)?;
    for item in edited {
        edit(&src, item, 1)?;
    }
    let (edits, added_bytes) = backup("after 1% edits")?;
    Ok(ResticFigures {
        first,
        repo_bytes,
        edits,
        added_bytes,
    })
}

fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

// ---------------------------------------------------------------- syncthing

struct SyncthingFigures {
    first: Cost,
    edits: Cost,
    edit_latency_ms: Vec<f64>,
}

/// One syncthing instance: its home, ports and process.
struct Instance {
    home: PathBuf,
    gui: u16,
    key: String,
    proc: Option<Proc>,
}

impl Instance {
    fn get(&self, path: &str) -> Result<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.gui))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-Key: {}\r\n\r\n",
            self.key
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let json = body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("an HTTP answer")?;
        Ok(serde_json::from_str(json)?)
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.0.id())
    }
}

fn syncthing(
    dir: &Path,
    lib: &Path,
    items: &[Item],
    edited: &[Item],
    short: bool,
) -> Result<SyncthingFigures> {
    println!("\n==> syncthing: two instances on loopback, one folder shared send-receive");
    let work = dir.join("syncthing");
    let (fa, fb) = (work.join("a"), work.join("b"));
    copy_library(lib, &fa)?;
    std::fs::create_dir_all(&fb)?;
    for f in [&fa, &fb] {
        std::fs::create_dir_all(f.join(".stfolder"))?;
    }
    let mut ids = Vec::new();
    let mut instances = Vec::new();
    for name in ["a", "b"] {
        let home = work.join(format!("home-{name}"));
        let out = Command::new("syncthing")
            .args(["generate", "--no-default-folder"])
            .arg(format!("--home={}", home.display()))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let id = text
            .lines()
            .find_map(|l| l.split("Device ID: ").nth(1))
            .context("syncthing generate printed no device id")?
            .trim()
            .to_string();
        ids.push((id, crate::it::free_port()?));
        instances.push(Instance {
            home,
            gui: crate::it::free_port()?,
            key: format!("keepsake-bench-{name}"),
            proc: None,
        });
    }
    for (i, inst) in instances.iter().enumerate() {
        let folder = if i == 0 { &fa } else { &fb };
        let devices: String = ids
            .iter()
            .enumerate()
            .map(|(j, (id, port))| {
                format!(
                    "<device id=\"{id}\" name=\"{}\" compression=\"metadata\"><address>tcp://127.0.0.1:{port}</address></device>\n",
                    ["a", "b"][j]
                )
            })
            .collect();
        let members: String = ids
            .iter()
            .map(|(id, _)| format!("<device id=\"{id}\"></device>"))
            .collect();
        // Discovery, relays, NAT traversal, usage and crash reports off: loopback only.
        let config = format!(
            r#"<configuration version="36">
<folder id="photos" label="photos" path="{path}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="10">{members}</folder>
{devices}<gui enabled="true" tls="false"><address>127.0.0.1:{gui}</address><apikey>{key}</apikey></gui>
<options><listenAddress>tcp://127.0.0.1:{listen}</listenAddress><globalAnnounceEnabled>false</globalAnnounceEnabled><localAnnounceEnabled>false</localAnnounceEnabled><relaysEnabled>false</relaysEnabled><natEnabled>false</natEnabled><urAccepted>-1</urAccepted><crashReportingEnabled>false</crashReportingEnabled><startBrowser>false</startBrowser><autoUpgradeIntervalH>0</autoUpgradeIntervalH><setLowPriority>false</setLowPriority></options>
</configuration>
"#,
            path = folder.display(),
            gui = inst.gui,
            key = inst.key,
            listen = ids[i].1,
        );
        std::fs::write(inst.home.join("config.xml"), config)?;
    }
    // B (the receiver) starts first and is answering before A starts, as Keepsake's server
    // is up before its agents: A's first dial then connects, instead of both dialling
    // before the other listens and waiting for a redial (a first run measured 8 s, another
    // 27 s that way). The clock starts with A, as Keepsake's starts with its agents.
    let start = |inst: &mut Instance| -> Result<()> {
        inst.proc = Some(Proc(
            Command::new("syncthing")
                .args(["serve", "--no-browser", "--no-restart", "--no-upgrade"])
                .arg(format!("--home={}", inst.home.display()))
                .env("STNODEFAULTFOLDER", "1")
                // One process: without this syncthing runs a monitor that starts the real
                // one as its child, and /proc of the monitor would show none of the work.
                .env("STMONITORED", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ));
        Ok(())
    };
    start(&mut instances[1])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while instances[1].get("/rest/system/status").is_err() {
        if Instant::now() > deadline {
            bail!("syncthing B never answered");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start(&mut instances[0])?;
    let pids = vec![instances[0].pid(), instances[1].pid()];
    let wire = || -> u64 {
        instances[0]
            .get("/rest/system/connections")
            .ok()
            .and_then(|v| {
                Some(v["total"]["inBytesTotal"].as_u64()? + v["total"]["outBytesTotal"].as_u64()?)
            })
            .unwrap_or(0)
    };
    let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
    let watch = Watch::start(pids.clone(), wire);
    let done = wait_same(&fa, &fb, &names, Duration::from_secs(3600))?;
    let first = watch.stop_at(done);
    println!("syncthing first sync: {:.1} s", first.wall_s);
    // B reports the folder complete only once its database agrees; wait for that too, so
    // the edits below are not mistaken for the tail of the first sync.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !instances[1]
        .get("/rest/db/status?folder=photos")
        .is_ok_and(|v| v["needFiles"] == 0 && v["state"] == "idle")
    {
        if Instant::now() > deadline {
            bail!("syncthing B never reported the folder idle");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let edit_names: Vec<String> = edited.iter().map(|i| i.name.clone()).collect();
    let watch = Watch::start(pids, wire);
    for item in edited {
        edit(&fa, item, 1)?;
    }
    let done = wait_same(&fa, &fb, &edit_names, Duration::from_secs(600))?;
    let edits = watch.stop_at(done);
    println!("syncthing 1% edits: {:.1} s", edits.wall_s);
    let still = items
        .iter()
        .find(|i| i.name.ends_with(".JPG"))
        .context("the library has a JPEG")?;
    let mut edit_latency_ms = Vec::new();
    for round in 0..if short { 2 } else { 5 } {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        edit(&fa, still, 100 + round)?;
        let done = wait_same(
            &fa,
            &fb,
            std::slice::from_ref(&still.name),
            Duration::from_secs(120),
        )?;
        edit_latency_ms.push(done.duration_since(t).as_secs_f64() * 1000.0);
    }
    Ok(SyncthingFigures {
        first,
        edits,
        edit_latency_ms,
    })
}

// ---------------------------------------------------------------- the report

struct Report {
    files: usize,
    videos: usize,
    total: u64,
    edited: usize,
    cp: Measured,
    chunk_gib_s: f64,
    discard_gib_s: f64,
    ks: KeepsakeFigures,
    rs: RsyncFigures,
    rt: ResticFigures,
    st: SyncthingFigures,
}

/// Bytes in the unit that keeps a small figure readable.
fn mib(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn row(name: &str, c: &Cost) -> String {
    format!(
        "| {name} | {:.1} s | {:.1} s | {} | {} |",
        c.wall_s,
        c.cpu_s,
        mib(c.peak_kib << 10),
        c.wire.map_or("—".into(), mib)
    )
}

fn report(r: &Report) {
    let ks = &r.ks;
    let lib_gib = gib(r.total);
    println!(
        "\nbench peers: {} files ({} videos), {}; {} edited",
        r.files,
        r.videos,
        mib(r.total),
        r.edited
    );
    println!("\n| baseline | value |\n|---|---|");
    println!("| cp -r + sync, same disk | {:.1} s |", r.cp.cost.wall_s);
    println!(
        "| FastCDC + BLAKE3 (+ file hash), 2 threads | {:.2} GiB/s ({:.1} s for the library) |",
        r.chunk_gib_s,
        lib_gib / r.chunk_gib_s
    );
    println!(
        "| discard tonic stream, loopback | {:.2} GiB/s ({:.1} s for the library) |",
        r.discard_gib_s,
        lib_gib / r.discard_gib_s
    );
    println!("\n| 1. first sync | wall | CPU | peak memory | wire |\n|---|---|---|---|---|");
    println!("{}", row("Keepsake A → cloud → B", &ks.first));
    println!("{}", row("syncthing A → B", &r.st.first));
    println!("{}", row("rsync → daemon (one hop, no fsync)", &r.rs.first));
    println!("{}", row("restic backup (local repository)", &r.rt.first));
    println!("{}", row("cp -r + sync", &r.cp.cost));
    println!("\n| 3. 1% edits | wall | CPU | peak memory | wire |\n|---|---|---|---|---|");
    println!("{}", row("Keepsake A → cloud → B", &ks.edits));
    println!("{}", row("syncthing A → B", &r.st.edits));
    println!("{}", row("rsync → daemon", &r.rs.edits));
    println!("{}", row("restic incremental backup", &r.rt.edits));
    let ratio = |a: f64, b: f64| a / b;
    println!("\n| figure | value | target |\n|---|---|---|");
    println!(
        "| first sync: Keepsake / syncthing | {:.2} | ≤ 0.5 |",
        ratio(ks.first.wall_s, r.st.first.wall_s)
    );
    println!(
        "| first sync: Keepsake / rsync | {:.2} | aim ≤ 1.0 |",
        ratio(ks.first.wall_s, r.rs.first.wall_s)
    );
    println!(
        "| first sync: Keepsake / cp | {:.2} | (context) |",
        ratio(ks.first.wall_s, r.cp.cost.wall_s)
    );
    println!(
        "| first sync: Keepsake / restic backup | {:.2} | (context) |",
        ratio(ks.first.wall_s, r.rt.first.wall_s)
    );
    let ingest_gib_s = lib_gib / ks.ingest_s;
    println!(
        "| ingest: library / time until A's folder is all in the cloud ({:.1} s), against raw chunk+hash on 2 threads | {:.2} ({:.2} GiB/s) | ≥ 0.7 |",
        ks.ingest_s,
        ingest_gib_s / r.chunk_gib_s,
        ingest_gib_s
    );
    let reinstall_wire = ks.reinstall.wire.unwrap_or(0);
    println!(
        "| 2. reinstall over a full copy: wire / library | {:.3}% ({}, {:.1} s) | ≤ 0.5% |",
        100.0 * reinstall_wire as f64 / r.total as f64,
        mib(reinstall_wire),
        ks.reinstall.wall_s
    );
    println!(
        "| 5. every file renamed on A, until B has the new names: wire / library (assets and paths checked unchanged) | {:.3}% ({}, {:.1} s) | ≤ 0.5% |",
        100.0 * ks.moves_wire as f64 / r.total as f64,
        mib(ks.moves_wire),
        ks.moves.wall_s
    );
    println!(
        "| 3. 1% edits: Keepsake upload wire / rsync literal | {:.2} ({} / {}) | ≤ 1.0 |",
        ratio(ks.edit_upload_wire as f64, r.rs.edit_literal as f64),
        mib(ks.edit_upload_wire),
        mib(r.rs.edit_literal)
    );
    println!(
        "| 3. 1% edits: Keepsake A's link both ways / rsync's whole wire (literal data + checksums + file list) | {:.2} ({} / {}) | (context) |",
        ratio(
            ks.edit_link_wire as f64,
            r.rs.edits.wire.unwrap_or(0) as f64
        ),
        mib(ks.edit_link_wire),
        mib(r.rs.edits.wire.unwrap_or(0))
    );
    println!(
        "| 3. 1% edits: restic added to its repository | {} | (context) |",
        mib(r.rt.added_bytes)
    );
    println!(
        "| 3. one photo edited on A → on B, median (Keepsake, {} edits / syncthing, {}) | {:.0} ms / {:.0} ms | ≤ 1 s |",
        ks.edit_latency_ms.len(),
        r.st.edit_latency_ms.len(),
        median(&ks.edit_latency_ms),
        median(&r.st.edit_latency_ms)
    );
    let m = &ks.metadata;
    println!(
        "| 4. {} metadata changes on A: sent in / visible on B after | {:.1} s / {:.1} s ({} to B) | — |",
        m["changes"],
        m["sent_seconds"].as_f64().unwrap_or(f64::NAN),
        m["visible_seconds"].as_f64().unwrap_or(f64::NAN),
        mib(ks.metadata_wire)
    );
    println!(
        "| 4. one metadata change → B's journal, median / max of 20 | {:.0} / {:.0} ms | ≤ 1 s |",
        m["probe_median_ms"].as_f64().unwrap_or(f64::NAN),
        m["probe_max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "| server peak memory over the whole run | {} | ≤ 256 MiB |",
        mib(ks.server_peak_kib << 10)
    );
    println!(
        "| restic repository after the first backup | {} ({:.2}× the library) | (context) |",
        mib(r.rt.repo_bytes),
        r.rt.repo_bytes as f64 / r.total as f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_stats_are_read_with_their_thousands_separators() {
        let stats = "Number of files: 3\nLiteral data: 1,234,567 bytes\nTotal bytes sent: 89 \n";
        assert_eq!(stat_number(stats, "Literal data:"), 1_234_567);
        assert_eq!(stat_number(stats, "Total bytes sent:"), 89);
        assert_eq!(stat_number(stats, "Matched data:"), 0);
    }

    /// The still edit every tool gets is an EXIF date rewrite in place: same length, and only
    /// the 19 bytes of the date differ (else rsync's literal figure would measure our bug).
    #[test]
    fn a_still_edit_rewrites_only_the_exif_date() {
        let dir = tempfile::tempdir().unwrap();
        let item = Item {
            name: "IMG_00007.JPG".into(),
            video: false,
        };
        let before = jpeg_like(&mut Rng(1), 50_000, 7);
        std::fs::write(dir.path().join(&item.name), &before).unwrap();
        edit(dir.path(), &item, 1).unwrap();
        let after = std::fs::read(dir.path().join(&item.name)).unwrap();
        assert_eq!(before.len(), after.len());
        let differing: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(!differing.is_empty());
        assert!(
            differing
                .iter()
                .all(|&i| (EXIF_DATE_AT..EXIF_DATE_AT + 19).contains(&i)),
            "{differing:?}"
        );
        assert_eq!(&after[EXIF_DATE_AT..EXIF_DATE_AT + 4], b"2025");
    }
}
