//! Usage storage: counters, roll-ups, the event log and idempotency records.
//!
//! Both stores execute the same flat list of key operations built here from a domain
//! [`EventPlan`], so their semantics cannot drift: the Redis store hands the list to
//! `lua/usage.lua`, the memory store interprets it in process.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreResult;
use super::keys::Keys;
use crate::domain::alert::{self, AlertRule};
use crate::domain::event::{Event, IdempotencyKey};
use crate::domain::field::Dimensions;
use crate::domain::ids::CustomerId;
use crate::domain::reservation::MAX_TTL_SECONDS;
use crate::domain::usage::{CounterId, CounterOp, EventPlan};

/// How long storage keeps what is not tied to a window.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub events: Duration,
    /// The most events a customer's log keeps, whatever their age.
    pub events_per_customer: usize,
    pub rollups: Duration,
    pub idempotency: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: Duration::from_secs(30 * 24 * 3600),
            events_per_customer: 1000,
            rollups: Duration::from_secs(400 * 24 * 3600),
            idempotency: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Max,
    Latest,
    HashAdd,
    HashMax,
    HashLatest,
    HashSetIfAbsent,
}

impl OpKind {
    /// Whether the op writes a field of a hash (roll-ups) rather than a string key.
    pub fn is_hash(self) -> bool {
        matches!(
            self,
            OpKind::HashAdd | OpKind::HashMax | OpKind::HashLatest | OpKind::HashSetIfAbsent
        )
    }

    pub fn code(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Max => "max",
            OpKind::Latest => "latest",
            OpKind::HashAdd => "hadd",
            OpKind::HashMax => "hmax",
            OpKind::HashLatest => "hlatest",
            OpKind::HashSetIfAbsent => "hsetnx",
        }
    }
}

/// One write to one key. `Latest` string counters hold `value@at_ms`; hash variants keep the
/// timestamp in a sibling field `<field>@`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOp {
    pub key: String,
    pub kind: OpKind,
    pub field: String,
    pub value: String,
    pub at_ms: i64,
    /// Absolute expiry set when the key has none yet; 0: never expires.
    pub expire_at_ms: i64,
    /// Whether reservations hold on this key: limit counters of sum and count meters.
    pub holds: bool,
    /// The tightest limit on this counter, checked by consume and reserve.
    pub cap: Option<f64>,
    /// Reserve: when this op's hold ends (the reservation's expiry, or the window's end if sooner).
    pub hold_expires_ms: i64,
}

/// What a write does with the limits.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Counts unconditionally (record, batch).
    Record,
    /// Counts unconditionally, as `Record`, and drops the reservation's holds on the `held`
    /// counters in the same atomic step: no decision ever sees a commit's cost twice, as
    /// usage and as a hold.
    Commit {
        reservation_id: String,
        held: Vec<CounterId>,
    },
    /// Counts only if every capped counter stays within its cap.
    Consume { caps: Vec<Option<f64>> },
    /// If every cap holds, adds holds instead of usage and stores the reservation.
    Reserve {
        caps: Vec<Option<f64>>,
        reservation: ReservationWrite,
    },
}

/// A reservation to store with its holds.
#[derive(Debug, Clone)]
pub struct ReservationWrite {
    pub id: String,
    /// The stored document (JSON), returned by [`UsageStore::reservation`].
    pub doc: String,
    pub expires_at_ms: i64,
}

