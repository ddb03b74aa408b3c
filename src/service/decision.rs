//! Decisions: check (read-only), consume (check and record atomically), reservations (hold an
//! estimate, settle the actual cost later), and how they answer when storage is unreachable.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::Gateway;
use super::error::{Resource, STORAGE_RETRY_AFTER_SECS, ServiceError, ServiceResult, corrupt};
use super::usage::{Recorded, states};
use crate::domain::balance::BalanceState;
use crate::domain::event::{Event, IdempotencyKey, NewEvent};
use crate::domain::field::{Dimensions, bounded_str, validate_dimensions};
use crate::domain::ids::{CustomerId, IdKind};
use crate::domain::limit::FailMode;
use crate::domain::reservation::{
    CommitReservation, ExtendReservation, Hold, NewReservation, Reservation, ReservationStatus,
    StoredReservationDoc, parse_ttl,
};
use crate::domain::usage::{
    CounterOp, CustomerCalendar, EventPlan, LimitState, ResolvedLimit, fits, retry_after,
};
use crate::storage::StoreError;
use crate::storage::usage::{
    CounterReading, Extension, Finish, Mode, RecordOutcome, ReservationWrite,
};

/// `POST /v1/limits/check` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    pub customer_id: CustomerId,
    pub dimensions: Option<Dimensions>,
    pub event_type: Option<String>,
}

/// The refusing limit with the latest reset, for the `RateLimit-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitInfo {
    pub limit: f64,
    pub remaining: f64,
    /// Seconds until it resets; `None` when it never does (`all_time`), since any number
    /// (even 0) would tell the client to retry at some point.
    pub reset_seconds: Option<i64>,
}

/// A decision: check, consume or reserve.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// Storage was unreachable: decided by the limits' fail modes.
    pub degraded: bool,
    pub customer_id: CustomerId,
    pub limits: Vec<LimitState>,
    /// The metered balances the event debits (consume and reserve).
    pub balances: Vec<BalanceState>,
    /// Refusals: seconds until the client should try again (every refusing limit has reset,
    /// or, degraded, storage may be back); `None` if waiting never helps.
    pub retry_after: Option<i64>,
    /// `None` when no refusing limit's remaining room is known (allowed, degraded).
    pub rate_limit: Option<RateLimitInfo>,
    /// Consume: the recorded event. Reserve: the reservation.
    pub event_id: Option<String>,
    pub reservation: Option<Reservation>,
    /// A replay of an earlier request with the same idempotency key.
    pub duplicate: bool,
}

impl Decision {
    fn new(customer_id: CustomerId, allowed: bool, limits: Vec<LimitState>) -> Decision {
        Decision {
            allowed,
            degraded: false,
            customer_id,
            limits,
            balances: Vec::new(),
            retry_after: None,
            rate_limit: None,
            event_id: None,
            reservation: None,
            duplicate: false,
        }
    }

    /// Storage is unreachable: every limit in play decides by its fail mode. A refusal is
    /// caused by the outage, not by a full window, so it says to retry as a `503` does.
    fn degraded(
        customer_id: CustomerId,
        limits: &[(ResolvedLimit, Option<crate::domain::period::Window>)],
    ) -> Decision {
        let allowed = limits
            .iter()
            .all(|(l, _)| l.limit.fail_mode == FailMode::Open);
        let states = limits
            .iter()
            .map(|(l, w)| LimitState::unknown(l, *w))
            .collect();
        Decision {
            degraded: true,
            retry_after: (!allowed).then_some(STORAGE_RETRY_AFTER_SECS),
            ..Decision::new(customer_id, allowed, states)
        }
    }

    /// A refusal: `refusing` are the indexes of the limits that did not fit.
    fn refused(
        customer_id: CustomerId,
        limits: Vec<LimitState>,
        refusing: &[usize],
        now: DateTime<Utc>,
    ) -> Decision {
        let refusing: Vec<&LimitState> = refusing.iter().filter_map(|i| limits.get(*i)).collect();
        let retry = retry_after(&refusing, now);
        let latest = refusing.iter().max_by_key(|s| s.reset.unwrap_or(i64::MAX));
        let rate_limit = latest.map(|state| RateLimitInfo {
            limit: state.limit.get(),
            remaining: state.remaining.map_or(0.0, |r| r.get()),
            reset_seconds: state.reset.map(|reset| (reset - now.timestamp()).max(0)),
        });
        Decision {
            retry_after: retry,
            rate_limit,
            ..Decision::new(customer_id, false, limits)
        }
    }
}

