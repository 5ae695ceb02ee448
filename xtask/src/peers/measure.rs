//! Measuring a process from /proc: CPU seconds, disk reads, peak memory, wire bytes.

use super::*;

/// CPU seconds a process and its reaped children used, from /proc (clock ticks of 10 ms).
pub(crate) fn cpu_s(pid: u32) -> f64 {
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

pub(super) fn clock_ticks() -> f64 {
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

/// Bytes a process has had read from the disk so far (page cache hits not counted).
pub(super) fn disk_read_bytes(pid: u32) -> u64 {
    proc_number(pid, "io", "read_bytes:")
}

/// Bytes a process has written towards the disk so far (files and databases, not sockets).
pub(super) fn disk_written_bytes(pid: u32) -> u64 {
    proc_number(pid, "io", "write_bytes:")
}

/// Peak resident memory (VmHWM) of a live process, KiB.
pub(super) fn peak_kib(pid: u32) -> u64 {
    proc_number(pid, "status", "VmHWM:")
}

/// The number after `key` in `/proc/PID/FILE` (units dropped), 0 if the process is gone.
pub(super) fn proc_number(pid: u32, file: &str, key: &str) -> u64 {
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
pub(super) struct Measured {
    pub(super) cost: Cost,
    pub(super) stdout: String,
}

pub(super) fn measured(cmd: &mut Command) -> Result<Measured> {
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
pub(super) fn children_cpu_s(pid: u32) -> f64 {
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
pub(super) struct Watch<'a> {
    pub(super) pids: Vec<u32>,
    /// Bytes on the wire so far, by whatever counts them (proxies, a peer's own counters).
    pub(super) wire: Box<dyn Fn() -> u64 + 'a>,
    pub(super) start: Instant,
    pub(super) cpu0: f64,
    pub(super) wire0: u64,
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------- rsync

/// A number from rsync's --stats ("Literal data: 1,234 bytes").
pub(super) fn stat_number(stats: &str, label: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.replace(',', "").parse().ok())
        .unwrap_or(0)
}

pub(super) fn wait_port(port: u16) -> Result<()> {
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

impl<'a> Watch<'a> {
    pub(super) fn start(pids: Vec<u32>, wire: impl Fn() -> u64 + 'a) -> Self {
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
    pub(super) fn stop_at(&self, done: Instant) -> Cost {
        Cost {
            wall_s: done.duration_since(self.start).as_secs_f64(),
            cpu_s: self.pids.iter().map(|p| cpu_s(*p)).sum::<f64>() - self.cpu0,
            peak_kib: self.pids.iter().map(|p| peak_kib(*p)).max().unwrap_or(0),
            wire: Some((self.wire)() - self.wire0),
        }
    }
}
