//! The simulated machines: the cloud server and the devices, each a turmoil host whose
//! software starts again from its disk whenever the simulation restarts it.

use crate::faulty::{FaultCounts, Faulty};
use crate::{ACCOUNT, CLOUD, EPOCH_MS, PASSWORD, SimOptions, SimRng};
use keepsake_device::{Agent, AgentConfig, AgentError, AgentStatus, Device, DeviceConfig, Edit};
use keepsake_library::{Cloud, KdfCost, Library, LibraryConfig};
use keepsake_store::{Clock, ManualClock, SeededEntropy, Store, StoreConfig, UnixMillis};
use keepsake_transport::auth::Authenticator;
use keepsake_transport::client::{self, BearerAuth};
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use keepsake_transport::server::{ServerConfig, Services, serve_connections};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The port the cloud listens on.
const PORT: u16 = 7000;

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// People use their devices while faults happen.
    Use,
    /// Faults healed: devices only sync, until they agree.
    Settle,
}

/// What a device shows of the library: (asset, favourite, hidden, trashed, albums).
pub(crate) type View = Vec<(String, bool, bool, bool, Vec<String>)>;

/// What the hosts and the referee share. The simulation runs on one thread; the lock only
/// satisfies the type system.
pub(crate) struct Shared {
    pub phase: Phase,
    pub trace: Vec<String>,
    /// Every photo taken or edited: its content hash and the device that made it.
    pub captured: BTreeMap<String, usize>,
    /// Contents a person edited away in place: the edit's content must reach the library,
    /// these need not (an edit made before the original synced replaces it).
    pub replaced: std::collections::BTreeSet<String>,
    /// Contents made by an edit in place.
    pub edited: std::collections::BTreeSet<String>,
    /// Files made with each content, by a camera or a person's copy: each is a photo of
    /// its own, so at most this many assets may have it.
    pub made: BTreeMap<String, u32>,
    /// Files whose content an edit in place (or an edit thrown away) took away: that many
    /// fewer assets may have it.
    pub edited_away: BTreeMap<String, u32>,
    /// Files deleted while another file had their bytes: the scan may pair the two as a
    /// move (a copy then a delete), one asset for both.
    pub deleted_beside_twin: BTreeMap<String, u32>,
    /// Files a person renamed or moved on the device that made them, by the device and
    /// the file's number: (its path now, its content). Their asset must end there.
    pub renamed: BTreeMap<(usize, u64), (String, String)>,
    /// Photos each device has taken so far (survives the device's restarts).
    pub taken: Vec<u64>,
    /// The newest acknowledged favourite edit of each asset: (stamp, value).
    pub favorites: BTreeMap<String, (keepsake_device::Hlc, bool)>,
    /// Consecutive passes each device made with nothing to do, since anyone last did something.
    pub quiet: Vec<u32>,
    /// What each device showed on its last quiet pass.
    pub views: Vec<Option<View>>,
    pub faults: Arc<Mutex<FaultCounts>>,
    /// Whether calls still suffer faults; off once the run settles.
    pub faults_on: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub fn new(devices: usize) -> Self {
        Self {
            phase: Phase::Use,
            trace: Vec::new(),
            captured: BTreeMap::new(),
            replaced: Default::default(),
            edited: Default::default(),
            made: BTreeMap::new(),
            edited_away: BTreeMap::new(),
            deleted_beside_twin: BTreeMap::new(),
            renamed: BTreeMap::new(),
            taken: vec![0; devices],
            favorites: BTreeMap::new(),
            quiet: vec![0; devices],
            views: vec![None; devices],
            faults: Arc::default(),
            faults_on: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub fn trace(&mut self, at_ms: u64, who: &str, what: String) {
        self.trace.push(format!("{at_ms:>7} {who:<8} {what}"));
    }

    pub fn trace_hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        for line in &self.trace {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// Every device made two passes with nothing to do since anyone last did something.
    pub fn all_quiet(&self) -> bool {
        self.quiet.iter().all(|q| *q >= 2)
    }

    pub fn unsettled(&self) -> String {
        let busy: Vec<String> = self
            .quiet
            .iter()
            .enumerate()
            .filter(|(_, q)| **q < 2)
            .map(|(i, _)| format!("device{i}"))
            .collect();
        busy.join(", ")
    }
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// Simulated wall time, optionally skewed the way a device's clock can be.
struct SimClock {
    skew_ms: i64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> UnixMillis {
        EPOCH_MS + now_ms() as i64 + self.skew_ms
    }
}

fn library_config() -> LibraryConfig {
    LibraryConfig {
        // Password hashing is not under test; a cheap cost keeps a seed fast.
        kdf: KdfCost {
            memory_kib: 64,
            iterations: 1,
        },
        ..LibraryConfig::default()
    }
}

/// The server's store and library, opened from the run's disk.
fn open_cloud(
    root: &Path,
    clock: Arc<dyn Clock>,
    entropy: SeededEntropy,
) -> anyhow::Result<(Arc<Store>, Cloud)> {
    let entropy = Arc::new(entropy);
    let store = Arc::new(Store::open_local(
        &root.join("cloud/store"),
        clock.clone(),
        entropy.clone(),
        StoreConfig::default(),
    )?);
    let library = Library::open(
        Some(root.join("cloud/library.sqlite")),
        clock,
        entropy,
        library_config(),
    )?;
    Ok((store.clone(), Cloud::new(library, store)?))
}

/// Creates the account and enrols the devices before the simulation starts; returns each
/// device's id and access token.
pub(crate) fn prepare_cloud(
    root: &Path,
    options: &SimOptions,
) -> anyhow::Result<Vec<(String, String)>> {
    let (_, cloud) = open_cloud(
        root,
        Arc::new(ManualClock::new(EPOCH_MS)),
        SeededEntropy::new(options.seed),
    )?;
    cloud.create_account(ACCOUNT, PASSWORD, None, false)?;
    (0..options.devices)
        .map(|i| {
            let e =
                cloud.enroll_device(ACCOUNT, PASSWORD, &format!("device{i}"), "sim", "99.0.0")?;
            Ok((e.device_id, e.access.token))
        })
        .collect()
}

/// A simulated TCP connection, as tonic's server wants to see one.
struct SimConn(turmoil::net::TcpStream);

impl tonic::transport::server::Connected for SimConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The cloud server's software: opens the store and library from disk and serves them,
/// with the maintenance loop `keepsake serve` runs.
pub(crate) async fn serve_cloud(
    root: PathBuf,
    seed: u64,
    restarts: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
) -> HostResult {
    // A restarted server must not draw the same "random" ids as before it crashed.
    let start = restarts.fetch_add(1, Ordering::Relaxed);
    let clock: Arc<dyn Clock> = Arc::new(SimClock { skew_ms: 0 });
    let entropy = SeededEntropy::new(seed ^ (start + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (store, cloud) = open_cloud(&root, clock.clone(), entropy)?;
    let cloud = Arc::new(cloud);
    shared
        .lock()
        .unwrap()
        .trace(now_ms(), CLOUD, format!("started (start {start})"));
    let auth = Authenticator::new(cloud.verifier(), clock, Default::default());
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| SimConn(stream));
        Some((next, listener))
    });
    let maintenance = {
        let cloud = cloud.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                if let Err(e) = cloud.maintain() {
                    tracing::warn!(error = %e, "maintenance failed");
                }
            }
        }
    };
    let mut config = ServerConfig::default();
    // Rate limits are tested elsewhere; here they would only slow the devices down.
    config.limits.calls_per_second = 1e6;
    config.limits.burst = 1e6;
    config.watch_poll = Duration::from_secs(1);
    let services = Services {
        store: Some(store),
        cloud: Some(cloud),
        delta: true,
        remote_store: None,
        ..Services::default()
    };
    tokio::select! {
        served = serve_connections(incoming, services, auth, config, std::future::pending()) => served?,
        () = maintenance => {}
    }
    Ok(())
}

/// One simulated phone: its folder, its journal, and a person using it.
#[derive(Clone)]
pub(crate) struct DeviceHost {
    pub index: usize,
    pub name: String,
    pub folder: PathBuf,
    pub data: PathBuf,
    pub device_id: String,
    pub token: String,
    pub skew_ms: i64,
    pub rng: Arc<Mutex<SimRng>>,
    pub shared: Arc<Mutex<Shared>>,
}

/// The content of photo `n` of device `index`: unique, and the same in every run.
pub(crate) fn photo(index: usize, n: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new_derive_key("keepsake sim photo")
        .update(&(index as u64).to_le_bytes())
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut data);
    data
}

