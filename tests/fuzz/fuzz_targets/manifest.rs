//! Manifests arrive from devices (PutManifest) and from other stores: decoding any bytes
//! never panics, and what decodes is canonical — it re-encodes to exactly those bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = keepsake_core::Manifest::decode(data) {
        assert_eq!(manifest.encode(), data, "a non-canonical manifest decoded");
        let _ = manifest.validate(1 << 16, 16 << 20);
    }
});
