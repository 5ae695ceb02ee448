//! What the files beside the photos say of them: Google Takeout's JSON sidecars (capture
//! time, place, description, favourite, archived) and album folders' `metadata.json`, and
//! an iCloud Photos export's details and album tables (CSV). They outrank the photo's own
//! EXIF: they keep what a person corrected in the service they leave.

use crate::source::{MAX_SIDE_FILE_BYTES, MAX_TABLE_BYTES, Problem, civil_ms};
use serde::Deserialize;
use std::collections::HashMap;

/// What the side files say of one photo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// When it was taken.
    pub capture_time_ms: Option<i64>,
    /// Where, in 1e-7 degrees (latitude, longitude).
    pub position_e7: Option<(i32, i32)>,
    /// Its caption.
    pub description: Option<String>,
    /// Marked as a favourite.
    pub favorite: bool,
    /// Hidden (Google's "archived", iCloud's hidden album).
    pub hidden: bool,
    /// In the service's trash when exported: not brought back.
    pub deleted: bool,
    /// The albums it belongs to.
    pub albums: Vec<String>,
}

/// Where a source comes from, as its folder in `Imports/` is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A Google Takeout archive (JSON sidecars).
    Takeout,
    /// An iCloud Photos export (details CSV).
    ICloud,
    /// Anything else: a folder tree or an archive of one.
    Files,
}

impl Origin {
    /// The word the import's folder starts with.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Takeout => "Takeout",
            Origin::ICloud => "iCloud",
            Origin::Files => "Files",
        }
    }
}

