//! Which meters an event feeds, which limits govern a customer, which counters an event
//! touches, and what a limit's state looks like. Pure: `now` and windows come in.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::balance::Balance;
use super::event::Event;
use super::field::{Dimensions, Quantity, total};
use super::limit::{FailMode, Limit};
use super::meter::{Aggregation, EventFilter, Meter, MeterField};
use super::period::{BillingAnchor, Period, Window, window_containing};

/// How one event changes one counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CounterOp {
    /// sum (the value) and count (1).
    Add(f64),
    /// Keeps the larger value.
    Max(f64),
    /// Keeps the value with the latest timestamp (a backdated event never overwrites a newer one).
    Latest { value: f64, at_ms: i64 },
}

impl CounterOp {
    pub fn amount(self) -> f64 {
        match self {
            CounterOp::Add(v) | CounterOp::Max(v) | CounterOp::Latest { value: v, .. } => v,
        }
    }
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        self.event_type
            .as_ref()
            .is_none_or(|t| *t == event.event_type)
            && event.carries(&self.dimensions)
    }
}

impl Meter {
    /// What `event` adds to this meter; `None` when it does not match or lacks the field.
    pub fn contribution(&self, event: &Event) -> Option<CounterOp> {
        if !self.event_filter.matches(event) {
            return None;
        }
        let value = match &self.field {
            MeterField::EveryEvent => 1.0,
            MeterField::Value(key) => event.values.get(key)?.get(),
        };
        Some(match self.aggregation {
            Aggregation::Sum => CounterOp::Add(value),
            Aggregation::Count => CounterOp::Add(1.0),
            Aggregation::Max => CounterOp::Max(value),
            Aggregation::Latest => CounterOp::Latest {
                value,
                at_ms: event.timestamp.timestamp_millis(),
            },
        })
    }
}

/// A stable, short name for a set of dimension filters, used inside counter keys so that two
/// limits with equal effective filters share a counter. `_` for no filter.
pub fn filters_hash(filters: &Dimensions) -> String {
    if filters.is_empty() {
        return "_".to_string();
    }
    let mut hasher = Sha256::new();
    for (key, value) in filters {
        // Keys cannot contain '=' or '\n'; values are length-prefixed so no two sets collide.
        hasher.update(format!("{key}={}:{value}\n", value.len()).as_bytes());
    }
    super::apikey::hex(&hasher.finalize()[..8])
}

/// A limit with its meter and effective filters, resolved once when config changes. Cheap to
/// clone: every request that a limit governs carries it.
#[derive(Debug, Clone)]
pub struct ResolvedLimit(Arc<Resolved>);

#[derive(Debug)]
pub struct Resolved {
    pub limit: Arc<Limit>,
    pub meter: Arc<Meter>,
    /// The meter's dimension filter plus the limit's own.
    pub filters: Dimensions,
    pub filters_hash: String,
    /// `80,100,x`: the alert thresholds, then exceeded, as the counting script reads them.
    pub alert_thresholds: String,
    /// The lowest of them, in percent (100 when only exceeded is watched).
    pub lowest_alert_percent: f64,
}

impl std::ops::Deref for ResolvedLimit {
    type Target = Resolved;

    fn deref(&self) -> &Resolved {
        &self.0
    }
}

impl ResolvedLimit {
    pub fn new(limit: Arc<Limit>, meter: Arc<Meter>) -> ResolvedLimit {
        let filters = limit.effective_filters(&meter);
        let filters_hash = filters_hash(&filters);
        let mut alert_thresholds: Vec<String> =
            limit.alert_thresholds.iter().map(u8::to_string).collect();
        alert_thresholds.push(super::alert::EXCEEDED.to_string());
        let lowest_alert_percent =
            f64::from(limit.alert_thresholds.iter().copied().min().unwrap_or(100));
        ResolvedLimit(Arc::new(Resolved {
            limit,
            meter,
            filters,
            filters_hash,
            alert_thresholds: alert_thresholds.join(","),
            lowest_alert_percent,
        }))
    }

