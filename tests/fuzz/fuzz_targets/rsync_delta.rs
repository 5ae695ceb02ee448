//! rsync deltas and signatures arrive from devices: applying or reading any bytes never
//! panics, never grows past the limits, and nothing is accepted that does not hash to what
//! was declared.
#![no_main]

use keepsake_delta::rsync::{RsyncLimits, apply, delta};
use keepsake_core::ChunkId;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (base, patch) = rest.split_at(usize::from(split).min(rest.len()));
    let limits = RsyncLimits {
        max_file_bytes: 1 << 20,
        max_delta_bytes: 1 << 20,
        ..RsyncLimits::default()
    };
    let declared = ChunkId::of(base);
    if let Ok(rebuilt) = apply(base, patch, &declared, &limits) {
        assert_eq!(ChunkId::of(&rebuilt), declared);
    }
    // The same bytes read as a signature against which `base` is described.
    let _ = delta(patch, base, &limits);
});
