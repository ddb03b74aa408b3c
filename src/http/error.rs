//! The API's error type and its code table (API.md §0).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::field::FieldError;
use crate::service::{Resource, ServiceError};
use crate::storage::StoreError;

/// The error envelope every non-2xx answer carries.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable snake_case code (`invalid_field_value`, `customer_not_found`, ...).
    pub code: &'static str,
    pub message: String,
    pub status: u16,
    /// Equals the `X-Request-Id` header.
    pub request_id: String,
}

/// An error answer. Its body is written by the request-ID middleware, which knows the ID.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn field(error: FieldError) -> ApiError {
        let code = match error {
            FieldError::Missing { .. } => "missing_required_field",
            FieldError::Invalid { .. } => "invalid_field_value",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.message())
    }

    pub fn not_found(resource: Resource) -> ApiError {
        let (code, what) = match resource {
            Resource::Customer => ("customer_not_found", "customer"),
            Resource::Meter => ("meter_not_found", "meter"),
            Resource::Limit => ("limit_not_found", "limit"),
            Resource::ApiKey => ("not_found", "API key"),
            Resource::Reservation => ("reservation_not_found", "reservation"),
            Resource::Balance => ("balance_not_found", "balance"),
            Resource::Webhook => ("webhook_not_found", "webhook"),
            Resource::Delivery => ("not_found", "delivery"),
        };
        ApiError::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    pub fn storage_unavailable() -> ApiError {
        ApiError {
            retry_after_secs: Some(crate::service::error::STORAGE_RETRY_AFTER_SECS.unsigned_abs()),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "storage is unavailable; retry later",
            )
        }
    }

    pub fn overloaded() -> ApiError {
        ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "this node is serving too many requests at once; retry later",
            )
        }
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }

    /// The envelope for an error answer that no handler produced (unknown route, wrong
    /// method, a rejection inside axum).
    pub fn from_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => ApiError::new(status, "not_found", "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
                status,
                "method_not_allowed",
                "method not allowed on this resource",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(status, "payload_too_large", "request body is too large")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                status,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ),
            StatusCode::REQUEST_TIMEOUT => {
                ApiError::new(status, "request_timeout", "request took too long")
            }
            s if s.is_server_error() => ApiError::internal(),
            s => ApiError::new(s, "invalid_request", "invalid request"),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        match error {
            ServiceError::Field(field) => ApiError::field(field),
            ServiceError::NotFound(resource) => ApiError::not_found(resource),
            ServiceError::AlreadyExists(message) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            ServiceError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ServiceError::Storage(StoreError::Unavailable(detail)) => {
                tracing::warn!(%detail, "storage unavailable");
                ApiError::storage_unavailable()
            }
            ServiceError::Storage(StoreError::Internal(detail)) => {
                tracing::error!(%detail, "storage error");
                ApiError::internal()
            }
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> ApiError {
        ApiError::field(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self);
        response
    }
}
