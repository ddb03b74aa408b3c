//! Gives every answer an `X-Request-Id` and every error answer the envelope
//! `{"error": {code, message, status, requestId}}`, whoever produced the error.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error::{ApiError, ErrorDetail, ErrorEnvelope};
use crate::telemetry::record_http;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's ID, for handlers and logs.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn usable(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let fine = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    fine.then(|| text.to_string())
}

fn new_request_id() -> String {
    format!("req_{}", ulid::Ulid::new())
}

pub async fn envelope(mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let method = request.method().clone();
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(usable)
        .unwrap_or_else(new_request_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let error = response
            .extensions_mut()
            .remove::<ApiError>()
            .unwrap_or_else(|| ApiError::from_status(status));
        let body = ErrorEnvelope {
            error: ErrorDetail {
                code: error.code,
                message: error.message,
                status: error.status.as_u16(),
                request_id: id.clone(),
            },
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        *response.body_mut() = Body::from(text);
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    record_http(
        route.as_ref().map_or("unmatched", |path| path.as_str()),
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
