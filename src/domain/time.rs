//! The one wire format for instants.

use chrono::{DateTime, Datelike, SecondsFormat, TimeDelta, Timelike, Utc};

use super::field::FieldError;

/// The earliest instant usage can have. Before it, answers would show windows in years that
/// RFC 3339 cannot write (`-0001-12-31T…`), and no metered usage is that old.
pub const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// RFC 3339 in UTC with millisecond precision: `2026-11-21T10:30:00.000Z`.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    let mut text = [0; RFC3339_LEN];
    match rfc3339_into(at, &mut text) {
        Some(text) => text.to_string(),
        None => at.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

const RFC3339_LEN: usize = 24;

/// [`rfc3339`] written into `text`, for years 0–9999 outside leap seconds (`None` for the
/// rest, which chrono writes). Answers carry two instants per limit, and chrono's general
/// formatting costs several times as much as these few digits.
fn rfc3339_into(at: DateTime<Utc>, text: &mut [u8; RFC3339_LEN]) -> Option<&str> {
    let (year, millis) = (at.year(), at.timestamp_subsec_millis());
    if !(0..=9999).contains(&year) || millis > 999 {
        return None;
    }
    *text = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (year as u32, 4),
        (at.month(), 7),
        (at.day(), 10),
        (at.hour(), 13),
        (at.minute(), 16),
        (at.second(), 19),
        (millis, 23),
    ];
    for (mut value, end) in fields {
        let mut at = end;
        while value > 0 {
            at -= 1;
            text[at] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    std::str::from_utf8(text).ok()
}

/// Parses an RFC 3339 instant with any offset.
pub fn parse_rfc3339(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// One reading of a server's clock: `sent` and `received` on the local clock around the
/// server's reading `server`.
#[derive(Debug, Clone, Copy)]
pub struct ClockExchange {
    pub sent: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub server: DateTime<Utc>,
}

/// The correction that makes a local clock read like a server's. It assumes the server read
/// its clock halfway through an exchange, so it is off by at most half the round trip: of
/// several exchanges it takes the quickest (on a busy node any one of them may be slow), and
/// it refuses exchanges too slow to say anything useful.
pub fn estimate_offset(exchanges: &[ClockExchange]) -> Option<TimeDelta> {
    exchanges
        .iter()
        .map(|e| (e.received - e.sent, e))
        .filter(|(round_trip, _)| {
            *round_trip >= TimeDelta::zero() && *round_trip <= TimeDelta::milliseconds(100)
        })
        .min_by_key(|(round_trip, _)| *round_trip)
        .map(|(round_trip, e)| e.server - (e.sent + round_trip / 2))
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z), in unix seconds: an answer's
/// instant after it would print as `+10000-…`.
pub const LATEST_SECS: i64 = 253_402_300_799;

/// An instant a client gives for usage (an event's `timestamp`, a meter query's dates):
/// RFC 3339, not before [`EARLIEST`].
pub fn parse_usage_instant(field: &str, raw: &str) -> Result<DateTime<Utc>, FieldError> {
    let at = parse_rfc3339(raw)
        .ok_or_else(|| FieldError::invalid(field, "must be an RFC 3339 date-time"))?;
    if at < EARLIEST {
        return Err(FieldError::invalid(
            field,
            "must not be before 1970-01-01T00:00:00Z",
        ));
    }
    Ok(at)
}

/// Serde adapter so every stored and returned instant uses [`rfc3339`].
pub mod serde_rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0; super::RFC3339_LEN];
        match super::rfc3339_into(*at, &mut text) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_str(&super::rfc3339(*at)),
        }
    }

    /// For an optional instant (`null` when absent).
    pub fn serialize_option<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(deserializer)?;
        super::parse_rfc3339(&raw)
            .ok_or_else(|| serde::de::Error::custom("invalid RFC 3339 instant"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// An exchange sent at a fixed instant, taking `round_trip_ms`, whose server reading is
    /// `server_ms` after the sending.
    fn exchange(round_trip_ms: i64, server_ms: i64) -> ClockExchange {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        ClockExchange {
            sent,
            received: sent + TimeDelta::milliseconds(round_trip_ms),
            server: sent + TimeDelta::milliseconds(server_ms),
        }
    }

    #[test]
    fn offset_assumes_the_server_read_halfway() {
        assert_eq!(
            estimate_offset(&[exchange(10, 1005)]),
            Some(TimeDelta::milliseconds(1000))
        );
        assert_eq!(estimate_offset(&[exchange(1000, 1005)]), None);
        assert_eq!(estimate_offset(&[]), None);
    }

    /// A slow exchange could place the server's reading anywhere in its round trip: the
    /// quickest one decides, whatever its place in the list.
    #[test]
    fn the_quickest_exchange_decides() {
        let exchanges = [exchange(80, 1000), exchange(2, 1001), exchange(40, 1039)];
        assert_eq!(
            estimate_offset(&exchanges),
            Some(TimeDelta::milliseconds(1000))
        );
    }

    #[test]
    fn usage_instants_start_at_the_unix_epoch() {
        assert_eq!(
            parse_usage_instant("timestamp", "1970-01-01T00:00:00Z"),
            Ok(EARLIEST)
        );
        assert!(parse_usage_instant("timestamp", "9999-12-31T23:59:59Z").is_ok());
        for early in [
            "0000-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "1970-01-01T00:30:00+01:00",
        ] {
            let error = parse_usage_instant("timestamp", early).unwrap_err();
            assert_eq!(error.field(), "timestamp");
            assert!(error.message().contains("1970"), "{}", error.message());
        }
        assert!(parse_usage_instant("timestamp", "yesterday").is_err());
        let latest = parse_rfc3339("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(latest.timestamp(), LATEST_SECS);
        assert!(rfc3339(latest).starts_with("9999-"));
    }

    fn chrono_rfc3339(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    #[test]
    fn instants_are_written_as_chrono_writes_them() {
        let cases = [
            "1970-01-01T00:00:00Z",
            "2026-11-21T10:30:00.5Z",
            "2024-02-29T23:59:59.999999Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
        ];
        for case in cases {
            let at = parse_rfc3339(case).unwrap();
            assert_eq!(rfc3339(at), chrono_rfc3339(at), "{case}");
        }
        // What the digits cannot write goes to chrono: years past 9999, leap seconds.
        let far = DateTime::from_timestamp(LATEST_SECS + 1, 0).unwrap();
        assert_eq!(rfc3339(far), chrono_rfc3339(far));
        let leap = DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap();
        assert_eq!(rfc3339(leap), "2016-12-31T23:59:60.500Z");
    }

    proptest::proptest! {
        #[test]
        fn any_instant_is_written_as_chrono_writes_it(
            secs in -70_000_000_000i64..300_000_000_000,
            nanos in 0u32..2_000_000_000,
        ) {
            if let Some(at) = DateTime::from_timestamp(secs, nanos) {
                proptest::prop_assert_eq!(rfc3339(at), chrono_rfc3339(at));
                let mut via_serde = serde_json::Serializer::new(Vec::new());
                serde_rfc3339::serialize(&at, &mut via_serde).unwrap();
                let via_serde = String::from_utf8(via_serde.into_inner()).unwrap();
                proptest::prop_assert_eq!(via_serde, format!("\"{}\"", chrono_rfc3339(at)));
            }
        }
    }
}
