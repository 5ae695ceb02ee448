//! Immutable objects under the packs: put whole, read a range, list, delete.
//!
//! Packs are written once and never modified, so the trait has no append: an
//! object store such as S3 fits it without changing callers.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What can go wrong below the store.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("object {0} not found")]
    NotFound(String),
    /// The device or the configured capacity is full; nothing was written.
    #[error("storage is full")]
    Full,
    /// An object of that name exists already (a create never overwrites).
    #[error("object {0} exists already")]
    Exists(String),
    /// The storage refused us: wrong credentials, or no such bucket. A person must act.
    #[error("{0}")]
    Denied(String),
    /// The storage cannot be reached now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Any other I/O failure.
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A flat namespace of immutable objects.
pub trait Backend: Send + Sync {
    /// Stores `bytes` under `name`; returns only once the object is durable.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError>;
    /// Stores an object made of `parts` in order, exactly as `put` of their concatenation;
    /// a backend that can write them one after another saves the copy.
    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), BackendError> {
        self.put(name, &parts.concat())
    }
    /// Reads `len` bytes at `offset`; a short object is an error, never a short read.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// Reads several `(name, offset, len)` ranges, each as `get_range` would, answering in
    /// order. A backend with costly round trips fetches neighbours in one read and
    /// different objects at once; the default reads them one by one.
    fn get_ranges(&self, reads: &[(&str, u64, u64)]) -> Vec<Result<Bytes, BackendError>> {
        reads
            .iter()
            .map(|&(name, offset, len)| self.get_range(name, offset, len).map(Bytes::from))
            .collect()
    }
    /// Reads a whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError>;
    /// Lists objects whose names start with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;
    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, name: &str) -> Result<(), BackendError>;
}

/// Reads of one object merged into one span: `(name, start, end, members)`, each member
/// `(index in the request, offset, len)`.
pub(crate) type Span<'a> = (&'a str, u64, u64, Vec<(usize, u64, u64)>);

/// Merges reads of one object that lie at most `gap` bytes apart into spans, so a pack's
/// neighbouring chunks cost one request; a span never grows past `max_span` bytes.
pub(crate) fn merge_reads<'a>(
    reads: &[(&'a str, u64, u64)],
    gap: u64,
    max_span: u64,
) -> Vec<Span<'a>> {
    let mut order: Vec<usize> = (0..reads.len()).collect();
    order.sort_by_key(|&i| (reads[i].0, reads[i].1));
    let mut spans: Vec<Span<'a>> = Vec::new();
    for i in order {
        let (name, offset, len) = reads[i];
        let end = offset.saturating_add(len);
        match spans.last_mut() {
            Some((n, start, span_end, members))
                if *n == name
                    && offset <= span_end.saturating_add(gap)
                    && end.max(*span_end) - *start <= max_span =>
            {
                *span_end = end.max(*span_end);
                members.push((i, offset, len));
            }
            _ => spans.push((name, offset, end, vec![(i, offset, len)])),
        }
    }
    spans
}

/// Each read's answer, in the order asked, from what its span fetched: a slice of the span,
/// an error for a read past the span's end (a short object), or `failed` for a read whose
/// span failed.
pub(crate) fn answer_spans(
    reads: usize,
    spans: Vec<Span<'_>>,
    fetched: Vec<Result<Bytes, BackendError>>,
    mut failed: impl FnMut(&str, u64, u64, &BackendError) -> Result<Bytes, BackendError>,
) -> Vec<Result<Bytes, BackendError>> {
    let mut out: Vec<Option<Result<Bytes, BackendError>>> =
        std::iter::repeat_with(|| None).take(reads).collect();
    for ((name, start, _, members), got) in spans.into_iter().zip(fetched) {
        for (i, offset, len) in members {
            out[i] = Some(match &got {
                Ok(bytes) => {
                    let from = (offset - start) as usize;
                    let to = from + len as usize;
                    if to <= bytes.len() {
                        Ok(bytes.slice(from..to))
                    } else {
                        Err(BackendError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{name}: {len} bytes at {offset} lie past its end"),
                        )))
                    }
                }
                Err(e) => failed(name, offset, len, e),
            });
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(BackendError::Unavailable("read not made".into()))))
        .collect()
}

fn check_name(name: &str) -> io::Result<()> {
    // Names come from hashes and ids only; refuse anything that could walk out of the root.
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad object name {name:?}"),
        ))
    }
}

fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Lets the kernel reuse the page cache of a file already made durable (`sync_data` or
/// `sync_all` done).
///
/// Written pages otherwise stay cached until memory runs short, and every new write takes
/// pages from the free pool; on a virtual machine that hands free memory back to its host,
/// those pages are fresh each time and a write costs ~4x the kernel time of one into
/// recycled pages (docs/benchmarks.md measures it). Only clean pages are dropped, so this
/// never loses data; where the advice is not supported it does nothing.
pub fn release_written_pages(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::debug!(error = %e, "page cache advice refused");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = file;
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes of the newest objects whose pages stay cached after they are durable: a device
/// downloading what another just uploaded reads them from memory, not from the disk. It
/// fetches a photo only once its commit lands, and a long video's first packs were written
/// while every other lane kept uploading, so the window must reach back past a whole video
/// and the files beside it. In the 2 GiB benchmark the server read from the disk 0.4–1.0 GiB
/// of packs at 128 MiB, 0.4 GiB at 512 MiB, 0.3 GiB at 1 GiB and nothing at 2 GiB, and the
/// first sync took 8.3–8.9 s against 10.3–10.5 s at 128 MiB in the same hour. These pages
/// are clean: the kernel still takes them back whenever it needs the memory.
const RECENT_PAGES_KEPT: u64 = 2 << 30;

/// Objects as files under one directory, written temp + fsync + rename + fsync dir.
#[derive(Debug)]
pub struct LocalFsBackend {
    root: PathBuf,
    tmp: PathBuf,
    tmp_counter: AtomicU64,
    /// The newest durable objects, oldest first, with their sizes and the sizes' sum; an
    /// object's pages are released when it falls out of the newest [`RECENT_PAGES_KEPT`].
    recent: Mutex<(std::collections::VecDeque<(PathBuf, u64)>, u64)>,
    recent_pages_kept: u64,
}

impl LocalFsBackend {
    /// Opens (creating) a backend rooted at `root`, removing temp files a crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let tmp = root.join(".tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            fs::remove_file(entry?.path())?;
        }
        Ok(Self {
            root,
            tmp,
            tmp_counter: AtomicU64::new(0),
            recent: Mutex::default(),
            recent_pages_kept: RECENT_PAGES_KEPT,
        })
    }

    /// Keeps the page cache of the newest `bytes` of objects once durable (2 GiB unless
    /// set); older objects' pages are released for the next writes to reuse.
    pub fn keeping_recent_pages(mut self, bytes: u64) -> Self {
        self.recent_pages_kept = bytes;
        self
    }

    /// Keeps the pages of the object just made durable, and releases those of the objects
    /// that are no longer among the newest.
    fn written(&self, path: &Path, size: u64) {
        let mut stale = Vec::new();
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let (queue, bytes) = &mut *recent;
            queue.push_back((path.to_path_buf(), size));
            *bytes += size;
            while *bytes > self.recent_pages_kept
                && let Some((old, old_size)) = queue.pop_front()
            {
                *bytes -= old_size;
                stale.push(old);
            }
        }
        for old in stale {
            // Deleted since (collected garbage): nothing left to release.
            if let Ok(file) = File::open(&old) {
                release_written_pages(&file);
            }
        }
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn write_durably(&self, final_path: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            for part in parts {
                file.write_all(part)?;
            }
            fail::fail_point!("backend-before-fsync", |_| Err(io::Error::other(
                "fail point backend-before-fsync"
            )));
            file.sync_all()?;
            drop(file);
            let parent = final_path.parent().expect("object paths have a parent");
            if !parent.exists() {
                fs::create_dir_all(parent)?;
                fsync_dir(parent.parent().expect("fan-out dirs live under the root"))?;
            }
            fail::fail_point!("backend-before-rename", |_| Err(io::Error::other(
                "fail point backend-before-rename"
            )));
            fs::rename(&tmp, final_path)?;
            fail::fail_point!("backend-before-dir-fsync", |_| Err(io::Error::other(
                "fail point backend-before-dir-fsync"
            )));
            fsync_dir(parent)?;
            // A pack is read back rarely, except by the devices downloading it right after
            // it was uploaded; its pages are then better reused by later packs than kept.
            self.written(final_path, parts.iter().map(|p| p.len() as u64).sum());
            Ok(())
        })();
        if result.is_err() {
            // A failed write leaves nothing behind; a failed fsync is never retried as success.
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Backend for LocalFsBackend {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put_parts(name, &[bytes])
    }

    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), BackendError> {
        let path = self.path(name)?;
        self.write_durably(&path, parts).map_err(|e| {
            if is_full(&e) {
                BackendError::Full
            } else {
                BackendError::Io(e)
            }
        })
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let path = self.path(name)?;
        let mut file = File::open(&path).map_err(|e| not_found_or(e, name))?;
        file.seek(SeekFrom::Start(offset))?;
        // Read into spare capacity: zeroing the buffer first costs as much as the read
        // (a GetChunks reply is megabytes of fresh pages).
        let mut buf = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
        file.take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(buf)
    }

    fn get_ranges(&self, reads: &[(&str, u64, u64)]) -> Vec<Result<Bytes, BackendError>> {
        // Neighbouring chunks of a pack in one read: one syscall and one buffer for a run
        // of 64 KiB chunks instead of one each.
        let spans = merge_reads(reads, 0, 16 << 20);
        let fetched: Vec<_> = spans
            .iter()
            .map(|(name, start, end, _)| self.get_range(name, *start, end - start).map(Bytes::from))
            .collect();
        // Which read ran past the end, or failed, is each read's own answer.
        answer_spans(reads.len(), spans, fetched, |name, offset, len, _| {
            self.get_range(name, offset, len).map(Bytes::from)
        })
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        let path = self.path(name)?;
        fs::read(&path).map_err(|e| not_found_or(e, name))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out)?;
        out.retain(|o| o.name.starts_with(prefix));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), BackendError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn not_found_or(e: io::Error, name: &str) -> BackendError {
    if e.kind() == io::ErrorKind::NotFound {
        BackendError::NotFound(name.to_string())
    } else {
        BackendError::Io(e)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_name = entry.file_name();
        if file_name.to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else {
            let name = path
                .strip_prefix(root)
                .expect("walked under root")
                .to_string_lossy()
                .into_owned();
            out.push(ObjectInfo {
                name,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

/// Objects in memory, for tests and simulation.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Flips one bit of a stored object: how tests model bit rot.
    pub fn flip_bit(&self, name: &str, bit: u64) {
        let mut objects = self.objects.lock().expect("backend lock");
        let object = objects.get_mut(name).expect("object exists");
        object[(bit / 8) as usize] ^= 1 << (bit % 8);
    }
}

impl Backend for MemoryBackend {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        check_name(name)?;
        self.objects
            .lock()
            .expect("backend lock")
            .insert(name.to_string(), bytes.to_vec());
        Ok(())
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let objects = self.objects.lock().expect("backend lock");
        let object = objects
            .get(name)
            .ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.saturating_add(usize::try_from(len).map_err(io::Error::other)?);
        object
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof).into())
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        self.objects
            .lock()
            .expect("backend lock")
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(name.to_string()))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        Ok(self
            .objects
            .lock()
            .expect("backend lock")
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, bytes)| ObjectInfo {
                name: name.clone(),
                size: bytes.len() as u64,
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<(), BackendError> {
        self.objects.lock().expect("backend lock").remove(name);
        Ok(())
    }
}

/// Wraps a backend with a byte capacity: a configurable "disk" size.
pub struct CappedBackend<B> {
    inner: B,
    capacity: u64,
    used: Mutex<u64>,
}

impl<B: Backend> CappedBackend<B> {
    /// Caps `inner` at `capacity` bytes, counting what it already holds.
    pub fn new(inner: B, capacity: u64) -> Result<Self, BackendError> {
        let used = inner.list("")?.iter().map(|o| o.size).sum();
        Ok(Self {
            inner,
            capacity,
            used: Mutex::new(used),
        })
    }
}

impl<B: Backend> Backend for CappedBackend<B> {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put_parts(name, &[bytes])
    }

    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), BackendError> {
        let size: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let mut used = self.used.lock().expect("capacity lock");
        if *used + size > self.capacity {
            return Err(BackendError::Full);
        }
        self.inner.put_parts(name, parts)?;
        *used += size;
        Ok(())
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.inner.get_range(name, offset, len)
    }

    fn get_ranges(&self, reads: &[(&str, u64, u64)]) -> Vec<Result<Bytes, BackendError>> {
        self.inner.get_ranges(reads)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        self.inner.get(name)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(prefix)
    }

    fn delete(&self, name: &str) -> Result<(), BackendError> {
        let size = self
            .inner
            .list(name)?
            .into_iter()
            .find(|o| o.name == name)
            .map_or(0, |o| o.size);
        self.inner.delete(name)?;
        let mut used = self.used.lock().expect("capacity lock");
        *used = used.saturating_sub(size);
        Ok(())
    }
}

