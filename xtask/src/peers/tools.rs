//! The peers' runs: rsync, restic and syncthing on the same library.

use super::*;

pub(super) struct RsyncFigures {
    pub(super) first: Cost,
    pub(super) edits: Cost,
    pub(super) edit_literal: u64,
}

pub(super) fn rsync(
    dir: &Path,
    lib: &Path,
    items: &[Item],
    edited: &[Item],
) -> Result<RsyncFigures> {
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

pub(super) struct ResticFigures {
    pub(super) first: Cost,
    pub(super) repo_bytes: u64,
    pub(super) edits: Cost,
    pub(super) added_bytes: u64,
}

pub(super) fn restic(dir: &Path, lib: &Path, edited: &[Item]) -> Result<ResticFigures> {
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

pub(super) struct SyncthingFigures {
    pub(super) first: Cost,
    pub(super) edits: Cost,
    pub(super) edit_latency_ms: Vec<f64>,
}

/// One syncthing instance: its home, ports and process.
pub(super) struct Instance {
    pub(super) home: PathBuf,
    pub(super) gui: u16,
    pub(super) key: String,
    pub(super) proc: Option<Proc>,
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

pub(super) fn syncthing(
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