    /// A customer's own limit replaces a default limit with the same identity.
    fn identity(&self) -> (&str, Period, &str) {
        (&self.limit.meter_id, self.limit.period, &self.filters_hash)
    }

    /// What `event` adds to this limit's counter, if it counts toward it.
    pub fn contribution(&self, event: &Event) -> Option<CounterOp> {
        if !event.carries(&self.filters) {
            return None;
        }
        self.meter.contribution(event)
    }

    /// Whether a check with these dimensions (and event type) concerns this limit.
    pub fn concerns(&self, dimensions: Option<&Dimensions>, event_type: Option<&str>) -> bool {
        let dims_ok =
            dimensions.is_none_or(|dims| self.filters.iter().all(|(k, v)| dims.get(k) == Some(v)));
        let type_ok = event_type.is_none_or(|wanted| {
            self.meter
                .event_filter
                .event_type
                .as_ref()
                .is_none_or(|t| t == wanted)
        });
        dims_ok && type_ok
    }

    pub fn counter(&self, window: Option<Window>) -> CounterId {
        CounterId {
            meter_id: self.limit.meter_id.clone(),
            filters_hash: self.filters_hash.clone(),
            period: self.limit.period,
            window_start: window.map(|w| w.start.timestamp()),
        }
    }
}

/// The limits that govern a customer: its own, plus every default limit it does not override.
pub fn governing(own: &[ResolvedLimit], defaults: &[ResolvedLimit]) -> Vec<ResolvedLimit> {
    let mut limits: Vec<ResolvedLimit> = own.to_vec();
    for default in defaults {
        if !own.iter().any(|o| o.identity() == default.identity()) {
            limits.push(default.clone());
        }
    }
    limits
}

/// Identity of a usage counter. Usage belongs to the meter, not the limit: the limit value is
/// not part of it, so changing a limit keeps its usage, and equal limits share a counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterId {
    pub meter_id: String,
    pub filters_hash: String,
    #[serde(with = "super::limit::period_name")]
    pub period: Period,
    /// Unix seconds; `None` for all-time counters.
    pub window_start: Option<i64>,
}

impl CounterId {
    /// What a balance has spent (see [`super::balance`]): an all-time counter that carries the
    /// balance's ID where a usage counter carries its meter's (the prefixes never collide).
    pub fn balance(balance_id: &str) -> CounterId {
        CounterId {
            meter_id: balance_id.to_string(),
            filters_hash: "_".to_string(),
            period: Period::AllTime,
            window_start: None,
        }
    }
}

/// A customer's timezone and billing anchor: all a window needs.
#[derive(Debug, Clone, Copy)]
pub struct CustomerCalendar {
    pub timezone: Tz,
    pub anchor: BillingAnchor,
}

impl CustomerCalendar {
    pub fn window(&self, period: Period, at: DateTime<Utc>) -> Option<Window> {
        window_containing(period, self.timezone, self.anchor, at)
    }
}

/// One counter write of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterWrite {
    pub counter: CounterId,
    pub op: CounterOp,
    /// When storage may drop the counter (window end plus one period); `None`: keep.
    pub retain_until_ms: Option<i64>,
}

/// One hourly (and all-time) roll-up write of an event, for meter queries.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupWrite {
    pub meter_id: String,
    /// The event's full dimension set, by hash, so queries can narrow by dimensions later.
    pub dimensions_hash: String,
    pub dimensions: Dimensions,
    pub hour_start: i64,
    pub op: CounterOp,
}

/// Everything one event changes, and which limits it counted toward.
#[derive(Debug, Clone)]
pub struct EventPlan {
    /// Distinct counters, each written once even when several limits share it.
    pub counters: Vec<CounterWrite>,
    /// The limits the event counts toward, with their window and the index of their counter.
    pub limits: Vec<(ResolvedLimit, Option<Window>, usize)>,
    pub rollups: Vec<RollupWrite>,
    /// The balances the event debits, with the index of their counter.
    pub balances: Vec<(Arc<Balance>, usize)>,
}

