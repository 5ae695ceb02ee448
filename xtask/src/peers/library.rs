//! The seeded phone library every tool syncs, its edits, and comparing trees.

use super::*;

/// Writes the seeded library into `dir`; `total` bytes, give or take one file.
pub(super) fn generate(dir: &Path, total: u64, seed: u64, short: bool) -> Result<Vec<Item>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(seed);
    let (mut written, mut items) = (0u64, Vec::new());
    let max_video: u64 = if short { 60 << 20 } else { 200 << 20 };
    while written < total {
        let n = items.len() + 1;
        let video = rng.below(25) == 0 && total - written > 20 << 20;
        let (name, bytes) = if video {
            let len = (20 << 20) + rng.below(max_video - (20 << 20));
            let len = len.min(total - written).max(20 << 20);
            (format!("VID_{n:05}.MP4"), mp4_like(&mut rng, len as usize))
        } else {
            let len = (2_000_000 + rng.below(4_000_000)) as usize;
            if rng.below(5) == 0 {
                (format!("IMG_{n:05}.HEIC"), heic_like(&mut rng, len))
            } else {
                (format!("IMG_{n:05}.JPG"), jpeg_like(&mut rng, len, n))
            }
        };
        written += bytes.len() as u64;
        std::fs::write(dir.join(&name), bytes)?;
        items.push(Item { name, video });
    }
    Ok(items)
}

/// Offset of the EXIF DateTime string in a `jpeg_like` file (rewritten by the edit).
pub(super) const EXIF_DATE_AT: usize = 2 + 4 + 6 + 8 + 2 + 3 * 12 + 4;

/// SOI, an APP1 Exif segment (TIFF header, IFD0 with Make, Model and DateTime), then
/// incompressible bytes standing for the entropy-coded image, then EOI.
pub(super) fn jpeg_like(rng: &mut Rng, len: usize, n: usize) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    tiff.extend(3u16.to_le_bytes());
    let data_at = 8 + 2 + 3 * 12 + 4;
    let entry = |tiff: &mut Vec<u8>, tag: u16, count: u32, offset: u32| {
        tiff.extend(tag.to_le_bytes());
        tiff.extend(2u16.to_le_bytes()); // ASCII
        tiff.extend(count.to_le_bytes());
        tiff.extend(offset.to_le_bytes());
    };
    entry(&mut tiff, 0x010F, 8, data_at as u32 + 20); // Make
    entry(&mut tiff, 0x0110, 8, data_at as u32 + 28); // Model
    entry(&mut tiff, 0x0132, 20, data_at as u32); // DateTime
    tiff.extend(0u32.to_le_bytes());
    let day = 1 + n % 28;
    tiff.extend(format!("2026:10:{day:02} 12:{:02}:{:02}\0", n % 60, (n / 60) % 60).as_bytes());
    tiff.extend(b"Phone\0\0\0Model 1\0");
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    debug_assert_eq!(&out[EXIF_DATE_AT..EXIF_DATE_AT + 4], b"2026");
    out.extend(random_bytes(rng, len.saturating_sub(out.len() + 2)));
    out.extend([0xFF, 0xD9]);
    out
}

pub(super) fn heic_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = 24u32.to_be_bytes().to_vec();
    out.extend(b"ftypheic\0\0\0\0mif1heic");
    let body = len.saturating_sub(out.len() + 8);
    out.extend(((body + 8) as u32).to_be_bytes());
    out.extend(b"mdat");
    out.extend(random_bytes(rng, body));
    out
}

