//! A deterministic simulation of a Keepsake cloud and its devices.
//!
//! One process runs the real server (store, library, gRPC services) and several real
//! devices (journal, folder, sync engine, gRPC client) as [turmoil] hosts: the network
//! between them and the passage of time are simulated, so a seed fixes everything that
//! happens. While people take photos, copy them under other names into folders, rename
//! and move them, delete and restore them (one of two twins too), mark favourites and fill
//! albums, the run crashes and restarts the server and the devices, partitions and
//! heals links, holds messages back, loses replies after a commit went through, and
//! delivers calls twice or late. Then the faults heal, the devices settle, and
//! [`invariants`] checks the promise: nothing lost, nothing duplicated, every device
//! showing the same library, every stored byte and every database intact.
//!
//! ```no_run
//! let outcome = keepsake_sim::run(&keepsake_sim::SimOptions::new(7)).unwrap();
//! assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
//! // The same seed replays the same run.
//! let again = keepsake_sim::run(&keepsake_sim::SimOptions::new(7)).unwrap();
//! assert_eq!(outcome.trace_hash, again.trace_hash);
//! ```
//!
//! # In detail
//!
//! the deterministic simulation (turmoil): the real server (store, library, gRPC services via
//! `serve_connections`) and three real devices as hosts on a simulated network with simulated
//! time; people take (the larger half of the photos streamed in batches, the path a phone's
//! videos take), copy (under other names, into a folder), rename and move (and rename again),
//! delete (one of two twins too), trash, restore photos, mark favourites and fill albums while
//! the referee crashes and restarts hosts, partitions links and holds messages back, and
//! `Faulty` (a device-side `Cloud` wrapper) loses replies after the server acted and delivers
//! calls twice or late; then faults heal, devices settle, and `invariants` checks the disks:
//! nothing lost, nothing duplicated, every device equal to the library, newest favourite wins,
//! every chunk verifies, every SQLite database passes `integrity_check`, no partial file in a
//! folder. All time (server, devices, file mtimes) comes from the simulation clock and all
//! randomness from the seed; the binary runs each seed in a process of its own so any printed
//! seed replays exactly

mod faulty;
mod hosts;
pub mod invariants;
mod rng;

pub use faulty::FaultCounts;
pub use rng::SimRng;

use hosts::{DeviceHost, Shared};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server's host name in the simulated network.
const CLOUD: &str = "cloud";
/// The moment the simulation starts, as Unix milliseconds (2026-01-01).
const EPOCH_MS: i64 = 1_767_225_600_000;
/// The account every simulated device belongs to.
const ACCOUNT: &str = "sim";
/// Its password.
const PASSWORD: &str = "simulated password";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Fixes every choice of the run.
    pub seed: u64,
    /// How many devices share the library.
    pub devices: usize,
    /// How long (simulated) people use their devices while faults happen.
    pub chaos: Duration,
    /// After the faults heal, how long (simulated) the devices may take to agree.
    pub settle_limit: Duration,
    /// Whether to inject faults at all (a clean run is the control).
    pub faults: bool,
}

impl SimOptions {
    /// Three devices, 20 simulated seconds of use with faults.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            devices: 3,
            chaos: Duration::from_secs(20),
            settle_limit: Duration::from_secs(240),
            faults: true,
        }
    }
}

/// What one run did and whether the promise held.
#[derive(Debug, Clone, Default)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// BLAKE3 of the run's event trace: equal for two runs of one seed.
    pub trace_hash: String,
    /// Events in the trace.
    pub events: usize,
    /// Photos taken and edits made in place, on all devices (each a content of its own).
    pub captured: usize,
    /// Assets in the library at the end (live or in Recently Deleted).
    pub assets: usize,
    /// Copies people made of photos under other names (each a photo of its own).
    pub copies: usize,
    /// Renames and moves people made in their folders.
    pub renames: usize,
    /// Server crashes (kill and restart).
    pub server_crashes: u32,
    /// Device crashes.
    pub device_crashes: u32,
    /// Links cut and later healed.
    pub partitions: u32,
    /// Faults injected between a device and its calls.
    pub faults: FaultCounts,
    /// Simulated milliseconds the devices took to agree after the faults healed.
    pub settle_ms: u64,
    /// Every broken promise, in words; empty when the run passed.
    pub violations: Vec<String>,
    /// The last events of the trace, to read when a seed fails.
    pub tail: Vec<String>,
}

