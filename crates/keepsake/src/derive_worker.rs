//! The server's derivative worker: takes due jobs from the library's queue and makes
//! thumbnails and previews with keepsake-media — video posters through ffmpeg and HEIC
//! stills through heif-convert when the server has them (otherwise the asset says none
//! exists, and why).

use keepsake_library::{Cloud, MadeFile, Original, Outcome};
use keepsake_media::{PREVIEW_EDGE, THUMBNAIL_EDGE, derive};
use keepsake_transport::ChangeNotifier;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Jobs taken per round.
const BATCH: usize = 8;

/// The external tools this server has: ffmpeg for video posters, heif-convert (Debian's
/// libheif-examples) for HEIC stills, which the default build does not decode itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tools {
    /// ffmpeg answers.
    pub ffmpeg: bool,
    /// heif-convert answers.
    pub heif_convert: bool,
    /// `nice` answers: the tools run at a lower priority than the server, so decoding a
    /// 4K frame or a HEIC never slows the uploads and downloads beside it.
    pub nice: bool,
}

fn answers(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Tools {
    /// Looks for the tools on PATH.
    pub fn find() -> Self {
        Self {
            ffmpeg: answers("ffmpeg", "-version"),
            heif_convert: answers("heif-convert", "--version"),
            nice: answers("nice", "--version"),
        }
    }
}

/// Runs `tool` over the bytes written to a temp file; returns the JPEG it wrote.
fn convert(bytes: &[u8], tool: &str, args: &[&str], nice: bool) -> Result<Vec<u8>, Outcome> {
    convert_written(
        &|out| out.write_all(bytes).map(|()| bytes.len() as u64),
        tool,
        args,
        nice,
    )
}

/// Runs `tool` over what `write` puts in a temp file (a video streams there chunk by chunk,
/// never whole in memory); returns the JPEG it wrote. Only the tool refusing the file makes
/// it unreadable: a failure on the server's side (temp space, the store, starting the tool)
/// is retried later.
fn convert_written(
    write: &dyn Fn(&mut dyn Write) -> std::io::Result<u64>,
    tool: &str,
    args: &[&str],
    nice: bool,
) -> Result<Vec<u8>, Outcome> {
    let here = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| Outcome::Retry(format!("{what}: {e}"))
    };
    let dir = tempfile::tempdir().map_err(here("a temporary directory"))?;
    let (input, output) = (dir.path().join("original"), dir.path().join("out.jpg"));
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(&input).map_err(here("a temporary file"))?);
    write(&mut file).map_err(here("writing the original out"))?;
    file.flush().map_err(here("writing the original out"))?;
    drop(file);
    let mut cmd = if nice {
        let mut nice = Command::new("nice");
        nice.args(["-n", "10", tool]);
        nice
    } else {
        Command::new(tool)
    };
    match tool {
        "ffmpeg" => cmd
            .args(["-v", "error", "-y", "-i"])
            .arg(&input)
            .args(args)
            .arg(&output),
        _ => cmd.args(args).arg(&input).arg(&output),
    };
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(here(&format!("starting {tool}")))?;
    if !status.success() {
        return Err(Outcome::Unreadable(format!("{tool} could not read it")));
    }
    std::fs::read(&output).map_err(here(&format!("reading what {tool} wrote")))
}

fn made(roles: [&str; 2], still: &[u8]) -> Outcome {
    match derive(still, &[THUMBNAIL_EDGE, PREVIEW_EDGE]) {
        Ok(files) => Outcome::Made(
            files
                .into_iter()
                .zip(roles)
                .map(|(d, role)| MadeFile {
                    role: role.into(),
                    width: d.width,
                    height: d.height,
                    bytes: d.jpeg,
                })
                .collect(),
        ),
        Err(e) => Outcome::Unreadable(e.to_string()),
    }
}

/// Thumbnail and preview of a still; thumbnail and poster of a video.
pub fn make(original: Original<'_>, tools: Tools) -> Outcome {
    let bytes = match original {
        Original::Video(write) => {
            if !tools.ffmpeg {
                return Outcome::NoneAvailable("this server has no ffmpeg: no poster".into());
            }
            return match convert_written(
                write,
                "ffmpeg",
                &["-frames:v", "1", "-q:v", "3"],
                tools.nice,
            ) {
                Ok(frame) => made(["thumbnail", "poster"], &frame),
                Err(outcome) => outcome,
            };
        }
        Original::Still(bytes) => bytes,
    };
    if keepsake_media::probe(bytes).format == "heic" {
        if !tools.heif_convert {
            return Outcome::NoneAvailable(
                "this server has no heif-convert (libheif-examples): no HEIC preview".into(),
            );
        }
        // heif-convert applies the image's own rotation; the JPEG it writes is upright.
        return match convert(bytes, "heif-convert", &["-q", "92"], tools.nice) {
            Ok(jpeg) => made(["thumbnail", "preview"], &jpeg),
            Err(outcome) => outcome,
        };
    }
    made(["thumbnail", "preview"], bytes)
}

