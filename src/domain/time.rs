//! The one wire format for instants.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

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

/// The correction that makes a local clock read like a server's, from one exchange: `sent` and
/// `received` on the local clock around the server's reading `server`. Assumes the server read
/// its clock halfway; refuses exchanges too slow to say anything useful.
pub fn estimate_offset(
    sent: DateTime<Utc>,
    received: DateTime<Utc>,
    server: DateTime<Utc>,
) -> Option<TimeDelta> {
    let round_trip = received - sent;
    if round_trip < TimeDelta::zero() || round_trip > TimeDelta::milliseconds(100) {
        return None;
    }
    Some(server - (sent + round_trip / 2))
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

    #[test]
    fn offset_assumes_the_server_read_halfway() {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let received = sent + TimeDelta::milliseconds(10);
        let server = sent + TimeDelta::milliseconds(1005);
        assert_eq!(
            estimate_offset(sent, received, server),
            Some(TimeDelta::milliseconds(1000))
        );
        assert_eq!(
            estimate_offset(sent, sent + TimeDelta::seconds(1), server),
            None
        );
    }
}
