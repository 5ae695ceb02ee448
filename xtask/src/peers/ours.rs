//! Keepsake's run: a server and two devices, first sync then the edits.

use super::*;

pub(super) struct KeepsakeFigures {
    pub(super) first: Cost,
    /// CPU-seconds of the server, A and B over the first sync.
    pub(super) first_cpu: [f64; 3],
    /// Seconds until A's folder was all in the cloud (the first hop alone).
    pub(super) ingest_s: f64,
    pub(super) server_peak_kib: u64,
    pub(super) edits: Cost,
    /// What A sent towards the cloud while the edits synced.
    pub(super) edit_upload_wire: u64,
    /// A's link both ways meanwhile (signatures, the base manifest, the feed).
    pub(super) edit_link_wire: u64,
    pub(super) edit_latency_ms: Vec<f64>,
    pub(super) reinstall: Cost,
    pub(super) metadata: serde_json::Value,
    pub(super) metadata_wire: u64,
    /// Every file renamed on A, until B had each under its new name.
    pub(super) moves: Cost,
    /// Both devices' links meanwhile.
    pub(super) moves_wire: u64,
}

pub(super) fn keepsake(
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
    let first_cpu = [cpu_s(server.0.id()), cpu_s(a.0.id()), cpu_s(b.0.id())];
    println!(
        "keepsake first sync: {:.1} s; CPU server {:.1} s, A {:.1} s, B {:.1} s; peak memory server {} MiB (so far), A {} MiB, B {} MiB; server read {} MiB from the disk and wrote {} MiB to it (library {} MiB)",
        first.wall_s,
        cpu_s(server.0.id()),
        cpu_s(a.0.id()),
        cpu_s(b.0.id()),
        peak_kib(server.0.id()) >> 10,
        peak_kib(a.0.id()) >> 10,
        peak_kib(b.0.id()) >> 10,
        disk_read_bytes(server.0.id()) >> 20,
        disk_written_bytes(server.0.id()) >> 20,
        du(lib)? >> 20
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
        first_cpu,
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
pub(super) fn live_assets(h: &crate::it::Harness) -> Result<usize> {
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
pub(super) fn in_the_cloud(
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
