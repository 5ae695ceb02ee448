//! The chaos phase of `cargo xtask it`: three real device agents — two cameras and a
//! viewer, each behind its own TCP proxy and each with a clock that is wrong by a different
//! amount — while a loop, for a given time, takes photos on either camera, kill -9s any
//! agent or the server and restarts it, cuts a device's connections and restores them, and
//! restarts the server on a disk that is full. Then the faults heal and every device must
//! hold every photo, byte for byte, with one asset each in the library.

use crate::it::{Harness, Proc, Rng, ServerEvents, folder, live_names, random_bytes};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback TCP proxy whose connections can be cut (reset mid-call) and refused.
/// A loopback TCP proxy in front of the server that can cut connections and counts the
/// bytes it carries (both directions).
pub(crate) struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    bytes: Arc<AtomicU64>,
    /// The device's side only: what it sent towards the cloud.
    sent: Arc<AtomicU64>,
}

impl Proxy {
    pub(crate) fn start(upstream: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let proxy = Proxy {
            port: listener.local_addr()?.port(),
            down: Arc::default(),
            open: Arc::default(),
            bytes: Arc::default(),
            sent: Arc::default(),
        };
        let (down, open, bytes, sent) = (
            proxy.down.clone(),
            proxy.open.clone(),
            proxy.bytes.clone(),
            proxy.sent.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if down.load(Ordering::SeqCst) {
                    continue; // dropped: the device sees its connection refused or reset
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    open.lock().unwrap().extend([c, s]);
                }
                pump(
                    client.try_clone(),
                    server.try_clone(),
                    vec![bytes.clone(), sent.clone()],
                );
                pump(Ok(server), Ok(client), vec![bytes.clone()]);
            }
        });
        Ok(proxy)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes carried so far, both directions.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes the device sent towards the cloud.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Resets every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Copies one direction of a connection until either side ends, adding what it carries to
/// each counter.
fn pump(
    from: std::io::Result<TcpStream>,
    to: std::io::Result<TcpStream>,
    counters: Vec<Arc<AtomicU64>>,
) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    for counter in &counters {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// What the chaos loop did.
#[derive(Default)]
struct Counts {
    photos: usize,
    agent_kills: u32,
    server_kills: u32,
    cuts: u32,
    disk_full: u32,
    /// Agent kills made while the server had that agent's chunk stream open.
    mid_upload_kills: u32,
    /// Targeted server kills (the server was committing); how many landed before the
    /// commit was answered is read from the dead server's log.
    mid_commit_kills: u32,
    /// What each photo written holds: (length, fingerprint), by name.
    written: std::collections::BTreeMap<String, (usize, u64)>,
}

/// A cheap content fingerprint: enough to tell a photo from any other in the run.
fn fingerprint(data: &[u8]) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    data.hash(&mut h);
    (data.len(), h.finish())
}

/// Writes a new photo into camera `cam`'s folder, as a camera app does (beside, then renamed).
fn take_photo(
    work: &Path,
    rng: &mut Rng,
    counts: &mut Counts,
    cam: usize,
    len: usize,
) -> Result<()> {
    let name = format!("CHAOS_{}_{:04}.JPG", DEVICES[cam].0, counts.photos);
    let data = random_bytes(rng, len);
    let part = work.join(format!("{name}.part"));
    std::fs::write(&part, &data)?;
    std::fs::rename(&part, work.join(DEVICES[cam].0).join(&name))?;
    counts.written.insert(name, fingerprint(&data));
    counts.photos += 1;
    Ok(())
}

/// Waits up to `limit` for `ready` to hold of the server's events.
fn wait_until(h: &Harness, limit: Duration, ready: impl Fn(&ServerEvents) -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ready(&h.events.lock().unwrap()) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// Sizes of the chaos photos in `dir`, by name.
fn chaos_sizes(dir: &Path) -> Result<std::collections::BTreeMap<String, usize>> {
    let mut sizes = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("CHAOS_") && !name.contains(".keepsake-part") {
            sizes.insert(name, entry.metadata()?.len() as usize);
        }
    }
    Ok(sizes)
}