/// What one event changes at `now`. `meters` are ordered by ID; `balances` are the
/// customer's (those with a meter are debited). A backdated event does not count toward a
/// window no longer retained at `now`: its counter is gone, and nothing would keep a new one.
pub fn plan_event(
    event: &Event,
    meters: &[Arc<Meter>],
    limits: &[ResolvedLimit],
    balances: &[Arc<Balance>],
    calendar: CustomerCalendar,
    now: DateTime<Utc>,
) -> EventPlan {
    let mut counters: Vec<CounterWrite> = Vec::new();
    let mut counted = Vec::new();
    for limit in limits {
        let Some(op) = limit.contribution(event) else {
            continue;
        };
        let window = calendar.window(limit.limit.period, event.timestamp);
        if window.is_some_and(|window| window.retain_until() <= now) {
            continue;
        }
        let counter = limit.counter(window);
        let index = match counters.iter().position(|c| c.counter == counter) {
            Some(index) => index,
            None => {
                counters.push(CounterWrite {
                    counter,
                    op,
                    retain_until_ms: window.map(|w| w.retain_until().timestamp_millis()),
                });
                counters.len() - 1
            }
        };
        counted.push((limit.clone(), window, index));
    }
    let mut debited = Vec::new();
    for balance in balances {
        let Some(meter_id) = balance.meter_id.as_deref() else {
            continue;
        };
        let Ok(at) = meters.binary_search_by(|meter| meter.id.as_str().cmp(meter_id)) else {
            continue;
        };
        // Only sum and count meters say what an event costs (a meter changed since the
        // balance was made may no longer).
        let Some(op @ CounterOp::Add(_)) = meters[at].contribution(event) else {
            continue;
        };
        if !event.carries(&balance.dimension_filters) {
            continue;
        }
        counters.push(CounterWrite {
            counter: CounterId::balance(&balance.id),
            op,
            retain_until_ms: None,
        });
        debited.push((Arc::clone(balance), counters.len() - 1));
    }
    let hour_start = hour_of(event.timestamp);
    let dimensions_hash = filters_hash(&event.dimensions);
    let rollups = meters
        .iter()
        .filter_map(|meter| {
            meter.contribution(event).map(|op| RollupWrite {
                meter_id: meter.id.clone(),
                dimensions_hash: dimensions_hash.clone(),
                dimensions: event.dimensions.clone(),
                hour_start,
                op,
            })
        })
        .collect();
    EventPlan {
        counters,
        limits: counted,
        rollups,
        balances: debited,
    }
}

/// Start of the UTC hour containing `at`, in unix seconds. Whole-second arithmetic, so every
/// representable instant rounds (chrono's `duration_trunc` counts nanoseconds in an `i64` and
/// gives up after 2262).
pub fn hour_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(3600) * 3600
}

/// Start of the first UTC hour that begins at or after `at`, in unix seconds.
pub fn hour_ceil(at: DateTime<Utc>) -> i64 {
    let floor = hour_of(at);
    if floor == at.timestamp() && at.timestamp_subsec_nanos() == 0 {
        floor
    } else {
        floor + 3600
    }
}

/// Whether `op` still fits under `limit` given what is used and held:
/// sum/count `used + reserved + v ≤ limit`, max `max(used, v) ≤ limit`, latest `v ≤ limit`.
pub fn fits(op: CounterOp, used: f64, reserved: f64, limit: f64) -> bool {
    match op {
        CounterOp::Add(v) => total(used + reserved + v) <= limit,
        CounterOp::Max(v) => used.max(v) <= limit,
        CounterOp::Latest { value, .. } => value <= limit,
    }
}

/// Whole seconds until every refusing limit has reset (the latest reset among them), or
/// `None` when one of them never resets.
pub fn retry_after(refusing: &[&LimitState], now: DateTime<Utc>) -> Option<i64> {
    let mut latest = 0;
    for state in refusing {
        let reset = state.reset?;
        let millis = reset * 1000 - now.timestamp_millis();
        latest = latest.max((millis + 999).div_euclid(1000));
    }
    Some(latest.max(0))
}