/// Everything one event does to storage, in one atomic step.
#[derive(Debug, Clone)]
pub struct EventOps {
    pub mode: &'static str,
    pub now_ms: i64,
    pub event_id: String,
    pub dedupe_key: Option<String>,
    pub dedupe_ttl_ms: i64,
    pub log_key: String,
    /// Member of the event log (`<ts13>:<eventId>:<entry>`, the entry from
    /// [`Event::log_entry`]), ordered by time then ID; empty for a reservation, which logs
    /// nothing.
    pub log_member: String,
    pub log_ttl_ms: i64,
    pub log_cap: usize,
    pub reservation_key: Option<String>,
    pub reservation_doc: String,
    pub reservation_ttl_ms: i64,
    /// The first `counters` ops are the plan's limit counters, in plan order.
    pub ops: Vec<KeyOp>,
    pub counters: usize,
    /// The customer's alert outbox.
    pub outbox_key: String,
    /// The customer's holds hash (see [`KeyOp::holds`]).
    pub holds_key: String,
    /// Alert rules (record and consume only), each watching one of the first `counters` ops.
    pub alerts: Vec<AlertOp>,
    /// Fields of the holds hash that go once the event is counted (a commit's holds).
    pub released_holds: Vec<String>,
}

/// One limit's crossing detection, in storage terms.
#[derive(Debug, Clone)]
pub struct AlertOp {
    /// Index (0-based) of the counter op it watches.
    pub op_index: usize,
    pub rule: AlertRule,
    /// Which thresholds already fired in this window.
    pub fired_key: String,
}

/// A counter as a decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CounterReading {
    pub used: f64,
    pub reserved: f64,
}

/// What one write did.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Written. The plan's counters after the write (reserved after a reserve), and how many
    /// alert messages the write queued in the customer's outbox.
    Written {
        after: Vec<CounterReading>,
        alerts: usize,
    },
    /// A cap did not hold: nothing was written. The plan's counters as they are.
    Refused { counters: Vec<CounterReading> },
    /// The idempotency key was seen before: nothing changed. The ID of the first event.
    Duplicate { event_id: String },
}

/// A write of one event: the event, its plan and its mode.
#[derive(Debug, Clone, Copy)]
pub struct EventWrite<'a> {
    pub event: &'a Event,
    pub plan: &'a EventPlan,
    pub mode: &'a Mode,
    /// The node's "now" (unix ms): holds expire against it, old log entries are trimmed by it.
    pub now_ms: i64,
}

/// A value as the usage script reads it. Whole values (nearly all) skip float formatting,
/// which costs several times more on a path that writes a few numbers per event.
pub fn number_text(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        itoa::Buffer::new().format(value as i64).to_owned()
    } else {
        format!("{value}")
    }
}

