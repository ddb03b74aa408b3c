//! Thin HTTP layer: routing, extractors, the error envelope. Handlers parse, call the
//! service, and shape the answer.

pub mod api_keys;
pub mod auth;
pub mod balances;
pub mod customers;
pub mod decisions;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod json;
pub mod limits;
pub mod meters;
pub mod overload;
pub mod query;
pub mod request_id;
pub mod run_to_end;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde::Serialize;

use crate::service::Gateway;
use crate::service::page::Page;

pub type AppState = Arc<Gateway>;

/// What one node accepts.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body, in bytes (`413 payload_too_large` beyond).
    pub max_body_bytes: usize,
    /// API requests served at once (`429 rate_limit_exceeded` beyond).
    pub max_in_flight: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_body_bytes: 1024 * 1024,
            max_in_flight: 4096,
        }
    }
}

/// The OpenAPI document's frame; operations and schemas come from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "quotagate", description = "Usage metering and limit enforcement gateway (API v1)."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every documented route, and the OpenAPI document generated from the same annotations, so
/// the two cannot drift apart.
pub fn api_routes(gateway: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    // POSTs without de-duplication of their own answer a repeated `Idempotency-Key` from the
    // first answer. So does a batch: its events de-duplicate in their counting step, but its
    // answer (`count`, `duplicates`) is the first one's only if kept. Creating an API key is
    // left out: its answer holds the key in the clear, which is never stored.
    let replayed = OpenApiRouter::new()
        .routes(routes!(events::batch))
        .routes(routes!(customers::create, customers::list))
        .routes(routes!(meters::create, meters::list))
        .routes(routes!(limits::create, limits::list))
        .routes(routes!(decisions::release))
        .routes(routes!(decisions::extend))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::test))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(balances::create))
        .route_layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::clone(gateway),
            idempotency::replay_answers,
        ));
    let served_document = health::ServedDocument::default();
    let operations = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
        .route_layer(axum::Extension(std::sync::Arc::clone(&served_document)));
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(customers::get, customers::put, customers::delete))
        .routes(routes!(meters::get, meters::update, meters::delete))
        .routes(routes!(meters::query))
        .routes(routes!(limits::get, limits::update, limits::delete))
        .routes(routes!(decisions::check))
        .routes(routes!(decisions::consume))
        .routes(routes!(decisions::reserve))
        .routes(routes!(decisions::get))
        .routes(routes!(decisions::commit))
        .routes(routes!(events::record))
        .routes(routes!(events::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(api_keys::create, api_keys::list))
        .routes(routes!(api_keys::delete))
        .routes(routes!(balances::get, balances::update, balances::delete))
        .routes(routes!(balances::of_customer))
        .routes(routes!(balances::credit))
        .routes(routes!(balances::debit))
        .routes(routes!(balances::check))
        .routes(routes!(balances::transactions))
        .merge(replayed)
        .merge(operations)
        .split_for_parts();
    name_operations(&mut document);
    // A fresh cell, so it is empty.
    let _ = served_document.set(document.clone());
    (router, document)
}

/// utoipa names an operation after its handler, and handlers of different resources share
/// names (`create`, `check`): prefixing the tag makes every `operationId` unique, as OpenAPI
/// requires and client generators rely on (`customers_create`, `balances_check`).
fn name_operations(document: &mut utoipa::openapi::OpenApi) {
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let tag = operation
                .tags
                .as_ref()
                .and_then(|tags| tags.first())
                .map(|tag| tag.replace('-', "_"));
            if let (Some(tag), Some(name)) = (tag, operation.operation_id.as_mut()) {
                *name = format!("{tag}_{name}");
            }
        }
    }
}

/// Every route of the API. Serving is separate ([`crate::app::run`]), so tests can drive the
/// router in process. Requests that may change state run as tasks of `running`
/// ([`run_to_end`]), which the caller waits for before it stops.
pub fn build_router(
    gateway: AppState,
    limits: HttpLimits,
    running: &tokio_util::task::TaskTracker,
) -> Router {
    // Install the recorder before the first request records anything.
    crate::telemetry::prometheus();
    let (api, document) = api_routes(&gateway);
    let query_check = query::QueryCheckLayer::new(&document);
    api.fallback(not_found)
        // One layer call: each wraps every route once more (a boxed service and future per
        // request).
        .layer(
            tower::ServiceBuilder::new()
                .layer(run_to_end::RunToEndLayer::new(running.clone()))
                .layer(axum::middleware::from_fn(request_id::envelope))
                .layer(overload::ShedLayer::new(limits.max_in_flight))
                .layer(query_check)
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
        .with_state(gateway)
}

async fn not_found() -> error::ApiError {
    error::ApiError::from_status(axum::http::StatusCode::NOT_FOUND)
}

/// `{data, nextCursor, hasMore}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// The query parameters of every list (API.md §0), as the OpenAPI document shows them;
/// [`page_request`] reads them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Items per page, 1–100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The previous page's `nextCursor`.
    cursor: Option<String>,
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
