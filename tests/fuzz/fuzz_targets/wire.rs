//! Proto messages become domain values only through the boundary conversions: any bytes
//! that prost accepts convert or are refused, never panic.
#![no_main]

use keepsake_proto::v1 as pb;
use keepsake_transport::convert::{WireManifest, WireSnapshot, commit_from_wire};
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = pb::Manifest::decode(data) {
        let _ = WireManifest::try_from(m);
    }
    if let Ok(s) = pb::Snapshot::decode(data) {
        let _ = WireSnapshot::try_from(s);
    }
    if let Ok(c) = pb::CommitAssetRequest::decode(data) {
        let _ = commit_from_wire(c, "fuzz-device".into());
    }
});
