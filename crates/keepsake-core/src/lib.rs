//! Keepsake's shared vocabulary, the words every other crate uses to talk about
//! content and time: [`ChunkId`] (a BLAKE3 content address), [`Manifest`] (a file
//! as its chunks, and the [`Splice`]s that edit one), [`Clock`] and [`Entropy`]
//! (injected, so any run can be replayed), and [`Hlc`], the one hybrid logical clock
//! that orders metadata changes across devices.
//!
//! It is a leaf: no I/O, no database, no async runtime — except [`offload`], behind
//! the `offload` feature, for crates that do blocking work under tokio. So the delta
//! engine can be pure and still speak the store's language.
//!
//! ```
//! use keepsake_core::{ChunkId, Hlc, Manifest, ManifestEntry};
//!
//! let chunk = ChunkId::of(b"hello");
//! let manifest = Manifest::new(vec![ManifestEntry { chunk, len: 5 }], chunk);
//! assert_eq!(Manifest::decode(&manifest.encode())?, manifest);
//!
//! let first = Hlc::zero().tick(1_000, "phone");
//! let second = first.tick(900, "laptop"); // the laptop's wall clock is behind
//! assert!(second > first);
//! # Ok::<(), keepsake_core::Malformed>(())
//! ```

mod clock;
mod error;
mod hlc;
mod id;
mod manifest;
#[cfg(feature = "offload")]
mod offload;

pub use clock::{
    Clock, Entropy, ManualClock, OsEntropy, SeededEntropy, SystemClock, UnixMillis, random_hex,
};
pub use error::Malformed;
pub use hlc::Hlc;
pub use id::{ChunkId, ManifestId};
pub use manifest::{Manifest, ManifestEntry, Splice};
#[cfg(feature = "offload")]
pub use offload::{OwnRuntime, offload, on_one_thread};