/// A limit as check, consume, record and reserve report it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitState {
    pub id: String,
    pub name: String,
    pub meter_id: String,
    pub period: &'static str,
    pub limit: Quantity,
    /// `None` only in degraded answers (storage unreachable). Totals, so not bounded like
    /// one value: many values of up to 1e15 add up to more.
    #[schema(value_type = Option<f64>)]
    pub used: Option<Quantity>,
    #[schema(value_type = Option<f64>)]
    pub reserved: Option<Quantity>,
    #[schema(value_type = Option<f64>)]
    pub remaining: Option<Quantity>,
    pub exceeded: bool,
    /// Unix seconds of the window end; `None` for all-time limits.
    pub reset: Option<i64>,
    #[serde(serialize_with = "crate::domain::time::serde_rfc3339::serialize_option")]
    pub window_start: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::time::serde_rfc3339::serialize_option")]
    pub window_end: Option<DateTime<Utc>>,
    pub fail_mode: FailMode,
}

impl LimitState {
    pub fn new(
        limit: &ResolvedLimit,
        window: Option<Window>,
        used: f64,
        reserved: f64,
    ) -> LimitState {
        let value = limit.limit.limit_value.get();
        LimitState {
            remaining: Some(Quantity::from_f64(total(value - used - reserved).max(0.0))),
            used: Some(Quantity::from_f64(total(used))),
            reserved: Some(Quantity::from_f64(total(reserved))),
            exceeded: total(used) >= value,
            ..LimitState::unknown(limit, window)
        }
    }

    /// A state whose usage is unknown (storage unreachable).
    pub fn unknown(limit: &ResolvedLimit, window: Option<Window>) -> LimitState {
        LimitState {
            id: limit.limit.id.clone(),
            name: limit.limit.name.clone(),
            meter_id: limit.limit.meter_id.clone(),
            period: limit.limit.period.as_str(),
            limit: limit.limit.limit_value,
            used: None,
            reserved: None,
            remaining: None,
            exceeded: false,
            reset: window.map(|w| w.end.timestamp()),
            window_start: window.map(|w| w.start),
            window_end: window.map(|w| w.end),
            fail_mode: limit.limit.fail_mode,
        }
    }

