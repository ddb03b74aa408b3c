//! Check, consume and reservations: decisions answer 200 whether allowed or not.

use super::json::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::auth::{Authorized, Ingest, Read};
use super::error::ApiError;
use super::events::{idempotency_key, replayed};
use super::extract::{JsonBody, NoBody, OptionalJsonBody, PathId};
use crate::domain::balance::BalanceState;
use crate::domain::event::NewEvent;
use crate::domain::field::serialize_number;
use crate::domain::ids::CustomerId;
use crate::domain::reservation::{
    CommitReservation, ExtendReservation, NewReservation, Reservation,
};
use crate::domain::usage::LimitState;
use crate::service::decision::{CheckRequest, Decision};

/// A decision's answer, in the shapes of API.md §5: allowed `{allowed, eventId | reservation,
/// limits}`, refused `{allowed, limits, retryAfter}`, both with `degraded` (and `balances` on
/// consume and reserve). Each outcome always has its keys, degraded or not: `null` where there
/// is nothing.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct DecisionBody {
    allowed: bool,
    /// Check only.
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<CustomerId>,
    /// Allowed consumes: the recorded event, `null` when none was recorded (degraded: storage
    /// unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<Option<String>>,
    /// Allowed reservations: the hold, `null` when none was stored (degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation: Option<Option<Reservation>>,
    limits: Vec<LimitState>,
    /// Consume and reserve only: the metered balances the event debits (`[]` when none, and
    /// when degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    balances: Option<Vec<BalanceState>>,
    /// Refusals: whole seconds until trying again may succeed (`Retry-After`); `null` when
    /// waiting never helps (a refusing limit is `all_time`, a balance is short, a hold is
    /// larger than a single one may be).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<Option<i64>>,
    degraded: bool,
}

/// The three decision routes, each with its own keys.
#[derive(Clone, Copy)]
enum Route {
    Check,
    Consume,
    Reserve,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Check => "check",
            Route::Consume => "consume",
            Route::Reserve => "reserve",
        }
    }
}

static RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn number_header(value: f64) -> HeaderValue {
    let text = serde_json::to_string(&NumberText(value)).unwrap_or_else(|_| "0".into());
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}

struct NumberText(f64);

impl Serialize for NumberText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_number(self.0, serializer)
    }
}

fn respond(route: Route, decision: Decision) -> Response {
    let outcome = match (decision.degraded, decision.allowed) {
        (true, _) => "degraded",
        (false, true) => "allowed",
        (false, false) => "refused",
    };
    crate::telemetry::record_decision(route.name(), outcome);
    let body = DecisionBody {
        allowed: decision.allowed,
        customer_id: matches!(route, Route::Check).then(|| decision.customer_id.clone()),
        event_id: (matches!(route, Route::Consume) && decision.allowed)
            .then(|| decision.event_id.clone()),
        reservation: (matches!(route, Route::Reserve) && decision.allowed)
            .then(|| decision.reservation.clone()),
        limits: decision.limits,
        balances: (!matches!(route, Route::Check)).then_some(decision.balances),
        retry_after: (!decision.allowed).then_some(decision.retry_after),
        degraded: decision.degraded,
    };
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    if let Some(seconds) = decision.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(info) = &decision.rate_limit {
        headers.insert(RATE_LIMIT_LIMIT.clone(), number_header(info.limit));
        headers.insert(RATE_LIMIT_REMAINING.clone(), number_header(info.remaining));
        if let Some(seconds) = info.reset_seconds {
            headers.insert(RATE_LIMIT_RESET.clone(), HeaderValue::from(seconds));
        }
    }
    replayed(response, decision.duplicate)
}

#[utoipa::path(
    post,
    path = "/v1/limits/check",
    tag = "decisions",
    summary = "Is the customer within its limits? (read-only)",
    request_body = CheckRequest,
    responses((status = 200, body = DecisionBody), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn check(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    JsonBody(request): JsonBody<CheckRequest>,
) -> Result<Response, ApiError> {
    Ok(respond(Route::Check, gateway.check(request).await?))
}

#[utoipa::path(
    post,
    path = "/v1/limits/consume",
    tag = "decisions",
    summary = "Check and record in one atomic step",
    request_body = NewEvent,
    params(crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = DecisionBody), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn consume(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewEvent>,
) -> Result<Response, ApiError> {
    Ok(respond(
        Route::Consume,
        gateway.consume(input, idempotency_key(&headers)?).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/reservations",
    tag = "reservations",
    summary = "Hold an estimate against the limits",
    request_body = NewReservation,
    params(crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = DecisionBody), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn reserve(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewReservation>,
) -> Result<Response, ApiError> {
    Ok(respond(
        Route::Reserve,
        gateway.reserve(input, idempotency_key(&headers)?).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/reservations/{id}",
    tag = "reservations",
    summary = "Get a reservation",
    params(("id" = String, Path, description = "reservation ID")),
    responses((status = 200, body = Reservation), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn get(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(gateway.get_reservation(&id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CommitBody {
    reservation: Reservation,
    event_id: String,
    limits: Vec<LimitState>,
}

#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/commit",
    tag = "reservations",
    summary = "Record the actual cost and drop the hold",
    params(("id" = String, Path, description = "reservation ID"), crate::http::idempotency::IdempotencyKeyHeader),
    request_body(content = CommitReservation, description = "optional"),
    responses((status = 200, body = CommitBody), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn commit(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    OptionalJsonBody(input): OptionalJsonBody<CommitReservation>,
) -> Result<Response, ApiError> {
    // A commit is idempotent by its reservation and needs no key; one given is checked like
    // on every other route.
    idempotency_key(&headers)?;
    let (reservation, recorded) = gateway.commit_reservation(&id, input).await?;
    let body = CommitBody {
        reservation,
        event_id: recorded.event_id,
        limits: recorded.limits,
    };
    Ok(replayed(Json(body).into_response(), recorded.duplicate))
}

#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/release",
    tag = "reservations",
    summary = "Drop the hold",
    params(("id" = String, Path, description = "reservation ID"), crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = Reservation), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn release(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    _: NoBody,
) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(gateway.release_reservation(&id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/extend",
    tag = "reservations",
    summary = "Give a held reservation more time",
    params(("id" = String, Path, description = "reservation ID"), crate::http::idempotency::IdempotencyKeyHeader),
    request_body = ExtendReservation,
    responses((status = 200, body = Reservation), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn extend(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    PathId(id): PathId,
    JsonBody(input): JsonBody<ExtendReservation>,
) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(gateway.extend_reservation(&id, input).await?))
}
