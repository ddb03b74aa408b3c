use super::json::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::{Authorized, Ingest, Read};
use super::error::ApiError;
use super::extract::{JsonBody, QueryParams};
use super::{AppState, ListBody};
use crate::domain::event::{Event, NewEvent, check_idempotency_key};
use crate::domain::field::FieldError;
use crate::domain::ids::CustomerId;
use crate::domain::time::parse_rfc3339;
use crate::domain::usage::LimitState;
use crate::service::page::{MAX_PAGE, PageRequest};
use crate::service::usage::{EventListQuery, parse_event_position};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(&IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => {
            // A header that is not ASCII reads as empty, which the check refuses.
            let key = value.to_str().unwrap_or_default();
            check_idempotency_key("Idempotency-Key", key)?;
            Ok(Some(key))
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordBody {
    id: String,
    recorded: bool,
    duplicate: bool,
    limits: Vec<LimitState>,
}

/// Marks an answer replayed from an earlier request with the same idempotency key.
pub fn replayed(mut response: Response, duplicate: bool) -> Response {
    if duplicate {
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    response
}

#[utoipa::path(
    post,
    path = "/v1/events/record",
    tag = "events",
    summary = "Record a usage event",
    request_body = NewEvent,
    params(crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = RecordBody), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn record(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    headers: HeaderMap,
    JsonBody(input): JsonBody<NewEvent>,
) -> Result<Response, ApiError> {
    let recorded = gateway.record(input, idempotency_key(&headers)?).await?;
    let body = RecordBody {
        id: recorded.event_id,
        recorded: true,
        duplicate: recorded.duplicate,
        limits: recorded.limits,
    };
    Ok(replayed(Json(body).into_response(), recorded.duplicate))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    events: Vec<NewEvent>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    count: usize,
    duplicates: usize,
}

#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = "events",
    summary = "Record up to 1000 events",
    request_body = BatchBody,
    params(crate::http::idempotency::IdempotencyKeyHeader),
    responses((status = 200, body = BatchAnswer), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn batch(
    _: Authorized<Ingest>,
    State(gateway): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let (count, duplicates) = gateway
        .record_batch(body.events, idempotency_key(&headers)?)
        .await?;
    Ok(Json(BatchAnswer { count, duplicates }))
}

/// `GET /v1/events?customerId=&eventType=&startDate=&endDate=&limit=&cursor=`, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "A customer's events, newest first",
    params(("customerId" = String, Query), ("eventType" = Option<String>, Query), ("startDate" = Option<String>, Query), ("endDate" = Option<String>, Query), crate::http::PageParams),
    responses((status = 200, body = ListBody<Event>), (status = "default", description = "Error envelope", body = crate::http::error::ErrorEnvelope)),
    security(("bearer" = []))
)]
pub async fn list(
    _: Authorized<Read>,
    State(gateway): State<AppState>,
    mut query: QueryParams,
) -> Result<Json<ListBody<Event>>, ApiError> {
    let page = PageRequest::parse(query.take("limit").as_deref(), None)?;
    let before = match query.take("cursor") {
        None => None,
        Some(raw) => Some(
            PageRequest::parse(None, Some(&raw))?
                .after
                .and_then(|position| parse_event_position(&position))
                .ok_or_else(|| FieldError::invalid("cursor", "is not a cursor this API issued"))?,
        ),
    };
    let customer_id = match query.take("customerId") {
        Some(raw) => CustomerId::parse("customerId", &raw)?,
        None => return Err(FieldError::missing("customerId").into()),
    };
    let date = |field: &str, raw: Option<String>| -> Result<_, ApiError> {
        raw.map(|r| {
            parse_rfc3339(&r)
                .ok_or_else(|| FieldError::invalid(field, "must be an RFC 3339 date-time").into())
        })
        .transpose()
    };
    let start = date("startDate", query.take("startDate"))?;
    let end = date("endDate", query.take("endDate"))?;
    if let (Some(start), Some(end)) = (start, end)
        && end <= start
    {
        return Err(FieldError::invalid("endDate", "must be after startDate").into());
    }
    let event_type = query.take("eventType");
    query.finish()?;
    let filters = EventListQuery {
        customer_id,
        event_type,
        start,
        end,
        limit: page.limit.min(MAX_PAGE),
        before,
    };
    Ok(Json(gateway.list_events(filters).await?.into()))
}