/// Device ids by name, as the server lists them (the server's events name devices by id).
fn device_ids(h: &Harness) -> Result<Vec<String>> {
    let listing = h.run_ok(&["devices"])?;
    DEVICES
        .iter()
        .map(|(name, _)| {
            listing
                .lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    Some((words.next()?, words.next()?))
                })
                .filter(|(_, n)| n == name)
                .map(|(id, _)| id.to_string())
                .next_back()
                .with_context(|| format!("{name} is not in `keepsake devices`:\n{listing}"))
        })
        .collect()
}

/// The three devices: (name, clock skew in ms).
const DEVICES: [(&str, i64); 3] = [("cam1", 95_000), ("cam2", -185_000), ("view", 0)];

pub(crate) fn chaos_phase(
    h: &Harness,
    work: &Path,
    rng: &mut Rng,
    server: &mut Proc,
    seconds: u64,
    targeted: u32,
    seed: u64,
) -> Result<()> {
    println!("it: chaos for {seconds} s: 3 agents behind proxies with skewed clocks");
    let proxies: Vec<Proxy> = DEVICES
        .iter()
        .map(|_| Proxy::start(h.port))
        .collect::<Result<_>>()?;
    let agent = |i: usize| -> Result<Proc> {
        let (name, skew) = DEVICES[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join(format!("{name}.log")))?;
        let child = h
            .command()
            .env("KEEPSAKE_CLOCK_SKEW_MS", skew.to_string())
            .args(["sync", name, "--data", &format!("{name}-data")])
            .args(["--interval-ms", "300"])
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Proc(child))
    };
    for (i, (name, _)) in DEVICES.iter().enumerate() {
        h.enroll_via(name, &proxies[i].url())?;
        std::fs::create_dir_all(work.join(name))?;
    }
    // Photos already in the library (from the earlier phases) arrive everywhere too.
    let mut agents: Vec<Proc> = (0..DEVICES.len()).map(agent).collect::<Result<_>>()?;
    let ids = device_ids(h)?;
    // A long run stores more than the free plan's 5 GB; a full account would stop uploads
    // (QUOTA_EXCEEDED, as it should) and leave nothing in flight to kill.
    h.run_ok(&["plan", "set", "me", "2tb"])?;
    let mut counts = Counts::default();
    let mut idle_rounds = 0u32;
    // Targeted kills first: an agent while its chunks are on the wire, the server while it
    // is committing. Random kills rarely land in those windows, which are where an
    // acknowledgement can be lost.
    let targeted_started = Instant::now();
    for round in 0..targeted {
        let cam = (round % 2) as usize;
        let len = 1_000_000 + rng.below(2_000_000) as usize;
        take_photo(work, rng, &mut counts, cam, len)?;
        if wait_until(h, Duration::from_secs(20), |e| e.streaming(&ids[cam])) {
            agents[cam].kill();
            counts.mid_upload_kills += 1;
            agents[cam] = agent(cam)?;
        } else {
            idle_rounds += 1;
        }
        let len = 200_000 + rng.below(1_000_000) as usize;
        take_photo(work, rng, &mut counts, cam, len)?;
        if wait_until(h, Duration::from_secs(20), ServerEvents::committing) {
            server.kill();
            counts.mid_commit_kills += 1;
            *server = h.server()?;
        } else {
            idle_rounds += 1;
        }
        if idle_rounds > 5 + targeted / 20 {
            let status =
                std::fs::read_to_string(work.join(format!("{}-data/status.json", DEVICES[cam].0)))
                    .unwrap_or_default();
            bail!(
                "{idle_rounds} targeted kills found nothing in flight within 20 s: uploads have stopped (seed {seed}); {} says:\n{status}",
                DEVICES[cam].0
            );
        }
    }
    if targeted > 0 {
        println!(
            "it: targeted: {} agent kills with their chunk stream open, {} server kills while committing, {:.0} s",
            counts.mid_upload_kills,
            counts.mid_commit_kills,
            targeted_started.elapsed().as_secs_f64()
        );
    }
    let mut cut_until: Vec<Option<Instant>> = vec![None; DEVICES.len()];
    let mut full_until: Option<Instant> = None;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        let now = Instant::now();
        for (i, until) in cut_until.iter_mut().enumerate() {
            if until.is_some_and(|u| u <= now) {
                proxies[i].restore();
                *until = None;
            }
        }
        if full_until.is_some_and(|u| u <= now) {
            server.kill();
            *server = h.server()?;
            full_until = None;
        }
        match rng.below(100) {
            0..=39 => {
                let cam = rng.below(2) as usize;
                let len = 50_000 + rng.below(1_500_000) as usize;
                take_photo(work, rng, &mut counts, cam, len)?;
            }
            40..=59 => {
                let i = rng.below(DEVICES.len() as u64) as usize;
                agents[i].kill();
                agents[i] = agent(i)?;
                counts.agent_kills += 1;
            }
            60..=67 if full_until.is_none() => {
                server.kill();
                *server = h.server()?;
                counts.server_kills += 1;
            }
            68..=84 => {
                let i = rng.below(DEVICES.len() as u64) as usize;
                if cut_until[i].is_none() {
                    proxies[i].cut();
                    cut_until[i] = Some(now + Duration::from_millis(500 + rng.below(3_000)));
                    counts.cuts += 1;
                }
            }
            85..=89 if full_until.is_none() => {
                // The server comes back on a disk with no room left: uploads are refused
                // (and must not be acknowledged) until space returns.
                server.kill();
                *server = h.server_with(&["--capacity-bytes", "1"])?;
                counts.server_kills += 1;
                counts.disk_full += 1;
                full_until = Some(now + Duration::from_millis(1_000 + rng.below(3_000)));
            }
            _ => {}
        }
    }
    // Heal: every link up, the server on a disk with room, every agent running.
    for p in &proxies {
        p.restore();
    }
    if full_until.is_some() {
        server.kill();
        *server = h.server()?;
    }
    // What the run wrote, not what the cameras' folders hold now: a photo a device lost
    // from its own folder is missing here too.
    let want = &counts.written;
    let deadline = Instant::now() + Duration::from_secs(240);
    let healed = Instant::now();
    loop {
        // Names and sizes first (cheap); contents once those match.
        let mut complete = true;
        for (name, _) in DEVICES {
            let sizes = chaos_sizes(&work.join(name))?;
            complete &= sizes.len() == want.len()
                && want.iter().all(|(n, (len, _))| sizes.get(n) == Some(len));
        }
        if complete {
            for (name, _) in DEVICES {
                let have: std::collections::BTreeMap<String, (usize, u64)> =
                    folder(&work.join(name))?
                        .into_iter()
                        .filter(|(n, _)| n.starts_with("CHAOS_"))
                        .map(|(n, data)| (n, fingerprint(&data)))
                        .collect();
                complete &= have == *want;
            }
            if complete {
                break;
            }
        }
        if Instant::now() > deadline {
            let have = chaos_sizes(&work.join("view"))?;
            bail!(
                "after healing, the viewer has {} of {} chaos photos (seed {seed})",
                want.iter()
                    .filter(|(k, (len, _))| have.get(*k) == Some(len))
                    .count(),
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let settled = healed.elapsed();
    let live = crate::it::live_names(h)?;
    let listing = h.run_ok(&["library", "ls"])?;
    let chaos_rows = listing
        .lines()
        .filter(|l| l.contains(" live ") && l.contains("CHAOS_"))
        .count();
    let chaos_live = live.iter().filter(|n| n.starts_with("CHAOS_")).count();
    if chaos_rows != want.len() || chaos_live != want.len() {
        bail!(
            "{chaos_rows} live assets ({chaos_live} names) for {} chaos photos: lost or duplicated (seed {seed})",
            want.len()
        );
    }
    for (name, _) in DEVICES {
        let partial = std::fs::read_dir(work.join(name))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".keepsake-part"))
            .count();
        if partial > 0 {
            bail!("{partial} partial files in {name}'s folder (seed {seed})");
        }
    }
    let bytes: u64 = proxies
        .iter()
        .map(|p| p.bytes.load(Ordering::Relaxed))
        .sum();
    drop(agents);
    let events = h.events.lock().unwrap();
    // Every chunk FindMissing reported held stays off the wire, across every kill: the
    // agent journals acknowledgements before anything else, and asks before it sends.
    if events.already_held > 0 {
        bail!(
            "the server received {} chunks the account already held: acknowledged or stored chunks were sent again (seed {seed})",
            events.already_held
        );
    }
    println!(
        "it: chaos: {} photos on 2 cameras; {} agent kills ({} with their chunk stream open), \
         {} server kills ({} while committing, {} onto a full disk), {} connection cuts; \
         clocks skewed +95 s / -185 s; {} MiB through the proxies; all 3 devices complete {:.1} s after healing",
        counts.photos,
        counts.agent_kills + counts.mid_upload_kills,
        counts.mid_upload_kills,
        counts.server_kills + counts.mid_commit_kills,
        counts.mid_commit_kills,
        counts.disk_full,
        counts.cuts,
        bytes >> 20,
        settled.as_secs_f64(),
    );
    println!(
        "it: chaos: server logs: {} commits answered, {} begun and cut off by a kill; {} chunk streams broken by the client; \
         0 chunks received that the account already held; {} assets, 0 lost, 0 duplicated, 0 partial files",
        events.answered_commits,
        events.interrupted_commits,
        events.broken_streams,
        want.len()
    );
    Ok(())
}

