//! Bandwidth limits for a device's transfers: a token bucket per direction (governor), so
//! a first sync does not saturate a home uplink. Bytes wait for their tokens before they
//! are sent, and after they are received (which slows the reading, and TCP the sender).
//! Shared by every clone of a [`crate::cloud_client::CloudClient`] (its lanes), and
//! changeable while transfers run (the owner's settings are read every pass).

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

/// Limits in bytes per second; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Uploads, bytes per second.
    pub upload: Option<u64>,
    /// Downloads, bytes per second.
    pub download: Option<u64>,
}

/// The slowest limit taken (below it a chunk would take minutes to move and stall).
pub const MIN_LIMIT: u64 = 16 << 10;

struct Bucket {
    rate: u64,
    limiter: DefaultDirectRateLimiter,
}

/// The rate a bucket runs at for a limit asked: between the floor and what governor counts.
fn effective(rate: u64) -> u64 {
    rate.clamp(MIN_LIMIT, u64::from(u32::MAX))
}

impl Bucket {
    fn new(rate: u64) -> Self {
        let rate = effective(rate);
        let per_second = NonZeroU32::new(rate as u32).expect("clamped above zero");
        // A second's worth may go at once; a longer request waits for it piece by piece.
        Self {
            rate,
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
        }
    }

    async fn take(&self, bytes: usize) {
        let mut left = bytes as u64;
        while left > 0 {
            let piece = left.min(self.rate);
            let n = NonZeroU32::new(piece as u32).expect("piece is at least one byte");
            // Never more than the burst, so the only error (n over capacity) cannot happen.
            let _ = self.limiter.until_n_ready(n).await;
            left -= piece;
        }
    }
}

/// The upload bucket and the download bucket, each only while limited.
type Buckets = (Option<Arc<Bucket>>, Option<Arc<Bucket>>);

/// The buckets in force now, both directions.
#[derive(Clone, Default)]
pub struct Throttle {
    buckets: Arc<RwLock<Buckets>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("limits", &self.limits())
            .finish()
    }
}

impl Throttle {
    /// Sets the limits; a limit that did not change keeps its bucket (and what it owes).
    pub fn set(&self, limits: Limits) {
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        let keep = |old: &Option<Arc<Bucket>>, want: Option<u64>| match (old, want) {
            (Some(b), Some(rate)) if b.rate == effective(rate) => Some(b.clone()),
            (_, Some(rate)) => Some(Arc::new(Bucket::new(rate))),
            (_, None) => None,
        };
        *buckets = (
            keep(&buckets.0, limits.upload),
            keep(&buckets.1, limits.download),
        );
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        Limits {
            upload: buckets.0.as_ref().map(|b| b.rate),
            download: buckets.1.as_ref().map(|b| b.rate),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn sending(&self, bytes: usize) {
        let bucket = self.bucket(|b| &b.0);
        if let Some(bucket) = bucket {
            bucket.take(bytes).await;
        }
    }

    /// Waits until `bytes` just received may be taken in.
    pub async fn received(&self, bytes: usize) {
        let bucket = self.bucket(|b| &b.1);
        if let Some(bucket) = bucket {
            bucket.take(bytes).await;
        }
    }

    fn bucket(&self, which: impl Fn(&Buckets) -> &Option<Arc<Bucket>>) -> Option<Arc<Bucket>> {
        which(&self.buckets.read().unwrap_or_else(|e| e.into_inner())).clone()
    }
}

/// "500k", "2M", "1.5MB", "800 KB/s", "250000" → bytes per second (k = 1,000); "off",
/// "none" or "0" → no limit.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("/s").trim_end_matches("ps").trim();
    if matches!(t, "off" | "none" | "0" | "") {
        return Ok(None);
    }
    let t = t.trim_end_matches('b').trim_end();
    let (number, scale) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 500k, 2M or 1.5MB (bytes a second)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a rate"));
    }
    let bytes = (value * scale).round() as u64;
    if bytes < MIN_LIMIT {
        return Err(format!(
            "{text:?} is under the slowest limit, {} kB/s",
            MIN_LIMIT / 1000
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(parse_rate("500k"), Ok(Some(500_000)));
        assert_eq!(parse_rate("2M"), Ok(Some(2_000_000)));
        assert_eq!(parse_rate("1.5MB"), Ok(Some(1_500_000)));
        assert_eq!(parse_rate("800 KB/s"), Ok(Some(800_000)));
        assert_eq!(parse_rate("250000"), Ok(Some(250_000)));
        assert_eq!(parse_rate("off"), Ok(None));
        assert_eq!(parse_rate("0"), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-3M").is_err());
        assert!(parse_rate("1k").is_err(), "under the floor");
    }

    #[tokio::test]
    async fn a_limit_holds_the_rate_and_a_changed_one_applies_at_once() {
        let throttle = Throttle::default();
        throttle.set(Limits {
            upload: Some(200_000),
            download: None,
        });
        let start = std::time::Instant::now();
        // A second's burst, then 400 kB more at 200 kB/s: about two seconds, never less.
        for _ in 0..6 {
            throttle.sending(100_000).await;
        }
        let took = start.elapsed();
        assert!(took >= std::time::Duration::from_millis(1_900), "{took:?}");
        // Downloads were not limited.
        let start = std::time::Instant::now();
        throttle.received(10_000_000).await;
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
        throttle.set(Limits::default());
        assert_eq!(throttle.limits(), Limits::default());
        let start = std::time::Instant::now();
        throttle.sending(10_000_000).await;
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }
}
