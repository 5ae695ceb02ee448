//! Content-defined chunking into manifests, on one core or two.

use crate::DeltaError;
use bytes::Bytes;
use fastcdc::v2020::StreamCDC;
use keepsake_core::{ChunkId, Manifest, ManifestEntry};
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// FastCDC's normalization makes the cut-point test depend on the distance from the
/// chunk's start, so an edit can move a few boundaries after it; level 0 keeps
/// boundaries purely local to the content (measured: see docs/benchmarks.md).
const NORMALIZATION: fastcdc::v2020::Normalization = fastcdc::v2020::Normalization::Level0;

/// FastCDC bounds: the smallest, average and largest chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Smallest chunk (except a file's last).
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl ChunkParams {
    /// Photos and videos up to 4 GiB. Measured on generated media (docs/benchmarks.md):
    /// an EXIF edit of a 7.7 MB JPEG re-sends 0.6%, and a 1% region edit of a 124 MB
    /// video re-sends 1.15% with 64 KiB chunks, against 1.7% with 256 KiB and 2.8%
    /// with 1 MiB; chunking speed barely differs, so smaller chunks win.
    pub const PHOTO: Self = Self {
        min: 16 << 10,
        avg: 64 << 10,
        max: 256 << 10,
    };
    /// Files of 4 GiB and more: keeps manifests under the store's 262,144 entries
    /// up to 64 GiB.
    pub const LARGE: Self = Self {
        min: 64 << 10,
        avg: 256 << 10,
        max: 1 << 20,
    };

    fn stream<R: Read>(self, reader: R) -> StreamCDC<R> {
        StreamCDC::with_level(
            reader,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            NORMALIZATION,
        )
    }

    fn cut(self, data: &[u8]) -> fastcdc::v2020::FastCDC<'_> {
        fastcdc::v2020::FastCDC::with_level(
            data,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            NORMALIZATION,
        )
    }

    /// The parameters for a file of `len` bytes.
    pub fn for_len(len: u64) -> Self {
        if len >= 4 << 30 {
            Self::LARGE
        } else {
            Self::PHOTO
        }
    }
}

/// One chunk's id and the manifest entry it becomes.
fn entry(data: &[u8]) -> (ChunkId, ManifestEntry) {
    let id = ChunkId::of(data);
    let len = u32::try_from(data.len()).expect("chunks are bounded by ChunkParams::max");
    (id, ManifestEntry { chunk: id, len })
}

