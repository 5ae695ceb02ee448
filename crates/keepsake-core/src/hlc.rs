//! Hybrid logical clocks: per-field last-writer-wins without trusting wall clocks alone.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A hybrid logical clock reading: wall time, a counter for events in the same
/// millisecond, and the device that made it (breaks exact ties).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the device saw them (never below what it received).
    pub wall_ms: i64,
    /// Orders events within one millisecond.
    pub counter: u32,
    /// The device that made the change.
    pub device: String,
}

impl Hlc {
    /// The clock before every real reading.
    pub fn zero() -> Self {
        Self {
            wall_ms: 0,
            counter: 0,
            device: String::new(),
        }
    }

    /// A fixed-width text form whose byte order is the clock order (for SQLite columns).
    pub fn encode(&self) -> String {
        format!(
            "{:016x}{:08x}{}",
            self.wall_ms.max(0) as u64,
            self.counter,
            self.device
        )
    }

    /// Parses [`Hlc::encode`].
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() < 24 || !text.is_char_boundary(24) {
            return None;
        }
        Some(Self {
            wall_ms: i64::from_str_radix(&text[..16], 16).ok()?,
            counter: u32::from_str_radix(&text[16..24], 16).ok()?,
            device: text[24..].to_string(),
        })
    }

    /// The next reading on `device` after `self`, given its wall clock `now_ms`.
    pub fn tick(&self, now_ms: i64, device: &str) -> Self {
        if now_ms > self.wall_ms {
            Self {
                wall_ms: now_ms,
                counter: 0,
                device: device.to_string(),
            }
        } else {
            Self {
                wall_ms: self.wall_ms,
                counter: self.counter + 1,
                device: device.to_string(),
            }
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.counter, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encoding_preserves_order(a in (0i64..1 << 50, any::<u32>(), "[a-z]{0,6}"), b in (0i64..1 << 50, any::<u32>(), "[a-z]{0,6}")) {
            let a = Hlc { wall_ms: a.0, counter: a.1, device: a.2 };
            let b = Hlc { wall_ms: b.0, counter: b.1, device: b.2 };
            prop_assert_eq!(a.cmp(&b), a.encode().cmp(&b.encode()));
            prop_assert_eq!(Hlc::decode(&a.encode()), Some(a));
        }
    }

    #[test]
    fn tick_is_monotonic_even_when_the_wall_clock_goes_back() {
        let a = Hlc::zero().tick(1000, "d");
        let b = a.tick(900, "d");
        assert!(b > a);
        assert!(b.tick(2000, "d") > b);
    }
}
