//! `Idempotency-Key` on POST routes without de-duplication of their own (creations, webhook
//! tests, redeliveries, reservation release and extend), and on batches: the first answer is
//! replayed. Routes that count or move amounts de-duplicate inside their own atomic step
//! instead (a batch does both: its events de-duplicate as they are counted, and its answer is
//! replayed). Like every
//! request that may change state, these run to their end even if their client disconnects
//! ([`super::run_to_end`]), so their answer is always kept for their key.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::caller_scope;
use super::error::ApiError;
use super::events::{idempotency_key, replayed};
use crate::service::replay::Replay;

/// The `Idempotency-Key` header, as the OpenAPI document declares it on every `POST` that
/// accepts it (the handlers read it with [`idempotency_key`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1 to 256 printable ASCII characters, no space or tab at either end. A repeat with the
    /// same key within 24 h changes nothing and answers the first answer's IDs with
    /// `Idempotent-Replayed: true`.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 256,
        pattern = r"^[!-~]([\t -~]*[!-~])?$"
    )]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

/// The largest answer kept for a replay; these routes answer one document.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

pub async fn replay_answers(
    State(gateway): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let key = match idempotency_key(request.headers()) {
        Ok(Some(key)) => key.to_string(),
        Ok(None) => return next.run(request).await,
        Err(error) => return error.into_response(),
    };
    // Only a valid key reaches its stored answers: a revoked one gets none back, and a
    // caller without one makes no storage call.
    if let Err(error) = caller_scope(request.headers(), &gateway) {
        return error.into_response();
    }
    let credential = request
        .headers()
        .get(header::AUTHORIZATION)
        .map_or(&[][..], HeaderValue::as_bytes)
        .to_vec();
    let ticket = match gateway
        .claim_replay(&credential, request.uri().path(), &key)
        .await
    {
        Ok(Replay::Run(ticket)) => ticket,
        Ok(Replay::InProgress) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .into_response();
        }
        Ok(Replay::Answered { status, body }) => return replayed_answer(status, body),
        Err(error) => return ApiError::from(error).into_response(),
    };
    let response = next.run(request).await;
    // Failed requests change nothing: a repeat may run.
    if !response.status().is_success() {
        gateway.finish_replay(ticket, None).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            gateway
                .finish_replay(ticket, Some((parts.status.as_u16(), &text)))
                .await;
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(error) => {
            tracing::error!(%error, "could not read an answer to keep for its idempotency key");
            gateway.finish_replay(ticket, None).await;
            ApiError::internal().into_response()
        }
    }
}

fn replayed_answer(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    replayed(response, true)
}