pub(super) fn mp4_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = 24u32.to_be_bytes().to_vec();
    out.extend(b"ftypisom\0\0\x02\0isommp42");
    // moov > mvhd (version 0): creation time in seconds since 1904, timescale, duration.
    let mut mvhd = vec![0u8; 4];
    mvhd.extend(3_850_000_000u32.to_be_bytes());
    mvhd.extend(3_850_000_000u32.to_be_bytes());
    mvhd.extend(600u32.to_be_bytes());
    mvhd.extend(6000u32.to_be_bytes());
    mvhd.extend([0u8; 80]);
    let mut moov = ((mvhd.len() + 8 + 8) as u32).to_be_bytes().to_vec();
    moov.extend(b"moov");
    moov.extend(((mvhd.len() + 8) as u32).to_be_bytes());
    moov.extend(b"mvhd");
    moov.extend(mvhd);
    out.extend(moov);
    let body = len.saturating_sub(out.len() + 8);
    out.extend(((body + 8) as u32).to_be_bytes());
    out.extend(b"mdat");
    out.extend(random_bytes(rng, body));
    out
}

/// The edit every tool gets: a still's EXIF date rewritten in place (same length, as a
/// photo app sets "date taken"), a video's middle 1% overwritten (a trim re-encoded in place).
pub(super) fn edit(folder: &Path, item: &Item, round: u64) -> Result<()> {
    let path = folder.join(&item.name);
    let mut bytes = std::fs::read(&path)?;
    if item.video {
        let len = bytes.len() / 100;
        let start = bytes.len() / 2;
        let fresh = random_bytes(&mut Rng(round ^ 0xED17), len);
        bytes[start..start + len].copy_from_slice(&fresh);
    } else if item.name.ends_with(".JPG") {
        let date = format!("2025:0{}:1{} 08:30:00", 1 + round % 9, round % 10);
        bytes[EXIF_DATE_AT..EXIF_DATE_AT + 19].copy_from_slice(date.as_bytes());
    } else {
        // HEIC keeps its metadata in a box near the start; rewrite 64 bytes there.
        let fresh = random_bytes(&mut Rng(round ^ 0x4E1C), 64);
        bytes[40..104].copy_from_slice(&fresh);
    }
    let tmp = folder.join(format!(".{}.edit", item.name));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub(super) fn copy_library(lib: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("cp -r '{}'/. '{}'", lib.display(), to.display()))
        .status()?
        .success();
    if !ok {
        bail!("copying the library to {}", to.display());
    }
    Ok(())
}

/// Bytes of the visible files of `dir`.
pub(super) fn tree_bytes(dir: &Path) -> Result<u64> {
    Ok(sizes(dir)?.values().sum())
}

/// Name → length of the visible regular files (tools keep their state in dot files).
pub(super) fn sizes(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if !name.starts_with('.') && meta.is_file() {
            out.insert(name, meta.len());
        }
    }
    Ok(out)
}

pub(super) fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = match (std::fs::File::open(a), std::fs::File::open(b)) {
        (Ok(fa), Ok(fb)) => (fa, fb),
        _ => return Ok(false),
    };
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Which file each name is and when it last changed: equal before and after a comparison
/// means the comparison read the files that were there when it began.
pub(super) fn identities(
    dir: &Path,
    names: &[String],
) -> BTreeMap<String, (u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    names
        .iter()
        .filter_map(|n| {
            let m = std::fs::metadata(dir.join(n)).ok()?;
            let id = (
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            );
            Some((n.clone(), id))
        })
        .collect()
}

/// Waits until `target` holds every file of `source` byte for byte (sizes are polled every
/// 20 ms; contents are compared once the sizes agree), and returns when it first did: the
/// start of the comparison that passed, if no file changed while it ran. The comparison
/// itself is the benchmark's work, not the tool's — it reads 2 GiB, from the disk for a
/// tool that leaves nothing in the page cache — so the clock stops before it.
pub(super) fn wait_same(
    source: &Path,
    target: &Path,
    names: &[String],
    limit: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    let want = sizes(source)?;
    loop {
        let began = Instant::now();
        if let Ok(have) = sizes(target)
            && names.iter().all(|n| have.get(n) == want.get(n))
        {
            let before = identities(target, names);
            let mut all = true;
            for n in names {
                if !same_file(&source.join(n), &target.join(n))? {
                    all = false;
                    break;
                }
            }
            if all && identities(target, names) == before {
                return Ok(began);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not match {} within {limit:?}",
                target.display(),
                source.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- process costs

pub(super) fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

// ---------------------------------------------------------------- syncthing
