//! Stored answers of state-changing requests that carry an `Idempotency-Key` but have no
//! de-duplication of their own (creations, webhook tests, redeliveries): a repeat is answered
//! from here instead of running again.

use async_trait::async_trait;

use super::StoreResult;

/// What a request with an idempotency key finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayClaim {
    /// Nobody used the key: this request runs, and must finish the claim.
    Claimed,
    /// A request with the key is still running.
    InProgress,
    /// The stored answer of the request that ran.
    Answered(String),
}

#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Claims `key` for `pending_ms` (the longest a request may run), unless it is taken.
    async fn claim_replay(&self, key: &str, pending_ms: i64) -> StoreResult<ReplayClaim>;

    /// Stores the answer for the idempotency retention (as long as events are de-duplicated),
    /// or with `None` frees the key (the request changed nothing, so a repeat may run).
    async fn finish_replay(&self, key: &str, answer: Option<&str>) -> StoreResult<()>;
}
