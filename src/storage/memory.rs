//! The embedded store: one node, state in process memory, same semantics as Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::alerts::{
    ATTEMPT_LOG_LEN, AlertStore, AttemptEnd, Claim, MESSAGE_TTL_MS, delivery_member,
    split_delivery_member, superseded,
};
use super::balances::{
    BalanceReading, BalanceStore, DROPPED_SPENT_TTL_MS, Movement, MovementOutcome, first_movement,
    movement_dedupe_key, refusal_record, transaction_member,
};
use super::keys::Keys;
use super::replays::{ReplayClaim, ReplayStore};
use super::usage::{
    CounterReading, EventOps, EventWrite, Extension, Finish, KeyOp, Mode, OpKind,
    RESERVATION_AFTERLIFE_MS, RecordOutcome, Retention, Rollups, StoredReservation, UsageStore,
    UsageToForget, decode_rollup, event_ops, parse_counter, usage_keys_to_forget,
};
use super::{
    ConfigChange, ConfigOp, ConfigStore, Guard, GuardFailed, Kind, LogPosition, StoreResult,
};
use crate::domain::alert::{Crossing, EXCEEDED};
use crate::domain::field::total;
use crate::domain::ids::CustomerId;
use crate::domain::usage::CounterId;

/// How long the holds hash outlives its last change (no reservation lasts longer than an hour).
const HOLDS_TTL_MS: i64 = 3_660_000;

/// How many changes the log keeps; a node further behind reads everything again.
const CHANGE_LOG_LEN: usize = 10_000;

pub struct MemoryStore {
    state: Mutex<State>,
    usage: Mutex<MemoryUsage>,
    alerts: Mutex<MemoryAlerts>,
    keys: Keys,
    retention: Retention,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Mutex::default(),
            usage: Mutex::default(),
            alerts: Mutex::default(),
            keys: Keys::new("mem"),
            retention: Retention::default(),
        }
    }
}

#[derive(Default)]
struct State {
    docs: HashMap<Kind, BTreeMap<String, String>>,
    /// The latest changes; positions are `<seq>-0`, without gaps.
    changes: VecDeque<ConfigChange>,
    last_seq: u64,
    /// How often each document was touched ([`ConfigOp::Touch`]).
    versions: HashMap<(Kind, String), u64>,
}

impl State {
    fn exists(&self, kind: Kind, id: &str) -> bool {
        self.docs
            .get(&kind)
            .is_some_and(|docs| docs.contains_key(id))
    }