/// Runs one simulation to the end and checks the invariants.
pub fn run(options: &SimOptions) -> anyhow::Result<SimOutcome> {
    // A simulated crash is a process kill, not a power cut (the fail-point sweep covers
    // those), so memory-backed files lose nothing the run checks and spare it the fsyncs.
    let shm = std::path::Path::new("/dev/shm");
    let root = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let enrolled = hosts::prepare_cloud(root.path(), options)?;
    let shared = Arc::new(Mutex::new(Shared::new(options.devices)));
    shared
        .lock()
        .unwrap()
        .faults_on
        .store(options.faults, std::sync::atomic::Ordering::Relaxed);
    let mut rng = SimRng::new(options.seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(options.seed)
        .simulation_duration(options.chaos + options.settle_limit + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(5))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(if options.faults { 40 } else { 5 }))
        .build();

    let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let dir = root.path().to_path_buf();
        let shared = shared.clone();
        let seed = options.seed;
        sim.host(CLOUD, move || {
            hosts::serve_cloud(dir.clone(), seed, restarts.clone(), shared.clone())
        });
    }
    for (index, device_id) in enrolled.into_iter().enumerate() {
        let host = DeviceHost {
            index,
            name: format!("device{index}"),
            folder: root.path().join(format!("device{index}/folder")),
            data: root.path().join(format!("device{index}/data")),
            device_id: device_id.0,
            token: device_id.1,
            // Device clocks disagree by up to ±2 minutes, as phones' clocks do.
            skew_ms: if options.faults {
                rng.below(240_001) as i64 - 120_000
            } else {
                0
            },
            rng: Arc::new(Mutex::new(rng.fork())),
            shared: shared.clone(),
        };
        sim.host(host.name.clone(), move || host.clone().run());
    }

    let mut outcome = SimOutcome {
        seed: options.seed,
        ..SimOutcome::default()
    };
    let chaos_ms = options.chaos.as_millis() as u64;
    let mut down: Vec<(String, u64)> = Vec::new();
    let mut cut: Vec<(String, u64)> = Vec::new();
    let mut next_fault_ms = 0u64;
    loop {
        sim.step()
            .map_err(|e| anyhow::anyhow!("simulation stopped: {e}"))?;
        let now = sim.elapsed().as_millis() as u64;
        // Heal what is due.
        for (host, _) in down.extract_if(.., |(_, until)| *until <= now) {
            sim.bounce(host.as_str());
            shared
                .lock()
                .unwrap()
                .trace(now, "chaos", format!("{host} back up"));
        }
        for (host, _) in cut.extract_if(.., |(_, until)| *until <= now) {
            sim.repair(CLOUD, host.as_str());
            sim.release(CLOUD, host.as_str());
            shared
                .lock()
                .unwrap()
                .trace(now, "chaos", format!("{host} link healed"));
        }
        if now < chaos_ms {
            if options.faults && now >= next_fault_ms {
                next_fault_ms = now + 100 + rng.below(400);
                inject(
                    &mut sim,
                    &mut rng,
                    &shared,
                    options,
                    now,
                    &mut down,
                    &mut cut,
                    &mut outcome,
                );
            }
            continue;
        }
        if now >= chaos_ms && shared.lock().unwrap().phase == hosts::Phase::Use {
            for (host, _) in down.drain(..) {
                sim.bounce(host.as_str());
            }
            for (host, _) in cut.drain(..) {
                sim.repair(CLOUD, host.as_str());
                sim.release(CLOUD, host.as_str());
            }
            let mut s = shared.lock().unwrap();
            s.phase = hosts::Phase::Settle;
            s.faults_on
                .store(false, std::sync::atomic::Ordering::Relaxed);
            s.trace(now, "chaos", "faults healed; settling".into());
        }
        let mut s = shared.lock().unwrap();
        if s.all_quiet() {
            outcome.settle_ms = now - chaos_ms;
            s.trace(now, "referee", "every device agrees".into());
            break;
        }
        if now >= chaos_ms + options.settle_limit.as_millis() as u64 {
            outcome.settle_ms = now - chaos_ms;
            outcome.violations.push(format!(
                "devices did not settle within {} simulated seconds: {}",
                options.settle_limit.as_secs(),
                s.unsettled()
            ));
            break;
        }
    }
    drop(sim);

    let s = shared.lock().unwrap();
    outcome.faults = s.faults.lock().unwrap().clone();
    outcome.captured = s.captured.len();
    outcome.copies = s.trace.iter().filter(|l| l.contains(" copied ")).count();
    outcome.renames = s.trace.iter().filter(|l| l.contains(" renamed ")).count();
    outcome.events = s.trace.len();
    outcome.trace_hash = s.trace_hash();
    outcome.tail = s
        .trace
        .iter()
        .rev()
        .take(
            std::env::var("KEEPSAKE_SIM_TAIL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(40),
        )
        .rev()
        .cloned()
        .collect();
    let report = invariants::check(root.path(), &s, options.devices)?;
    outcome.assets = report.assets;
    outcome.violations.extend(report.violations);
    Ok(outcome)
}

