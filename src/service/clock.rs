//! The node's notion of "now". Windows are decided by it, so it is the only place that reads
//! the system clock.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Default)]
pub struct Clock {
    /// Correction against the storage server's clock, in microseconds.
    offset_micros: AtomicI64,
    /// A deliberate shift, in microseconds: lets tests move a gateway through time (expiry,
    /// window roll-over) without sleeping. Zero in production.
    shift_micros: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let micros =
            self.offset_micros.load(Ordering::Relaxed) + self.shift_micros.load(Ordering::Relaxed);
        Utc::now() + TimeDelta::microseconds(micros)
    }

    pub fn set_offset(&self, offset: TimeDelta) {
        self.offset_micros
            .store(offset.num_microseconds().unwrap_or(0), Ordering::Relaxed);
    }

    /// Moves this clock by `by` on top of everything else.
    pub fn shift(&self, by: TimeDelta) {
        self.shift_micros
            .fetch_add(by.num_microseconds().unwrap_or(0), Ordering::Relaxed);
    }
}

/// The correction that makes the local clock read like the server's, from one exchange:
/// `sent` and `received` on the local clock around the server's reading `server`. Assumes
/// the server read its clock halfway; refuses exchanges too slow to say anything useful.
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

    #[test]
    fn clock_applies_the_offset() {
        let clock = Clock::default();
        clock.set_offset(TimeDelta::hours(1));
        let drift = clock.now() - Utc::now();
        assert!(drift > TimeDelta::minutes(59) && drift < TimeDelta::minutes(61));
    }
}
