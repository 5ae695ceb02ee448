//! Proto <-> domain conversion. Proto types stop here: every `TryFrom`
//! destructures all fields, so a new proto field cannot be silently ignored.

use crate::ApiError;
use bytes::Bytes;
use keepsake_proto::v1 as pb;
use keepsake_store::{ChunkId, Manifest, ManifestEntry, ScrubReport};

/// Parses a 32-byte id field.
pub fn chunk_id(field: &'static str, bytes: &[u8]) -> Result<ChunkId, ApiError> {
    ChunkId::from_slice(bytes).map_err(|e| ApiError::field(field, e))
}

/// Parses a repeated id field, bounded by `limit`.
pub fn chunk_ids(
    field: &'static str,
    ids: &[Bytes],
    limit: usize,
) -> Result<Vec<ChunkId>, ApiError> {
    if ids.len() > limit {
        return Err(ApiError::Store(keepsake_store::StoreError::TooManyIds {
            count: ids.len(),
            limit,
        }));
    }
    ids.iter().map(|id| chunk_id(field, id)).collect()
}

/// The wire form of an id.
pub fn id_bytes(id: &ChunkId) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

impl TryFrom<pb::Manifest> for WireManifest {
    type Error = ApiError;

    fn try_from(value: pb::Manifest) -> Result<Self, Self::Error> {
        let pb::Manifest {
            entries,
            total_length,
            file_hash,
        } = value;
        let entries = entries
            .into_iter()
            .map(|e| {
                let pb::ManifestEntry {
                    chunk_id: id,
                    length,
                } = e;
                Ok(ManifestEntry {
                    chunk: chunk_id("manifest.entries.chunk_id", &id)?,
                    len: length,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(WireManifest(Manifest {
            entries,
            total_len: total_length,
            file_hash: chunk_id("manifest.file_hash", &file_hash)?,
        }))
    }
}

/// A manifest that came off the wire (a newtype so the conversion lives here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireManifest(pub Manifest);

/// The wire form of a manifest.
pub fn manifest_to_wire(m: &Manifest) -> pb::Manifest {
    {
        pb::Manifest {
            entries: m
                .entries
                .iter()
                .map(|e| pb::ManifestEntry {
                    chunk_id: id_bytes(&e.chunk),
                    length: e.len,
                })
                .collect(),
            total_length: m.total_len,
            file_hash: id_bytes(&m.file_hash),
        }
    }
}

/// The wire form of a scrub report.
pub fn scrub_to_wire(r: ScrubReport) -> pb::ScrubResponse {
    {
        let ScrubReport {
            packs_verified,
            chunks_verified,
            bytes_verified,
            corrupt_chunks,
            corrupt_packs,
            finished_at,
        } = r;
        pb::ScrubResponse {
            packs_verified,
            chunks_verified,
            bytes_verified,
            corrupt_chunk_ids: corrupt_chunks.iter().map(id_bytes).collect(),
            corrupt_packs,
            finished_at_unix_ms: finished_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_survives_the_wire_both_ways() {
        let m = Manifest::new(
            vec![ManifestEntry {
                chunk: ChunkId::of(b"a"),
                len: 1,
            }],
            ChunkId::of(b"a"),
        );
        let wire = manifest_to_wire(&m);
        assert_eq!(WireManifest::try_from(wire).unwrap().0, m);
    }

    #[test]
    fn a_short_id_names_its_field() {
        let wire = pb::Manifest {
            entries: vec![],
            total_length: 0,
            file_hash: Bytes::from_static(b"short"),
        };
        let err = WireManifest::try_from(wire).unwrap_err();
        assert!(err.to_string().starts_with("manifest.file_hash"), "{err}");
    }
}
