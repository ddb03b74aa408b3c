//! The hot path: record, batch, check; and the reads behind meter queries and the event list.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::Gateway;
use super::error::{ServiceError, ServiceResult, corrupt};
use super::page::Page;
use crate::domain::customer::Customer;
use crate::domain::event::{Event, IdempotencyKey, NewEvent};
use crate::domain::field::{Dimensions, FieldError, validate_dimensions};
use crate::domain::ids::{CustomerId, IdKind};
use crate::domain::meter::Aggregation;
use crate::domain::time::{EARLIEST, LATEST_SECS, parse_usage_instant};
use crate::domain::usage::{
    CustomerCalendar, EventPlan, LimitState, hour_ceil, hour_of, plan_event,
};
use crate::storage::usage::{CounterReading, EventWrite, Mode, RecordOutcome, UsageToForget};
use crate::storage::{ConfigOp, Kind};

pub const MAX_BATCH: usize = 1000;

/// The answer to a record.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub event_id: String,
    pub duplicate: bool,
    pub limits: Vec<LimitState>,
}

/// `POST /v1/meters/{id}/query` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterQuery {
    pub customer_id: Option<CustomerId>,
    pub dimensions: Option<Dimensions>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub granularity: Option<Granularity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Hour,
    Day,
}

#[derive(Debug, Clone)]
pub struct MeterQueryResult {
    pub meter_id: String,
    pub meter_name: String,
    pub aggregation: Aggregation,
    pub customer_id: Option<CustomerId>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    pub series: Option<Vec<(DateTime<Utc>, Option<f64>)>>,
}

/// `GET /v1/events` filters.
#[derive(Debug, Clone)]
pub struct EventListQuery {
    pub customer_id: CustomerId,
    pub event_type: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Position (`<ts13>:<id>`) after which (older) the page starts.
    pub before: Option<String>,
}

/// Folds aggregates the way the meter's aggregation does.
#[derive(Debug, Clone, Copy)]
struct Accumulator {
    aggregation: Aggregation,
    value: Option<f64>,
    at_ms: i64,
}

impl Accumulator {
    fn new(aggregation: Aggregation) -> Accumulator {
        Accumulator {
            aggregation,
            value: None,
            at_ms: i64::MIN,
        }
    }

    fn add(&mut self, value: f64, at_ms: Option<i64>) {
        self.value = Some(match (self.aggregation, self.value) {
            (_, None) => {
                self.at_ms = at_ms.unwrap_or(i64::MIN);
                value
            }
            (Aggregation::Sum | Aggregation::Count, Some(old)) => old + value,
            (Aggregation::Max, Some(old)) => old.max(value),
            (Aggregation::Latest, Some(old)) => {
                let at = at_ms.unwrap_or(i64::MIN);
                if at >= self.at_ms {
                    self.at_ms = at;
                    value
                } else {
                    old
                }
            }
        });
    }

    fn merge(&mut self, other: Accumulator) {
        if let Some(value) = other.value {
            self.add(value, Some(other.at_ms));
        }
    }

    /// sum and count answer 0 for no usage; max and latest answer nothing.
    fn result(&self) -> Option<f64> {
        match self.aggregation {
            Aggregation::Sum | Aggregation::Count => Some(self.value.unwrap_or(0.0)),
            Aggregation::Max | Aggregation::Latest => self.value,
        }
    }
}

impl Gateway {
    /// The customer's calendar, and the customer to create when it is unknown. A cache miss
    /// asks storage once, so a customer created on another node a moment ago keeps its zone.
    pub(super) async fn calendar_of(
        &self,
        id: &CustomerId,
        now: DateTime<Utc>,
    ) -> ServiceResult<(CustomerCalendar, Option<Customer>)> {
        if let Some(customer) = self.cache.customer(id) {
            return Ok((calendar(&customer), None));
        }
        let read_at = self.cache.cursor();
        let customer = match self
            .store
            .get_for_decision(Kind::Customer, id.as_str())
            .await?
        {
            Some(doc) => {
                let customer: Customer =
                    serde_json::from_str(&doc).map_err(|e| corrupt("customers", e))?;
                self.cache.remember_customer(customer.clone(), read_at);
                Some(customer)
            }
            None => None,
        };
        Ok(match customer {
            Some(customer) => (calendar(&customer), None),
            None => {
                let fresh =
                    Customer::with_defaults(id.clone(), self.settings.default_timezone, now);
                (calendar(&fresh), Some(fresh))
            }
        })
    }