/// Previews wait until no new version was committed for this long: during a first sync
/// the two cores go to the uploads, and previews follow the burst.
const QUIET_MS: i64 = 2_000;

/// …but never longer than this after a photo arrived.
const MAX_DEFER_MS: i64 = 60_000;

/// How long a round's hold on the `derivations` lease lasts: a server that dies with it
/// leaves the queue to another this long after its last round.
const LEASE_MS: i64 = 120_000;

/// Runs the queue every `every` (sooner after a round that found work), once uploads are
/// quiet, while this server (`node`) holds the `derivations` lease: of several servers on
/// one database, one makes previews at a time.
pub fn spawn(cloud: Arc<Cloud>, changes: ChangeNotifier, every: Duration, node: String) {
    let tools = Tools::find();
    tracing::info!(?tools, "derivative worker started");
    tokio::spawn(async move {
        loop {
            let (worker, node) = (cloud.clone(), node.clone());
            // On a blocking thread: both read the library, which may be busy committing.
            let round = tokio::task::spawn_blocking(move || {
                if !worker.uploads_quiet(QUIET_MS, MAX_DEFER_MS)?
                    || !worker.hold_lease("derivations", &node, LEASE_MS)?
                {
                    return Ok(None);
                }
                worker
                    .run_derivations(BATCH, &|_, original| make(original, tools))
                    .map(Some)
            })
            .await;
            let busy = match round {
                Ok(Ok(None)) => false,
                Ok(Ok(Some(report))) => {
                    let any = report.done + report.failed + report.none + report.retried > 0;
                    if any {
                        changes.notify_all();
                    }
                    report.done + report.failed + report.none > 0
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "derivative round failed; will retry");
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "derivative worker panicked");
                    false
                }
            };
            if !busy {
                tokio::time::sleep(every).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(outcome: Outcome) -> Vec<(String, u32, u32)> {
        match outcome {
            Outcome::Made(files) => files
                .into_iter()
                .map(|f| (f.role, f.width, f.height))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    /// A video handed over as the library does: written out on request.
    fn video(bytes: &[u8]) -> impl Fn(&mut dyn Write) -> std::io::Result<u64> + '_ {
        move |out| out.write_all(bytes).map(|()| bytes.len() as u64)
    }

    #[test]
    fn without_the_tools_the_asset_says_why_nothing_exists() {
        let none = Tools::default();
        assert!(matches!(
            make(Original::Video(&video(b"movie")), none),
            Outcome::NoneAvailable(_)
        ));
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert!(matches!(
            make(Original::Still(heic), none),
            Outcome::NoneAvailable(_)
        ));
        assert!(matches!(
            make(Original::Still(b"garbage"), none),
            Outcome::Unreadable(_)
        ));
    }

    /// The store failing mid-video is the server's trouble, not the file's: retried later.
    #[test]
    fn a_video_the_store_cannot_write_out_is_retried_not_unreadable() {
        let tools = Tools {
            ffmpeg: true,
            ..Tools::default()
        };
        let failing = |_: &mut dyn Write| -> std::io::Result<u64> {
            Err(std::io::Error::other("stored chunk is corrupt"))
        };
        assert!(matches!(
            make(Original::Video(&failing), tools),
            Outcome::Retry(why) if why.contains("writing the original out")
        ));
    }

    /// Real HEIC and MP4 from `cargo xtask media` (which points KEEPSAKE_MEDIA_DIR at them
    /// after installing ffmpeg and heif-convert).
    #[test]
    #[ignore = "needs files and tools from `cargo xtask media`"]
    fn heic_previews_and_video_posters_through_the_servers_tools() {
        let dir = std::path::PathBuf::from(std::env::var("KEEPSAKE_MEDIA_DIR").unwrap());
        let tools = Tools::find();
        assert!(tools.ffmpeg && tools.heif_convert, "{tools:?}");
        let heic = std::fs::read(dir.join("still.heic")).unwrap();
        assert_eq!(
            sizes(make(Original::Still(&heic), tools)),
            [
                ("thumbnail".into(), 256, 171),
                ("preview".into(), 1200, 800)
            ]
        );
        let mov = std::fs::read(dir.join("clip.mov")).unwrap();
        // ffmpeg turns the frame by the movie's rotation: the poster stands upright.
        assert_eq!(
            sizes(make(Original::Video(&video(&mov)), tools)),
            [("thumbnail".into(), 144, 256), ("poster".into(), 360, 640)]
        );
    }
}
