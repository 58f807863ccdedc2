//! Times as the API, the audit trail and `status` print them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 with millisecond precision, as OCI prints times.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(format_time(t), "2023-11-14T22:13:20.123Z");
    }
}