    /// What deleting `customer` forgets of its usage: what its decisions read now, each
    /// governing limit's current window and the thresholds fired in it.
    pub(super) async fn usage_to_forget(
        &self,
        customer: &CustomerId,
    ) -> ServiceResult<UsageToForget> {
        let now = self.clock.now();
        let (calendar, _) = self.calendar_of(customer, now).await?;
        let mut usage = UsageToForget::default();
        for limit in self.cache.governing(customer).limits {
            let window = calendar.window(limit.limit.period, now);
            usage.counters.push(limit.counter(window));
            let window_start = window.map(|w| w.start.timestamp());
            usage.fired.push((limit.limit.id.clone(), window_start));
        }
        Ok(usage)
    }

    /// Creates customers that an event meets for the first time, before anything is counted
    /// for them: usage never belongs to a customer that storage does not know (the alert
    /// sweep visits known customers only). A request that fails after this leaves the
    /// customer, with defaults, as a retry would create it anyway.
    pub(super) async fn create_implicitly(&self, customers: Vec<Customer>) -> ServiceResult<()> {
        if customers.is_empty() {
            return Ok(());
        }
        let ops = customers
            .iter()
            .map(|c| {
                Ok(ConfigOp::PutIfAbsent {
                    kind: Kind::Customer,
                    id: c.id.to_string(),
                    doc: super::config::to_doc(c)?,
                })
            })
            .collect::<ServiceResult<Vec<ConfigOp>>>()?;
        let read_at = self.cache.cursor();
        self.store
            .apply(&ops)
            .await?
            .map_err(|_| ServiceError::Conflict("customer creation failed".into()))?;
        for customer in customers {
            self.cache.remember_customer(customer, read_at);
        }
        Ok(())
    }

    pub(super) fn plan(
        &self,
        event: &Event,
        calendar: CustomerCalendar,
        now: DateTime<Utc>,
    ) -> EventPlan {
        let governing = self.cache.governing(&event.customer_id);
        plan_event(
            event,
            &governing.meters,
            &governing.limits,
            &governing.balances,
            calendar,
            now,
        )
    }

    /// Writes one event in `mode`; the one outcome storage gives for it.
    pub(super) async fn write_one(
        &self,
        event: &Event,
        plan: &EventPlan,
        mode: &Mode,
        now: DateTime<Utc>,
    ) -> ServiceResult<RecordOutcome> {
        let write = EventWrite {
            event,
            plan,
            mode,
            now_ms: now.timestamp_millis(),
        };
        self.store.write(&[write]).await?.pop().ok_or_else(|| {
            ServiceError::Storage(crate::storage::StoreError::Internal(
                "no write outcome".into(),
            ))
        })
    }

    /// Records an event unconditionally (recording never refuses).
    pub async fn record(
        &self,
        input: NewEvent,
        idempotency_header: Option<&str>,
    ) -> ServiceResult<Recorded> {
        let now = self.clock.now();
        let event = Event::validate(self.new_id(IdKind::Event), input, idempotency_header, now)?;
        self.record_event(event, &Mode::Record, now).await
    }

