//! The server's derivative worker: takes due jobs from the library's queue and makes
//! thumbnails and previews with keepsake-media, and video posters with ffmpeg when the
//! server has it (otherwise the asset says none exists).

use keepsake_library::{Cloud, DeriveJob, MadeFile, Outcome};
use keepsake_media::{PREVIEW_EDGE, THUMBNAIL_EDGE, derive};
use keepsake_transport::ChangeNotifier;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Jobs taken per round.
const BATCH: usize = 8;

fn have_ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first frame of a movie as a JPEG, through ffmpeg.
fn first_frame(movie: &[u8]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (input, output) = (dir.path().join("movie"), dir.path().join("poster.jpg"));
    std::fs::write(&input, movie).map_err(|e| e.to_string())?;
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&input)
        .args(["-frames:v", "1", "-q:v", "3"])
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("ffmpeg could not read a frame".into());
    }
    std::fs::read(&output).map_err(|e| e.to_string())
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
pub fn make(job: &DeriveJob, bytes: &[u8], ffmpeg: bool) -> Outcome {
    if job.video {
        if !ffmpeg {
            return Outcome::NoneAvailable("this server has no ffmpeg: no poster".into());
        }
        return match first_frame(bytes) {
            Ok(frame) => made(["thumbnail", "poster"], &frame),
            Err(e) => Outcome::Unreadable(e),
        };
    }
    if keepsake_media::probe(bytes).format == "heic" {
        return Outcome::NoneAvailable("HEIC previews need a build with HEIC decoding".into());
    }
    made(["thumbnail", "preview"], bytes)
}

/// Runs the queue every `every` (sooner after a round that found work).
pub fn spawn(cloud: Arc<Cloud>, changes: ChangeNotifier, every: Duration) {
    let ffmpeg = have_ffmpeg();
    tokio::spawn(async move {
        loop {
            let worker = cloud.clone();
            let round = tokio::task::spawn_blocking(move || {
                worker.run_derivations(BATCH, &|job, bytes| make(job, bytes, ffmpeg))
            })
            .await;
            let busy = match round {
                Ok(Ok(report)) => {
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