    /// No room left: what makes a check refuse.
    pub fn is_full(&self) -> bool {
        match (self.used, self.reserved) {
            (Some(used), Some(reserved)) => total(used.get() + reserved.get()) >= self.limit.get(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::balance::NewBalance;
    use crate::domain::event::NewEvent;
    use crate::domain::limit::NewLimit;
    use crate::domain::meter::NewMeter;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 34, 56).unwrap()
    }

    fn meter(id: &str, body: serde_json::Value) -> Arc<Meter> {
        let input: NewMeter = serde_json::from_value(body).unwrap();
        Arc::new(Meter::create(id.into(), input, now()).unwrap())
    }

    fn limit(id: &str, meter: &Arc<Meter>, body: serde_json::Value) -> ResolvedLimit {
        let mut body = body;
        body["meterId"] = json!(meter.id);
        body["name"] = json!(id);
        let input: NewLimit = serde_json::from_value(body).unwrap();
        let limit = Limit::create(id.into(), input, meter, now()).unwrap();
        ResolvedLimit::new(Arc::new(limit), Arc::clone(meter))
    }

    fn event(body: serde_json::Value) -> Event {
        let input: NewEvent = serde_json::from_value(body).unwrap();
        Event::validate("evt_1".into(), input, None, now()).unwrap()
    }

    fn utc_calendar() -> CustomerCalendar {
        CustomerCalendar {
            timezone: Tz::UTC,
            anchor: BillingAnchor::new(1, 1).unwrap(),
        }
    }

    #[test]
    fn meters_contribute_by_aggregation_and_filter() {
        let e = event(
            json!({"customerId": "c", "eventType": "llm", "values": {"tokens": 7}, "dimensions": {"model": "a"}}),
        );
        let sum = meter(
            "s",
            json!({"name": "s", "aggregation": "sum", "field": "values.tokens"}),
        );
        let count = meter(
            "c",
            json!({"name": "c", "aggregation": "count", "field": "*", "eventFilter": {"eventType": "llm"}}),
        );
        let other_type = meter(
            "o",
            json!({"name": "o", "aggregation": "count", "field": "*", "eventFilter": {"eventType": "img"}}),
        );
        let other_dim = meter(
            "d",
            json!({"name": "d", "aggregation": "sum", "field": "values.tokens", "eventFilter": {"dimensions": {"model": "b"}}}),
        );
        let missing = meter(
            "m",
            json!({"name": "m", "aggregation": "max", "field": "values.latency"}),
        );
        let latest = meter(
            "l",
            json!({"name": "l", "aggregation": "latest", "field": "values.tokens"}),
        );
        assert_eq!(sum.contribution(&e), Some(CounterOp::Add(7.0)));
        assert_eq!(count.contribution(&e), Some(CounterOp::Add(1.0)));
        assert_eq!(other_type.contribution(&e), None);
        assert_eq!(other_dim.contribution(&e), None);
        assert_eq!(
            missing.contribution(&e),
            None,
            "an event without the field contributes nothing"
        );
        assert_eq!(
            latest.contribution(&e),
            Some(CounterOp::Latest {
                value: 7.0,
                at_ms: now().timestamp_millis()
            })
        );
    }

    #[test]
    fn own_limits_override_defaults_with_same_identity() {
        let m = meter(
            "m",
            json!({"name": "m", "aggregation": "sum", "field": "values.tokens"}),
        );
        let default_day = limit("d1", &m, json!({"limitValue": 100, "period": "day"}));
        let default_gpt4 = limit(
            "d2",
            &m,
            json!({"limitValue": 10, "period": "day", "dimensionFilters": {"model": "gpt-4"}}),
        );
        let default_month = limit("d3", &m, json!({"limitValue": 1000, "period": "month"}));
        let own_day = limit(
            "o1",
            &m,
            json!({"limitValue": 500, "period": "day", "customerId": "c"}),
        );
        let ids: Vec<String> = governing(&[own_day], &[default_day, default_gpt4, default_month])
            .iter()
            .map(|l| l.limit.id.clone())
            .collect();
        assert_eq!(ids, ["o1", "d2", "d3"]);
    }

    #[test]
    fn shared_counters_are_written_once() {
        let m = meter(
            "m",
            json!({"name": "m", "aggregation": "sum", "field": "values.tokens"}),
        );
        let a = limit("a", &m, json!({"limitValue": 100, "period": "day"}));
        let b = limit("b", &m, json!({"limitValue": 50, "period": "day"}));
        let gpt4 = limit(
            "g",
            &m,
            json!({"limitValue": 50, "period": "day", "dimensionFilters": {"model": "gpt-4"}}),
        );
        let e = event(
            json!({"customerId": "c", "eventType": "llm", "values": {"tokens": 3}, "dimensions": {"model": "gpt-3"}}),
        );
        let plan = plan_event(
            &e,
            std::slice::from_ref(&m),
            &[a, b, gpt4],
            &[],
            utc_calendar(),
            e.timestamp,
        );
        assert_eq!(plan.counters.len(), 1);
        assert_eq!(
            plan.limits.len(),
            2,
            "the gpt-4 limit does not count a gpt-3 event"
        );
        assert_eq!(
            plan.counters[0].counter.window_start,
            Some(
                Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0)
                    .unwrap()
                    .timestamp()
            )
        );
        assert_eq!(
            plan.counters[0].retain_until_ms,
            Some(
                Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
                    .unwrap()
                    .timestamp_millis()
            )
        );
        assert_eq!(plan.rollups.len(), 1);
        assert_eq!(
            plan.rollups[0].hour_start,
            Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
                .unwrap()
                .timestamp()
        );
    }