fn is_outage(error: &ServiceError) -> bool {
    matches!(error, ServiceError::Storage(StoreError::Unavailable(_)))
}

/// What a decision's write did: counted now, or replayed an earlier request (its ID).
enum Written {
    Fresh(Vec<CounterReading>),
    Replay(String),
}

/// The tightest limit on each of the plan's counters (limits sharing a counter share usage),
/// and what each debited balance may have spent.
fn caps(plan: &EventPlan) -> Vec<Option<f64>> {
    let mut caps = vec![None; plan.counters.len()];
    for (limit, _, index) in &plan.limits {
        let value = limit.limit.limit_value.get();
        let cap: &mut Option<f64> = &mut caps[*index];
        *cap = Some(cap.map_or(value, |c: f64| c.min(value)));
    }
    for (balance, index) in &plan.balances {
        caps[*index] = Some(balance.spending_ceiling());
    }
    caps
}

/// The debited balances as the answer shows them; `debited` when the readings already
/// include the event.
fn balance_states(
    plan: &EventPlan,
    readings: &[CounterReading],
    debited: bool,
) -> Vec<BalanceState> {
    plan.balances
        .iter()
        .map(|(balance, index)| {
            let reading = readings.get(*index).copied().unwrap_or_default();
            let op = plan.counters[*index].op;
            let sufficient = debited
                || fits(
                    op,
                    reading.used,
                    reading.reserved,
                    balance.spending_ceiling(),
                );
            BalanceState::new(
                balance,
                op.amount(),
                reading.used,
                reading.reserved,
                sufficient,
            )
        })
        .collect()
}

/// Which of the plan's limits the event does not fit, given the counters' readings.
fn refusing_limits(plan: &EventPlan, readings: &[CounterReading]) -> Vec<usize> {
    plan.limits
        .iter()
        .enumerate()
        .filter(|(_, (limit, _, index))| {
            let reading = readings.get(*index).copied().unwrap_or_default();
            !fits(
                plan.counters[*index].op,
                reading.used,
                reading.reserved,
                limit.limit.limit_value.get(),
            )
        })
        .map(|(i, _)| i)
        .collect()
}

fn plan_windows(plan: &EventPlan) -> Vec<(ResolvedLimit, Option<crate::domain::period::Window>)> {
    plan.limits
        .iter()
        .map(|(l, w, _)| (l.clone(), *w))
        .collect()
}

/// A stored reservation as the service reads it; a committed one carries the values its
/// commit recorded.
struct LoadedReservation {
    reservation: Reservation,
    holds: Vec<Hold>,
    status: String,
    event_id: Option<String>,
}

impl Gateway {
    /// The calendar of a customer storage cannot tell us about (it is down): the defaults.
    fn default_calendar(&self, now: DateTime<Utc>) -> CustomerCalendar {
        CustomerCalendar {
            timezone: self.settings.default_timezone,
            anchor: crate::domain::period::BillingAnchor::from_instant(
                now,
                self.settings.default_timezone,
            ),
        }
    }