/// Reads a stored counter: plain numbers, or `value@at_ms` for `latest`.
pub fn parse_counter(raw: &str) -> f64 {
    raw.split('@')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Log member prefix: zero-padded milliseconds, so lexical order is time order.
pub fn log_position(at_ms: i64, event_id: &str) -> String {
    format!("{:013}:{event_id}", at_ms.max(0))
}

/// Stored reservation records outlive their expiry by this much, so reads still find them.
pub const RESERVATION_AFTERLIFE_MS: i64 = 24 * 3600 * 1000;

pub fn event_ops(keys: &Keys, retention: &Retention, write: EventWrite<'_>) -> EventOps {
    let EventWrite {
        event,
        plan,
        mode,
        now_ms,
    } = write;
    let customer = &event.customer_id;
    let (mode_name, caps, reservation) = match mode {
        Mode::Record | Mode::Commit { .. } => ("record", None, None),
        Mode::Consume { caps } => ("consume", Some(caps), None),
        Mode::Reserve { caps, reservation } => ("reserve", Some(caps), Some(reservation)),
    };
    let mut ops = Vec::with_capacity(plan.counters.len() + plan.rollups.len() * 3);
    for (index, write) in plan.counters.iter().enumerate() {
        let (kind, value, at_ms) = match write.op {
            CounterOp::Add(v) => (OpKind::Add, number_text(v), 0),
            CounterOp::Max(v) => (OpKind::Max, number_text(v), 0),
            CounterOp::Latest { value, at_ms } => (OpKind::Latest, number_text(value), at_ms),
        };
        let window_end_ms = plan
            .limits
            .iter()
            .find(|(_, _, i)| *i == index)
            .and_then(|(_, w, _)| *w)
            .map(|w| w.end.timestamp_millis());
        let hold_expires_ms = match (reservation, window_end_ms) {
            (Some(r), Some(end)) => r.expires_at_ms.min(end),
            (Some(r), None) => r.expires_at_ms,
            (None, _) => 0,
        };
        let counter_key = keys.counter(customer, &write.counter);
        ops.push(KeyOp {
            holds: kind == OpKind::Add,
            key: counter_key,
            kind,
            field: String::new(),
            value,
            at_ms,
            expire_at_ms: write.retain_until_ms.unwrap_or(0),
            cap: caps.and_then(|caps| caps.get(index).copied().flatten()),
            hold_expires_ms,
        });
    }
    // A reservation touches only the limit counters.
    let rollups = if reservation.is_some() {
        &[][..]
    } else {
        &plan.rollups[..]
    };
    let rollup_ms = retention.rollups.as_millis() as i64;
    for rollup in rollups {
        let (kind, value, at_ms) = match rollup.op {
            CounterOp::Add(v) => (OpKind::HashAdd, number_text(v), 0),
            CounterOp::Max(v) => (OpKind::HashMax, number_text(v), 0),
            CounterOp::Latest { value, at_ms } => (OpKind::HashLatest, number_text(value), at_ms),
        };
        let plain =
            |key: String, kind: OpKind, value: String, at_ms: i64, expire_at_ms: i64| KeyOp {
                key,
                kind,
                field: rollup.dimensions_hash.clone(),
                value,
                at_ms,
                expire_at_ms,
                holds: false,
                cap: None,
                hold_expires_ms: 0,
            };
        ops.push(plain(
            keys.rollup(customer, &rollup.meter_id, Some(rollup.hour_start)),
            kind,
            value.clone(),
            at_ms,
            (rollup.hour_start + 3600) * 1000 + rollup_ms,
        ));
        ops.push(plain(
            keys.rollup(customer, &rollup.meter_id, None),
            kind,
            value,
            at_ms,
            0,
        ));
        // Events without dimensions need no entry: no dimension filter can match them.
        if rollup.dimensions.is_empty() {
            continue;
        }
        ops.push(plain(
            keys.rollup_dimensions(customer, &rollup.meter_id),
            OpKind::HashSetIfAbsent,
            serde_json::to_string(&rollup.dimensions).unwrap_or_else(|_| "{}".into()),
            0,
            0,
        ));
    }
    let events_ms = retention.events.as_millis() as i64;
    let log_member = match reservation {
        Some(_) => String::new(),
        None => {
            let mut member = log_position(event.timestamp.timestamp_millis(), &event.id);
            member.push(':');
            member.push_str(&event.log_entry());
            member
        }
    };
    EventOps {
        mode: mode_name,
        now_ms,
        event_id: reservation.map_or_else(|| event.id.clone(), |r| r.id.clone()),
        dedupe_key: event
            .idempotency_key
            .as_ref()
            .map(|k| keys.idempotency(customer, k.digest_input())),
        dedupe_ttl_ms: dedupe_ttl_ms(event.idempotency_key.as_ref(), retention),
        log_key: keys.event_log(customer),
        log_member,
        log_ttl_ms: events_ms,
        log_cap: retention.events_per_customer,
        reservation_key: reservation.map(|r| keys.reservation(customer, &r.id)),
        reservation_doc: reservation.map(|r| r.doc.clone()).unwrap_or_default(),
        reservation_ttl_ms: reservation.map_or(0, |r| {
            (r.expires_at_ms - now_ms).max(1) + RESERVATION_AFTERLIFE_MS
        }),
        ops,
        counters: plan.counters.len(),
        outbox_key: keys.outbox(customer),
        holds_key: keys.holds(customer),
        released_holds: match mode {
            Mode::Commit {
                reservation_id,
                held,
            } => held
                .iter()
                .map(|counter| Keys::hold_field(&keys.counter(customer, counter), reservation_id))
                .collect(),
            _ => Vec::new(),
        },
        alerts: match reservation {
            Some(_) => Vec::new(),
            None => plan
                .limits
                .iter()
                .map(|(limit, window, index)| AlertOp {
                    op_index: *index,
                    rule: alert::rule(limit, *window),
                    fired_key: keys.fired(
                        customer,
                        &limit.limit.id,
                        window.map(|w| w.start.timestamp()),
                    ),
                })
                .collect(),
        },
    }
}

/// What deleting a customer forgets of its usage: the counters its decisions read (each
/// limit's current window) and the thresholds fired in those windows, by limit ID and window
/// start. Older windows are never read again and expire by themselves.
#[derive(Debug, Default)]
pub struct UsageToForget {
    pub counters: Vec<CounterId>,
    pub fired: Vec<(String, Option<i64>)>,
}

/// The keys [`UsageStore::forget_usage`] deletes: those of `usage`, the customer's event log,
/// holds and alert outbox, and the records of the reservations holding on its counters
/// (`hold_fields`: the holds hash's fields), which could otherwise still be committed to a
/// customer created again under the ID. All carry the customer's hash tag (one slot).
pub fn usage_keys_to_forget<'a>(
    keys: &Keys,
    customer: &CustomerId,
    usage: &UsageToForget,
    hold_fields: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut names = vec![
        keys.event_log(customer),
        keys.holds(customer),
        keys.outbox(customer),
    ];
    let held: std::collections::BTreeSet<&str> = hold_fields
        .filter_map(|field| field.rsplit_once('|').map(|(_, reservation)| reservation))
        .collect();
    names.extend(held.into_iter().map(|id| keys.reservation(customer, id)));
    names.extend(usage.counters.iter().map(|c| keys.counter(customer, c)));
    names.extend(
        usage
            .fired
            .iter()
            .map(|(limit_id, window_start)| keys.fired(customer, limit_id, *window_start)),
    );
    names
}

