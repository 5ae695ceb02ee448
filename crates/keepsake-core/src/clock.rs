//! Injected time and randomness, so a simulation can replay any run exactly.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;
}

/// The operating system's wall clock; only binaries should construct it.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests and simulation).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self(AtomicI64::new(start))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A source of unpredictable bytes (session ids, pack names).
pub trait Entropy: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's random number generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        getrandom::fill(buf).expect("the operating system's RNG is available");
    }
}

/// A deterministic stream: BLAKE3 in extendable-output mode over (seed, counter).
#[derive(Debug)]
pub struct SeededEntropy {
    seed: [u8; 32],
    counter: Mutex<u64>,
}

impl SeededEntropy {
    /// A stream determined entirely by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed: *blake3::hash(&seed.to_le_bytes()).as_bytes(),
            counter: Mutex::new(0),
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut counter = self.counter.lock().expect("entropy lock");
        let mut hasher = blake3::Hasher::new_keyed(&self.seed);
        hasher.update(&counter.to_le_bytes());
        *counter += 1;
        hasher.finalize_xof().fill(buf);
    }
}

/// A random lower-case hex string of `bytes` random bytes.
pub fn random_hex(entropy: &dyn Entropy, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    entropy.fill(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_replays_and_differs_by_seed() {
        let a = SeededEntropy::new(7);
        let b = SeededEntropy::new(7);
        let c = SeededEntropy::new(8);
        let (x, y, z) = (random_hex(&a, 16), random_hex(&b, 16), random_hex(&c, 16));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(random_hex(&a, 16), x, "successive draws differ");
    }
}
