//! Calendar dates to Unix time, without a time-zone database: EXIF and QuickTime both
//! record plain civil times.

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's well-known
/// days-from-civil arithmetic, restated here).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (year, month, day) of a day counted from 1970-01-01 (the
/// inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A civil date and time as Unix milliseconds, if it is a real moment.
pub(crate) fn unix_ms(
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second reads as the next second; a year before photography is a blank field.
    if second > 60 || year < 1826 {
        return None;
    }
    let days = days_from_civil(i64::from(year), u32::from(month), u32::from(day));
    let seconds =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    Some(seconds * 1000)
}

/// Seconds since 1904-01-01 (QuickTime's epoch) as Unix milliseconds; 0 means unset.
pub(crate) fn from_1904(seconds: u64) -> Option<i64> {
    const OFFSET: i64 = 2_082_844_800;
    if seconds == 0 {
        return None;
    }
    let s = i64::try_from(seconds).ok()?;
    Some((s - OFFSET) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(unix_ms(2024, 2, 29, 12, 0, 0), Some(1_709_208_000_000));
        assert_eq!(unix_ms(2024, 13, 1, 0, 0, 0), None);
        assert_eq!(unix_ms(0, 1, 1, 0, 0, 0), None);
        assert_eq!(from_1904(2_082_844_800), Some(0));
        assert_eq!(from_1904(0), None);
    }
}
