//! Times as people and scripts read them (docs/JSON.md, "Times"): RFC 3339
//! with the offset, in the node's local time zone (`TZ`, else
//! `/etc/localtime`, as `date` does) or in UTC after [`set_utc`]
//! (`--utc`). Every time airlock keeps is Unix seconds; this only shows it.
//! JSON output carries both: `FIELD` in Unix seconds and `FIELD_rfc3339`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether times are shown in UTC rather than the local zone.
static UTC: AtomicBool = AtomicBool::new(false);

/// Show every time from now on in UTC (`--utc`), or in the local zone.
pub fn set_utc(utc: bool) {
    UTC.store(utc, Ordering::Relaxed);
}

/// `secs` (Unix seconds) as RFC 3339 (section 5.6), to the second:
/// `2026-01-01T01:00:00+01:00` in the local zone, `2026-01-01T00:00:00Z`
/// after [`set_utc`]. A time out of the range RFC 3339 can write (before
/// year 0 or after 9999) is shown as `@SECS`, the Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let Some(ts) = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
    else {
        return format!("@{secs}");
    };
    if UTC.load(Ordering::Relaxed) {
        return ts.to_string();
    }
    ts.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// [`rfc3339`] of a time kept as signed Unix seconds (the state database's
/// INTEGER columns); a time before 1970 is shown as `@SECS`.
pub fn rfc3339_signed(secs: i64) -> String {
    u64::try_from(secs).map_or_else(|_| format!("@{secs}"), rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_rfc3339_with_the_offset() {
        set_utc(true);
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), format!("@{}", u64::MAX));
        assert_eq!(rfc3339_signed(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339_signed(-1), "@-1");
        set_utc(false);
        let local = rfc3339(1_767_225_600);
        // The local zone's offset, whatever it is here: `+HH:MM` or `-HH:MM`.
        let offset = &local[local.len() - 6..];
        assert!(
            offset.starts_with(['+', '-']) && offset.as_bytes()[3] == b':',
            "{local}"
        );
        assert_eq!(local.len(), "2026-01-01T00:00:00+00:00".len(), "{local}");
    }
}
