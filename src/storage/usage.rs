//! Usage storage: counters, roll-ups, the event log and idempotency records.
//!
//! Both stores execute the same flat list of key operations built here from a domain
//! [`EventPlan`], so their semantics cannot drift: the Redis store hands the list to
//! `lua/record.lua`, the memory store interprets it in process.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreResult;
use super::keys::Keys;
use crate::domain::event::Event;
use crate::domain::field::Dimensions;
use crate::domain::ids::CustomerId;
use crate::domain::usage::{CounterId, CounterOp, EventPlan};

/// How long storage keeps what is not tied to a window.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub events: Duration,
    pub rollups: Duration,
    pub idempotency: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: Duration::from_secs(30 * 24 * 3600),
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
}

/// Everything one event does to storage, in one atomic step.
#[derive(Debug, Clone)]
pub struct EventOps {
    pub event_id: String,
    pub dedupe_key: Option<String>,
    pub dedupe_ttl_ms: i64,
    pub log_key: String,
    /// Member of the event log (`<ts13>:<eventId>:<json>`), ordered by time then ID.
    pub log_member: String,
    /// Log members below this bound are past retention and trimmed.
    pub log_trim_below: String,
    pub log_ttl_ms: i64,
    /// The first `counters` ops are the plan's limit counters, in plan order.
    pub ops: Vec<KeyOp>,
    pub counters: usize,
}

/// What recording one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Values of the plan's counters before and after the event.
    Recorded { counters: Vec<(f64, f64)> },
    /// The idempotency key was seen before: nothing changed. The ID of the first event.
    Duplicate { event_id: String },
}

fn number(value: f64) -> String {
    format!("{value}")
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

pub fn event_ops(
    keys: &Keys,
    retention: &Retention,
    event: &Event,
    plan: &EventPlan,
    now_ms: i64,
) -> EventOps {
    let customer = &event.customer_id;
    let mut ops = Vec::with_capacity(plan.counters.len() + plan.rollups.len() * 3);
    for write in &plan.counters {
        let (kind, value, at_ms) = match write.op {
            CounterOp::Add(v) => (OpKind::Add, number(v), 0),
            CounterOp::Max(v) => (OpKind::Max, number(v), 0),
            CounterOp::Latest { value, at_ms } => (OpKind::Latest, number(value), at_ms),
        };
        ops.push(KeyOp {
            key: keys.counter(customer, &write.counter),
            kind,
            field: String::new(),
            value,
            at_ms,
            expire_at_ms: write.retain_until_ms.unwrap_or(0),
        });
    }
    let rollup_ms = retention.rollups.as_millis() as i64;
    for rollup in &plan.rollups {
        let (kind, value, at_ms) = match rollup.op {
            CounterOp::Add(v) => (OpKind::HashAdd, number(v), 0),
            CounterOp::Max(v) => (OpKind::HashMax, number(v), 0),
            CounterOp::Latest { value, at_ms } => (OpKind::HashLatest, number(value), at_ms),
        };
        ops.push(KeyOp {
            key: keys.rollup(customer, &rollup.meter_id, Some(rollup.hour_start)),
            kind,
            field: rollup.dimensions_hash.clone(),
            value: value.clone(),
            at_ms,
            expire_at_ms: (rollup.hour_start + 3600) * 1000 + rollup_ms,
        });
        ops.push(KeyOp {
            key: keys.rollup(customer, &rollup.meter_id, None),
            kind,
            field: rollup.dimensions_hash.clone(),
            value,
            at_ms,
            expire_at_ms: 0,
        });
        ops.push(KeyOp {
            key: keys.rollup_dimensions(customer, &rollup.meter_id),
            kind: OpKind::HashSetIfAbsent,
            field: rollup.dimensions_hash.clone(),
            value: serde_json::to_string(&rollup.dimensions).unwrap_or_else(|_| "{}".into()),
            at_ms: 0,
            expire_at_ms: 0,
        });
    }
    let events_ms = retention.events.as_millis() as i64;
    let log_json = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    EventOps {
        event_id: event.id.clone(),
        dedupe_key: event
            .idempotency_key
            .as_deref()
            .map(|k| keys.idempotency(customer, k)),
        dedupe_ttl_ms: retention.idempotency.as_millis() as i64,
        log_key: keys.event_log(customer),
        log_member: format!(
            "{}:{log_json}",
            log_position(event.timestamp.timestamp_millis(), &event.id)
        ),
        log_trim_below: format!("({:013}", (now_ms - events_ms).max(0)),
        log_ttl_ms: events_ms,
        ops,
        counters: plan.counters.len(),
    }
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

/// A window of the event log, newest first.
#[derive(Debug, Clone)]
pub struct EventLogQuery {
    /// Exclusive upper bound: a position (`<ts13>:<id>`) from a previous page.
    pub before: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: usize,
}

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Records events, each in one atomic step; many events go in one round trip.
    async fn record(&self, events: &[(&Event, &EventPlan)]) -> StoreResult<Vec<RecordOutcome>>;

    /// Current values of counters of one customer (0 when absent), in one round trip.
    async fn read_counters(
        &self,
        customer: &CustomerId,
        counters: &[CounterId],
    ) -> StoreResult<Vec<f64>>;

    /// Roll-ups of one customer and meter for the hours in `[from, to)` (unix seconds, hour
    /// aligned), or the all-time roll-up when `hours` is `None`.
    async fn read_rollups(
        &self,
        customer: &CustomerId,
        meter_id: &str,
        hours: Option<(i64, i64)>,
    ) -> StoreResult<Rollups>;

    /// Raw log members (`<ts13>:<id>:<json>`), newest first.
    async fn list_events(
        &self,
        customer: &CustomerId,
        query: &EventLogQuery,
    ) -> StoreResult<Vec<String>>;
}
