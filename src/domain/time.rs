//! The one wire format for instants.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::field::FieldError;

/// The earliest instant usage can have. Before it, answers would show windows in years that
/// RFC 3339 cannot write (`-0001-12-31T…`), and no metered usage is that old.
pub const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// RFC 3339 in UTC with millisecond precision: `2026-11-21T10:30:00.000Z`.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
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
        serializer.serialize_str(&super::rfc3339(*at))
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
}