impl DeviceHost {
    fn trace(&self, what: String) {
        self.shared
            .lock()
            .unwrap()
            .trace(now_ms(), &self.name, what);
    }

    fn roll(&self, n: u64) -> u64 {
        self.rng.lock().unwrap().below(n)
    }

    /// The device's software, from its start (after power-on or a crash) onwards.
    pub async fn run(self) -> HostResult {
        std::fs::create_dir_all(&self.folder)?;
        std::fs::create_dir_all(&self.data)?;
        let channel = client::tuned(tonic::transport::Endpoint::from_static("http://cloud:7000"))
            .connect_with_connector_lazy(tower::service_fn(|_: tonic::transport::Uri| async {
                let stream = turmoil::net::TcpStream::connect((CLOUD, PORT)).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }));
        let client = CloudClient::new(
            channel,
            BearerAuth::new(&self.token),
            ClientConfig {
                call_timeout: Duration::from_secs(3),
                stream_timeout: Duration::from_secs(30),
                stall_timeout: Duration::from_secs(3),
                ..ClientConfig::default()
            },
        );
        let (counts, on) = {
            let s = self.shared.lock().unwrap();
            (s.faults.clone(), s.faults_on.clone())
        };
        let cloud = Faulty::new(client, self.rng.clone(), counts, on);
        let mut config = DeviceConfig::new(
            self.folder.clone(),
            self.data.clone(),
            self.device_id.clone(),
        );
        config.stable_ms = 0;
        // The simulation's photos are 1–201 KB: streaming the larger half (as a phone
        // streams its videos) puts that path under the same crashes and faults, and
        // downloads of them come in batches of a chunk or two.
        config.streamed_from = 100_000;
        // The third phone's folder is on a memory card: it folds case and Unicode and
        // refuses what exFAT refuses, as the library's numbering must allow for.
        if self.index == 2 {
            config.fs = keepsake_device::FsRules::memory_card();
        }
        config.stream_batch_bytes = 64 << 10;
        let clock = Arc::new(SimClock {
            skew_ms: self.skew_ms,
        });
        let device = Device::open(config, cloud, clock)?;
        // The real agent loop around the engine: its status, ledger reports, back-off and
        // failure handling run under the same crashes and faults. The simulation paces
        // the passes itself (a person's actions come between them).
        let host = SimHost {
            shared: self.shared.clone(),
            name: self.name.clone(),
        };
        let config = AgentConfig {
            interval: Duration::from_secs(3600),
            once: false,
        };
        let status = Arc::new(std::sync::Mutex::new(AgentStatus::default()));
        let mut agent = Agent::new(device, host, config, status);
        self.trace("started".into());
        loop {
            let phase = self.shared.lock().unwrap().phase;
            match phase {
                Phase::Use => self.act(&mut agent).await?,
                Phase::Settle => self.settle(&mut agent).await?,
            }
            let pause = 20 + self.roll(300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// One thing a person (or the sync agent) does.
    async fn act(&self, agent: &mut SimAgent) -> HostResult {
        let choice = self.roll(100);
        match choice {
            0..=24 => {
                let n = {
                    let mut s = self.shared.lock().unwrap();
                    s.taken[self.index] += 1;
                    s.taken[self.index]
                };
                let len = 1_000 + self.roll(200_000) as usize;
                let data = photo(self.index, n, len);
                let name = format!("IMG_{}_{n:04}.JPG", self.index);
                let hash = blake3::hash(&data).to_hex().to_string();
                self.write_in(&name, &data)?;
                let mut s = self.shared.lock().unwrap();
                s.captured.insert(hash.clone(), self.index);
                *s.made.entry(hash.clone()).or_default() += 1;
                s.trace(now_ms(), &self.name, format!("took {name} {}", &hash[..8]));
            }
            25..=52 => {
                self.sync(agent).await;
            }
            53..=55 => {
                // A person copies one of this camera's photos under another name, in a
                // folder: the same bytes, a photo of its own.
                let Some((name, data)) = self.one_of_mine()? else {
                    return Ok(());
                };
                let hash = blake3::hash(&data).to_hex().to_string();
                if !self.shared.lock().unwrap().captured.contains_key(&hash) {
                    return Ok(());
                }
                // Names that differ only in case: the library numbers the later of two
                // copies, as a case-insensitive file system would need.
                let copy = format!(
                    "copies/{} of {name}",
                    ["copy", "Copy", "COPY"][self.roll(3) as usize]
                );
                if self.folder.join(&copy).exists() {
                    return Ok(());
                }
                std::fs::create_dir_all(self.folder.join("copies"))?;
                self.write_in(&copy, &data)?;
                let mut s = self.shared.lock().unwrap();
                *s.made.entry(hash.clone()).or_default() += 1;
                s.trace(
                    now_ms(),
                    &self.name,
                    format!("copied {name} to {copy} {}", &hash[..8]),
                );
            }
            56..=59 => {
                // A person renames one of this camera's photos, or moves it into a folder,
                // or renames a file they renamed before.
                let renamed: Vec<(u64, String)> = {
                    let s = self.shared.lock().unwrap();
                    s.renamed
                        .iter()
                        .filter(|((device, _), _)| *device == self.index)
                        .map(|((_, n), (path, _))| (*n, path.clone()))
                        .collect()
                };
                let (n, from) = match self.roll(3) {
                    0 if !renamed.is_empty() => {
                        renamed[self.roll(renamed.len() as u64) as usize].clone()
                    }
                    _ => match self.one_of_mine()? {
                        Some((name, _)) => {
                            let n = name
                                .trim_start_matches(&format!("IMG_{}_", self.index))
                                .trim_end_matches(".JPG")
                                .parse()
                                .unwrap_or(0);
                            (n, name)
                        }
                        None => return Ok(()),
                    },
                };
                let Ok(data) = std::fs::read(self.folder.join(&from)) else {
                    return Ok(()); // moved or deleted by the sync meanwhile
                };
                let hash = blake3::hash(&data).to_hex().to_string();
                let to = match self.roll(3) {
                    0 => format!("renamed {}-{n}.jpg", self.index),
                    1 => format!("trip {}/renamed {}-{n}.jpg", self.roll(2), self.index),
                    _ => format!("2026/{}/day {}-{n}.jpg", self.roll(3), self.index),
                };
                if to == from || self.folder.join(&to).exists() {
                    return Ok(());
                }
                if let Some(parent) = std::path::Path::new(&to).parent() {
                    std::fs::create_dir_all(self.folder.join(parent))?;
                }
                std::fs::rename(self.folder.join(&from), self.folder.join(&to))?;
                let mut s = self.shared.lock().unwrap();
                s.renamed
                    .insert((self.index, n), (to.clone(), hash.clone()));
                s.trace(
                    now_ms(),
                    &self.name,
                    format!("renamed {from} to {to} {}", &hash[..8]),
                );
            }
            60..=71 => {
                if let Some(asset) = self.pick(agent.device(), |a| !a.trashed)? {
                    let value = !asset.favorite;
                    let stamp = agent.device_mut().edit(Edit::Favorite {
                        asset_id: asset.asset_id.clone(),
                        value,
                    })?;
                    let mut s = self.shared.lock().unwrap();
                    let newer = s
                        .favorites
                        .get(&asset.asset_id)
                        .is_none_or(|(known, _)| *known < stamp);
                    if newer {
                        s.favorites
                            .insert(asset.asset_id.clone(), (stamp.clone(), value));
                    }
                    s.trace(
                        now_ms(),
                        &self.name,
                        format!(
                            "favourite {} = {value} at {}",
                            asset.asset_id, stamp.wall_ms
                        ),
                    );
                }
            }
            72..=77 => {
                if let Some(asset) = self.pick(agent.device(), |a| !a.trashed)? {
                    let album_id = format!("album-{}", self.index);
                    if !agent
                        .device()
                        .albums()?
                        .iter()
                        .any(|a| a.album_id == album_id)
                    {
                        agent.device_mut().edit(Edit::PutAlbum {
                            album_id: album_id.clone(),
                            name: format!("Trip {}", self.index),
                        })?;
                    }
                    let present = self.roll(4) != 0;
                    agent.device_mut().edit(Edit::AlbumMember {
                        album_id: album_id.clone(),
                        asset_id: asset.asset_id.clone(),
                        present,
                    })?;
                    self.trace(format!("album {album_id} {} {present}", asset.asset_id));
                }
            }
            78..=83 => {
                // A person deletes a photo in the Photos app: the file goes.
                if let Some(asset) = self.pick(agent.device(), |a| !a.trashed)? {
                    let path = self.folder.join(&asset.name);
                    if path.exists() {
                        self.throw_away_unsynced_edit(&path);
                        if let Ok(data) = std::fs::read(&path) {
                            // Deleted while a copy not yet seen by the scan has its bytes:
                            // to the device, a copy then a delete is a move.
                            let hash = blake3::hash(&data).to_hex().to_string();
                            let mut s = self.shared.lock().unwrap();
                            if s.made.get(&hash).is_some_and(|made| *made > 1) {
                                *s.deleted_beside_twin.entry(hash).or_default() += 1;
                            }
                        }
                        std::fs::remove_file(&path)?;
                        // A renamed file deleted: its asset may never hear of the rename.
                        let mut s = self.shared.lock().unwrap();
                        s.renamed
                            .retain(|_, (renamed_to, _)| *renamed_to != asset.name);
                        drop(s);
                        self.trace(format!("deleted {} ({})", asset.name, asset.asset_id));
                    }
                }
            }
            84..=87 => {
                if let Some(asset) = self.pick(agent.device(), |a| !a.trashed)? {
                    self.throw_away_unsynced_edit(&self.folder.join(&asset.name));
                    agent.device_mut().edit(Edit::Trash {
                        asset_id: asset.asset_id.clone(),
                        alone: false,
                    })?;
                    self.trace(format!("trash {}", asset.asset_id));
                }
            }
            88..=92 => {
                if let Some(asset) = self.pick(agent.device(), |a| a.trashed)? {
                    agent.device_mut().edit(Edit::Restore {
                        asset_id: asset.asset_id.clone(),
                    })?;
                    self.trace(format!("restore {}", asset.asset_id));
                }
            }
            93..=96 => {
                // A photo app rewrites the date of a photo this camera took, in place.
                let Some((name, mut data)) = self.one_of_mine()? else {
                    return Ok(()); // none yet, or the sync just moved it
                };
                let before = blake3::hash(&data).to_hex().to_string();
                if !self.shared.lock().unwrap().captured.contains_key(&before) {
                    return Ok(());
                }
                let at = self.roll((data.len() - 19) as u64) as usize;
                let stamp = format!(
                    "2025:{:02}:{:02} 08:30:00",
                    1 + self.roll(12),
                    1 + self.roll(28)
                );
                data[at..at + 19].copy_from_slice(stamp.as_bytes());
                let after = blake3::hash(&data).to_hex().to_string();
                self.write_in(&name, &data)?;
                let mut s = self.shared.lock().unwrap();
                s.replaced.insert(before.clone());
                *s.edited_away.entry(before.clone()).or_default() += 1;
                *s.made.entry(after.clone()).or_default() += 1;
                s.edited.insert(after.clone());
                s.captured.insert(after.clone(), self.index);
                s.trace(
                    now_ms(),
                    &self.name,
                    format!("edited {name} {} -> {}", &before[..8], &after[..8]),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes a photo as camera and photo apps do: beside the folder, stamped with the
    /// device's (simulated) clock, then renamed in.
    fn write_in(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let part = self.data.join(format!("{}.part", name.replace('/', "_")));
        std::fs::write(&part, data)?;
        let now = std::time::UNIX_EPOCH
            + Duration::from_millis((EPOCH_MS + now_ms() as i64 + self.skew_ms) as u64);
        std::fs::File::options()
            .write(true)
            .open(&part)?
            .set_modified(now)?;
        std::fs::rename(&part, self.folder.join(name))
    }

    /// A person deleting a photo they edited before the edit synced throws the edit away:
    /// Recently Deleted keeps the version the library has.
    fn throw_away_unsynced_edit(&self, path: &std::path::Path) {
        let Ok(data) = std::fs::read(path) else {
            return;
        };
        let hash = blake3::hash(&data).to_hex().to_string();
        let mut s = self.shared.lock().unwrap();
        if s.edited.contains(&hash) {
            *s.edited_away.entry(hash.clone()).or_default() += 1;
            s.replaced.insert(hash);
        }
    }

    /// One of the photos this camera took, still at the top of its folder under the
    /// camera's name, and its bytes.
    fn one_of_mine(&self) -> std::io::Result<Option<(String, Vec<u8>)>> {
        let mut mine: Vec<String> = std::fs::read_dir(&self.folder)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("IMG_{}_", self.index)))
            .collect();
        mine.sort();
        if mine.is_empty() {
            return Ok(None);
        }
        let name = mine.swap_remove(self.roll(mine.len() as u64) as usize);
        Ok(std::fs::read(self.folder.join(&name))
            .ok()
            .map(|data| (name, data)))
    }

    fn pick(
        &self,
        device: &Device<Faulty<CloudClient>>,
        wanted: impl Fn(&keepsake_device::LocalAsset) -> bool,
    ) -> Result<Option<keepsake_device::LocalAsset>, keepsake_device::DeviceError> {
        let mut assets: Vec<_> = device.assets()?.into_iter().filter(wanted).collect();
        if assets.is_empty() {
            return Ok(None);
        }
        let at = self.roll(assets.len() as u64) as usize;
        Ok(Some(assets.swap_remove(at)))
    }

    /// One sync pass; returns whether it did anything.
    async fn sync(&self, agent: &mut SimAgent) -> bool {
        let passed = match agent.pass().await {
            Ok(passed) => passed,
            Err(e) => {
                self.trace(format!("agent stopped: {e}"));
                return true;
            }
        };
        match (passed.report, passed.failure) {
            (Some(r), _) => {
                let work = r.uploaded
                    + r.linked
                    + r.downloaded
                    + r.trashed_here
                    + r.trashed_remotely
                    + r.restored
                    + r.purged
                    + r.edits_sent
                    + r.edits_dropped
                    + r.kept_apart
                    + r.renames_sent
                    + r.renamed_here
                    + r.restored_by_return;
                self.trace(format!(
                    "sync up={} linked={} down={} trashed={}/{} restored={} edits={} renamed={}/{} blocked={:?}",
                    r.uploaded,
                    r.linked,
                    r.downloaded,
                    r.trashed_here,
                    r.trashed_remotely,
                    r.restored,
                    r.edits_sent,
                    r.renames_sent,
                    r.renamed_here,
                    r.blocked
                ));
                work > 0 || r.blocked.is_some()
            }
            (None, failure) => {
                self.trace(format!("sync failed: {}", failure.unwrap_or_default()));
                true
            }
        }
    }

    /// After the faults heal: sync, and report a pass with nothing to do.
    async fn settle(&self, agent: &mut SimAgent) -> HostResult {
        let busy = self.sync(agent).await
            || agent.device().pending_files()? > 0
            || agent.device().pending_edits()? > 0;
        let device = agent.device();
        let mut s = self.shared.lock().unwrap();
        if busy {
            s.quiet.iter_mut().for_each(|q| *q = 0);
            return Ok(());
        }
        s.quiet[self.index] += 1;
        let mut view: View = device
            .assets()?
            .into_iter()
            .map(|a| {
                let mut albums = a.albums;
                albums.sort();
                (a.asset_id, a.favorite, a.hidden, a.trashed, albums)
            })
            .collect();
        view.sort();
        s.views[self.index] = Some(view);
        Ok(())
    }
}

/// A simulated device's agent: the real loop, on a simulated machine.
type SimAgent = Agent<Faulty<CloudClient>, SimHost>;

/// The simulated machine under the agent: no policy (conditions are tested elsewhere),
/// tokens that outlive the run, and every line the agent says in the trace.
struct SimHost {
    shared: Arc<Mutex<Shared>>,
    name: String,
}

impl keepsake_device::Host<Faulty<CloudClient>> for SimHost {
    async fn conditions(
        &mut self,
        _blocked: Option<&str>,
        _cloud: &mut Faulty<CloudClient>,
    ) -> Result<Option<keepsake_policy::Snapshot>, AgentError> {
        Ok(None)
    }

    fn optimize_budget(&mut self) -> Result<Option<u64>, AgentError> {
        Ok(None)
    }

    async fn reauthenticate(&mut self, _cloud: &mut Faulty<CloudClient>) -> Result<(), AgentError> {
        Err(AgentError::Host(
            "a simulated device's token never expires".into(),
        ))
    }

    fn say(&mut self, line: &str) {
        self.shared
            .lock()
            .unwrap()
            .trace(now_ms(), &self.name, format!("agent: {line}"));
    }

    fn save_status(&mut self, _status: &AgentStatus) {}
}