    fn version(&self, kind: Kind, id: &str) -> u64 {
        self.versions
            .get(&(kind, id.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn put(&mut self, kind: Kind, id: &str, doc: &str) {
        self.docs
            .entry(kind)
            .or_default()
            .insert(id.to_string(), doc.to_string());
        self.log(kind, id, Some(doc));
    }

    fn log(&mut self, kind: Kind, id: &str, doc: Option<&str>) {
        self.last_seq += 1;
        self.changes.push_back(ConfigChange {
            position: LogPosition(self.last_seq, 0),
            kind,
            id: id.to_string(),
            doc: doc.map(str::to_string),
        });
        if self.changes.len() > CHANGE_LOG_LEN {
            self.changes.pop_front();
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub fn with_retention(mut self, retention: Retention) -> MemoryStore {
        self.retention = retention;
        self
    }

    fn lock(&self) -> Held<'_, State> {
        guard(&self.state)
    }
}

/// Locks one part of the store. A panic while holding a lock cannot leave a half-applied
/// change (every change checks before it writes), so a poisoned lock is still consistent.
fn guard<T>(mutex: &Mutex<T>) -> Held<'_, T> {
    let since = std::time::Instant::now();
    Held {
        guard: mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        since,
    }
}

/// A locked part of the store. Every call into this store is work under one of its locks, so
/// the time from asking for a lock to releasing it (waiting included, as a Redis call's time
/// includes its queue) is what `quotagate_storage_call_duration_seconds` records here, as the
/// Redis store records each round trip.
struct Held<'a, T> {
    guard: std::sync::MutexGuard<'a, T>,
    since: std::time::Instant,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        crate::telemetry::record_storage_call(self.since.elapsed().as_secs_f64());
    }
}

fn guard_holds(guard: Guard, exists: bool) -> bool {
    match guard {
        Guard::Always => true,
        Guard::Absent => !exists,
        Guard::Present => exists,
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn get(&self, kind: Kind, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .lock()
            .docs
            .get(&kind)
            .and_then(|docs| docs.get(id).cloned()))
    }

    async fn page(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let state = self.lock();
        let Some(docs) = state.docs.get(&kind) else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(after) => {
                docs.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => docs.range::<str, _>(..),
        };
        Ok(range
            .take(limit)
            .map(|(id, doc)| (id.clone(), doc.clone()))
            .collect())
    }

    async fn all(&self, kind: Kind) -> StoreResult<Vec<(String, String)>> {
        let state = self.lock();
        Ok(state
            .docs
            .get(&kind)
            .map(|docs| {
                docs.iter()
                    .map(|(id, doc)| (id.clone(), doc.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn apply(
        &self,
        ops: &[ConfigOp],
    ) -> StoreResult<Result<Option<LogPosition>, GuardFailed>> {
        let mut state = self.lock();
        let seq_before = state.last_seq;
        for (index, op) in ops.iter().enumerate() {
            let holds = match op {
                ConfigOp::Put {
                    kind, id, guard, ..
                }
                | ConfigOp::Delete { kind, id, guard } => {
                    guard_holds(*guard, state.exists(*kind, id))
                }
                ConfigOp::Require { kind, id } => state.exists(*kind, id),
                ConfigOp::Unchanged { kind, id, version } => state.version(*kind, id) == *version,
                ConfigOp::PutIfAbsent { .. } | ConfigOp::Touch { .. } => true,
            };
            if !holds {
                return Ok(Err(GuardFailed { index }));
            }
        }
        for op in ops {
            match op {
                ConfigOp::Put { kind, id, doc, .. } => state.put(*kind, id, doc),
                ConfigOp::PutIfAbsent { kind, id, doc } => {
                    if !state.exists(*kind, id) {
                        state.put(*kind, id, doc);
                    }
                }
                ConfigOp::Delete { kind, id, .. } => {
                    let removed = state.docs.get_mut(kind).and_then(|docs| docs.remove(id));
                    if removed.is_some() {
                        state.log(*kind, id, None);
                    }
                }
                ConfigOp::Touch { kind, id } => {
                    *state.versions.entry((*kind, id.clone())).or_default() += 1;
                }
                ConfigOp::Require { .. } | ConfigOp::Unchanged { .. } => {}
            }
        }
        Ok(Ok(
            (state.last_seq > seq_before).then_some(LogPosition(state.last_seq, 0))
        ))
    }

    async fn version(&self, kind: Kind, id: &str) -> StoreResult<u64> {
        Ok(self.lock().version(kind, id))
    }

    async fn change_cursor(&self) -> StoreResult<LogPosition> {
        Ok(LogPosition(self.lock().last_seq, 0))
    }

    async fn changes_after(
        &self,
        cursor: LogPosition,
        max: usize,
    ) -> StoreResult<Option<(Vec<ConfigChange>, LogPosition)>> {
        let state = self.lock();
        let after = cursor.0;
        // Sequence numbers have no gaps: the log reaches back to `after` unless the change
        // right after it was dropped.
        let oldest_kept = state
            .changes
            .front()
            .map_or(state.last_seq + 1, |change| change.position.0);
        if after + 1 < oldest_kept {
            return Ok(None);
        }
        let changes: Vec<ConfigChange> = state
            .changes
            .iter()
            .filter(|change| change.position > cursor)
            .take(max)
            .cloned()
            .collect();
        let last = changes.last().map_or(cursor, |change| change.position);
        Ok(Some((changes, last)))
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn clock_offset(&self) -> StoreResult<Option<chrono::TimeDelta>> {
        Ok(None)
    }

    fn describe(&self) -> String {
        "embedded in-memory store".to_string()
    }
}

// --- usage -------------------------------------------------------------------------------

/// The embedded store's usage data: the same keys and operations as Redis, interpreted in
/// process (see `lua/usage.lua` for the reference semantics).
#[derive(Default)]
pub struct MemoryUsage {
    entries: HashMap<String, Entry>,
}

struct Entry {
    value: Value,
    expire_at_ms: Option<i64>,
}

enum Value {
    List(VecDeque<String>),
    Text(String),
    Hash(HashMap<String, String>),
    /// A Redis sorted set whose scores are all 0: members in lexical order.
    Sorted(BTreeSet<String>),
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl MemoryUsage {
    fn live(&mut self, key: &str, now: i64) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|e| e.expire_at_ms.is_some_and(|at| at <= now));
        if expired {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    /// A live hash, if the key holds one.
    fn live_hash(&mut self, key: &str, now: i64) -> Option<&mut HashMap<String, String>> {
        match self.live(key, now).map(|e| &mut e.value) {
            Some(Value::Hash(hash)) => Some(hash),
            _ => None,
        }
    }

    fn text(&mut self, key: &str, now: i64) -> Option<String> {
        match self.live(key, now).map(|e| &e.value) {
            Some(Value::Text(text)) => Some(text.clone()),
            _ => None,
        }
    }

    fn hash(&mut self, key: &str, now: i64) -> &mut HashMap<String, String> {
        if !matches!(self.live(key, now).map(|e| &e.value), Some(Value::Hash(_))) {
            self.entries.insert(
                key.to_string(),
                Entry {
                    value: Value::Hash(HashMap::new()),
                    expire_at_ms: None,
                },
            );
        }
        match self.entries.get_mut(key).map(|e| &mut e.value) {
            Some(Value::Hash(hash)) => hash,
            _ => unreachable!("just inserted a hash"),
        }
    }

    fn set_text(&mut self, key: &str, text: String) {
        let expire_at_ms = self.entries.get(key).and_then(|e| e.expire_at_ms);
        self.entries.insert(
            key.to_string(),
            Entry {
                value: Value::Text(text),
                expire_at_ms,
            },
        );
    }

    /// `SET key text PXAT expire_at_ms`: value and expiry replaced alike.
    fn set_text_until(&mut self, key: String, text: String, expire_at_ms: i64) {
        self.entries.insert(
            key,
            Entry {
                value: Value::Text(text),
                expire_at_ms: Some(expire_at_ms),
            },
        );
    }

    fn expire_if_unset(&mut self, key: &str, at_ms: i64) {
        if let Some(entry) = self.entries.get_mut(key)
            && entry.expire_at_ms.is_none()
        {
            entry.expire_at_ms = Some(at_ms);
        }
    }

    fn apply_op(&mut self, op: &KeyOp, now: i64) -> (String, String) {
        let value: f64 = op.value.parse().unwrap_or(0.0);
        let (before, after) = match op.kind {
            OpKind::Add => {
                let before = self.text(&op.key, now);
                let after = before.as_deref().map_or(0.0, parse_counter) + value;
                let after = format!("{}", total(after));
                self.set_text(&op.key, after.clone());
                (before, after)
            }
            OpKind::Max => {
                let before = self.text(&op.key, now);
                let after = match &before {
                    Some(old) if parse_counter(old) >= value => old.clone(),
                    _ => op.value.clone(),
                };
                self.set_text(&op.key, after.clone());
                (before, after)
            }
            OpKind::Latest => {
                let before = self.text(&op.key, now);
                let before_at = before
                    .as_deref()
                    .and_then(|b| b.split('@').nth(1))
                    .and_then(|t| t.parse::<i64>().ok());
                let after = match (&before, before_at) {
                    (Some(old), Some(at)) if op.at_ms < at => old.clone(),
                    _ => format!("{}@{}", op.value, op.at_ms),
                };
                self.set_text(&op.key, after.clone());
                (before, after)
            }
            OpKind::HashAdd => {
                let hash = self.hash(&op.key, now);
                let before = hash.get(&op.field).cloned();
                let after = before.as_deref().map_or(0.0, parse_counter) + value;
                let after = format!("{}", total(after));
                hash.insert(op.field.clone(), after.clone());
                (before, after)
            }
            OpKind::HashMax => {
                let hash = self.hash(&op.key, now);
                let before = hash.get(&op.field).cloned();
                let after = match &before {
                    Some(old) if parse_counter(old) >= value => old.clone(),
                    _ => op.value.clone(),
                };
                hash.insert(op.field.clone(), after.clone());
                (before, after)
            }
            OpKind::HashLatest => {
                let hash = self.hash(&op.key, now);
                let before = hash.get(&op.field).cloned();
                let at_field = format!("{}@", op.field);
                let before_at = hash.get(&at_field).and_then(|t| t.parse::<i64>().ok());
                let after = match (&before, before_at) {
                    (Some(old), Some(at)) if op.at_ms < at => old.clone(),
                    _ => {
                        hash.insert(at_field, op.at_ms.to_string());
                        op.value.clone()
                    }
                };
                hash.insert(op.field.clone(), after.clone());
                (before, after)
            }
            OpKind::HashSetIfAbsent => {
                let hash = self.hash(&op.key, now);
                hash.entry(op.field.clone())
                    .or_insert_with(|| op.value.clone());
                (None, op.value.clone())
            }
        };
        if op.expire_at_ms != 0 {
            self.expire_if_unset(&op.key, op.expire_at_ms);
        }
        (before.unwrap_or_default(), after)
    }

    /// Sum of the live holds on one counter; expired holds are dropped on the way.
    fn held_on(&mut self, holds_key: &str, counter_key: &str, now: i64) -> f64 {
        let Some(holds) = self.live_hash(holds_key, now) else {
            return 0.0;
        };
        let mut total = 0.0;
        holds.retain(|field, entry| match entry.split_once(':') {
            Some((amount, expires)) if expires.parse::<i64>().is_ok_and(|e| e > now) => {
                if field
                    .rsplit_once('|')
                    .is_some_and(|(counter, _)| counter == counter_key)
                {
                    total += amount.parse::<f64>().unwrap_or(0.0);
                }
                true
            }
            _ => false,
        });
        total
    }

    /// The reference semantics are those of `lua/usage.lua`; this mirrors it step by step.
    fn write_event(&mut self, event: &EventOps) -> RecordOutcome {
        let now = event.now_ms;
        if let Some(key) = &event.dedupe_key
            && let Some(first) = self.text(key, now)
        {
            return RecordOutcome::Duplicate { event_id: first };
        }
        // A commit's holds go before the holds are read, as in the script.
        if !event.released_holds.is_empty()
            && let Some(holds) = self.live_hash(&event.holds_key, now)
        {
            for field in &event.released_holds {
                holds.remove(field);
            }
        }
        let mut reserved = Vec::with_capacity(event.ops.len());
        let mut readings = Vec::with_capacity(event.counters);
        let mut refused = false;
        for op in &event.ops {
            let held = if op.holds {
                self.held_on(&event.holds_key, &op.key, now)
            } else {
                0.0
            };
            reserved.push(held);
            let used = self
                .text(&op.key, now)
                .as_deref()
                .map_or(0.0, parse_counter);
            if event.mode != "record"
                && let Some(cap) = op.cap
            {
                let value: f64 = op.value.parse().unwrap_or(0.0);
                let fits = match op.kind {
                    OpKind::Add => total(used + held + value) <= cap,
                    OpKind::Max => used.max(value) <= cap,
                    _ => value <= cap,
                };
                refused |= !fits;
            }
            if readings.len() < event.counters {
                readings.push(CounterReading {
                    used,
                    reserved: held,
                });
            }
        }
        if refused {
            return RecordOutcome::Refused { counters: readings };
        }
        if let Some(key) = &event.dedupe_key {
            self.set_text_until(
                key.clone(),
                event.event_id.clone(),
                now + event.dedupe_ttl_ms,
            );
        }
        if event.mode == "reserve" {
            let mut after = Vec::with_capacity(event.counters);
            for (op, held) in event.ops.iter().zip(&reserved) {
                let mut held = *held;
                if op.holds {
                    let holds_key = &event.holds_key;
                    let holds = self.hash(holds_key, now);
                    holds.insert(
                        Keys::hold_field(&op.key, &event.event_id),
                        format!("{}:{}", op.value, op.hold_expires_ms),
                    );
                    if let Some(entry) = self.entries.get_mut(holds_key) {
                        entry.expire_at_ms = Some(now + HOLDS_TTL_MS);
                    }
                    held += op.value.parse::<f64>().unwrap_or(0.0);
                }
                let used = self
                    .text(&op.key, now)
                    .as_deref()
                    .map_or(0.0, parse_counter);
                after.push(CounterReading {
                    used,
                    reserved: held,
                });
            }
            if let Some(key) = &event.reservation_key {
                let record = self.hash(key, now);
                record.insert("doc".into(), event.reservation_doc.clone());
                record.insert("status".into(), "held".into());
                if let Some(entry) = self.entries.get_mut(key) {
                    entry.expire_at_ms = Some(now + event.reservation_ttl_ms);
                }
            }
            after.truncate(event.counters);
            return RecordOutcome::Written { after, alerts: 0 };
        }
        let mut after = Vec::with_capacity(event.counters);
        for (index, op) in event.ops.iter().enumerate() {
            let (_, written) = self.apply_op(op, now);
            if index < event.counters {
                after.push(CounterReading {
                    used: parse_counter(&written),
                    reserved: reserved[index],
                });
            }
        }
        if !event.log_member.is_empty() {
            self.push(&event.log_key, event.log_member.clone(), now);
            if let Some(Entry {
                value: Value::List(log),
                expire_at_ms,
            }) = self.entries.get_mut(&event.log_key)
            {
                *expire_at_ms = Some(now + event.log_ttl_ms);
                while log.len() > event.log_cap {
                    log.pop_front();
                }
            }
        }
        let alerts = self.detect_crossings(event, &readings, &after);
        RecordOutcome::Written { after, alerts }
    }

    /// Queues a message for each threshold a counter crossed, once per window (see
    /// `lua/usage.lua`).
    fn detect_crossings(
        &mut self,
        event: &EventOps,
        before: &[CounterReading],
        after: &[CounterReading],
    ) -> usize {
        let now = event.now_ms;
        let mut queued = 0;
        for alert in &event.alerts {
            let (Some(was), Some(is)) = (before.get(alert.op_index), after.get(alert.op_index))
            else {
                continue;
            };
            for threshold in alert.rule.thresholds.split(',') {
                let percent = if threshold == EXCEEDED {
                    100.0
                } else {
                    threshold.parse().unwrap_or(100.0)
                };
                let level = alert.rule.limit_value * percent / 100.0;
                if !(was.used < level && is.used >= level) {
                    continue;
                }
                let fired = self.hash(&alert.fired_key, now);
                if fired.insert(threshold.to_string(), String::new()).is_some() {
                    continue;
                }
                // A rule's fired-set expires with the counter it watches (as in the script).
                let until = event
                    .ops
                    .get(alert.op_index)
                    .map_or(0, |op| op.expire_at_ms);
                if until != 0
                    && let Some(entry) = self.entries.get_mut(&alert.fired_key)
                {
                    entry.expire_at_ms = Some(until);
                }
                let rule = &alert.rule;
                let (window_start_ms, window_end_ms) = rule.window_ms.unwrap_or((0, 0));
                let crossing = Crossing {
                    exceeded: threshold == EXCEEDED,
                    threshold: percent,
                    limit_id: rule.limit_id.clone(),
                    window_start_ms,
                    window_end_ms,
                    limit: rule.limit_value,
                    usage: is.used,
                    at_ms: now,
                    limit_text: None,
                    usage_text: None,
                };
                let message = serde_json::to_string(&crossing).unwrap_or_default();
                self.push(&event.outbox_key, message, now);
                queued += 1;
            }
        }
        queued
    }

    fn push(&mut self, key: &str, item: String, now: i64) {
        if !matches!(self.live(key, now).map(|e| &e.value), Some(Value::List(_))) {
            self.entries.insert(
                key.to_string(),
                Entry {
                    value: Value::List(VecDeque::new()),
                    expire_at_ms: None,
                },
            );
        }
        if let Some(Entry {
            value: Value::List(list),
            ..
        }) = self.entries.get_mut(key)
        {
            list.push_back(item);
        }
    }
}

impl MemoryStore {
    fn usage(&self) -> Held<'_, MemoryUsage> {
        guard(&self.usage)
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn write(&self, writes: &[EventWrite<'_>]) -> StoreResult<Vec<RecordOutcome>> {
        let ops: Vec<EventOps> = writes
            .iter()
            .map(|write| event_ops(&self.keys, &self.retention, *write))
            .collect();
        let mut usage = self.usage();
        for (write, event) in writes.iter().zip(&ops) {
            if let Mode::Reserve { reservation, .. } = write.mode {
                usage.set_text_until(
                    self.keys.reservation_owner(&reservation.id),
                    write.event.customer_id.to_string(),
                    event.now_ms + event.reservation_ttl_ms,
                );
            }
        }
        Ok(ops.iter().map(|event| usage.write_event(event)).collect())
    }

    async fn reservation_owner(&self, id: &str) -> StoreResult<Option<CustomerId>> {
        let owner = self
            .usage()
            .text(&self.keys.reservation_owner(id), now_ms());
        Ok(owner.and_then(|raw| CustomerId::parse("owner", &raw).ok()))
    }

    async fn read_counters(
        &self,
        customer: &CustomerId,
        counters: &[CounterId],
        now_ms: i64,
    ) -> StoreResult<Vec<CounterReading>> {
        let mut usage = self.usage();
        Ok(counters
            .iter()
            .map(|counter| {
                let key = self.keys.counter(customer, counter);
                CounterReading {
                    used: usage
                        .text(&key, now_ms)
                        .as_deref()
                        .map_or(0.0, parse_counter),
                    reserved: usage.held_on(&self.keys.holds(customer), &key, now_ms),
                }
            })
            .collect())
    }

    async fn reservation(
        &self,
        customer: &CustomerId,
        id: &str,
    ) -> StoreResult<Option<StoredReservation>> {
        let mut usage = self.usage();
        let key = self.keys.reservation(customer, id);
        let Some(record) = usage.live_hash(&key, now_ms()) else {
            return Ok(None);
        };
        Ok(Some(StoredReservation {
            doc: record.get("doc").cloned().unwrap_or_default(),
            status: record.get("status").cloned().unwrap_or_default(),
            event_id: record.get("eventId").filter(|e| !e.is_empty()).cloned(),
            committed_values: record.get("values").cloned(),
        }))
    }

    async fn finish_reservation(
        &self,
        customer: &CustomerId,
        id: &str,
        counters: &[CounterId],
        finish: Finish<'_>,
    ) -> StoreResult<Option<(String, String)>> {
        let now = now_ms();
        let mut usage = self.usage();
        let key = self.keys.reservation(customer, id);
        let Some(record) = usage.live_hash(&key, now) else {
            return Ok(None);
        };
        let current = record.get("status").cloned().unwrap_or_default();
        let (status, event_id) = match finish {
            Finish::Commit { event_id, .. } => ("committed", event_id),
            Finish::Release => ("released", ""),
            Finish::Begin { event_id } => ("committing", event_id),
        };
        if let Finish::Commit {
            values, counted, ..
        } = finish
            && current != "released"
            && (counted || !record.contains_key("values"))
        {
            record.insert("values".into(), values.into());
        }
        let unchanged = current == "committed"
            || current == "released"
            || (current == "committing" && status != "committed");
        if unchanged {
            return Ok(Some((
                current,
                record.get("eventId").cloned().unwrap_or_default(),
            )));
        }
        if status == "committing" {
            record.insert("status".into(), status.into());
            record.insert("eventId".into(), event_id.into());
            return Ok(Some((status.to_string(), event_id.to_string())));
        }
        record.insert("status".into(), status.into());
        record.insert("eventId".into(), event_id.into());
        for kept in [key, self.keys.reservation_owner(id)] {
            if let Some(entry) = usage.entries.get_mut(&kept) {
                entry.expire_at_ms = Some(now + RESERVATION_AFTERLIFE_MS);
            }
        }
        let holds_key = self.keys.holds(customer);
        for counter in counters {
            let field = Keys::hold_field(&self.keys.counter(customer, counter), id);
            if let Some(holds) = usage.live_hash(&holds_key, now) {
                holds.remove(&field);
            }
        }
        Ok(Some((status.to_string(), event_id.to_string())))
    }

    async fn extend_reservation(
        &self,
        customer: &CustomerId,
        id: &str,
        holds: &[(CounterId, i64)],
        doc: &str,
        expires_at_ms: i64,
        _node_now_ms: i64,
    ) -> StoreResult<Extension> {
        // Expiries here are absolute instants, on the node's clock like `expires_at_ms`.
        let now = now_ms();
        let mut usage = self.usage();
        let key = self.keys.reservation(customer, id);
        let record_expires = expires_at_ms + RESERVATION_AFTERLIFE_MS;
        let ends = usage.entries.get(&key).and_then(|entry| entry.expire_at_ms);
        let Some(record) = usage.live_hash(&key, now) else {
            return Ok(Extension::NotHeld);
        };
        if record.get("status").map(String::as_str) != Some("held") {
            return Ok(Extension::NotHeld);
        }
        if ends.is_some_and(|ends| ends >= record_expires) {
            return Ok(Extension::AlreadyLonger);
        }
        record.insert("doc".into(), doc.into());
        for kept in [key, self.keys.reservation_owner(id)] {
            if let Some(entry) = usage.entries.get_mut(&kept) {
                entry.expire_at_ms = Some(record_expires);
            }
        }
        let holds_key = self.keys.holds(customer);
        // As lua/reservation_extend.lua: no hold outlives the longest reservation from its
        // last change.
        if let Some(entry) = usage.entries.get_mut(&holds_key) {
            entry.expire_at_ms = Some(now + HOLDS_TTL_MS);
        }
        for (counter, hold_expires) in holds {
            let field = Keys::hold_field(&self.keys.counter(customer, counter), id);
            if let Some(entries) = usage.live_hash(&holds_key, now)
                && let Some(entry) = entries.get_mut(&field)
                && let Some((amount, _)) = entry.split_once(':')
            {
                *entry = format!("{amount}:{hold_expires}");
            }
        }
        Ok(Extension::Extended)
    }

    async fn read_rollups(
        &self,
        customer: &CustomerId,
        meter_id: &str,
        hours: Option<(i64, i64)>,
    ) -> StoreResult<Rollups> {
        let now = now_ms();
        let mut usage = self.usage();
        let mut read = |key: String| -> HashMap<String, String> {
            usage.live_hash(&key, now).cloned().unwrap_or_default()
        };
        let buckets = match hours {
            None => vec![(
                None,
                decode_rollup(read(self.keys.rollup(customer, meter_id, None))),
            )],
            Some((from, to)) => (from..to)
                .step_by(3600)
                .map(|hour| {
                    (
                        Some(hour),
                        decode_rollup(read(self.keys.rollup(customer, meter_id, Some(hour)))),
                    )
                })
                .collect(),
        };
        let dimensions = read(self.keys.rollup_dimensions(customer, meter_id))
            .into_iter()
            .filter_map(|(hash, json)| serde_json::from_str(&json).ok().map(|dims| (hash, dims)))
            .collect();
        Ok(Rollups {
            dimensions,
            buckets,
        })
    }

    async fn event_log(&self, customer: &CustomerId) -> StoreResult<Vec<String>> {
        let mut usage = self.usage();
        Ok(
            match usage
                .live(&self.keys.event_log(customer), now_ms())
                .map(|e| &e.value)
            {
                Some(Value::List(list)) => list.iter().cloned().collect(),
                _ => Vec::new(),
            },
        )
    }

    async fn forget_usage(&self, customer: &CustomerId, usage: &UsageToForget) -> StoreResult<()> {
        let mut state = self.usage();
        let hold_fields: Vec<String> = state
            .live_hash(&self.keys.holds(customer), now_ms())
            .map(|holds| holds.keys().cloned().collect())
            .unwrap_or_default();
        let fields = hold_fields.iter().map(String::as_str);
        for key in usage_keys_to_forget(&self.keys, customer, usage, fields) {
            state.entries.remove(&key);
        }
        Ok(())
    }
}

// --- balances ----------------------------------------------------------------------------

impl MemoryUsage {
    fn sorted(&mut self, key: &str, now: i64) -> Option<&mut BTreeSet<String>> {
        match self.live(key, now).map(|e| &mut e.value) {
            Some(Value::Sorted(set)) => Some(set),
            _ => None,
        }
    }

    /// The reference semantics are those of `lua/balance_move.lua`.
    fn move_balance(
        &mut self,
        keys: &Keys,
        retention: &Retention,
        customer: &CustomerId,
        movement: &Movement<'_>,
    ) -> MovementOutcome {
        let now = now_ms();
        let dedupe_key = movement
            .idempotency_key
            .map(|key| movement_dedupe_key(keys, customer, key));
        if let Some(first) = dedupe_key.as_deref().and_then(|key| self.text(key, now)) {
            return MovementOutcome::Duplicate(Box::new(first_movement(first)));
        }
        let spent_key = keys.balance_spent(customer, movement.balance_id);
        let spent = self
            .text(&spent_key, now)
            .as_deref()
            .map_or(0.0, parse_counter);
        if movement
            .ceiling
            .is_some_and(|ceiling| total(spent + movement.spent_change) > ceiling)
        {
            if let Some(key) = dedupe_key {
                self.set_text_until(
                    key,
                    refusal_record(&spent.to_string(), movement.entry),
                    now + retention.idempotency.as_millis() as i64,
                );
            }
            return MovementOutcome::Refused {
                spent,
                first_entry: None,
            };
        }
        let after = format!("{}", total(spent + movement.spent_change));
        self.set_text(&spent_key, after.clone());
        let member = transaction_member(movement.transaction_id, &after, movement.entry);
        let log_key = keys.balance_transactions(customer, movement.balance_id);
        match self.sorted(&log_key, now) {
            Some(set) => {
                set.insert(member.clone());
            }
            None => {
                self.entries.insert(
                    log_key,
                    Entry {
                        value: Value::Sorted(BTreeSet::from([member.clone()])),
                        expire_at_ms: None,
                    },
                );
            }
        }
        if let Some(key) = dedupe_key {
            self.set_text_until(
                key,
                member.clone(),
                now + retention.idempotency.as_millis() as i64,
            );
        }
        MovementOutcome::Applied(member)
    }
}

#[async_trait]
impl BalanceStore for MemoryStore {
    async fn move_balance(
        &self,
        customer: &CustomerId,
        movement: &Movement<'_>,
    ) -> StoreResult<MovementOutcome> {
        Ok(self
            .usage()
            .move_balance(&self.keys, &self.retention, customer, movement))
    }

    async fn balance_readings(
        &self,
        customer: &CustomerId,
        balance_ids: &[&str],
    ) -> StoreResult<Vec<BalanceReading>> {
        let now = now_ms();
        let mut usage = self.usage();
        Ok(balance_ids
            .iter()
            .map(|id| BalanceReading {
                spent: usage
                    .text(&self.keys.balance_spent(customer, id), now)
                    .as_deref()
                    .map_or(0.0, parse_counter),
                newest: usage
                    .sorted(&self.keys.balance_transactions(customer, id), now)
                    .and_then(|set| set.last().cloned()),
            })
            .collect())
    }

    async fn transactions(
        &self,
        customer: &CustomerId,
        balance_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut usage = self.usage();
        let key = self.keys.balance_transactions(customer, balance_id);
        let Some(set) = usage.sorted(&key, now_ms()) else {
            return Ok(Vec::new());
        };
        Ok(set
            .iter()
            .rev()
            .filter(|member| before.is_none_or(|id| member.as_str() < id))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn drop_balance(&self, customer: &CustomerId, balance_id: &str) -> StoreResult<()> {
        let mut usage = self.usage();
        usage.set_text_until(
            self.keys.balance_spent(customer, balance_id),
            "0".into(),
            now_ms() + DROPPED_SPENT_TTL_MS as i64,
        );
        usage
            .entries
            .remove(&self.keys.balance_transactions(customer, balance_id));
        Ok(())
    }
}

// --- replays ----------------------------------------------------------------------------

#[async_trait]
impl ReplayStore for MemoryStore {
    async fn claim_replay(&self, key: &str, pending_ms: i64) -> StoreResult<ReplayClaim> {
        let now = now_ms();
        let key = self.keys.replay(key);
        let mut usage = self.usage();
        Ok(match usage.text(&key, now) {
            Some(answer) if answer.is_empty() => ReplayClaim::InProgress,
            Some(answer) => ReplayClaim::Answered(answer),
            None => {
                usage.set_text_until(key, String::new(), now + pending_ms);
                ReplayClaim::Claimed
            }
        })
    }

    async fn finish_replay(&self, key: &str, answer: Option<&str>) -> StoreResult<()> {
        let key = self.keys.replay(key);
        let mut usage = self.usage();
        match answer {
            Some(answer) => {
                usage.set_text_until(
                    key,
                    answer.to_string(),
                    now_ms() + self.retention.idempotency.as_millis() as i64,
                );
            }
            None => {
                usage.entries.remove(&key);
            }
        }
        Ok(())
    }
}

// --- alerts --------------------------------------------------------------------------------

/// The embedded store's delivery schedule (see `lua/alert_*.lua` for the reference semantics).
#[derive(Default)]
pub struct MemoryAlerts {
    due: HashMap<String, i64>,
    tries: HashMap<String, String>,
    failures: HashMap<String, u32>,
    messages: HashMap<String, (String, i64)>,
    attempts: HashMap<String, BTreeMap<String, ()>>,
    /// See [`Keys::webhook_retried_attempts`].
    retried: HashMap<String, String>,
    last_sweep_ms: Option<i64>,
}

impl MemoryStore {
    fn alerts(&self) -> Held<'_, MemoryAlerts> {
        guard(&self.alerts)
    }
}

#[async_trait]
impl AlertStore for MemoryStore {
    async fn outbox(&self, customer: &CustomerId) -> StoreResult<Vec<String>> {
        let mut usage = self.usage();
        Ok(
            match usage
                .live(&self.keys.outbox(customer), now_ms())
                .map(|e| &e.value)
            {
                Some(Value::List(list)) => list.iter().cloned().collect(),
                _ => Vec::new(),
            },
        )
    }

    async fn claim_sweep(&self, now_ms: i64, interval_ms: i64) -> StoreResult<bool> {
        let mut alerts = self.alerts();
        if alerts
            .last_sweep_ms
            .is_some_and(|last| now_ms < last + interval_ms)
        {
            return Ok(false);
        }
        alerts.last_sweep_ms = Some(now_ms);
        Ok(true)
    }

    async fn outbox_lengths(&self, customers: &[CustomerId]) -> StoreResult<Vec<usize>> {
        let mut usage = self.usage();
        let now = now_ms();
        Ok(customers
            .iter()
            .map(|customer| {
                match usage
                    .live(&self.keys.outbox(customer), now)
                    .map(|e| &e.value)
                {
                    Some(Value::List(list)) => list.len(),
                    _ => 0,
                }
            })
            .collect())
    }

    async fn hand_over(
        &self,
        customer: &CustomerId,
        message_id: &str,
        message: &str,
        outbox_entry: &str,
        endpoints: &[String],
        now_ms: i64,
    ) -> StoreResult<()> {
        {
            let mut alerts = self.alerts();
            let fresh = !message_id.is_empty()
                && alerts
                    .messages
                    .get(message_id)
                    .is_none_or(|(_, until)| *until <= now_ms);
            if fresh {
                alerts.messages.insert(
                    message_id.to_string(),
                    (message.to_string(), now_ms + MESSAGE_TTL_MS),
                );
                for endpoint in endpoints {
                    alerts
                        .due
                        .entry(delivery_member(message_id, endpoint))
                        .or_insert(now_ms);
                }
            }
        }
        let mut usage = self.usage();
        if let Some(Entry {
            value: Value::List(list),
            ..
        }) = usage.entries.get_mut(&self.keys.outbox(customer))
            && let Some(index) = list.iter().position(|m| m == outbox_entry)
        {
            list.remove(index);
        }
        Ok(())
    }

    async fn claim_due(&self, now_ms: i64, lease_ms: i64, max: usize) -> StoreResult<Vec<Claim>> {
        let mut alerts = self.alerts();
        let mut due: Vec<(i64, String)> = alerts
            .due
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(m, at)| (*at, m.clone()))
            .collect();
        due.sort();
        due.truncate(max);
        let mut claims = Vec::with_capacity(due.len());
        for (_, member) in due {
            alerts.due.insert(member.clone(), now_ms + lease_ms);
            let Some((message_id, endpoint_id)) = split_delivery_member(&member) else {
                continue;
            };
            let (attempts, first_attempt_ms) =
                match alerts.tries.get(&member).and_then(|t| t.split_once(':')) {
                    Some((n, first)) => (n.parse().unwrap_or(0), first.parse().unwrap_or(now_ms)),
                    None => (0, now_ms),
                };
            claims.push(Claim {
                message_id: message_id.to_string(),
                endpoint_id: endpoint_id.to_string(),
                message: alerts
                    .messages
                    .get(message_id)
                    .map(|(m, _)| m.clone())
                    .unwrap_or_default(),
                attempts,
                first_attempt_ms,
            });
        }
        Ok(claims)
    }

    async fn finish_attempt(
        &self,
        claim: &Claim,
        attempt_id: &str,
        attempt: &str,
        end: &AttemptEnd,
        _now_ms: i64,
    ) -> StoreResult<u32> {
        let mut alerts = self.alerts();
        let member = delivery_member(&claim.message_id, &claim.endpoint_id);
        let retried = alerts.retried.remove(&member);
        let logged = format!("{attempt_id}:{attempt}");
        let log = alerts
            .attempts
            .entry(claim.endpoint_id.clone())
            .or_default();
        if let Some(retried) = retried
            && log.remove(&retried).is_some()
        {
            log.insert(superseded(&retried), ());
        }
        log.insert(logged.clone(), ());
        while log.len() > ATTEMPT_LOG_LEN {
            log.pop_first();
        }
        match end {
            AttemptEnd::Succeeded => {
                alerts.due.remove(&member);
                alerts.tries.remove(&member);
                alerts.failures.remove(&claim.endpoint_id);
                return Ok(0);
            }
            AttemptEnd::RetryAt(at) => {
                alerts.due.insert(member.clone(), *at);
                alerts.retried.insert(member.clone(), logged);
                alerts.tries.insert(
                    member,
                    format!("{}:{}", claim.attempts + 1, claim.first_attempt_ms),
                );
            }
            AttemptEnd::GaveUp => {
                alerts.due.remove(&member);
                alerts.tries.remove(&member);
            }
        }
        let failures = alerts
            .failures
            .entry(claim.endpoint_id.clone())
            .or_default();
        if claim.is_first_attempt() {
            *failures += 1;
        }
        Ok(*failures)
    }

    async fn reset_failures(&self, endpoint_id: &str) -> StoreResult<()> {
        self.alerts().failures.remove(endpoint_id);
        Ok(())
    }

    async fn attempts(
        &self,
        endpoint_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let alerts = self.alerts();
        let Some(log) = alerts.attempts.get(endpoint_id) else {
            return Ok(Vec::new());
        };
        let upper = match before {
            Some(before) => std::ops::Bound::Excluded(before.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(log
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .take(limit)
            .map(|(m, _)| m.clone())
            .collect())
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<String>> {
        let alerts = self.alerts();
        Ok(alerts
            .messages
            .get(message_id)
            .filter(|(_, until)| *until > now_ms())
            .map(|(m, _)| m.clone()))
    }

    async fn redeliver(
        &self,
        message_id: &str,
        message: &str,
        endpoint_id: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut alerts = self.alerts();
        let member = delivery_member(message_id, endpoint_id);
        alerts.messages.insert(
            message_id.to_string(),
            (message.to_string(), now_ms + MESSAGE_TTL_MS),
        );
        alerts.tries.remove(&member);
        alerts.due.insert(member, now_ms);
        Ok(())
    }
}
