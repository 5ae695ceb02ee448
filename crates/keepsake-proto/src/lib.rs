//! Generated prost/tonic code for Keepsake's gRPC contract (`proto/keepsake/v1`).
//!
//! Nothing here is written by hand: `cargo xtask codegen` regenerates
//! `src/generated/` from `proto/` with protox, and a test in xtask fails when the
//! committed code is stale. Only `keepsake-transport` and the binary depend on
//! this crate; domain crates never see prost types.
//!
//! ```
//! use keepsake_proto::v1::{Chunk, chunk_store_client::ChunkStoreClient};
//! let chunk = Chunk { id: vec![0; 32].into(), data: b"hello".to_vec().into() };
//! assert_eq!(chunk.data.len(), 5);
//! # let _ = std::any::type_name::<ChunkStoreClient<tonic::transport::Channel>>;
//! ```

/// The `keepsake.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!("generated/keepsake.v1.rs");
}

/// The encoded `FileDescriptorSet` of every Keepsake proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/keepsake_descriptor.bin");