    /// Records a validated event; also the second half of a reservation's commit.
    /// Counts `event` unconditionally (`mode` is `Record` or `Commit`).
    pub(super) async fn record_event(
        &self,
        event: Event,
        mode: &Mode,
        now: DateTime<Utc>,
    ) -> ServiceResult<Recorded> {
        let (calendar, unknown) = self.calendar_of(&event.customer_id, now).await?;
        self.create_implicitly(unknown.into_iter().collect())
            .await?;
        let plan = self.plan(&event, calendar, now);
        let recorded = match self.write_one(&event, &plan, mode, now).await? {
            RecordOutcome::Written { after, alerts, .. } => {
                if alerts > 0 {
                    self.note_alerts(&event.customer_id);
                }
                Recorded {
                    event_id: event.id.clone(),
                    duplicate: false,
                    limits: states(&plan, &after),
                }
            }
            RecordOutcome::Duplicate { event_id } => Recorded {
                event_id,
                duplicate: true,
                limits: self.current_states(&event.customer_id, &plan, now).await?,
            },
            RecordOutcome::Refused { .. } => {
                return Err(ServiceError::Storage(crate::storage::StoreError::Internal(
                    "record was refused".into(),
                )));
            }
        };
        Ok(recorded)
    }

    /// States of the plan's limits as storage holds them now.
    pub(super) async fn current_states(
        &self,
        customer: &CustomerId,
        plan: &EventPlan,
        now: DateTime<Utc>,
    ) -> ServiceResult<Vec<LimitState>> {
        let counters: Vec<_> = plan.counters.iter().map(|c| c.counter.clone()).collect();
        let readings = self
            .store
            .read_counters(customer, &counters, now.timestamp_millis())
            .await?;
        Ok(states(plan, &readings))
    }

    /// Validates the whole batch first, then records every event in one round trip.
    /// Returns (recorded, duplicates). With an `Idempotency-Key` header, each event without
    /// a key of its own is de-duplicated by one derived from the header and its place, in
    /// the same atomic step as its counting: a batch that failed half-way (its calls to
    /// storage are several) is retried with the same header without counting anything twice.
    pub async fn record_batch(
        &self,
        inputs: Vec<NewEvent>,
        idempotency_header: Option<&str>,
    ) -> ServiceResult<(usize, usize)> {
        if inputs.len() > MAX_BATCH {
            return Err(FieldError::invalid(
                "events",
                format!("must hold at most {MAX_BATCH} events"),
            )
            .into());
        }
        let now = self.clock.now();
        let mut events = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.into_iter().enumerate() {
            let mut event = Event::validate(self.new_id(IdKind::Event), input, None, now)
                .map_err(|e| e.within(&format!("events[{index}]")))?;
            if let (None, Some(batch)) = (&event.idempotency_key, idempotency_header) {
                event.idempotency_key = Some(IdempotencyKey::BatchItem {
                    batch: batch.to_string(),
                    index,
                });
            }
            events.push(event);
        }
        let mut calendars: BTreeMap<CustomerId, CustomerCalendar> = BTreeMap::new();
        let mut unknown = Vec::new();
        for event in &events {
            if !calendars.contains_key(&event.customer_id) {
                let (calendar, fresh) = self.calendar_of(&event.customer_id, now).await?;
                calendars.insert(event.customer_id.clone(), calendar);
                unknown.extend(fresh);
            }
        }
        self.create_implicitly(unknown).await?;
        let plans: Vec<EventPlan> = events
            .iter()
            .map(|e| self.plan(e, calendars[&e.customer_id], now))
            .collect();
        let writes: Vec<EventWrite<'_>> = events
            .iter()
            .zip(&plans)
            .map(|(event, plan)| EventWrite {
                event,
                plan,
                mode: &Mode::Record,
                now_ms: now.timestamp_millis(),
            })
            .collect();
        let outcomes = self.store.write(&writes).await?;
        let duplicates = outcomes
            .iter()
            .filter(|o| matches!(o, RecordOutcome::Duplicate { .. }))
            .count();
        for (event, outcome) in events.iter().zip(&outcomes) {
            if matches!(outcome, RecordOutcome::Written { alerts, .. } if *alerts > 0) {
                self.note_alerts(&event.customer_id);
            }
        }
        Ok((outcomes.len() - duplicates, duplicates))
    }

