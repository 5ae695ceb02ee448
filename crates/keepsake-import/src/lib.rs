//! Bringing a library in: a folder tree, a Google Takeout archive (zip or tgz) or an iCloud
//! Photos export, read in place — an archive is never unpacked whole — each photo and video
//! uploaded through the device's own upload path (`keepsake_device::upload_incoming`: only
//! missing chunks travel, the quota is checked first, every commit idempotent) into
//! `Imports/<origin> <date>/`, keeping the source's folders, with what its sidecar says:
//! capture time and place (outranking the file's EXIF, which a person may have corrected in
//! the service they leave), caption, favourite, hidden, albums.
//!
//! Bytes the library holds already are reported and skipped (unless asked to keep
//! duplicates); an album folder's copy of a photo adds the album to it. A journal on disk
//! makes an interrupted import go on where it stopped, in the same folder, without reading
//! again what it finished. A damaged entry, a sidecar that does not parse, a name that
//! climbs out (`../`), an entry that expands a hundred times over (a zip bomb) is one
//! problem in the summary; nothing else stops.
//!
//! ```no_run
//! # async fn demo<C: keepsake_device::Cloud>(mut cloud: C) -> Result<(), keepsake_import::ImportError> {
//! use keepsake_import::{Journal, Options, Source, import};
//! let source = Source::open("takeout-20261207.zip".as_ref())?;
//! let journal = Journal::open("imports.sqlite3".as_ref())?;
//! let options = Options {
//!     account: "me".into(),
//!     keep_duplicates: false,
//!     spool: std::env::temp_dir(),
//!     clock: std::sync::Arc::new(keepsake_store::SystemClock),
//! };
//! let summary = import(&mut cloud, &source, &journal, &options, &mut |_| {}).await?;
//! println!("{} imported into {}", summary.imported, summary.destination);
//! # Ok(()) }
//! ```

mod journal;
mod run;
pub mod sidecar;
pub mod source;

pub use journal::Journal;
pub use run::{MEDIA_EXTENSIONS, Options, Progress, Summary, album_id, import, is_media};
pub use sidecar::{Details, Origin, Sidecars};
pub use source::{Problem, Source};

use keepsake_device::CloudError;

/// Why an import stopped (a single entry's trouble never stops one: it is a [`Problem`]).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source cannot be opened or read at all.
    #[error("{path} cannot be imported: {reason}")]
    Unreadable {
        /// The source.
        path: String,
        /// Why, in words for a person.
        reason: String,
    },
    /// The cloud cannot be reached, or refuses everything (a full plan, a revoked device).
    #[error("{0} — run the same import again to go on where it stopped")]
    Cloud(CloudError),
    /// The import journal failed.
    #[error("the import journal: {0}")]
    Journal(#[from] rusqlite::Error),
}

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn day_of(ms: i64) -> String {
    let (year, month, day) = keepsake_media::civil::civil_from_days(ms.div_euclid(86_400_000));
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn days_are_spelt_as_calendars_do() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_709_164_800_000), "2024-02-29");
        assert_eq!(day_of(1_796_601_600_000), "2026-12-07");
    }

    proptest! {
        #[test]
        fn a_day_spelt_reads_back_as_the_same_day(ms in 0i64..8_000_000_000_000) {
            let day = day_of(ms);
            let (y, rest) = day.split_once('-').unwrap();
            let (m, d) = rest.split_once('-').unwrap();
            let start = source::civil_ms(y.parse().unwrap(), m.parse().unwrap(), d.parse().unwrap(), 0).unwrap();
            prop_assert!(start <= ms && ms < start + 86_400_000);
        }
    }
}
