use crate::domain::field::FieldError;
use crate::storage::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Customer,
    Meter,
    Limit,
    ApiKey,
    Reservation,
    Balance,
    Webhook,
    Delivery,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{}", .0.message())]
    Field(FieldError),
    #[error("{0:?} not found")]
    NotFound(Resource),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<FieldError> for ServiceError {
    fn from(error: FieldError) -> Self {
        ServiceError::Field(error)
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// How long a client should wait before retrying when storage is unreachable: the
/// `Retry-After` of `503 storage_unavailable`, and the `retryAfter` of a decision refused by a
/// `closed` fail mode, whose cause is the same outage (the gateway notices Redis coming back
/// within about a second, so waiting longer only delays the client).
pub const STORAGE_RETRY_AFTER_SECS: i64 = 1;

/// A stored document that no longer decodes is a bug (or a foreign writer), never user input.
pub(crate) fn corrupt(kind: &str, error: serde_json::Error) -> ServiceError {
    ServiceError::Storage(StoreError::Internal(format!(
        "undecodable {kind} document: {error}"
    )))
}
