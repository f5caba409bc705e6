//! Timestamps in the one format slipway writes everywhere: RFC 3339, UTC, microseconds,
//! `2026-11-24T18:00:00.123456+00:00` (the log format in DESIGN.md).

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const STAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00");
const COMPACT: &[FormatItem<'static>] =
    format_description!("[year][month][day][hour][minute][second][subsecond digits:3]");

/// The current UTC time as a log/DB timestamp.
pub fn now() -> String {
    stamp(OffsetDateTime::now_utc())
}

pub fn stamp(t: OffsetDateTime) -> String {
    // Formatting with a static description into a String cannot fail for UTC times.
    t.format(STAMP).unwrap_or_else(|_| t.to_string())
}

/// A sortable, filename-safe stamp for build ids: `20261124180000123`.
pub fn compact_now() -> String {
    let t = OffsetDateTime::now_utc();
    t.format(COMPACT).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses a stamp written by [`now`]; used for uptimes.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_has_microseconds_and_utc_offset() {
        let s = super::now();
        assert_eq!(s.len(), "2026-11-24T18:00:00.123456+00:00".len(), "{s}");
        assert!(s.ends_with("+00:00"));
        assert!(super::parse(&s).is_some());
    }
}
