//! Manifests: the ordered chunks of one file, with a canonical byte encoding.

use crate::{ChunkId, Malformed};

/// Magic prefix of the canonical encoding; the digit is the format version.
const MAGIC: &[u8; 4] = b"KSM1";
const HEADER_LEN: usize = 4 + 8 + 32 + 4;
const ENTRY_LEN: usize = 32 + 4;

/// One chunk of a file and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ManifestEntry {
    /// The chunk's id.
    pub chunk: ChunkId,
    /// The chunk's length in bytes.
    pub len: u32,
}

/// The ordered list of chunks that make one file, its length and its whole-file hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Chunks in file order.
    pub entries: Vec<ManifestEntry>,
    /// Sum of the entries' lengths.
    pub total_len: u64,
    /// BLAKE3 of the whole file.
    pub file_hash: ChunkId,
}

impl Manifest {
    /// Builds a manifest from chunks in order, checking nothing but arithmetic.
    pub fn new(entries: Vec<ManifestEntry>, file_hash: ChunkId) -> Self {
        let total_len = entries.iter().map(|e| u64::from(e.len)).sum();
        Self {
            entries,
            total_len,
            file_hash,
        }
    }

    /// The manifest of a file cut into `chunks` (in file order), whose whole-file hash is `file_hash`.
    pub fn from_chunks(chunks: &[(ChunkId, bytes::Bytes)], file_hash: ChunkId) -> Self {
        Self::new(
            chunks
                .iter()
                .map(|(chunk, data)| ManifestEntry {
                    chunk: *chunk,
                    len: data.len() as u32,
                })
                .collect(),
            file_hash,
        )
    }

    /// Checks the manifest is self-consistent and within `max_entries` / `max_chunk_len`.
    pub fn validate(&self, max_entries: usize, max_chunk_len: u32) -> Result<(), Malformed> {
        if self.entries.len() > max_entries {
            return Err(Malformed::Manifest(format!(
                "{} entries, at most {max_entries} allowed",
                self.entries.len()
            )));
        }
        let mut sum: u64 = 0;
        for entry in &self.entries {
            if entry.len == 0 || entry.len > max_chunk_len {
                return Err(Malformed::Manifest(format!(
                    "chunk {} has length {}, must be 1..={max_chunk_len}",
                    entry.chunk, entry.len
                )));
            }
            sum += u64::from(entry.len);
        }
        if sum != self.total_len {
            return Err(Malformed::Manifest(format!(
                "entries add up to {sum} bytes but total_length says {}",
                self.total_len
            )));
        }
        Ok(())
    }

    /// The canonical encoding, whose BLAKE3 is the manifest's id.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.total_len.to_le_bytes());
        out.extend_from_slice(self.file_hash.as_bytes());
        let count = u32::try_from(self.entries.len()).expect("validated entry count fits u32");
        out.extend_from_slice(&count.to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(entry.chunk.as_bytes());
            out.extend_from_slice(&entry.len.to_le_bytes());
        }
        out
    }

    /// The manifest's id: BLAKE3 of [`Manifest::encode`].
    pub fn id(&self) -> ChunkId {
        ChunkId::of(&self.encode())
    }

    /// Decodes the canonical encoding, refusing anything that would not re-encode identically.
    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let bad = |why: &str| Malformed::Manifest(why.to_string());
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err(bad("not a keepsake manifest"));
        }
        let total_len = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
        let file_hash = ChunkId::from_slice(&bytes[12..44])?;
        let count = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes")) as usize;
        let body = &bytes[HEADER_LEN..];
        if body.len() != count.saturating_mul(ENTRY_LEN) {
            return Err(bad("entry count does not match the encoded length"));
        }
        let entries = body
            .chunks_exact(ENTRY_LEN)
            .map(|e| ManifestEntry {
                chunk: ChunkId(e[..32].try_into().expect("32 bytes")),
                len: u32::from_le_bytes(e[32..].try_into().expect("4 bytes")),
            })
            .collect::<Vec<_>>();
        let sum: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
        if sum != total_len {
            return Err(bad("entries do not add up to the total length"));
        }
        Ok(Self {
            entries,
            total_len,
            file_hash,
        })
    }
}

