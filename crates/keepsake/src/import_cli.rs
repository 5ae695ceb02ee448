//! `keepsake import`: a folder, a Google Takeout archive or an iCloud Photos export into the
//! account's library, with a bar while it runs and a summary at the end. An interruption
//! (the network, an expired sign-in) is waited out and the import goes on where it stopped.

use crate::device_cli::{Credentials, ServerArgs, signed_in, size, thousands};
use anyhow::{Context, Result, bail};
use keepsake_device::Reason;
use keepsake_import::{ImportError, Journal, Options, Problem, Source, Summary, import};
use keepsake_store::SystemClock;
use keepsake_transport::client::BearerAuth;
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Tries, after the first, when the cloud cannot be reached or the sign-in expired.
const RETRIES: u32 = 5;

/// The journal's place when none is given: the user's state directory.
fn default_journal() -> Result<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(
            std::env::var_os("HOME")
                .context("HOME is not set: name the import journal's file with --journal")?,
        )
        .join(".local/state"),
    };
    Ok(state.join("keepsake/imports.sqlite3"))
}

/// `keepsake import SOURCE`.
pub async fn run(
    server: ServerArgs,
    credentials: Credentials,
    source: PathBuf,
    keep_duplicates: bool,
    journal: Option<PathBuf>,
) -> Result<()> {
    let source = Source::open(&source)?;
    let journal_path = match journal {
        Some(path) => path,
        None => default_journal()?,
    };
    let journal = Journal::open(&journal_path)
        .with_context(|| format!("opening the import journal {}", journal_path.display()))?;
    let spool = tempfile::tempdir().context("making a folder to unpack large entries in")?;
    let options = Options {
        account: credentials.account.clone(),
        keep_duplicates,
        spool: spool.path().to_path_buf(),
        clock: Arc::new(SystemClock),
    };
    let bar = crate::progress::Bar::new();
    let mut tries = 0;
    let summary = loop {
        let (channel, token) = signed_in(&server, &credentials).await?;
        let mut cloud = CloudClient::new(channel, BearerAuth::new(&token), ClientConfig::default());
        let mut show = |p: &keepsake_import::Progress| {
            bar.show("importing", p.done, p.total, p.bytes_done, p.bytes_total)
        };
        match import(&mut cloud, &source, &journal, &options, &mut show).await {
            Ok(summary) => break summary,
            Err(ImportError::Cloud(e))
                if tries < RETRIES && (e.transient || e.reason == Reason::Unauthenticated) =>
            {
                tries += 1;
                bar.clear();
                eprintln!(
                    "{e}; going on in {} s (try {tries} of {RETRIES})",
                    1 << tries
                );
                tokio::time::sleep(Duration::from_secs(1 << tries)).await;
            }
            Err(e) => {
                bar.clear();
                bail!("the import stopped: {e}");
            }
        }
    };
    bar.clear();
    print_summary(&summary, keep_duplicates);
    Ok(())
}

/// At most this many lines of each list in the summary.
const LISTED: usize = 20;

fn print_summary(s: &Summary, keep_duplicates: bool) {
    println!(
        "Imported {} photos and videos ({}) into \"{}\".",
        thousands(s.imported),
        size(s.imported_bytes),
        s.destination
    );
    if !s.already_there.is_empty() {
        let hint = if keep_duplicates {
            ""
        } else {
            " — skipped; --keep-duplicates imports them anyway"
        };
        println!(
            "Already in the library: {}{hint}",
            thousands(s.already_there.len() as u64)
        );
        let lines: Vec<String> = s
            .already_there
            .iter()
            .map(|(entry, there)| format!("{entry} (as {there})"))
            .collect();
        list(&lines);
    }
    if s.earlier > 0 {
        println!("Done by an earlier run: {}", thousands(s.earlier));
    }
    if !s.skipped.is_empty() {
        println!("Skipped: {}", thousands(s.skipped.len() as u64));
        list(&problems(&s.skipped));
    }
    if !s.details_missed.is_empty() {
        println!(
            "Imported, but their favourite, caption or albums could not all be set: {}",
            thousands(s.details_missed.len() as u64)
        );
        list(&problems(&s.details_missed));
    }
    if s.other_files > 0 {
        println!(
            "Left out (not photos or videos): {} files",
            thousands(s.other_files)
        );
    }
}

fn problems(p: &[Problem]) -> Vec<String> {
    p.iter()
        .map(|p| format!("{} — {}", p.path, p.reason))
        .collect()
}

fn list(lines: &[String]) {
    for line in lines.iter().take(LISTED) {
        println!("  {line}");
    }
    if lines.len() > LISTED {
        println!("  … and {} more", thousands((lines.len() - LISTED) as u64));
    }
}