/// A Takeout sidecar, as far as an import reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TakeoutJson {
    title: Option<String>,
    description: Option<String>,
    photo_taken_time: Option<Timestamp>,
    geo_data: Option<Geo>,
    geo_data_exif: Option<Geo>,
    #[serde(default)]
    favorited: bool,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    trashed: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct Timestamp {
    /// Seconds since the epoch, as a string.
    timestamp: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Geo {
    latitude: f64,
    longitude: f64,
}

/// An album folder's `metadata.json`.
#[derive(Debug, Deserialize)]
struct AlbumJson {
    title: String,
}

/// A parsed sidecar, or why it does not parse.
type Parsed = Result<TakeoutJson, String>;

/// One row of an iCloud details table.
#[derive(Debug, Clone, Default)]
struct ICloudRow {
    favorite: bool,
    hidden: bool,
    deleted: bool,
    created_ms: Option<i64>,
}

/// Every side file of a source, read before its photos.
#[derive(Debug, Default)]
pub struct Sidecars {
    /// Takeout sidecars by folder, then by file name.
    takeout: HashMap<String, HashMap<String, Parsed>>,
    /// Album titles by folder.
    album_titles: HashMap<String, String>,
    /// iCloud details by photo file name.
    icloud: HashMap<String, ICloudRow>,
    /// iCloud album names by photo file name.
    icloud_albums: HashMap<String, Vec<String>>,
    /// Side files that did not parse.
    pub problems: Vec<Problem>,
}

/// Whether a file is one an import reads as a side file, and the most it reads of one.
pub fn side_file_limit(path: &str) -> Option<u64> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".json") {
        Some(MAX_SIDE_FILE_BYTES)
    } else if lower.ends_with(".csv") {
        Some(MAX_TABLE_BYTES)
    } else {
        None
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

impl Sidecars {
    /// Takes one side file (one [`side_file_limit`] names).
    pub fn add(&mut self, path: &str, bytes: &[u8]) {
        let (dir, name) = split(path);
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            self.add_table(path, bytes);
            return;
        }
        if lower == "metadata.json" {
            match serde_json::from_slice::<AlbumJson>(bytes) {
                Ok(album) if !album.title.trim().is_empty() => {
                    self.album_titles
                        .insert(dir.to_string(), album.title.trim().to_string());
                }
                Ok(_) => {}
                Err(e) => self.problems.push(Problem {
                    path: path.to_string(),
                    reason: format!("album details do not parse ({e}): its album is not made"),
                }),
            }
            return;
        }
        let parsed = serde_json::from_slice::<TakeoutJson>(bytes).map_err(|e| e.to_string());
        if let Err(e) = &parsed {
            self.problems.push(Problem {
                path: path.to_string(),
                reason: format!(
                    "sidecar does not parse ({e}): its photo keeps the dates and place \
                     the file itself records"
                ),
            });
        }
        self.takeout
            .entry(dir.to_string())
            .or_default()
            .insert(name.to_string(), parsed);
    }

    fn add_table(&mut self, path: &str, bytes: &[u8]) {
        let (dir, name) = split(path);
        let text = String::from_utf8_lossy(bytes);
        let mut rows = text.lines().map(csv_fields);
        let Some(header) = rows.next() else {
            return;
        };
        let column = |want: &str| header.iter().position(|h| h.eq_ignore_ascii_case(want));
        if let Some(img) = column("imgName") {
            let (fav, hid, del, created) = (
                column("favorite"),
                column("hidden"),
                column("deleted"),
                column("originalCreationDate"),
            );
            let yes = |row: &[String], at: Option<usize>| {
                at.and_then(|i| row.get(i))
                    .is_some_and(|v| v.eq_ignore_ascii_case("yes") || v == "true")
            };
            for row in rows {
                let Some(photo) = row.get(img).filter(|n| !n.is_empty()) else {
                    continue;
                };
                let details = ICloudRow {
                    favorite: yes(&row, fav),
                    hidden: yes(&row, hid),
                    deleted: yes(&row, del),
                    created_ms: created
                        .and_then(|i| row.get(i))
                        .and_then(|d| icloud_date(d)),
                };
                self.icloud.insert(photo.clone(), details);
            }
        } else if column("Images").is_some() || dir.rsplit('/').next() == Some("Albums") {
            let album = name.trim_end_matches(".csv").trim_end_matches(".CSV");
            for row in rows {
                if let Some(photo) = row.first().filter(|n| !n.is_empty()) {
                    self.icloud_albums
                        .entry(photo.clone())
                        .or_default()
                        .push(album.to_string());
                }
            }
        } else {
            self.problems.push(Problem {
                path: path.to_string(),
                reason: "a table with neither an imgName nor an Images column: not read".into(),
            });
        }
    }

    /// Where the source comes from, by its side files.
    pub fn origin(&self) -> Origin {
        if !self.icloud.is_empty() || !self.icloud_albums.is_empty() {
            Origin::ICloud
        } else if !self.takeout.is_empty() || !self.album_titles.is_empty() {
            Origin::Takeout
        } else {
            Origin::Files
        }
    }

    /// What the side files say of the photo at `path`; `None` when nothing does.
    pub fn details_for(&self, path: &str) -> Option<Details> {
        let (dir, name) = split(path);
        let mut details = match self.takeout_sidecar(dir, name) {
            Some(json) => takeout_details(json),
            None => match self.icloud.get(name) {
                Some(row) => Details {
                    capture_time_ms: row.created_ms,
                    favorite: row.favorite,
                    hidden: row.hidden,
                    deleted: row.deleted,
                    ..Details::default()
                },
                None => Details::default(),
            },
        };
        if let Some(title) = self.album_titles.get(dir) {
            details.albums.push(title.clone());
        }
        if let Some(albums) = self.icloud_albums.get(name) {
            details.albums.extend(albums.iter().cloned());
        }
        details.albums.sort();
        details.albums.dedup();
        (details != Details::default()).then_some(details)
    }

    /// The sidecar Google wrote for `name` in `dir`, found as Takeout names them:
    /// `NAME.json` or `NAME.supplemental-metadata.json`, cut to 51 characters, a copy's
    /// `(n)` moved to the end (`IMG(1).jpg` → `IMG.jpg(1).json`), an edited copy
    /// (`IMG-edited.jpg`) sharing its original's; else the one sidecar titled `name`.
    fn takeout_sidecar(&self, dir: &str, name: &str) -> Option<&TakeoutJson> {
        let jsons = self.takeout.get(dir)?;
        let parsed = |file: &str| jsons.get(file).and_then(|p| p.as_ref().ok());
        let (plain, copy) = copy_number(name);
        let suffix = copy.map(|n| format!("({n})")).unwrap_or_default();
        for base in [format!("{plain}.supplemental-metadata"), plain.clone()] {
            if let Some(json) = parsed(&format!("{base}{suffix}.json")) {
                return Some(json);
            }
        }
        // Cut to fit: the longest sidecar name that is a prefix of the full one.
        let full = format!("{plain}.supplemental-metadata");
        let cut = jsons
            .iter()
            .filter_map(|(file, p)| {
                let stem = file.strip_suffix(".json")?.strip_suffix(suffix.as_str())?;
                let is_cut = file.chars().count() >= 46 || stem.starts_with(&format!("{plain}."));
                (is_cut && stem.len() >= plain.len().min(20) && full.starts_with(stem))
                    .then_some((stem.len(), p.as_ref().ok()?))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, json)| json);
        if cut.is_some() {
            return cut;
        }
        if let Some(stem) = plain.rsplit_once('.').map(|(s, _)| s)
            && let Some(original) = stem.strip_suffix("-edited")
        {
            let ext = &plain[stem.len()..];
            return self.takeout_sidecar(dir, &format!("{original}{ext}"));
        }
        let mut titled = jsons
            .values()
            .filter_map(|p| p.as_ref().ok())
            .filter(|j| j.title.as_deref() == Some(name));
        match (titled.next(), titled.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

/// `IMG(1).jpg` → (`IMG.jpg`, Some(1)); any other name as it is.
fn copy_number(name: &str) -> (String, Option<u32>) {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) => (stem, format!(".{ext}")),
        None => (name, String::new()),
    };
    if let Some(open) = stem.rfind('(')
        && let Some(number) = stem[open + 1..].strip_suffix(')')
        && let Ok(n) = number.parse::<u32>()
    {
        return (format!("{}{ext}", &stem[..open]), Some(n));
    }
    (name.to_string(), None)
}

fn takeout_details(json: &TakeoutJson) -> Details {
    let position = [json.geo_data, json.geo_data_exif]
        .into_iter()
        .flatten()
        // Google writes 0,0 for "no place".
        .find(|g| g.latitude != 0.0 || g.longitude != 0.0)
        .and_then(|g| {
            Some((
                keepsake_device::degrees_e7(g.latitude)?,
                keepsake_device::degrees_e7(g.longitude)?,
            ))
        });
    Details {
        capture_time_ms: json
            .photo_taken_time
            .as_ref()
            .and_then(|t| t.timestamp.trim().parse::<i64>().ok())
            .filter(|s| *s > 0)
            .map(|s| s * 1000),
        position_e7: position,
        description: json
            .description
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        favorite: json.favorited,
        hidden: json.archived,
        deleted: json.trashed,
        albums: Vec::new(),
    }
}

/// The fields of one CSV line (quotes and doubled quotes understood).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// An iCloud export's date, `Tuesday June 16,2020 2:12 PM GMT`, as Unix milliseconds.
fn icloud_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let words: Vec<String> = text
        .replace(',', " ")
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let at = words.iter().position(|w| MONTHS.contains(&w.as_str()))?;
    let month = MONTHS.iter().position(|m| *m == words[at])? as u32 + 1;
    let day: u32 = words.get(at + 1)?.parse().ok()?;
    let year: i64 = words.get(at + 2)?.parse().ok()?;
    let (hour, minute) = words.get(at + 3)?.split_once(':')?;
    let (mut hour, minute): (u32, u32) = (hour.parse().ok()?, minute.parse().ok()?);
    match words.get(at + 4).map(String::as_str) {
        Some("pm") if hour < 12 => hour += 12,
        Some("am") if hour == 12 => hour = 0,
        _ => {}
    }
    if hour > 23 || minute > 59 {
        return None;
    }
    civil_ms(year, month, day, hour * 3600 + minute * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(title: &str, taken_s: i64, lat: f64, lon: f64) -> Vec<u8> {
        serde_json::json!({
            "title": title,
            "description": "",
            "photoTakenTime": {"timestamp": taken_s.to_string(), "formatted": "…"},
            "geoData": {"latitude": lat, "longitude": lon, "altitude": 0.0},
            "favorited": true
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn takeout_sidecars_are_found_as_google_names_them() {
        let mut s = Sidecars::default();
        s.add(
            "Photos from 2019/IMG_1.JPG.json",
            &sidecar("IMG_1.JPG", 1, 0.0, 0.0),
        );
        s.add(
            "Photos from 2019/IMG_2.JPG.supplemental-metadata.json",
            &sidecar("IMG_2.JPG", 2, 0.0, 0.0),
        );
        s.add(
            "Photos from 2019/IMG_3.JPG(1).json",
            &sidecar("IMG_3.JPG", 3, 0.0, 0.0),
        );
        s.add(
            "Photos from 2019/IMG_3.JPG.json",
            &sidecar("IMG_3.JPG", 30, 0.0, 0.0),
        );
        // Cut to 51 characters.
        s.add(
            "Photos from 2019/PXL_20230101_123456789.PORTRAIT.jpg.supplemental-m.json",
            &sidecar("PXL_20230101_123456789.PORTRAIT.jpg", 4, 0.0, 0.0),
        );
        s.add(
            "Photos from 2019/renamed.json",
            &sidecar("Odd name.png", 5, 0.0, 0.0),
        );
        let taken = |p: &str| s.details_for(p).and_then(|d| d.capture_time_ms);
        assert_eq!(taken("Photos from 2019/IMG_1.JPG"), Some(1000));
        assert_eq!(taken("Photos from 2019/IMG_2.JPG"), Some(2000));
        assert_eq!(taken("Photos from 2019/IMG_3(1).JPG"), Some(3000));
        assert_eq!(taken("Photos from 2019/IMG_3.JPG"), Some(30_000));
        assert_eq!(taken("Photos from 2019/IMG_1-edited.JPG"), Some(1000));
        assert_eq!(
            taken("Photos from 2019/PXL_20230101_123456789.PORTRAIT.jpg"),
            Some(4000)
        );
        assert_eq!(taken("Photos from 2019/Odd name.png"), Some(5000));
        assert_eq!(taken("Photos from 2019/IMG_9.JPG"), None);
        assert_eq!(taken("elsewhere/IMG_1.JPG"), None);
    }

    #[test]
    fn places_at_zero_zero_are_no_place_and_album_folders_name_albums() {
        let mut s = Sidecars::default();
        s.add("Trip/a.jpg.json", &sidecar("a.jpg", 10, 0.0, 0.0));
        s.add("Trip/b.jpg.json", &sidecar("b.jpg", 10, 41.9028, 12.4964));
        s.add("Trip/metadata.json", br#"{"title": "Rome 2019"}"#);
        let a = s.details_for("Trip/a.jpg").unwrap();
        assert_eq!(a.position_e7, None);
        assert_eq!(a.albums, vec!["Rome 2019".to_string()]);
        assert!(a.favorite);
        let b = s.details_for("Trip/b.jpg").unwrap();
        assert_eq!(b.position_e7, Some((419_028_000, 124_964_000)));
        assert_eq!(s.origin(), Origin::Takeout);
    }

    #[test]
    fn a_sidecar_that_does_not_parse_is_a_problem_and_its_photo_has_no_details() {
        let mut s = Sidecars::default();
        s.add(
            "x/IMG.jpg.json",
            b"{\"title\": \"IMG.jpg\", \"photoTakenTime\": ",
        );
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0].reason.contains("does not parse"));
        assert_eq!(s.details_for("x/IMG.jpg"), None);
    }

    #[test]
    fn icloud_details_and_albums_are_read_from_their_tables() {
        let mut s = Sidecars::default();
        s.add(
            "iCloud Photos/Photo Details.csv",
            b"imgName,fileChecksum,favorite,hidden,deleted,originalCreationDate,viewCount,importDate\r\n\
              IMG_0001.HEIC,abc,yes,no,no,\"Tuesday June 16,2020 2:12 PM GMT\",3,x\r\n\
              IMG_0002.HEIC,def,no,yes,yes,\"Monday January 6,2020 12:05 AM GMT\",0,x\r\n",
        );
        s.add("iCloud Photos/Albums/Beach.csv", b"Images\nIMG_0001.HEIC\n");
        let one = s.details_for("iCloud Photos/Photos/IMG_0001.HEIC").unwrap();
        assert_eq!(one.capture_time_ms, Some(1_592_316_720_000));
        assert!(one.favorite && !one.hidden && !one.deleted);
        assert_eq!(one.albums, vec!["Beach".to_string()]);
        let two = s.details_for("iCloud Photos/Photos/IMG_0002.HEIC").unwrap();
        assert!(two.hidden && two.deleted);
        assert_eq!(two.capture_time_ms, Some(1_578_269_100_000));
        assert_eq!(s.origin(), Origin::ICloud);
    }

    #[test]
    fn csv_fields_keep_quoted_commas_and_quotes() {
        assert_eq!(
            csv_fields(r#"a,"b, c","say ""hi""",d"#),
            vec!["a", "b, c", r#"say "hi""#, "d"]
        );
    }
}
