//! Pack files: many chunks in one immutable object.
//!
//! A pack is a plain sequence of records `id (32) | len (u32 LE) | bytes`, with
//! no header or trailer, so every byte of a pack belongs to exactly one record
//! and a flipped bit anywhere is caught when that record is read.

use crate::{ChunkId, StoreError};

/// Bytes of a record header.
pub const RECORD_HEADER: u64 = 36;

/// Where a chunk's record sits inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Offset of the record header.
    pub offset: u64,
    /// Length of the chunk's bytes.
    pub len: u32,
}

/// Builds a pack as a list of parts: record headers beside the chunks' own buffers, so
/// a batch is written out without first being copied into one contiguous pack.
#[derive(Debug, Default)]
pub struct PackWriter {
    parts: Vec<bytes::Bytes>,
    len: usize,
}

impl PackWriter {
    /// An empty pack for about `records` records.
    pub fn with_records(records: usize) -> Self {
        Self {
            parts: Vec::with_capacity(2 * records),
            len: 0,
        }
    }

    /// Appends one record and says where it went.
    pub fn push(&mut self, id: &ChunkId, data: bytes::Bytes) -> Slot {
        let offset = self.len as u64;
        let len = u32::try_from(data.len()).expect("chunk lengths are bounded below u32");
        let mut header = Vec::with_capacity(RECORD_HEADER as usize);
        header.extend_from_slice(id.as_bytes());
        header.extend_from_slice(&len.to_le_bytes());
        self.len += header.len() + data.len();
        self.parts.push(header.into());
        self.parts.push(data);
        Slot { offset, len }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The finished pack, as its parts in order.
    pub fn finish(self) -> Vec<bytes::Bytes> {
        self.parts
    }
}

/// Checks one record read back from a pack and returns the chunk's bytes within it.
pub fn verify_record<'a>(
    id: &ChunkId,
    slot: Slot,
    record: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    let data = record_body(id, slot, record)?;
    if ChunkId::of(data) != *id {
        return Err(StoreError::Corrupt(*id));
    }
    Ok(data)
}

/// The chunk's bytes within a record whose header names `id` and `slot`'s length, not
/// hashed: for a reader that hashes every chunk itself (see [`crate::ReadCheck`]).
pub fn record_body<'a>(id: &ChunkId, slot: Slot, record: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let header = RECORD_HEADER as usize;
    if record.len() != header + slot.len as usize
        || record[..32] != id.0
        || record[32..36] != slot.len.to_le_bytes()
    {
        return Err(StoreError::Corrupt(*id));
    }
    Ok(&record[header..])
}

/// The record of `slot` inside a whole pack, if it lies within it.
pub fn record_in(pack: &[u8], slot: Slot) -> &[u8] {
    let start = (slot.offset as usize).min(pack.len());
    let end = (start + RECORD_HEADER as usize + slot.len as usize).min(pack.len());
    &pack[start..end]
}