/// A stored reservation: its document and how it ended, if it did.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReservation {
    pub doc: String,
    /// `held`, `committed` or `released` (expiry is read from the document's `expiresAt`).
    pub status: String,
    pub event_id: Option<String>,
    /// The values a commit recorded (JSON), when committed.
    pub committed_values: Option<String>,
}

/// What an extend did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    Extended,
    /// The reservation already ends at or after the asked expiry; nothing changed.
    AlreadyLonger,
    /// The reservation is not held (or gone).
    NotHeld,
}

/// How a held reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish<'a> {
    /// A commit starts, with the event `event_id`: the reservation is `committing` until the
    /// commit ends it, and a release meanwhile changes nothing (it is answered with that
    /// status). A commit that began before keeps its event ID, which is answered instead.
    Begin {
        event_id: &'a str,
    },
    /// Committed with the event `event_id` of `values` (JSON). `counted`: this commit's event
    /// was counted (not a duplicate of another commit's), so its values are the ones recorded
    /// and replace any another commit stored; otherwise they are stored only if none are.
    Commit {
        event_id: &'a str,
        values: &'a str,
        counted: bool,
    },
    Release,
}

/// One roll-up cell: an aggregate per dimension set; `at_ms` for `latest`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupCell {
    pub value: f64,
    pub at_ms: Option<i64>,
}

/// Roll-ups of one customer and meter: per bucket (`None`: all time), per dimension-set hash.
#[derive(Debug, Clone, Default)]
pub struct Rollups {
    pub dimensions: HashMap<String, Dimensions>,
    pub buckets: Vec<(Option<i64>, HashMap<String, RollupCell>)>,
}

