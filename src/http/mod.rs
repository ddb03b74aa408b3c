//! Thin HTTP layer: routing, extractors, the error envelope. Handlers parse, call the
//! service, and shape the answer.

pub mod api_keys;
pub mod auth;
pub mod customers;
pub mod decisions;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod limits;
pub mod meters;
pub mod request_id;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde::Serialize;

use crate::service::Gateway;
use crate::service::page::Page;

pub type AppState = Arc<Gateway>;

/// Every route of the API. Serving is separate ([`crate::serve`]), so tests can drive the
/// router in process.
pub fn build_router(gateway: AppState, max_body_bytes: usize) -> Router {
    // Install the recorder before the first request records anything.
    crate::telemetry::prometheus();
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/v1/customers",
            post(customers::create).get(customers::list),
        )
        .route(
            "/v1/customers/{id}",
            get(customers::get)
                .put(customers::put)
                .delete(customers::delete),
        )
        .route("/v1/meters", post(meters::create).get(meters::list))
        .route(
            "/v1/meters/{id}",
            get(meters::get).put(meters::update).delete(meters::delete),
        )
        .route("/v1/meters/{id}/query", post(meters::query))
        .route("/v1/limits", post(limits::create).get(limits::list))
        .route("/v1/limits/check", post(decisions::check))
        .route("/v1/limits/consume", post(decisions::consume))
        .route("/v1/reservations", post(decisions::reserve))
        .route("/v1/reservations/{id}", get(decisions::get))
        .route("/v1/reservations/{id}/commit", post(decisions::commit))
        .route("/v1/reservations/{id}/release", post(decisions::release))
        .route("/v1/reservations/{id}/extend", post(decisions::extend))
        .route("/v1/events/record", post(events::record))
        .route("/v1/events/batch", post(events::batch))
        .route("/v1/events", get(events::list))
        .route(
            "/v1/limits/{id}",
            get(limits::get).put(limits::update).delete(limits::delete),
        )
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .put(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/test", post(webhooks::test))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/v1/api-keys", post(api_keys::create).get(api_keys::list))
        .route("/v1/api-keys/{id}", axum::routing::delete(api_keys::delete))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(request_id::envelope))
        .with_state(gateway)
}

async fn not_found() -> error::ApiError {
    error::ApiError::from_status(axum::http::StatusCode::NOT_FOUND)
}

/// `{data, nextCursor, hasMore}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListBody<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

impl<T> From<Page<T>> for ListBody<T> {
    fn from(page: Page<T>) -> Self {
        ListBody {
            data: page.data,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
        }
    }
}

impl<T> ListBody<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> ListBody<U> {
        ListBody {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
            has_more: self.has_more,
        }
    }
}

/// `{"id": ..., "deleted": true}`.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

impl Deleted {
    pub fn new(id: impl Into<String>) -> Deleted {
        Deleted {
            id: id.into(),
            deleted: true,
        }
    }
}

/// Reads `limit` and `cursor` from the query.
pub fn page_request(
    query: &mut extract::QueryParams,
) -> Result<crate::service::page::PageRequest, error::ApiError> {
    let limit = query.take("limit");
    let cursor = query.take("cursor");
    Ok(crate::service::page::PageRequest::parse(
        limit.as_deref(),
        cursor.as_deref(),
    )?)
}