/// Chunks `reader` with bounded memory (a window of eight maximum-size chunks),
/// handing each chunk to `sink` in file order, and returns the file's manifest.
pub fn chunk_stream<R: Read>(
    mut reader: R,
    params: ChunkParams,
    mut sink: impl FnMut(ChunkId, &[u8]) -> Result<(), DeltaError>,
) -> Result<Manifest, DeltaError> {
    let max = params.max as usize;
    // Cutting in place in one reused window avoids a copy and an allocation per chunk.
    let mut window = vec![0u8; max * 8];
    let (mut len, mut eof) = (0usize, false);
    let mut whole = blake3::Hasher::new();
    let mut entries = Vec::new();
    loop {
        while !eof && len < window.len() {
            match reader.read(&mut window[len..]) {
                Ok(0) => eof = true,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut consumed = 0;
        for c in params.cut(&window[..len]) {
            // A cut point is final only when a whole maximum-size chunk after its
            // start was in view; otherwise wait for more bytes.
            if !eof && c.offset + max > len {
                break;
            }
            let data = &window[c.offset..c.offset + c.length];
            whole.update(data);
            let (id, e) = entry(data);
            sink(id, data)?;
            entries.push(e);
            consumed = c.offset + c.length;
        }
        window.copy_within(consumed..len, 0);
        len -= consumed;
        if eof && len == 0 {
            break;
        }
    }
    Ok(Manifest::new(
        entries,
        ChunkId(*whole.finalize().as_bytes()),
    ))
}

fn cdc_error(e: fastcdc::v2020::Error) -> DeltaError {
    match e {
        fastcdc::v2020::Error::IoError(io) => DeltaError::Read(io),
        other => DeltaError::Read(std::io::Error::other(other.to_string())),
    }
}

/// Below this, [`manifest_of`] stays on the caller's thread: a thread costs more than it saves.
const IN_MEMORY_PARALLEL_FROM: usize = 1 << 20;

/// The manifest of bytes already in memory (same boundaries as [`chunk_stream`]). From
/// 1 MiB up it uses a second thread: the whole-file hash runs beside the cutting, then the
/// chunks are hashed in two halves (measured: docs/benchmarks.md).
pub fn manifest_of(data: &[u8], params: ChunkParams) -> Manifest {
    let hash_all = |cuts: &[(usize, usize)]| -> Vec<ManifestEntry> {
        cuts.iter()
            .map(|&(offset, len)| entry(&data[offset..offset + len]).1)
            .collect()
    };
    let cut =
        || -> Vec<(usize, usize)> { params.cut(data).map(|c| (c.offset, c.length)).collect() };
    if data.len() < IN_MEMORY_PARALLEL_FROM {
        return Manifest::new(hash_all(&cut()), ChunkId::of(data));
    }
    std::thread::scope(|scope| {
        let whole = scope.spawn(|| ChunkId::of(data));
        let cuts = cut();
        let (first, second) = cuts.split_at(cuts.len() / 2);
        let entries = std::thread::scope(|inner| {
            let tail = inner.spawn(|| hash_all(second));
            let mut entries = hash_all(first);
            entries.extend(joined(tail));
            entries
        });
        Manifest::new(entries, joined(whole))
    })
}

/// A scoped thread's result; its panic goes on in the caller.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Chunks `reader` into batches of about `batch_bytes` (at least two maximum-size chunks),
/// handed to `sink` in file order: each batch is one buffer read straight from `reader`,
/// and its chunks are slices of it, never copies. The whole-file hash runs on a second
/// thread. Boundaries are those of [`chunk_stream`]; memory is a batch and a chunk, plus
/// what `sink` keeps.
pub fn chunk_batches<R: Read>(
    mut reader: R,
    params: ChunkParams,
    batch_bytes: usize,
    mut sink: impl FnMut(Vec<(ChunkId, Bytes)>) -> Result<(), DeltaError>,
) -> Result<Manifest, DeltaError> {
    let max = params.max as usize;
    let batch_bytes = batch_bytes.max(2 * max);
    std::thread::scope(|scope| {
        let (to_hasher, fresh) = std::sync::mpsc::sync_channel::<Bytes>(2);
        let whole = scope.spawn(move || {
            let mut whole = blake3::Hasher::new();
            for bytes in fresh {
                whole.update(&bytes);
            }
            ChunkId(*whole.finalize().as_bytes())
        });
        let mut entries = Vec::new();
        // The bytes after the last cut, carried into the next buffer.
        let mut carry = Bytes::new();
        loop {
            let mut buf = Vec::with_capacity(carry.len() + batch_bytes);
            buf.extend_from_slice(&carry);
            let read = (&mut reader)
                .take(batch_bytes as u64)
                .read_to_end(&mut buf)?;
            let eof = read < batch_bytes;
            let buf = Bytes::from(buf);
            if read > 0 {
                // The hasher stops only if it panicked, which joining it resumes.
                let _ = to_hasher.send(buf.slice(carry.len()..));
            }
            let mut batch = Vec::new();
            let mut consumed = 0;
            for c in params.cut(&buf) {
                // As in `chunk_stream`: a cut is final only with a whole maximum-size
                // chunk after its start in view.
                if !eof && c.offset + max > buf.len() {
                    break;
                }
                let data = buf.slice(c.offset..c.offset + c.length);
                let (id, e) = entry(&data);
                entries.push(e);
                batch.push((id, data));
                consumed = c.offset + c.length;
            }
            carry = buf.slice(consumed..);
            if !batch.is_empty() {
                sink(batch)?;
            }
            if eof {
                break;
            }
        }
        drop(to_hasher);
        Ok(Manifest::new(entries, joined(whole)))
    })
}

/// Like [`chunk_stream`], but cuts on a second thread while this one hashes, for
/// one large file. Boundaries and order are exactly those of [`chunk_stream`].
pub fn chunk_stream_pipelined<R: Read + Send>(
    reader: R,
    params: ChunkParams,
    mut sink: impl FnMut(ChunkId, &[u8]) -> Result<(), DeltaError>,
) -> Result<Manifest, DeltaError> {
    std::thread::scope(|scope| {
        // A short queue bounds memory to a few chunks in flight.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, DeltaError>>(8);
        scope.spawn(move || {
            for chunk in params.stream(reader) {
                let item = chunk.map(|c| c.data).map_err(cdc_error);
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let mut whole = blake3::Hasher::new();
        let mut entries = Vec::new();
        for data in rx {
            let data = data?;
            whole.update(&data);
            let (id, e) = entry(&data);
            sink(id, &data)?;
            entries.push(e);
        }
        Ok(Manifest::new(
            entries,
            ChunkId(*whole.finalize().as_bytes()),
        ))
    })
}

/// Chunks many files on `workers` threads, each taking whole files; results come
/// back in input order. Chunks go to `sink` from whichever worker made them.
pub fn chunk_files_parallel<R: Read + Send>(
    readers: Vec<R>,
    params: impl Fn(usize) -> ChunkParams + Sync,
    workers: usize,
    sink: impl Fn(ChunkId, &[u8]) -> Result<(), DeltaError> + Sync,
) -> Vec<Result<Manifest, DeltaError>> {
    let count = readers.len();
    let inputs: Vec<Mutex<Option<R>>> = readers.into_iter().map(|r| Mutex::new(Some(r))).collect();
    let outputs: Vec<Mutex<Option<Result<Manifest, DeltaError>>>> =
        (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1).min(count.max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let reader = inputs[i]
                        .lock()
                        .expect("input lock")
                        .take()
                        .expect("each file is taken once");
                    let result = chunk_stream(reader, params(i), |id, data| sink(id, data));
                    *outputs[i].lock().expect("output lock") = Some(result);
                }
            });
        }
    });
    outputs
        .into_iter()
        .map(|o| {
            o.into_inner()
                .expect("output lock")
                .expect("every file was chunked")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: ChunkParams = ChunkParams {
        min: 64,
        avg: 256,
        max: 1024,
    };

    fn chunks_of(data: &[u8], params: ChunkParams) -> (Manifest, Vec<Vec<u8>>) {
        let mut chunks = Vec::new();
        let m = chunk_stream(data, params, |_, d| {
            chunks.push(d.to_vec());
            Ok(())
        })
        .unwrap();
        (m, chunks)
    }

    proptest! {
        #[test]
        fn chunking_is_deterministic_and_reassembles_the_file(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let (m1, c1) = chunks_of(&data, SMALL);
            let (m2, _) = chunks_of(&data, SMALL);
            prop_assert_eq!(&m1, &m2);
            prop_assert_eq!(c1.concat(), data.clone());
            prop_assert_eq!(m1.file_hash, ChunkId::of(&data));
            prop_assert_eq!(m1.total_len, data.len() as u64);
            for (e, c) in m1.entries.iter().zip(&c1) {
                prop_assert_eq!(e.chunk, ChunkId::of(c));
                prop_assert!(c.len() <= SMALL.max as usize);
            }
        }

        #[test]
        fn how_the_work_is_split_never_changes_the_boundaries(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            batch in 0usize..6000,
        ) {
            let (m1, _) = chunks_of(&data, SMALL);
            prop_assert_eq!(&manifest_of(&data, SMALL), &m1);
            let m2 = chunk_stream_pipelined(&data[..], SMALL, |_, _| Ok(())).unwrap();
            prop_assert_eq!(&m1, &m2);
            let mut batched = Vec::new();
            let m3 = chunk_batches(&data[..], SMALL, batch, |b| {
                batched.extend(b.into_iter().map(|(_, bytes)| bytes));
                Ok(())
            })
            .unwrap();
            prop_assert_eq!(&m1, &m3);
            prop_assert_eq!(batched.concat(), data.clone());
            let halves = vec![&data[..data.len() / 2], &data[data.len() / 2..]];
            let par = chunk_files_parallel(halves.clone(), |_| SMALL, 2, |_, _| Ok(()));
            for (half, got) in halves.iter().zip(par) {
                prop_assert_eq!(got.unwrap(), chunks_of(half, SMALL).0);
            }
        }
    }

    /// Hands out at most `step` bytes per read, as pipes and sockets do.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn short_reads_never_move_a_boundary(
            data in proptest::collection::vec(any::<u8>(), 0..30_000),
            step in 1usize..3000,
        ) {
            let trickled = chunk_stream(Trickle { data: &data, step }, SMALL, |_, _| Ok(())).unwrap();
            prop_assert_eq!(&trickled, &manifest_of(&data, SMALL));
            let batched = chunk_batches(Trickle { data: &data, step }, SMALL, 2500, |_| Ok(())).unwrap();
            prop_assert_eq!(trickled, batched);
        }
    }

    #[test]
    fn a_large_file_in_memory_gets_the_same_manifest_on_two_threads_as_streamed() {
        // The parallel path starts at 1 MiB; the property tests above stay below it.
        for len in [
            IN_MEMORY_PARALLEL_FROM - 1,
            IN_MEMORY_PARALLEL_FROM,
            IN_MEMORY_PARALLEL_FROM + 1,
            (3 << 20) + 17,
        ] {
            let mut data = vec![0u8; len];
            blake3::Hasher::new_derive_key("keepsake in-memory manifest")
                .update(&len.to_le_bytes())
                .finalize_xof()
                .fill(&mut data);
            let (streamed, chunks) = chunks_of(&data, ChunkParams::PHOTO);
            assert!(chunks.len() > 4, "{len}: {} chunks", chunks.len());
            assert_eq!(manifest_of(&data, ChunkParams::PHOTO), streamed, "{len}");
        }
    }

    #[test]
    fn a_failing_sink_stops_chunking_with_its_error() {
        let data = vec![1u8; 10_000];
        let err = chunk_stream(&data[..], SMALL, |_, _| {
            Err(DeltaError::Sink("disk full".into()))
        })
        .unwrap_err();
        assert!(matches!(err, DeltaError::Sink(_)));
    }
}