    #[test]
    fn a_backdated_event_skips_windows_no_longer_retained() {
        let m = meter(
            "m",
            json!({"name": "m", "aggregation": "sum", "field": "values.tokens"}),
        );
        let day = limit("d", &m, json!({"limitValue": 100, "period": "day"}));
        let month = limit("mo", &m, json!({"limitValue": 100, "period": "month"}));
        // 2026-11-21T12:00Z; its day window is kept until 2026-11-23T00:00Z.
        let e = event(json!({"customerId": "c", "eventType": "llm", "values": {"tokens": 3}}));
        let plan_at = |now: DateTime<Utc>| {
            plan_event(
                &e,
                std::slice::from_ref(&m),
                &[day.clone(), month.clone()],
                &[],
                utc_calendar(),
                now,
            )
        };
        let kept_until = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let ids = |plan: &EventPlan| -> Vec<String> {
            plan.limits
                .iter()
                .map(|(l, _, _)| l.limit.id.clone())
                .collect()
        };
        let before = plan_at(kept_until - chrono::TimeDelta::milliseconds(1));
        assert_eq!(ids(&before), ["d", "mo"]);
        let after = plan_at(kept_until);
        assert_eq!(ids(&after), ["mo"], "the day's counter is gone");
        assert_eq!(after.counters.len(), 1);
        assert_eq!(after.rollups.len(), 1, "meter queries still see it");
    }

    #[test]
    fn metered_balances_are_debited_what_their_meter_counts() {
        let tokens = meter(
            "m1",
            json!({"name": "t", "aggregation": "sum", "field": "values.tokens"}),
        );
        let peak = meter(
            "m2",
            json!({"name": "p", "aggregation": "max", "field": "values.tokens"}),
        );
        let calls = meter(
            "m3",
            json!({"name": "c", "aggregation": "count", "field": "*"}),
        );
        let balance = |id: &str, body: serde_json::Value, meter: Option<&Arc<Meter>>| {
            let mut body = body;
            body["customerId"] = json!("c");
            body["name"] = json!(id);
            let input: NewBalance = serde_json::from_value(body).unwrap();
            let (balance, _) =
                Balance::create(id.into(), input, meter.map(|m| m.as_ref()), now()).unwrap();
            Arc::new(balance)
        };
        let by_tokens = balance("b1", json!({}), Some(&tokens));
        let by_calls = balance("b2", json!({}), Some(&calls));
        let gpt4_only = balance(
            "b3",
            json!({"dimensionFilters": {"model": "gpt-4"}}),
            Some(&tokens),
        );
        let unmetered = balance("b4", json!({}), None);
        // A balance whose meter became a max meter after the balance was made.
        let mut on_peak = (*balance("b5", json!({}), Some(&tokens))).clone();
        on_peak.meter_id = Some(peak.id.clone());
        let e = event(
            json!({"customerId": "c", "eventType": "llm", "values": {"tokens": 3}, "dimensions": {"model": "gpt-3"}}),
        );
        let plan = plan_event(
            &e,
            &[tokens, peak, calls],
            &[],
            &[by_tokens, by_calls, gpt4_only, unmetered, Arc::new(on_peak)],
            utc_calendar(),
            e.timestamp,
        );
        let debits: Vec<(String, CounterOp, Option<i64>)> = plan
            .balances
            .iter()
            .map(|(balance, index)| {
                let write = &plan.counters[*index];
                assert_eq!(write.counter, CounterId::balance(&balance.id));
                (balance.id.clone(), write.op, write.retain_until_ms)
            })
            .collect();
        assert_eq!(
            debits,
            [
                ("b1".to_string(), CounterOp::Add(3.0), None),
                ("b2".to_string(), CounterOp::Add(1.0), None)
            ]
        );
    }

    #[test]
    fn hours_round_for_every_representable_instant() {
        let at = |raw: &str| crate::domain::time::parse_rfc3339(raw).unwrap();
        let cases = [
            (
                "2026-11-21T10:30:00Z",
                "2026-11-21T10:00:00Z",
                "2026-11-21T11:00:00Z",
            ),
            (
                "2026-11-21T10:00:00Z",
                "2026-11-21T10:00:00Z",
                "2026-11-21T10:00:00Z",
            ),
            (
                "2026-11-21T10:00:00.001Z",
                "2026-11-21T10:00:00Z",
                "2026-11-21T11:00:00Z",
            ),
            // Past chrono's nanosecond range (2262-04-11).
            (
                "2300-01-01T00:30:00Z",
                "2300-01-01T00:00:00Z",
                "2300-01-01T01:00:00Z",
            ),
            (
                "9999-12-31T22:59:59.5Z",
                "9999-12-31T22:00:00Z",
                "9999-12-31T23:00:00Z",
            ),
            (
                "1969-12-31T23:30:00Z",
                "1969-12-31T23:00:00Z",
                "1970-01-01T00:00:00Z",
            ),
        ];
        for (raw, floor, ceil) in cases {
            assert_eq!(hour_of(at(raw)), at(floor).timestamp(), "{raw}");
            assert_eq!(hour_ceil(at(raw)), at(ceil).timestamp(), "{raw}");
        }
    }

