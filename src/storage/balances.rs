//! Balance storage: what each balance has spent, and its transactions. The spent figure is
//! an all-time counter ([`crate::domain::usage::CounterId::balance`]) that the usage script debits for metered
//! balances, so a credit or debit here and a metered debit there move the same number.

use async_trait::async_trait;

use super::StoreResult;
use super::keys::Keys;
use crate::domain::event::IdempotencyKey;
use crate::domain::ids::CustomerId;

/// How long a deleted balance's spent counter outlives it: twice the interval of a node's full
/// configuration reload, the longest any node can act on a balance that is gone.
pub const DROPPED_SPENT_TTL_MS: u64 = 120_000;

/// One credit or debit, applied atomically with its transaction record.
#[derive(Debug, Clone)]
pub struct Movement<'a> {
    pub balance_id: &'a str,
    /// How `spent` moves: positive for a debit, negative for a credit.
    pub spent_change: f64,
    /// Refuses the movement when `spent + spent_change` would exceed it; `None`: never refused.
    pub ceiling: Option<f64>,
    pub transaction_id: &'a str,
    /// The transaction's entry (JSON), stored beside the spent figure after it.
    pub entry: &'a str,
    /// The client's idempotency key: a repeat within the retention changes nothing and
    /// answers the first transaction.
    pub idempotency_key: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MovementOutcome {
    /// Applied: the stored transaction member.
    Applied(String),
    /// The ceiling did not hold: nothing moved. What the balance had spent then, and, when
    /// this is a repeat, the refused movement's entry (JSON: its balance and amount). With an
    /// idempotency key the refusal is remembered under it (see [`refusal_record`]), so a
    /// repeat is refused again rather than applied once funds arrive.
    Refused {
        spent: f64,
        first_entry: Option<String>,
    },
    /// The idempotency key was seen before: nothing changed. What the first movement did
    /// (`Applied` or `Refused`).
    Duplicate(Box<MovementOutcome>),
}

/// What a refused movement leaves under its idempotency key: what the balance had spent, and
/// the movement's entry (`refused|<spent>|<entry JSON>`). A transaction member starts with its
/// transaction's ID, never with `refused|`.
pub fn refusal_record(spent: &str, entry: &str) -> String {
    format!("refused|{spent}|{entry}")
}

/// What the first movement with a key did, from the record it left under the key.
pub fn first_movement(record: String) -> MovementOutcome {
    match record.strip_prefix("refused|") {
        Some(refusal) => {
            let (spent, entry) = refusal.split_once('|').unwrap_or((refusal, ""));
            MovementOutcome::Refused {
                spent: spent.parse().unwrap_or(f64::NAN),
                first_entry: Some(entry.to_string()).filter(|entry| !entry.is_empty()),
            }
        }
        None => MovementOutcome::Applied(record),
    }
}

/// A balance as storage knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BalanceReading {
    pub spent: f64,
    /// The newest transaction member, if any.
    pub newest: Option<String>,
}

/// A transaction member: `<transactionId>|<spent after>|<entry JSON>`. The ID comes first so
/// that lexical order is ID order (ULIDs: time order).
pub fn transaction_member(transaction_id: &str, spent_after: &str, entry: &str) -> String {
    format!("{transaction_id}|{spent_after}|{entry}")
}

/// The spent figure after the transaction and its entry (JSON).
pub fn split_transaction_member(member: &str) -> Option<(f64, &str)> {
    let mut parts = member.splitn(3, '|');
    let _id = parts.next()?;
    let spent_after = parts.next()?.parse().ok()?;
    Some((spent_after, parts.next()?))
}

/// Where a movement's idempotency key is remembered: beside the customer's event keys, in a
/// namespace of its own, so a debit and an event may use the same key. Credits and debits
/// share it: a key first used for one kind is refused for the other (see
/// [`crate::service::Gateway::move_balance`]).
pub fn movement_dedupe_key(keys: &Keys, customer: &CustomerId, idempotency_key: &str) -> String {
    let key = IdempotencyKey::Movement(idempotency_key.to_string());
    keys.idempotency(customer, key.digest_input())
}

#[async_trait]
pub trait BalanceStore: Send + Sync + 'static {
    /// Applies a credit or debit and records its transaction, in one atomic step.
    async fn move_balance(
        &self,
        customer: &CustomerId,
        movement: &Movement<'_>,
    ) -> StoreResult<MovementOutcome>;

    /// What each balance of one customer has spent, and its newest transaction, in one round
    /// trip.
    async fn balance_readings(
        &self,
        customer: &CustomerId,
        balance_ids: &[&str],
    ) -> StoreResult<Vec<BalanceReading>>;

    /// Up to `limit` transaction members, newest first, older than the transaction `before`.
    async fn transactions(
        &self,
        customer: &CustomerId,
        balance_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// Forgets a balance's amount and transactions (after its document went). The spent
    /// counter is not deleted but zeroed to expire after [`DROPPED_SPENT_TTL_MS`]: a node whose
    /// cache has not heard of the deletion yet may still debit it, and a debit keeps the
    /// counter's expiry where it would have created a counter that never expires.
    async fn drop_balance(&self, customer: &CustomerId, balance_id: &str) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_the_spent_figure_beside_the_entry() {
        let member = transaction_member("txn_1", "-12.5", r#"{"a":"x|y"}"#);
        assert_eq!(member, r#"txn_1|-12.5|{"a":"x|y"}"#);
        assert_eq!(
            split_transaction_member(&member),
            Some((-12.5, r#"{"a":"x|y"}"#))
        );
        assert_eq!(split_transaction_member("txn_1|x|{}"), None);
    }
}