impl<B: Backend> Backend for std::sync::Arc<B> {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        (**self).put(name, bytes)
    }
    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), BackendError> {
        (**self).put_parts(name, parts)
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        (**self).get_range(name, offset, len)
    }
    fn get_ranges(&self, reads: &[(&str, u64, u64)]) -> Vec<Result<Bytes, BackendError>> {
        (**self).get_ranges(reads)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        (**self).get(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        (**self).list(prefix)
    }
    fn delete(&self, name: &str) -> Result<(), BackendError> {
        (**self).delete(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(backend: &dyn Backend) {
        backend.put("packs/ab/one", b"hello world").unwrap();
        assert_eq!(backend.get_range("packs/ab/one", 6, 5).unwrap(), b"world");
        assert!(
            backend.get_range("packs/ab/one", 6, 50).is_err(),
            "short read is an error"
        );
        assert_eq!(backend.list("packs/").unwrap().len(), 1);
        let got = backend.get_ranges(&[
            ("packs/ab/one", 6, 5),
            ("packs/ab/one", 0, 5),
            ("packs/ab/one", 8, 10),
            ("packs/ab/none", 0, 1),
            ("packs/ab/one", 4, 3),
        ]);
        assert_eq!(got[0].as_deref().unwrap(), b"world");
        assert_eq!(got[1].as_deref().unwrap(), b"hello");
        assert!(got[2].is_err(), "a read past the end fails alone");
        assert!(matches!(got[3], Err(BackendError::NotFound(_))));
        assert_eq!(got[4].as_deref().unwrap(), b"o w");
        assert!(matches!(
            backend.get("packs/ab/two"),
            Err(BackendError::NotFound(_))
        ));
        backend.delete("packs/ab/one").unwrap();
        backend.delete("packs/ab/one").unwrap();
        assert!(backend.list("").unwrap().is_empty());
        assert!(backend.put("../escape", b"x").is_err());
    }

    #[test]
    fn reads_of_one_object_merge_only_when_near_and_never_past_the_cap() {
        let reads = [
            ("b", 0, 10),
            ("a", 20, 5),
            ("a", 0, 10),
            ("a", 12, 4),
            ("a", 40, 60),
        ];
        let spans = merge_reads(&reads, 4, 40);
        let shape: Vec<_> = spans
            .iter()
            .map(|(n, s, e, m)| (*n, *s, *e, m.iter().map(|x| x.0).collect::<Vec<_>>()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("a", 0, 25, vec![2, 3, 1]),
                ("a", 40, 100, vec![4]),
                ("b", 0, 10, vec![0]),
            ]
        );
    }

    #[test]
    fn local_fs_backend_behaves() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&LocalFsBackend::open(dir.path()).unwrap());
    }

    /// Bytes of `path` in the page cache, as util-linux's `fincore` counts them.
    fn cached_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a byte count")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_durable_pack_keeps_its_pages_only_while_among_the_newest_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalFsBackend::open(dir.path())
            .unwrap()
            .keeping_recent_pages(12 << 20);
        let part: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        backend.put_parts("packs/ab/big", &[&part, &part]).unwrap();
        let path = dir.path().join("packs/ab/big");
        assert!(
            cached_bytes(&path) > 0,
            "the newest pack stays cached for the devices about to download it"
        );
        backend.put_parts("packs/cd/next", &[&part, &part]).unwrap();
        assert_eq!(
            cached_bytes(&path),
            0,
            "out of the newest 12 MiB, its written pages were released"
        );
        assert!(cached_bytes(&dir.path().join("packs/cd/next")) > 0);
        let back = backend.get("packs/ab/big").unwrap();
        assert!(
            back.len() == 8 << 20 && back[..4 << 20] == part[..] && back[4 << 20..] == part[..]
        );
        assert!(
            cached_bytes(&path) > 0,
            "the count sees pages that are cached"
        );
    }

    #[test]
    fn memory_backend_behaves() {
        exercise(&MemoryBackend::new());
    }

    #[test]
    fn capped_backend_refuses_past_capacity_and_frees_on_delete() {
        let capped = CappedBackend::new(MemoryBackend::new(), 10).unwrap();
        capped.put("a", b"123456").unwrap();
        assert!(matches!(
            capped.put("b", b"123456"),
            Err(BackendError::Full)
        ));
        assert!(capped.list("").unwrap().len() == 1, "nothing half-written");
        capped.delete("a").unwrap();
        capped.put("b", b"123456").unwrap();
    }
}