/// One step of rebuilding a manifest from an earlier one: copy a run of the earlier
/// manifest's entries, then add new ones. An edited file shares almost every chunk with its
/// previous version, so it travels as a few splices rather than an entry per chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Splice {
    /// First entry of the base to copy.
    pub base_start: u32,
    /// How many base entries to copy from there (0: none).
    pub base_count: u32,
    /// Entries to add after the copied run.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The splices that rebuild `self` from `base`: each entry either continues a run copied
    /// from the base, starts a new run where the base holds the same chunk, or is added.
    pub fn splices_from(&self, base: &Manifest) -> Vec<Splice> {
        let mut first_at: std::collections::HashMap<ManifestEntry, u32> =
            std::collections::HashMap::with_capacity(base.entries.len());
        for (at, entry) in base.entries.iter().enumerate() {
            first_at.entry(*entry).or_insert(at as u32);
        }
        let mut splices: Vec<Splice> = Vec::new();
        for entry in &self.entries {
            if let Some(last) = splices.last_mut() {
                let next = last.base_start + last.base_count;
                if last.entries.is_empty() && base.entries.get(next as usize) == Some(entry) {
                    last.base_count += 1;
                    continue;
                }
            }
            match first_at.get(entry) {
                Some(&at) => splices.push(Splice {
                    base_start: at,
                    base_count: 1,
                    entries: Vec::new(),
                }),
                None => match splices.last_mut() {
                    Some(last) => last.entries.push(*entry),
                    None => splices.push(Splice {
                        entries: vec![*entry],
                        ..Splice::default()
                    }),
                },
            }
        }
        splices
    }

    /// Rebuilds a manifest from `base` and `splices` (which may come off the network): a
    /// run outside the base, or more than `max_entries` entries, is refused before anything
    /// is copied.
    pub fn from_splices(
        base: &Manifest,
        splices: &[Splice],
        file_hash: ChunkId,
        max_entries: usize,
    ) -> Result<Manifest, Malformed> {
        let mut entries: Vec<ManifestEntry> = Vec::new();
        for (i, splice) in splices.iter().enumerate() {
            let start = splice.base_start as usize;
            let end = start + splice.base_count as usize;
            if end > base.entries.len() {
                return Err(Malformed::Manifest(format!(
                    "splice {i} copies entries {start}..{end} of a base of {}",
                    base.entries.len()
                )));
            }
            if entries.len() + (end - start) + splice.entries.len() > max_entries {
                return Err(Malformed::Manifest(format!(
                    "splices add up to more than {max_entries} entries"
                )));
            }
            entries.extend_from_slice(&base.entries[start..end]);
            entries.extend_from_slice(&splice.entries);
        }
        Ok(Manifest::new(entries, file_hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        (
            proptest::collection::vec((any::<[u8; 32]>(), 1u32..1 << 20), 0..50),
            any::<[u8; 32]>(),
        )
            .prop_map(|(entries, hash)| {
                Manifest::new(
                    entries
                        .into_iter()
                        .map(|(id, len)| ManifestEntry {
                            chunk: ChunkId(id),
                            len,
                        })
                        .collect(),
                    ChunkId(hash),
                )
            })
    }

    proptest! {
        #[test]
        fn manifest_encoding_round_trips(m in arb_manifest()) {
            let decoded = Manifest::decode(&m.encode()).unwrap();
            prop_assert_eq!(&decoded, &m);
            prop_assert_eq!(decoded.id(), m.id());
        }

        #[test]
        fn splices_rebuild_exactly_the_edited_manifest(
            base in arb_manifest(),
            picks in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>(), any::<[u8; 32]>()), 0..80),
        ) {
            // The new manifest mixes base entries (in any order, repeated) with fresh ones.
            let entries: Vec<ManifestEntry> = picks
                .iter()
                .map(|(from_base, at, fresh)| match (from_base, base.entries.is_empty()) {
                    (true, false) => base.entries[at.index(base.entries.len())],
                    _ => ManifestEntry { chunk: ChunkId(*fresh), len: 7 },
                })
                .collect();
            let new = Manifest::new(entries, ChunkId([9; 32]));
            let splices = new.splices_from(&base);
            let rebuilt = Manifest::from_splices(&base, &splices, new.file_hash, 1 << 18).unwrap();
            prop_assert_eq!(&rebuilt, &new);
            let added: usize = splices.iter().map(|s| s.entries.len()).sum();
            let fresh = new.entries.iter().filter(|e| !base.entries.contains(e)).count();
            prop_assert_eq!(added, fresh, "an entry the base holds was sent again");
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manifest::decode(&bytes);
        }
    }

    #[test]
    fn one_changed_chunk_is_two_splices_whatever_the_file_size() {
        let entry = |n: u32| ManifestEntry {
            chunk: ChunkId::of(&n.to_le_bytes()),
            len: 65_536,
        };
        let base = Manifest::new((0..3000).map(entry).collect(), ChunkId([1; 32]));
        let mut new = base.clone();
        new.entries[1500] = entry(99_999);
        let splices = new.splices_from(&base);
        assert_eq!(splices.len(), 2, "{splices:?}");
        assert_eq!(splices.iter().map(|s| s.entries.len()).sum::<usize>(), 1);
    }

    #[test]
    fn splices_outside_the_base_or_past_the_bound_are_refused() {
        let base = Manifest::new(
            vec![ManifestEntry {
                chunk: ChunkId([1; 32]),
                len: 10,
            }],
            ChunkId([2; 32]),
        );
        let outside = [Splice {
            base_start: 0,
            base_count: 2,
            entries: Vec::new(),
        }];
        assert!(Manifest::from_splices(&base, &outside, ChunkId([3; 32]), 100).is_err());
        // A million copies of the whole base in one small message: refused at the bound.
        let repeated = vec![
            Splice {
                base_start: 0,
                base_count: 1,
                entries: Vec::new(),
            };
            1_000_000
        ];
        assert!(Manifest::from_splices(&base, &repeated, ChunkId([3; 32]), 1000).is_err());
    }

    #[test]
    fn validate_refuses_wrong_total() {
        let mut m = Manifest::new(
            vec![ManifestEntry {
                chunk: ChunkId([1; 32]),
                len: 10,
            }],
            ChunkId([2; 32]),
        );
        m.total_len = 11;
        assert!(matches!(m.validate(10, 100), Err(Malformed::Manifest(_))));
    }
}