    /// Read-only: every governing limit the request concerns, with its usage now.
    pub async fn check(&self, request: CheckRequest) -> ServiceResult<Decision> {
        if let Some(dimensions) = &request.dimensions {
            validate_dimensions("dimensions", dimensions)?;
        }
        if let Some(event_type) = &request.event_type {
            bounded_str("eventType", event_type, 1, 128)?;
        }
        let now = self.clock.now();
        let limits: Vec<ResolvedLimit> = self
            .cache
            .governing(&request.customer_id)
            .limits
            .into_iter()
            .filter(|l| l.concerns(request.dimensions.as_ref(), request.event_type.as_deref()))
            .collect();
        let (calendar, unknown) = match self.calendar_of(&request.customer_id, now).await {
            Ok(found) => found,
            Err(error) if is_outage(&error) => {
                let calendar = self.default_calendar(now);
                let windows: Vec<_> = limits
                    .iter()
                    .map(|l| (l.clone(), calendar.window(l.limit.period, now)))
                    .collect();
                return Ok(Decision::degraded(request.customer_id, &windows));
            }
            Err(error) => return Err(error),
        };
        let windowed: Vec<_> = limits
            .iter()
            .map(|l| (l.clone(), calendar.window(l.limit.period, now)))
            .collect();
        let counters: Vec<_> = windowed.iter().map(|(l, w)| l.counter(*w)).collect();
        // An unknown customer has no usage (API.md §1): whatever a deleted customer of that
        // ID left behind is not its.
        let read = match unknown {
            Some(_) => Ok(vec![CounterReading::default(); counters.len()]),
            None => {
                self.store
                    .read_counters(&request.customer_id, &counters, now.timestamp_millis())
                    .await
            }
        };
        let readings = match read {
            Ok(readings) => readings,
            Err(error @ StoreError::Unavailable(_)) => {
                tracing::warn!(%error, "check degraded");
                return Ok(Decision::degraded(request.customer_id, &windowed));
            }
            Err(error) => return Err(error.into()),
        };
        let states: Vec<LimitState> = windowed
            .iter()
            .zip(readings)
            .map(|((limit, window), r)| LimitState::new(limit, *window, r.used, r.reserved))
            .collect();
        let full: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_full())
            .map(|(i, _)| i)
            .collect();
        if full.is_empty() {
            Ok(Decision::new(request.customer_id, true, states))
        } else {
            Ok(Decision::refused(request.customer_id, states, &full, now))
        }
    }

    /// The shared path of consume and reserve: plans the event, writes it in the mode
    /// `mode_for` builds from the plan (or refuses with the limits it names), and answers
    /// refusals and outages itself.
    async fn decide(
        &self,
        event: &Event,
        now: DateTime<Utc>,
        mode_for: impl FnOnce(&EventPlan) -> ServiceResult<Result<Mode, Vec<usize>>>,
    ) -> ServiceResult<Result<(EventPlan, Written), Decision>> {
        let customer_id = event.customer_id.clone();
        let (calendar, unknown) = match self.calendar_of(&customer_id, now).await {
            Ok(found) => found,
            Err(error) if is_outage(&error) => {
                let plan = self.plan(event, self.default_calendar(now), now);
                return Ok(Err(Decision::degraded(customer_id, &plan_windows(&plan))));
            }
            Err(error) => return Err(error),
        };
        let plan = self.plan(event, calendar, now);
        let degraded = |error: &ServiceError| {
            tracing::warn!(%error, "decision degraded");
            Decision::degraded(customer_id.clone(), &plan_windows(&plan))
        };
        match self.create_implicitly(unknown.into_iter().collect()).await {
            Ok(()) => {}
            Err(error) if is_outage(&error) => return Ok(Err(degraded(&error))),
            Err(error) => return Err(error),
        }
        let mode = match mode_for(&plan)? {
            Ok(mode) => mode,
            Err(too_big) => {
                let current = match self.current_states(&customer_id, &plan, now).await {
                    Ok(states) => states,
                    Err(error) if is_outage(&error) => return Ok(Err(degraded(&error))),
                    Err(error) => return Err(error),
                };
                let mut refusal = Decision::refused(customer_id.clone(), current, &too_big, now);
                // Waiting never makes it fit.
                refusal.retry_after = None;
                return Ok(Err(refusal));
            }
        };
        let written = match self.write_one(event, &plan, &mode, now).await {
            Ok(RecordOutcome::Written { after, alerts, .. }) => {
                if alerts > 0 {
                    self.note_alerts(&customer_id);
                }
                Written::Fresh(after)
            }
            Ok(RecordOutcome::Duplicate { event_id }) => Written::Replay(event_id),
            Ok(RecordOutcome::Refused { counters }) => {
                let refusing = refusing_limits(&plan, &counters);
                let balances = balance_states(&plan, &counters, false);
                let mut refusal = Decision::refused(
                    customer_id.clone(),
                    states(&plan, &counters),
                    &refusing,
                    now,
                );
                // Waiting does not refill a balance; a credit does.
                if balances.iter().any(|balance| !balance.sufficient) {
                    refusal.retry_after = None;
                }
                refusal.balances = balances;
                return Ok(Err(refusal));
            }
            Err(error) if is_outage(&error) => return Ok(Err(degraded(&error))),
            Err(error) => return Err(error),
        };
        Ok(Ok((plan, written)))
    }

    /// Checks and records in one atomic step: all limits the event counts toward fit, or
    /// nothing is recorded.
    pub async fn consume(
        &self,
        input: NewEvent,
        idempotency_header: Option<&str>,
    ) -> ServiceResult<Decision> {
        let now = self.clock.now();
        let event = Event::validate(self.new_id(IdKind::Event), input, idempotency_header, now)?;
        let customer_id = event.customer_id.clone();
        Ok(
            match self
                .decide(&event, now, |plan| {
                    Ok(Ok(Mode::Consume { caps: caps(plan) }))
                })
                .await?
            {
                Err(decision) => decision,
                Ok((plan, Written::Fresh(after))) => Decision {
                    event_id: Some(event.id.clone()),
                    balances: balance_states(&plan, &after, true),
                    ..Decision::new(customer_id, true, states(&plan, &after))
                },
                Ok((plan, Written::Replay(event_id))) => Decision {
                    event_id: Some(event_id),
                    duplicate: true,
                    ..Decision::new(
                        customer_id.clone(),
                        true,
                        self.current_states(&customer_id, &plan, now).await?,
                    )
                },
            },
        )
    }

    /// Holds an estimate against every limit it would count toward, if it fits.
    pub async fn reserve(
        &self,
        input: NewReservation,
        idempotency_header: Option<&str>,
    ) -> ServiceResult<Decision> {
        let ttl = parse_ttl("ttlSeconds", input.ttl_seconds)?;
        let now = self.clock.now();
        let mut event = Event::validate(
            self.new_id(IdKind::Event),
            input.event_input()?,
            idempotency_header,
            now,
        )?;
        // A reservation's key is of its own kind: a record or consume with the same key is
        // another request, never a replay of the hold (nor the other way round).
        event.idempotency_key = event.idempotency_key.take().map(|key| match key {
            IdempotencyKey::Caller(key) => IdempotencyKey::Reservation(key),
            other => other,
        });
        let customer_id = event.customer_id.clone();
        let expires_at = now + TimeDelta::seconds(ttl);
        let reservation = Reservation {
            id: self.new_id(IdKind::Reservation),
            customer_id: customer_id.clone(),
            event_type: event.event_type.clone(),
            values: event.values.clone(),
            dimensions: event.dimensions.clone(),
            status: ReservationStatus::Held,
            expires_at,
            created_at: now,
        };
        let max_share = self.settings.max_hold_fraction;
        let mode_for = |plan: &EventPlan| {
            // A single hold may not take more than the configured share of any limit.
            let too_big: Vec<usize> = plan
                .limits
                .iter()
                .enumerate()
                .filter(|(_, (limit, _, index))| {
                    let op = plan.counters[*index].op;
                    matches!(op, CounterOp::Add(_))
                        && op.amount() > limit.limit.limit_value.get() * max_share
                })
                .map(|(i, _)| i)
                .collect();
            if !too_big.is_empty() {
                return Ok(Err(too_big));
            }
            let holds = plan
                .counters
                .iter()
                .enumerate()
                .map(|(index, counter)| Hold {
                    counter: counter.counter.clone(),
                    window_end_ms: plan
                        .limits
                        .iter()
                        .find(|(_, _, i)| *i == index)
                        .and_then(|(_, w, _)| *w)
                        .map(|w| w.end.timestamp_millis()),
                })
                .collect();
            let doc = StoredReservationDoc {
                reservation: reservation.clone(),
                holds,
            };
            Ok(Ok(Mode::Reserve {
                caps: caps(plan),
                reservation: ReservationWrite {
                    id: reservation.id.clone(),
                    doc: super::config::to_doc(&doc)?,
                    expires_at_ms: expires_at.timestamp_millis(),
                },
            }))
        };
        Ok(match self.decide(&event, now, mode_for).await? {
            Err(decision) => decision,
            Ok((plan, Written::Fresh(after))) => Decision {
                reservation: Some(reservation),
                balances: balance_states(&plan, &after, true),
                ..Decision::new(customer_id, true, states(&plan, &after))
            },
            Ok((plan, Written::Replay(reservation_id))) => Decision {
                reservation: Some(self.get_reservation(&reservation_id).await?),
                duplicate: true,
                ..Decision::new(
                    customer_id.clone(),
                    true,
                    self.current_states(&customer_id, &plan, now).await?,
                )
            },
        })
    }

    async fn load_reservation(&self, id: &str) -> ServiceResult<LoadedReservation> {
        if !IdKind::Reservation.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Reservation));
        }
        let owner = self
            .store
            .reservation_owner(id)
            .await?
            .ok_or(ServiceError::NotFound(Resource::Reservation))?;
        let stored = self
            .store
            .reservation(&owner, id)
            .await?
            .ok_or(ServiceError::NotFound(Resource::Reservation))?;
        let StoredReservationDoc {
            mut reservation,
            holds,
        } = serde_json::from_str(&stored.doc).map_err(|e| corrupt("reservations", e))?;
        // A committed reservation shows what was recorded, not the estimate.
        if let Some(values) = &stored.committed_values {
            reservation.values =
                serde_json::from_str(values).map_err(|e| corrupt("reservations", e))?;
        }
        Ok(LoadedReservation {
            reservation,
            holds,
            status: stored.status,
            event_id: stored.event_id,
        })
    }

    pub async fn get_reservation(&self, id: &str) -> ServiceResult<Reservation> {
        let loaded = self.load_reservation(id).await?;
        let mut reservation = loaded.reservation;
        reservation.status =
            ReservationStatus::at(&loaded.status, reservation.expires_at, self.clock.now());
        Ok(reservation)
    }

    /// Records the actual cost (default: the estimate), unconditionally, and drops the hold in
    /// the same atomic step.
    /// Idempotent: a repeat answers what the first commit answered (the values it recorded,
    /// its event, and the limits as they are now, as a duplicate record does), whatever its
    /// own body says. Committing an expired reservation still records.
    pub async fn commit_reservation(
        &self,
        id: &str,
        input: CommitReservation,
    ) -> ServiceResult<(Reservation, Recorded)> {
        let loaded = self.load_reservation(id).await?;
        let now = self.clock.now();
        let customer = loaded.reservation.customer_id.clone();
        let values = input
            .values
            .unwrap_or_else(|| loaded.reservation.values.clone());
        let new_event = loaded.reservation.event_input(values.clone());
        let event = Event::validate(String::new(), new_event, None, now);
        // The commit is claimed before its event is counted, so a release that comes between
        // the counting and the hold's end is refused instead of both succeeding. A commit that
        // began before (and whose node may have died) is carried on with its event ID. Its
        // values are checked before the claim: a rejected commit changes nothing.
        let (status, event_id) = match (loaded.status.as_str(), loaded.event_id) {
            (ended @ ("committed" | "released"), event_id) => {
                (ended.to_string(), event_id.unwrap_or_default())
            }
            (_, event_id) => {
                event.as_ref().map_err(|error| error.clone())?;
                let event_id = event_id.unwrap_or_else(|| self.new_id(IdKind::Event));
                self.store
                    .finish_reservation(
                        &customer,
                        id,
                        &[],
                        Finish::Begin {
                            event_id: &event_id,
                        },
                    )
                    .await?
                    .ok_or(ServiceError::NotFound(Resource::Reservation))?
            }
        };
        match status.as_str() {
            "released" => {
                return Err(ServiceError::Conflict(
                    "the reservation was released; it cannot be committed".into(),
                ));
            }
            "committed" => {
                return self
                    .committed_answer(loaded.reservation, event_id, now)
                    .await;
            }
            _ => {}
        }
        let mut reservation = loaded.reservation;
        let mut event = event?;
        event.id = event_id;
        event.idempotency_key = Some(IdempotencyKey::Commit {
            reservation_id: id.to_string(),
        });
        let counters: Vec<_> = loaded.holds.iter().map(|h| h.counter.clone()).collect();
        let commit = Mode::Commit {
            reservation_id: id.to_string(),
            held: counters.clone(),
        };
        let recorded = self.record_event(event, &commit, now).await?;
        let values_doc = super::config::to_doc(&values)?;
        self.store
            .finish_reservation(
                &reservation.customer_id,
                id,
                &counters,
                Finish::Commit {
                    event_id: &recorded.event_id,
                    values: &values_doc,
                    counted: !recorded.duplicate,
                },
            )
            .await?
            .ok_or(ServiceError::NotFound(Resource::Reservation))?;
        if recorded.duplicate {
            // Another commit recorded the event: answer with the values it recorded.
            let loaded = self.load_reservation(id).await?;
            return self
                .committed_answer(loaded.reservation, recorded.event_id, now)
                .await;
        }
        reservation.status = ReservationStatus::Committed;
        reservation.values = values;
        let limits = self.reservation_states(&reservation, now).await?;
        Ok((reservation, Recorded { limits, ..recorded }))
    }

    /// The answer to a commit of a reservation already committed, as `event_id`.
    async fn committed_answer(
        &self,
        mut reservation: Reservation,
        event_id: String,
        now: DateTime<Utc>,
    ) -> ServiceResult<(Reservation, Recorded)> {
        reservation.status = ReservationStatus::Committed;
        let limits = self.reservation_states(&reservation, now).await?;
        Ok((
            reservation,
            Recorded {
                event_id,
                duplicate: true,
                limits,
            },
        ))
    }

    /// Current states of the limits the reservation's event counts toward.
    async fn reservation_states(
        &self,
        reservation: &Reservation,
        now: DateTime<Utc>,
    ) -> ServiceResult<Vec<LimitState>> {
        let event = Event::validate(
            String::new(),
            reservation.event_input(reservation.values.clone()),
            None,
            now,
        )?;
        let (calendar, _) = self.calendar_of(&reservation.customer_id, now).await?;
        let plan = self.plan(&event, calendar, now);
        self.current_states(&reservation.customer_id, &plan, now)
            .await
    }

    /// Drops the hold. Idempotent; releasing a committed reservation is a conflict.
    pub async fn release_reservation(&self, id: &str) -> ServiceResult<Reservation> {
        let loaded = self.load_reservation(id).await?;
        let counters: Vec<_> = loaded.holds.iter().map(|h| h.counter.clone()).collect();
        let mut reservation = loaded.reservation;
        let (status, _) = self
            .store
            .finish_reservation(&reservation.customer_id, id, &counters, Finish::Release)
            .await?
            .ok_or(ServiceError::NotFound(Resource::Reservation))?;
        match status.as_str() {
            "committed" => {
                return Err(ServiceError::Conflict(
                    "the reservation was committed; it cannot be released".into(),
                ));
            }
            "committing" => {
                return Err(ServiceError::Conflict(
                    "the reservation is being committed; it cannot be released".into(),
                ));
            }
            _ => {}
        }
        reservation.status = ReservationStatus::Released;
        Ok(reservation)
    }

    /// Gives a held reservation `ttlSeconds` more from now (its holds still end with their windows).
    pub async fn extend_reservation(
        &self,
        id: &str,
        input: ExtendReservation,
    ) -> ServiceResult<Reservation> {
        let ttl = parse_ttl("ttlSeconds", Some(input.ttl_seconds))?;
        let loaded = self.load_reservation(id).await?;
        let mut doc = StoredReservationDoc {
            reservation: loaded.reservation,
            holds: loaded.holds,
        };
        let now = self.clock.now();
        if ReservationStatus::at(&loaded.status, doc.reservation.expires_at, now)
            != ReservationStatus::Held
        {
            return Err(ServiceError::Conflict(
                "only a held reservation can be extended".into(),
            ));
        }
        let expires_at = now + TimeDelta::seconds(ttl);
        doc.reservation.expires_at = expires_at;
        let expires_ms = expires_at.timestamp_millis();
        let holds: Vec<_> = doc
            .holds
            .iter()
            .map(|h| (h.counter.clone(), h.expires_at_ms(expires_ms)))
            .collect();
        let text = super::config::to_doc(&doc)?;
        match self
            .store
            .extend_reservation(
                &doc.reservation.customer_id,
                id,
                &holds,
                &text,
                expires_ms,
                now.timestamp_millis(),
            )
            .await?
        {
            Extension::Extended => {}
            // Extending never shortens: a caller asking for a minute more of a hold that has
            // five left (or that a concurrent extend took further) keeps the five.
            Extension::AlreadyLonger => return Ok(self.load_reservation(id).await?.reservation),
            Extension::NotHeld => {
                return Err(ServiceError::Conflict(
                    "only a held reservation can be extended".into(),
                ));
            }
        }
        Ok(doc.reservation)
    }
}