    #[test]
    fn fit_rules_per_aggregation() {
        assert!(fits(CounterOp::Add(5.0), 90.0, 5.0, 100.0));
        assert!(
            fits(CounterOp::Add(0.1), 0.2, 0.0, 0.3),
            "as decimals, not binary"
        );
        assert!(!fits(CounterOp::Add(5.1), 90.0, 5.0, 100.0));
        assert!(
            fits(CounterOp::Max(100.0), 20.0, 50.0, 100.0),
            "max ignores holds"
        );
        assert!(!fits(CounterOp::Max(10.0), 101.0, 0.0, 100.0));
        assert!(fits(
            CounterOp::Latest {
                value: 100.0,
                at_ms: 0
            },
            500.0,
            0.0,
            100.0
        ));
        assert!(!fits(
            CounterOp::Latest {
                value: 101.0,
                at_ms: 0
            },
            0.0,
            0.0,
            100.0
        ));
    }

    #[test]
    fn retry_after_waits_for_the_latest_reset() {
        let m = meter(
            "m",
            json!({"name": "m", "aggregation": "sum", "field": "values.tokens"}),
        );
        let minute = limit("a", &m, json!({"limitValue": 1, "period": "minute"}));
        let hour = limit("b", &m, json!({"limitValue": 1, "period": "hour"}));
        let forever = limit("c", &m, json!({"limitValue": 1, "period": "all_time"}));
        let calendar = utc_calendar();
        let states: Vec<LimitState> = [&minute, &hour, &forever]
            .iter()
            .map(|l| LimitState::new(l, calendar.window(l.limit.period, now()), 1.0, 0.0))
            .collect();
        // now is 12:34:56: the minute resets in 4 s, the hour in 25 min 4 s.
        assert_eq!(retry_after(&[&states[0]], now()), Some(4));
        assert_eq!(
            retry_after(&[&states[0], &states[1]], now()),
            Some(25 * 60 + 4)
        );
        assert_eq!(retry_after(&[&states[0], &states[2]], now()), None);
    }

    #[test]
    fn filter_hashes_are_stable_and_distinct() {
        let a = Dimensions::from([("model".into(), "a".into())]);
        let b = Dimensions::from([("model".into(), "b".into())]);
        assert_eq!(filters_hash(&Dimensions::new()), "_");
        assert_eq!(filters_hash(&a), filters_hash(&a.clone()));
        assert_ne!(filters_hash(&a), filters_hash(&b));
        assert_eq!(filters_hash(&a).len(), 16);
    }

    #[test]
    fn limit_state_arithmetic() {
        let m = meter(
            "m",
            json!({"name": "m", "aggregation": "sum", "field": "values.tokens"}),
        );
        let l = limit("a", &m, json!({"limitValue": 100, "period": "hour"}));
        let window = utc_calendar().window(Period::Hour, now());
        let state = LimitState::new(&l, window, 80.0, 30.0);
        assert_eq!(state.remaining, Some(Quantity::ZERO));
        assert!(!state.exceeded);
        assert!(state.is_full());
        assert_eq!(
            state.reset,
            Some(
                Utc.with_ymd_and_hms(2026, 11, 21, 13, 0, 0)
                    .unwrap()
                    .timestamp()
            )
        );
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["windowStart"], "2026-11-21T12:00:00.000Z");
        assert_eq!(json["period"], "hour");
        assert!(LimitState::new(&l, window, 100.0, 0.0).exceeded);
    }
}
