//! The time formats Singapay mixes: Jakarta-local text with no zone (`14 Mar 2026 09:12:07`,
//! UTC+7), epoch-millisecond strings (`""` meaning absent), and ISO 8601.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeZone, Utc};

const JAKARTA_OFFSET_SECS: i32 = 7 * 3600;

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let t = if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        match s.len() {
            13 => DateTime::from_timestamp_millis(n)?,
            10 => DateTime::from_timestamp(n, 0)?,
            _ => return None,
        }
    } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else {
        let naive = NaiveDateTime::parse_from_str(s, "%d %b %Y %H:%M:%S").ok()?;
        let jakarta = FixedOffset::east_opt(JAKARTA_OFFSET_SECS)?;
        jakarta.from_local_datetime(&naive).single()?.with_timezone(&Utc)
    };
    // Outside this range the value is nonsense and Postgres may not represent it.
    (1970..=9999).contains(&t.year()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jakarta_text_is_utc_plus_seven() {
        // FACTS §2: stamped 21 Aug 04:35:02, arrived 20 Aug 21:35:03 UTC.
        let t = parse_time("21 Aug 2026 04:35:02").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-08-20T21:35:02+00:00");
        assert_eq!(parse_time("1 Mar 2026 00:00:00").unwrap().to_rfc3339(), "2026-02-28T17:00:00+00:00");
    }

    #[test]
    fn epoch_millis_and_iso_are_read() {
        assert_eq!(parse_time("1773645729000").unwrap().to_rfc3339(), "2026-03-16T07:22:09+00:00");
        assert_eq!(parse_time("2026-03-15T12:03:44.000000Z").unwrap().timestamp(), 1_773_576_224);
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("soon"), None);
    }
}