    pub async fn query_meter(
        &self,
        id: &str,
        query: MeterQuery,
    ) -> ServiceResult<MeterQueryResult> {
        let meter = self.get_meter(id).await?;
        if let Some(dimensions) = &query.dimensions {
            validate_dimensions("dimensions", dimensions)?;
        }
        let parse =
            |field: &str, raw: &Option<String>| -> Result<Option<DateTime<Utc>>, FieldError> {
                raw.as_deref()
                    .map(|r| parse_usage_instant(field, r))
                    .transpose()
            };
        let start = parse("startDate", &query.start_date)?;
        let end = parse("endDate", &query.end_date)?;
        let now = self.clock.now();
        let retention =
            TimeDelta::from_std(self.settings.rollup_retention).unwrap_or(TimeDelta::days(400));
        let hours = match (start, end) {
            (None, None) => None,
            (start, end) => {
                let end = end.unwrap_or(now);
                // No usage is older than the epoch: a default start never goes before it.
                let start = start.unwrap_or((end - retention).max(EARLIEST));
                let (from, to) = (hour_of(start), hour_ceil(end));
                if from >= to {
                    return Err(FieldError::invalid("endDate", "must be after startDate").into());
                }
                if to > LATEST_SECS {
                    return Err(FieldError::invalid(
                        "endDate",
                        "rounded up to the hour, must not pass 9999-12-31T23:59:59Z",
                    )
                    .into());
                }
                if to - from > retention.num_seconds() + 3600 {
                    return Err(FieldError::invalid(
                        "startDate",
                        "range must not exceed the roll-up retention (400 days)",
                    )
                    .into());
                }
                Some((from, to))
            }
        };
        if query.granularity.is_some() && hours.is_none() {
            return Err(FieldError::invalid("granularity", "needs startDate or endDate").into());
        }
        let customers: Vec<CustomerId> = match &query.customer_id {
            Some(customer) => vec![customer.clone()],
            None => {
                let cache = self.cache.read();
                let mut all: Vec<CustomerId> =
                    cache.customers.values().map(|c| c.id.clone()).collect();
                all.sort();
                all
            }
        };
        let mut total = Accumulator::new(meter.aggregation);
        let mut by_hour: BTreeMap<i64, Accumulator> = BTreeMap::new();
        for customer in &customers {
            let rollups = self.store.read_rollups(customer, &meter.id, hours).await?;
            for (bucket, cells) in &rollups.buckets {
                let mut hour = Accumulator::new(meter.aggregation);
                for (dims_hash, cell) in cells {
                    let wanted = query
                        .dimensions
                        .as_ref()
                        .filter(|d| !d.is_empty())
                        .is_none_or(|wanted| {
                            rollups.dimensions.get(dims_hash).is_some_and(|dims| {
                                wanted.iter().all(|(k, v)| dims.get(k) == Some(v))
                            })
                        });
                    if wanted {
                        hour.add(cell.value, cell.at_ms);
                    }
                }
                total.merge(hour);
                if let Some(start) = bucket {
                    by_hour
                        .entry(*start)
                        .or_insert_with(|| Accumulator::new(meter.aggregation))
                        .merge(hour);
                }
            }
        }
        let series = match (query.granularity, hours) {
            (Some(granularity), Some((from, to))) => {
                let step = match granularity {
                    Granularity::Hour => 3600,
                    Granularity::Day => 86_400,
                };
                let first = from - from.rem_euclid(step);
                let mut points = Vec::new();
                let mut bucket = first;
                while bucket < to {
                    let mut acc = Accumulator::new(meter.aggregation);
                    for (_, hour) in by_hour.range(bucket.max(from)..(bucket + step).min(to)) {
                        acc.merge(*hour);
                    }
                    points.push((
                        DateTime::from_timestamp(bucket, 0).unwrap_or_default(),
                        acc.result(),
                    ));
                    bucket += step;
                }
                Some(points)
            }
            _ => None,
        };
        Ok(MeterQueryResult {
            meter_id: meter.id,
            meter_name: meter.name,
            aggregation: meter.aggregation,
            customer_id: query.customer_id,
            start_date: hours.and_then(|(from, _)| DateTime::from_timestamp(from, 0)),
            end_date: hours.and_then(|(_, to)| DateTime::from_timestamp(to, 0)),
            value: total.result(),
            series,
        })
    }