/// The bucket, then the database, stopped for a few seconds while two devices sync: the
/// agents wait and say the cloud cannot be reached, then finish with nothing lost or doubled.
pub(crate) fn outage_phase(
    h: &Harness,
    work: &Path,
    rng: &mut Rng,
    pg: &crate::services::Postgres,
    s3: &mut crate::services::S3Server,
    seed: u64,
) -> Result<()> {
    let before = live_names(h)?.len();
    for (round, what) in ["bucket", "database"].iter().enumerate() {
        for i in 0..6 {
            let len = 200_000 + rng.below(1_500_000) as usize;
            std::fs::write(
                work.join(format!("a/OUTAGE_{round}_{i}.JPG")),
                random_bytes(rng, len),
            )?;
        }
        std::thread::sleep(Duration::from_millis(1100));
        // Down as the agents start: every upload and fetch of these photos meets it.
        match *what {
            "bucket" => s3.kill(),
            _ => pg.kill()?,
        }
        let down = Instant::now();
        let camera = h.sync("a")?;
        let viewer = h.sync("b")?;
        let mut said = None;
        while down.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(250));
            let status = h
                .run_ok(&["status", "--data", "a-data"])
                .unwrap_or_default();
            let lines: Vec<&str> = status.lines().collect();
            if let Some(i) = lines
                .iter()
                .position(|l| l.contains("CLOUD_UNAVAILABLE") || l.contains("SERVER_UNREACHABLE"))
            {
                said = Some(format!(
                    "{} / {}",
                    lines[i].trim(),
                    lines.get(i + 1).map_or("", |l| l.trim())
                ));
            }
        }
        match *what {
            "bucket" => s3.restart()?,
            _ => pg.restart()?,
        }
        let said = said.with_context(|| {
            format!("while the {what} was down the camera never said the cloud's storage is down (seed {seed})")
        })?;
        let want: BTreeMap<String, Vec<u8>> = folder(&work.join("a"))?
            .into_iter()
            .filter(|(name, _)| name.starts_with("OUTAGE"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let have = folder(&work.join("b"))?;
            if want
                .iter()
                .all(|(name, bytes)| have.get(name) == Some(bytes))
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("after the {what} came back the viewer never caught up (seed {seed})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "it: {what} down 4 s as 6 photos began to sync; the camera said {said:?}; \
             the viewer had them all {:.1} s after it went down",
            down.elapsed().as_secs_f64()
        );
        drop((camera, viewer));
    }
    let after = live_names(h)?.len();
    if after != before + 12 {
        bail!(
            "{after} live assets after the outages, expected {} (seed {seed})",
            before + 12
        );
    }
    println!("it: outages: 12 photos, 0 lost, 0 duplicated");
    Ok(())
}