/// Decodes a roll-up hash (`field → value`, `field@ → at_ms`).
pub fn decode_rollup(fields: HashMap<String, String>) -> HashMap<String, RollupCell> {
    let mut cells = HashMap::new();
    for (field, raw) in &fields {
        if field.ends_with('@') {
            continue;
        }
        let at_ms = fields
            .get(&format!("{field}@"))
            .and_then(|t| t.parse().ok());
        cells.insert(
            field.clone(),
            RollupCell {
                value: parse_counter(raw),
                at_ms,
            },
        );
    }
    cells
}

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Writes events, each in one atomic step; many events go in one round trip.
    async fn write(&self, writes: &[EventWrite<'_>]) -> StoreResult<Vec<RecordOutcome>>;

    /// Current usage and holds of counters of one customer (0 when absent), in one round trip.
    async fn read_counters(
        &self,
        customer: &CustomerId,
        counters: &[CounterId],
        now_ms: i64,
    ) -> StoreResult<Vec<CounterReading>>;

    /// Roll-ups of one customer and meter for the hours in `[from, to)` (unix seconds, hour
    /// aligned), or the all-time roll-up when `hours` is `None`.
    async fn read_rollups(
        &self,
        customer: &CustomerId,
        meter_id: &str,
        hours: Option<(i64, i64)>,
    ) -> StoreResult<Rollups>;

    /// The customer's event log: members `<ts13>:<id>:<json>`, oldest written first.
    async fn event_log(&self, customer: &CustomerId) -> StoreResult<Vec<String>>;

    /// Forgets a deleted customer's usage (the keys of [`usage_keys_to_forget`]).
    async fn forget_usage(&self, customer: &CustomerId, usage: &UsageToForget) -> StoreResult<()>;

    async fn reservation(
        &self,
        customer: &CustomerId,
        id: &str,
    ) -> StoreResult<Option<StoredReservation>>;

    /// The customer a reservation belongs to (paths name only the reservation).
    async fn reservation_owner(&self, id: &str) -> StoreResult<Option<CustomerId>>;

    /// Ends a held reservation once: drops its holds on `counters` and stores how it ended
    /// (`committed` with the commit's event ID and values, or `released`). Returns the status
    /// after the call and its event ID; `None` if there is no such reservation.
    async fn finish_reservation(
        &self,
        customer: &CustomerId,
        id: &str,
        counters: &[CounterId],
        finish: Finish<'_>,
    ) -> StoreResult<Option<(String, String)>>;

    /// Moves a held reservation's expiry (and that of its holds) to `expires_at_ms`, unless it
    /// already ends later (a concurrent extend went further: extending never shortens).
    /// `now_ms` is the node's clock, which reservations are made on.
    async fn extend_reservation(
        &self,
        customer: &CustomerId,
        id: &str,
        holds: &[(CounterId, i64)],
        doc: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Extension>;
}

/// How long an event's idempotency key is kept. A commit's outlives its reservation's record:
/// a reservation whose commit counted its event but never finished (its node died) stays
/// committable while the record lives, up to its expiry (at most the longest reservation
/// from the commit) plus its afterlife, and its retried commit must still find the key.
fn dedupe_ttl_ms(key: Option<&IdempotencyKey>, retention: &Retention) -> i64 {
    let kept = retention.idempotency.as_millis() as i64;
    match key {
        Some(IdempotencyKey::Commit { .. }) => {
            kept.max(RESERVATION_AFTERLIFE_MS) + MAX_TTL_SECONDS * 1000
        }
        _ => kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_key_outlives_its_reservation() {
        let retention = Retention::default();
        let commit = IdempotencyKey::Commit {
            reservation_id: "rsv_1".into(),
        };
        let caller = IdempotencyKey::Caller("k".into());
        let day = 24 * 3600 * 1000;
        assert_eq!(dedupe_ttl_ms(Some(&caller), &retention), day);
        assert_eq!(
            dedupe_ttl_ms(Some(&commit), &retention),
            RESERVATION_AFTERLIFE_MS + MAX_TTL_SECONDS * 1000
        );
    }

    #[test]
    fn numbers_are_written_as_the_script_reads_them() {
        assert_eq!(number_text(10.0), "10");
        assert_eq!(number_text(-3.0), "-3");
        assert_eq!(number_text(0.5), "0.5");
        assert_eq!(number_text(1e15), "1000000000000000");
        assert_eq!(number_text(123456.125), "123456.125");
    }
}
