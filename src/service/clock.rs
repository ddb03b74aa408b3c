//! The node's notion of "now". Windows are decided by it, so it is the only place that reads
//! the system clock for a decision (the Redis store reads it only to put its scripts'
//! deadlines on Redis's clock).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_applies_the_offset() {
        let clock = Clock::default();
        clock.set_offset(TimeDelta::hours(1));
        let drift = clock.now() - Utc::now();
        assert!(drift > TimeDelta::minutes(59) && drift < TimeDelta::minutes(61));
    }
}
