//! The node's own protection (API.md §0, `rate_limit_exceeded`): beyond a set number of API
//! requests in flight, a request is answered `429` at once, with `Retry-After`, instead of
//! queueing behind work that would miss its storage deadlines anyway. Health, readiness and
//! metrics are never refused, so an overloaded node can still be watched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;

pub async fn shed(
    State(in_flight): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = in_flight.try_acquire() else {
        return ApiError::overloaded().into_response();
    };
    next.run(request).await
}
