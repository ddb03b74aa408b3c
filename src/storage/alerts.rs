//! Alert delivery storage: handing messages from customers' outboxes to one shared delivery
//! schedule, leasing due deliveries to workers on any node, and the attempt log.
//!
//! Outboxes live in the customer's slot (the counting script writes them atomically); the
//! schedule lives under its own hash tag `{wh}`. Handing over is idempotent per message, so
//! several nodes may do it at once and a node may die half-way.

use async_trait::async_trait;

use super::StoreResult;
use crate::domain::ids::CustomerId;

/// A delivery due to a worker: one message to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub message_id: String,
    pub endpoint_id: String,
    /// The queued message (JSON of [`crate::domain::alert::QueuedMessage`]).
    pub message: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the first attempt was made (unix ms); `now` for a first attempt.
    pub first_attempt_ms: i64,
}

impl Claim {
    /// A delivery that fails counts once toward disabling its endpoint, at its first attempt:
    /// retries of a message the endpoint cannot take are not more failed deliveries.
    pub fn is_first_attempt(&self) -> bool {
        self.attempts == 0
    }
}

/// How an attempt ended, for the schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    Succeeded,
    /// Failed; try again at this time (unix ms).
    RetryAt(i64),
    /// Failed for good (retried for 24 h, or the endpoint is gone).
    GaveUp,
}

/// How long a message is kept for delivery and redelivery.
pub const MESSAGE_TTL_MS: i64 = 48 * 3600 * 1000;
/// How many attempts an endpoint's log keeps.
pub const ATTEMPT_LOG_LEN: usize = 1000;

/// An attempt log member that was `pending` (its retry was due), once the retry is made: it
/// failed. `lua/alert_finish.lua` rewrites it the same way; attempts are compact JSON.
pub fn superseded(member: &str) -> String {
    member.replacen(r#""status":"pending""#, r#""status":"failed""#, 1)
}

#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    /// The messages waiting in a customer's outbox, oldest first.
    async fn outbox(&self, customer: &CustomerId) -> StoreResult<Vec<String>>;

    /// How many messages wait in each customer's outbox (the crash-recovery sweep, a step of
    /// at most a thousand customers at a time: one round trip).
    async fn outbox_lengths(&self, customers: &[CustomerId]) -> StoreResult<Vec<usize>>;

    /// Whether the caller should sweep the outboxes now: true for one caller per
    /// `interval_ms` among all nodes (by `now_ms`, the node's calibrated clock).
    async fn claim_sweep(&self, now_ms: i64, interval_ms: i64) -> StoreResult<bool>;

    /// Schedules `message` (JSON, ID `message_id`) for each endpoint at `now_ms`, unless it was
    /// scheduled before; then removes `outbox_entry` (the crossing it came from) from the
    /// customer's outbox. An empty `message_id` only removes the entry.
    async fn hand_over(
        &self,
        customer: &CustomerId,
        message_id: &str,
        message: &str,
        outbox_entry: &str,
        endpoints: &[String],
        now_ms: i64,
    ) -> StoreResult<()>;

    /// Leases up to `max` deliveries due at `now_ms` for `lease_ms`: another worker gets them
    /// only if this one does not finish them in time (at-least-once).
    async fn claim_due(&self, now_ms: i64, lease_ms: i64, max: usize) -> StoreResult<Vec<Claim>>;

    /// Records an attempt (JSON, ID `attempt_id`) in the endpoint's log and moves the delivery
    /// on; the delivery's previous attempt, logged `pending` while this one was due, is
    /// rewritten `failed` ([`superseded`]). Returns the endpoint's failed deliveries in a row after
    /// it (a success resets them; a retry does not add one, see [`Claim::is_first_attempt`]).
    async fn finish_attempt(
        &self,
        claim: &Claim,
        attempt_id: &str,
        attempt: &str,
        end: &AttemptEnd,
        now_ms: i64,
    ) -> StoreResult<u32>;

    /// Forgets the endpoint's failed deliveries in a row (it was enabled again: it starts
    /// afresh rather than being disabled by its next failure).
    async fn reset_failures(&self, endpoint_id: &str) -> StoreResult<()>;

    /// The endpoint's attempts, newest first, strictly before the attempt ID `before`.
    async fn attempts(
        &self,
        endpoint_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// The queued message with this ID, while it is kept.
    async fn message(&self, message_id: &str) -> StoreResult<Option<String>>;

    /// Schedules a message for one endpoint again, now, as a fresh series of attempts.
    async fn redeliver(
        &self,
        message_id: &str,
        message: &str,
        endpoint_id: &str,
        now_ms: i64,
    ) -> StoreResult<()>;
}

/// Member of the schedule: message and endpoint.
pub fn delivery_member(message_id: &str, endpoint_id: &str) -> String {
    format!("{message_id} {endpoint_id}")
}

pub fn split_delivery_member(member: &str) -> Option<(&str, &str)> {
    member.split_once(' ')
}
