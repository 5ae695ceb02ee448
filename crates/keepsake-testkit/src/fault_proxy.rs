//! A TCP proxy that misbehaves on purpose, for tests: it cuts connections at chosen
//! byte offsets (with a reset, as a dropped mobile link does), delays every read, and
//! stalls — forwarding nothing for a while — the way trains, lifts and hotel Wi-Fi do.
//!
//! Every decision comes from a seeded generator, so a failing schedule replays exactly.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use keepsake_testkit::fault_proxy::{FaultProxy, Schedule};
//! let proxy = FaultProxy::start(server, Schedule::random(7)).await?;
//! let url = proxy.url(); // point the client here instead of at the server
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// SplitMix64: tiny, seedable, and good enough to pick offsets and delays.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What happens to the bytes of one direction of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Reset the connection once this many bytes went this way.
    pub cut_at: Option<u64>,
    /// Wait this long before forwarding each read.
    pub delay: Duration,
    /// Forward nothing for `.1` once `.0` bytes went this way.
    pub stall: Option<(u64, Duration)>,
}

/// How the proxy treats connections, decided per connection from a seed.
#[derive(Debug, Clone)]
pub struct Schedule {
    seed: u64,
    /// Percent of connections (per direction) that are cut.
    pub cut_percent: u64,
    /// Cuts and stalls happen within this many bytes of a connection's start.
    pub within_bytes: u64,
    /// Percent of connections (per direction) whose reads are delayed.
    pub delay_percent: u64,
    /// The longest delay per read.
    pub max_delay: Duration,
    /// Percent of connections (per direction) that stall.
    pub stall_percent: u64,
    /// How long a stall lasts.
    pub stall_for: Duration,
}

impl Schedule {
    /// A schedule that forwards faithfully.
    pub fn clean() -> Self {
        Self {
            seed: 0,
            cut_percent: 0,
            within_bytes: 0,
            delay_percent: 0,
            max_delay: Duration::ZERO,
            stall_percent: 0,
            stall_for: Duration::ZERO,
        }
    }

    /// Cuts, delays and stalls drawn from `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = Rng(seed);
        Self {
            seed,
            cut_percent: 20 + rng.below(40),
            within_bytes: 16 << 10 << rng.below(5),
            delay_percent: rng.below(50),
            max_delay: Duration::from_millis(1 + rng.below(20)),
            stall_percent: rng.below(30),
            stall_for: Duration::from_millis(500 + rng.below(3000)),
        }
    }

    /// The faults of direction `direction` (0 = to the server) of connection `index`.
    pub fn faults(&self, index: u64, direction: u64) -> Faults {
        let mut rng = Rng(self.seed ^ index.wrapping_mul(0x100_0000_01B3) ^ (direction << 63));
        let cut = rng.chance(self.cut_percent);
        let cut_at = rng.below(self.within_bytes.max(1));
        let delayed = rng.chance(self.delay_percent);
        let delay = Duration::from_micros(rng.below(self.max_delay.as_micros() as u64 + 1));
        let stalled = rng.chance(self.stall_percent);
        let stall_at = rng.below(self.within_bytes.max(1));
        Faults {
            cut_at: cut.then_some(cut_at),
            delay: if delayed { delay } else { Duration::ZERO },
            stall: stalled.then_some((stall_at, self.stall_for)),
        }
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections cut on purpose.
    pub cuts: AtomicU64,
    /// Stalls begun.
    pub stalls: AtomicU64,
    /// Bytes forwarded towards the server.
    pub bytes_up: AtomicU64,
    /// Bytes forwarded towards the client.
    pub bytes_down: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    down: Arc<AtomicBool>,
    cut_all: watch::Sender<u64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream` under `schedule`.
    pub async fn start(upstream: SocketAddr, schedule: Schedule) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let down = Arc::new(AtomicBool::new(false));
        let (cut_all, cut_rx) = watch::channel(0u64);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (s, d) = (stats.clone(), down.clone());
        tokio::spawn(async move {
            let mut index = 0u64;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stopped => return,
                };
                let Ok((client, _)) = accepted else { continue };
                if d.load(Ordering::SeqCst) {
                    reset_on_close(&client);
                    continue;
                }
                s.connections.fetch_add(1, Ordering::Relaxed);
                let (up, downward) = (schedule.faults(index, 0), schedule.faults(index, 1));
                index += 1;
                let (stats, cut_rx) = (s.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    relay(client, server, up, downward, stats, cut_rx).await;
                });
            }
        });
        Ok(Self {
            addr,
            stats,
            down,
            cut_all,
            _stop: stop,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it did so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    /// Resets every open connection now (the network went away).
    pub fn cut_all(&self) {
        self.cut_all.send_modify(|n| *n += 1);
    }

    /// While down, new connections are reset at once; open ones are cut.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut_all();
        }
    }
}

/// Linger 0: closing sends a reset at once (and never blocks, unlike a non-zero linger).
fn reset_on_close(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    up: Faults,
    down: Faults,
    stats: Arc<ProxyStats>,
    mut cut_all: watch::Receiver<u64>,
) {
    for socket in [&client, &server] {
        let _ = socket.set_nodelay(true);
        // A cut then looks like a dropped link, not a polite end.
        reset_on_close(socket);
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upward = pump(client_read, server_write, up, stats.clone(), true);
    let downward = pump(server_read, client_write, down, stats.clone(), false);
    tokio::pin!(upward, downward);
    cut_all.mark_unchanged();
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let cut = tokio::select! {
            r = &mut upward, if !up_done => { up_done = true; r.is_some() }
            r = &mut downward, if !down_done => { down_done = true; r.is_some() }
            _ = cut_all.changed() => true,
        };
        if cut {
            stats.cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    // Returning drops both pumps and with them every half of both sockets.
}

/// Copies one direction under its faults; `Some(())` when it cut the connection.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Faults,
    stats: Arc<ProxyStats>,
    upward: bool,
) -> Option<()> {
    let mut buf = vec![0u8; 16 << 10];
    let mut sent = 0u64;
    let mut stall = faults.stall;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return None;
            }
            Ok(n) => n,
        };
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        let mut slice = &buf[..n];
        if let Some(cut_at) = faults.cut_at
            && sent + slice.len() as u64 >= cut_at
        {
            let keep = (cut_at - sent) as usize;
            let _ = to.write_all(&slice[..keep]).await;
            return Some(());
        }
        if let Some((at, how_long)) = stall
            && sent + slice.len() as u64 >= at
        {
            let keep = (at - sent) as usize;
            let _ = to.write_all(&slice[..keep]).await;
            sent += keep as u64;
            slice = &slice[keep..];
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(how_long).await;
            stall = None;
        }
        if to.write_all(slice).await.is_err() {
            return None;
        }
        sent += slice.len() as u64;
        let counter = if upward {
            &stats.bytes_up
        } else {
            &stats.bytes_down
        };
        counter.fetch_add(slice.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_replays_exactly_from_its_seed() {
        let (a, b) = (Schedule::random(42), Schedule::random(42));
        for index in 0..50 {
            assert_eq!(a.faults(index, 0), b.faults(index, 0));
            assert_eq!(a.faults(index, 1), b.faults(index, 1));
        }
        let differs = (0..50).any(|i| Schedule::random(43).faults(i, 0) != a.faults(i, 0));
        assert!(differs, "another seed gives another schedule");
    }
}
