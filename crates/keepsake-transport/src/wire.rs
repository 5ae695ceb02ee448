//! The wire forms both sides of a call share — ids, manifests and their edits, clocks —
//! with no domain crate beyond the core's vocabulary, so a client links only these.
//! Every `TryFrom` destructures all fields, so a new proto field cannot be silently ignored.

use crate::ApiError;
use bytes::Bytes;
use keepsake_core::{ChunkId, Hlc, Manifest, ManifestEntry, ManifestId, Splice};
use keepsake_proto::v1 as pb;

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
            .map(|e| entry_from_wire("manifest.entries.chunk_id", e))
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(WireManifest(Manifest {
            entries,
            total_len: total_length,
            file_hash: chunk_id("manifest.file_hash", &file_hash)?,
        }))
    }
}

fn entry_from_wire(field: &'static str, e: pb::ManifestEntry) -> Result<ManifestEntry, ApiError> {
    let pb::ManifestEntry {
        chunk_id: id,
        length,
    } = e;
    Ok(ManifestEntry {
        chunk: chunk_id(field, &id)?,
        len: length,
    })
}

fn entry_to_wire(e: &ManifestEntry) -> pb::ManifestEntry {
    pb::ManifestEntry {
        chunk_id: id_bytes(&e.chunk),
        length: e.len,
    }
}

/// A manifest given as splices of one the account holds, as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireManifestEdit {
    /// The manifest the splices copy from.
    pub base: ManifestId,
    /// In order.
    pub splices: Vec<Splice>,
    /// BLAKE3 of the whole new file.
    pub file_hash: ChunkId,
}

impl TryFrom<pb::ManifestEdit> for WireManifestEdit {
    type Error = ApiError;

    fn try_from(value: pb::ManifestEdit) -> Result<Self, Self::Error> {
        let pb::ManifestEdit {
            base_manifest_id,
            splices,
            file_hash,
        } = value;
        let splices = splices
            .into_iter()
            .map(|s| {
                let pb::ManifestSplice {
                    base_start,
                    base_count,
                    entries,
                } = s;
                Ok(Splice {
                    base_start,
                    base_count,
                    entries: entries
                        .into_iter()
                        .map(|e| entry_from_wire("edit.splices.entries.chunk_id", e))
                        .collect::<Result<_, ApiError>>()?,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Self {
            base: chunk_id("edit.base_manifest_id", &base_manifest_id)?,
            splices,
            file_hash: chunk_id("edit.file_hash", &file_hash)?,
        })
    }
}

/// The wire form of a manifest edit: `new` as splices of `base`.
pub fn manifest_edit_to_wire(
    base_id: &ManifestId,
    base: &Manifest,
    new: &Manifest,
) -> pb::ManifestEdit {
    splices_to_wire(base_id, &new.splices_from(base), &new.file_hash)
}

/// The wire form of a manifest edit given as its splices of `base_id`.
pub fn splices_to_wire(
    base_id: &ManifestId,
    splices: &[keepsake_core::Splice],
    file_hash: &ChunkId,
) -> pb::ManifestEdit {
    pb::ManifestEdit {
        base_manifest_id: id_bytes(base_id),
        splices: splices
            .iter()
            .map(|s| pb::ManifestSplice {
                base_start: s.base_start,
                base_count: s.base_count,
                entries: s.entries.iter().map(entry_to_wire).collect(),
            })
            .collect(),
        file_hash: id_bytes(file_hash),
    }
}

/// A manifest that came off the wire (a newtype so the conversion lives here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireManifest(pub Manifest);

/// The wire form of a manifest.
pub fn manifest_to_wire(m: &Manifest) -> pb::Manifest {
    {
        pb::Manifest {
            entries: m.entries.iter().map(entry_to_wire).collect(),
            total_length: m.total_len,
            file_hash: id_bytes(&m.file_hash),
        }
    }
}

/// Largest number of hashes in one FindAssetsByContent.
pub const MAX_CONTENT_HASHES: usize = 1000;

/// A clock the cloud sent in a reply: absent is the zero clock (nothing changed yet).
pub fn clock_or_zero(clock: Option<pb::Clock>) -> Hlc {
    let pb::Clock {
        wall_ms,
        counter,
        device,
    } = clock.unwrap_or_default();
    Hlc {
        wall_ms,
        counter,
        device,
    }
}

/// A clock's wire form.
pub fn clock_to_wire(clock: Hlc) -> pb::Clock {
    let Hlc {
        wall_ms,
        counter,
        device,
    } = clock;
    pb::Clock {
        wall_ms,
        counter,
        device,
    }
}

/// A file's own details on the wire (`None` when it records nothing): `fields` as the
/// caller filled them, the place set from 1e-7 degree units (they round-trip exactly).
pub fn details_to_wire(
    position_e7: Option<(i32, i32)>,
    fields: pb::MediaDetails,
) -> Option<pb::MediaDetails> {
    let details = pb::MediaDetails {
        latitude: position_e7.map(|(lat, _)| f64::from(lat) / 1e7),
        longitude: position_e7.map(|(_, lon)| f64::from(lon) / 1e7),
        ..fields
    };
    (details != pb::MediaDetails::default()).then_some(details)
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
