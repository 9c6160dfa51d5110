//! The `time` tool: the current local date and time, worded to be spoken.

use chrono::{DateTime, FixedOffset};

/// "7:05 PM on Wednesday, November 25, 2026".
pub fn spoken(now: DateTime<FixedOffset>) -> String {
    now.format("%-I:%M %p on %A, %B %-d, %Y").to_string()
}

/// Local "now" with its offset.
pub fn now_local() -> DateTime<FixedOffset> {
    chrono::Local::now().fixed_offset()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_twelve_hour_time_and_date() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T19:05:00+01:00").unwrap();
        assert_eq!(spoken(t), "7:05 PM on Wednesday, November 25, 2026");
    }
}