    /// Newest first; pages resume strictly before the previous page's last event. The log is
    /// short (capped per customer), so it is read whole and ordered here.
    pub async fn list_events(&self, query: EventListQuery) -> ServiceResult<Page<Event>> {
        let members = self.store.event_log(&query.customer_id).await?;
        let oldest = self.clock.now()
            - TimeDelta::from_std(self.settings.event_retention).unwrap_or(TimeDelta::MAX);
        let from = query
            .start
            .map_or(oldest, |start| start.max(oldest))
            .timestamp_millis();
        let low = crate::storage::usage::log_position(from, "");
        let mut entries: Vec<(&str, &str)> = members
            .iter()
            .filter_map(|member| split_log_member(member))
            .filter(|(position, _)| *position >= low.as_str())
            .filter(|(position, _)| {
                query.end.is_none_or(|end| {
                    *position
                        < crate::storage::usage::log_position(end.timestamp_millis(), "").as_str()
                })
            })
            .filter(|(position, _)| {
                query
                    .before
                    .as_deref()
                    .is_none_or(|before| *position < before)
            })
            .collect();
        entries.sort_unstable_by(|a, b| b.0.cmp(a.0));
        let mut items: Vec<(String, Event)> = Vec::new();
        for (position, entry) in entries {
            let (at_ms, id) = position
                .split_once(':')
                .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id)))
                .ok_or_else(|| {
                    corrupt("events", serde::de::Error::custom("malformed log position"))
                })?;
            let event = Event::from_log_entry(&query.customer_id, id, at_ms, entry)
                .map_err(|e| corrupt("events", e))?;
            if query
                .event_type
                .as_ref()
                .is_none_or(|t| *t == event.event_type)
            {
                items.push((position.to_string(), event));
                if items.len() > query.limit {
                    break;
                }
            }
        }
        Ok(Page::from_items(items, query.limit))
    }
}

/// The plan's limits with the readings of their counters.
pub(super) fn states(plan: &EventPlan, readings: &[CounterReading]) -> Vec<LimitState> {
    plan.limits
        .iter()
        .map(|(limit, window, index)| {
            let reading = readings.get(*index).copied().unwrap_or_default();
            LimitState::new(limit, *window, reading.used, reading.reserved)
        })
        .collect()
}

fn calendar(customer: &Customer) -> CustomerCalendar {
    CustomerCalendar {
        timezone: customer.timezone,
        anchor: customer.billing_anchor(),
    }
}

/// `<ts13>:<eventId>:<json>` → (`<ts13>:<eventId>`, json).
fn split_log_member(member: &str) -> Option<(&str, &str)> {
    let first = member.find(':')?;
    let second = first + 1 + member[first + 1..].find(':')?;
    Some((&member[..second], &member[second + 1..]))
}

/// An event-list position from a cursor, checked for shape.
pub fn parse_event_position(raw: &str) -> Option<String> {
    let (ts, id) = raw.split_once(':')?;
    (ts.len() == 13 && ts.bytes().all(|b| b.is_ascii_digit()) && IdKind::Event.is_plausible(id))
        .then(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulators_follow_the_aggregation() {
        let mut latest = Accumulator::new(Aggregation::Latest);
        latest.add(5.0, Some(200));
        latest.add(9.0, Some(100));
        assert_eq!(latest.result(), Some(5.0));
        let mut max = Accumulator::new(Aggregation::Max);
        assert_eq!(max.result(), None);
        max.add(3.0, None);
        max.add(1.0, None);
        assert_eq!(max.result(), Some(3.0));
        assert_eq!(Accumulator::new(Aggregation::Sum).result(), Some(0.0));
    }

    #[test]
    fn log_members_split_into_position_and_json() {
        let member = "0001763683200000:evt_01ABC:{\"a\":\"x:y\"}";
        assert_eq!(
            split_log_member(member),
            Some(("0001763683200000:evt_01ABC", "{\"a\":\"x:y\"}"))
        );
    }
}