/// One random fault, chosen by the referee's generator.
#[allow(clippy::too_many_arguments)]
fn inject(
    sim: &mut turmoil::Sim<'_>,
    rng: &mut SimRng,
    shared: &Arc<Mutex<Shared>>,
    options: &SimOptions,
    now: u64,
    down: &mut Vec<(String, u64)>,
    cut: &mut Vec<(String, u64)>,
    outcome: &mut SimOutcome,
) {
    let device = format!("device{}", rng.below(options.devices as u64));
    let mut s = shared.lock().unwrap();
    let server_up = !down.iter().any(|(h, _)| h == CLOUD);
    let device_up = !down.iter().any(|(h, _)| *h == device);
    let linked = !cut.iter().any(|(h, _)| *h == device);
    match rng.below(100) {
        // kill -9 of the server and an immediate restart: whatever call was half done
        // is lost; the store and library reopen from disk.
        0..=7 if server_up => {
            sim.bounce(CLOUD);
            outcome.server_crashes += 1;
            s.trace(now, "chaos", "cloud killed and restarted".into());
        }
        // The server stays down for a while.
        8..=10 if server_up => {
            sim.crash(CLOUD);
            outcome.server_crashes += 1;
            let until = now + 500 + rng.below(3_000);
            down.push((CLOUD.into(), until));
            s.trace(now, "chaos", format!("cloud down until {until}"));
        }
        // A device's process is killed and starts again.
        11..=22 if device_up => {
            sim.bounce(device.as_str());
            outcome.device_crashes += 1;
            s.trace(now, "chaos", format!("{device} killed and restarted"));
        }
        // A device is off for a while.
        23..=27 if device_up => {
            sim.crash(device.as_str());
            outcome.device_crashes += 1;
            let until = now + 300 + rng.below(4_000);
            down.push((device.clone(), until));
            s.trace(now, "chaos", format!("{device} off until {until}"));
        }
        // The link between a device and the cloud breaks for a while.
        28..=42 if linked => {
            sim.partition(CLOUD, device.as_str());
            outcome.partitions += 1;
            let until = now + 200 + rng.below(5_000);
            cut.push((device.clone(), until));
            s.trace(now, "chaos", format!("{device} cut off until {until}"));
        }
        // Messages between a device and the cloud are held back, then all arrive at once.
        43..=52 if linked => {
            sim.hold(CLOUD, device.as_str());
            let until = now + 50 + rng.below(1_500);
            cut.push((device.clone(), until));
            s.trace(now, "chaos", format!("{device} held until {until}"));
        }
        _ => {}
    }
}
