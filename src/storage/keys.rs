//! Every Redis key format lives here, pinned by tests.
//!
//! Keys of one customer share the hash tag `{c:<customerId>}` so that a multi-key script for
//! one customer stays in one Redis Cluster slot. Configuration shares the tag `{cfg}`: it is
//! small, read through each node's cache, and changed atomically across kinds.

use super::Kind;
use crate::domain::ids::CustomerId;
use crate::domain::usage::CounterId;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: ID → JSON document.
    pub fn config_docs(&self, kind: Kind) -> String {
        format!("{}:{{cfg}}:{}", self.prefix, kind.name())
    }

    /// Sorted set of IDs (all scores 0, ordered by ID) for stable cursor pages.
    pub fn config_index(&self, kind: Kind) -> String {
        format!("{}:{{cfg}}:{}:ids", self.prefix, kind.name())
    }

    /// Hash: `<kind position>:<id>` → how often the document was touched. Fields stay when
    /// their document goes, so a version never repeats for a re-created ID.
    pub fn config_versions(&self) -> String {
        format!("{}:{{cfg}}:versions", self.prefix)
    }

    /// A document's field in [`Keys::config_versions`] (`lua/config_apply.lua` builds the
    /// same from its ops).
    pub fn config_version_field(kind: Kind, id: &str) -> String {
        format!("{}:{id}", kind.position())
    }

    /// Stream of config changes that every node tails to refresh its cache.
    pub fn config_changes(&self) -> String {
        format!("{}:{{cfg}}:changes", self.prefix)
    }

    /// When a node last claimed the outbox sweep (unix ms).
    pub fn alert_sweep_claim(&self) -> String {
        format!("{}:{{wh}}:sweep", self.prefix)
    }

    /// The delivery schedule: `<messageId> <endpointId>` scored by the next attempt (unix ms).
    pub fn webhook_due(&self) -> String {
        format!("{}:{{wh}}:due", self.prefix)
    }

    /// Attempts made per delivery: `<messageId> <endpointId>` → `attempts:first_attempt_ms`.
    pub fn webhook_tries(&self) -> String {
        format!("{}:{{wh}}:tries", self.prefix)
    }

    /// The attempt each retried delivery's next attempt follows: `<messageId> <endpointId>` →
    /// its attempt log member, shown `pending` until that next attempt is made.
    pub fn webhook_retried_attempts(&self) -> String {
        format!("{}:{{wh}}:retried", self.prefix)
    }

    /// Failed deliveries in a row per endpoint.
    pub fn webhook_failures(&self) -> String {
        format!("{}:{{wh}}:failures", self.prefix)
    }

    /// A queued message, kept for delivery and redelivery.
    pub fn webhook_message(&self, message_id: &str) -> String {
        format!("{}:{{wh}}:msg:{message_id}", self.prefix)
    }

    /// An endpoint's attempt log (sorted set ordered by attempt ID).
    pub fn webhook_attempts(&self, endpoint_id: &str) -> String {
        format!("{}:{{wh}}:attempts:{endpoint_id}", self.prefix)
    }

    /// `<prefix>:{c:<customerId>}:<part>:<part>…`, in one allocation and without the
    /// formatting machinery: a dozen of these are built for every counted event.
    fn customer_key(&self, customer: &CustomerId, parts: &[&str]) -> String {
        let customer = customer.as_str();
        let length = self.prefix.len()
            + customer.len()
            + 4
            + parts.iter().map(|part| part.len() + 1).sum::<usize>();
        let mut key = String::with_capacity(length);
        key.push_str(&self.prefix);
        key.push_str(":{c:");
        key.push_str(customer);
        key.push('}');
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// A usage counter of one window: `…:u:<meterId>:<filtersHash>:<period>:<windowStart|all>`.
    /// The limit value is not in the key, so changing a limit keeps its usage.
    pub fn counter(&self, customer: &CustomerId, counter: &CounterId) -> String {
        let mut bucket = itoa::Buffer::new();
        self.customer_key(
            customer,
            &[
                "u",
                &counter.meter_id,
                &counter.filters_hash,
                counter.period.as_str(),
                bucket_text(&mut bucket, counter.window_start),
            ],
        )
    }

    /// Hourly roll-up hash of a meter (`None`: all time): dimension-set hash → aggregate.
    pub fn rollup(&self, customer: &CustomerId, meter_id: &str, hour_start: Option<i64>) -> String {
        let mut bucket = itoa::Buffer::new();
        self.customer_key(
            customer,
            &["h", meter_id, bucket_text(&mut bucket, hour_start)],
        )
    }

    /// Dimension-set hash → the dimensions themselves, for narrowing meter queries.
    pub fn rollup_dimensions(&self, customer: &CustomerId, meter_id: &str) -> String {
        self.customer_key(customer, &["dims", meter_id])
    }

    /// The customer's event log (list, oldest written first).
    pub fn event_log(&self, customer: &CustomerId) -> String {
        self.customer_key(customer, &["events"])
    }

    /// Every hold of a customer's reservations, in one hash so that one read finds the holds
    /// on all of an event's counters: `hold_field` → `amount:expires_at_ms`.
    pub fn holds(&self, customer: &CustomerId) -> String {
        self.customer_key(customer, &["holds"])
    }

    /// A hold's field in the holds hash: the counter's key and the reservation.
    pub fn hold_field(counter_key: &str, reservation_id: &str) -> String {
        format!("{counter_key}|{reservation_id}")
    }

    /// A reservation record (hash: doc, status, eventId).
    pub fn reservation(&self, customer: &CustomerId, id: &str) -> String {
        self.customer_key(customer, &["rsv", id])
    }

    /// Which customer a reservation belongs to: paths name only the reservation.
    pub fn reservation_owner(&self, id: &str) -> String {
        format!("{}:{{r:{id}}}:owner", self.prefix)
    }

    /// The customer's alert outbox: messages queued by the counting script until they are
    /// handed to the webhook queue.
    pub fn outbox(&self, customer: &CustomerId) -> String {
        self.customer_key(customer, &["outbox"])
    }

    /// Thresholds of one limit that already fired in one window.
    pub fn fired(
        &self,
        customer: &CustomerId,
        limit_id: &str,
        window_start: Option<i64>,
    ) -> String {
        let mut bucket = itoa::Buffer::new();
        self.customer_key(
            customer,
            &["fired", limit_id, bucket_text(&mut bucket, window_start)],
        )
    }

    /// A stored answer for an idempotency key (see [`super::replays`]); the key's digest is
    /// its own hash tag, so it may live on any shard.
    pub fn replay(&self, digest: &str) -> String {
        format!("{}:{{i:{digest}}}:answer", self.prefix)
    }

    /// What a balance has spent: the counter [`CounterId::balance`] names, which the usage
    /// script also debits.
    pub fn balance_spent(&self, customer: &CustomerId, balance_id: &str) -> String {
        self.counter(customer, &CounterId::balance(balance_id))
    }

    /// A balance's transactions (sorted set, all scores 0, members
    /// `<transactionId>|<spent after>|<entry JSON>`: lexical order is ID order, which is time
    /// order).
    pub fn balance_transactions(&self, customer: &CustomerId, balance_id: &str) -> String {
        self.customer_key(customer, &["txn", balance_id])
    }

    /// An idempotency record; the key is hashed so any key fits (see
    /// [`crate::domain::event::IdempotencyKey::digest_input`]).
    pub fn idempotency(&self, customer: &CustomerId, key: impl AsRef<[u8]>) -> String {
        use sha2::{Digest, Sha256};
        let digest = crate::domain::apikey::hex(&Sha256::digest(key.as_ref())[..16]);
        self.customer_key(customer, &["idem", &digest])
    }
}

/// A window's or hour's start in a key (unix seconds), or `all` for all-time.
fn bucket_text(buffer: &mut itoa::Buffer, start: Option<i64>) -> &str {
    match start {
        Some(start) => buffer.format(start),
        None => "all",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::period::Period;

    #[test]
    fn customer_keys_share_the_customer_hash_tag() {
        let keys = Keys::new("qg");
        let customer = CustomerId::parse("id", "cust_1").unwrap();
        let counter = CounterId {
            meter_id: "mtr_1".into(),
            filters_hash: "_".into(),
            period: Period::Day,
            window_start: Some(1_763_683_200),
        };
        assert_eq!(
            keys.counter(&customer, &counter),
            "qg:{c:cust_1}:u:mtr_1:_:day:1763683200"
        );
        let all_time = CounterId {
            period: Period::AllTime,
            window_start: None,
            ..counter
        };
        assert_eq!(
            keys.counter(&customer, &all_time),
            "qg:{c:cust_1}:u:mtr_1:_:all_time:all"
        );
        assert_eq!(
            keys.rollup(&customer, "mtr_1", Some(3600)),
            "qg:{c:cust_1}:h:mtr_1:3600"
        );
        assert_eq!(
            keys.rollup(&customer, "mtr_1", None),
            "qg:{c:cust_1}:h:mtr_1:all"
        );
        assert_eq!(
            keys.rollup_dimensions(&customer, "mtr_1"),
            "qg:{c:cust_1}:dims:mtr_1"
        );
        assert_eq!(keys.event_log(&customer), "qg:{c:cust_1}:events");
        assert_eq!(
            keys.balance_spent(&customer, "bal_1"),
            "qg:{c:cust_1}:u:bal_1:_:all_time:all"
        );
        assert_eq!(
            keys.balance_transactions(&customer, "bal_1"),
            "qg:{c:cust_1}:txn:bal_1"
        );
        assert_eq!(keys.holds(&customer), "qg:{c:cust_1}:holds");
        assert_eq!(
            Keys::hold_field("qg:{c:cust_1}:u:m:_:day:1", "rsv_1"),
            "qg:{c:cust_1}:u:m:_:day:1|rsv_1"
        );
        assert_eq!(
            keys.reservation(&customer, "rsv_1"),
            "qg:{c:cust_1}:rsv:rsv_1"
        );
        assert_eq!(keys.reservation_owner("rsv_1"), "qg:{r:rsv_1}:owner");
        assert_eq!(keys.outbox(&customer), "qg:{c:cust_1}:outbox");
        assert_eq!(keys.webhook_due(), "qg:{wh}:due");
        assert_eq!(keys.webhook_message("msg_1"), "qg:{wh}:msg:msg_1");
        assert_eq!(keys.webhook_attempts("wh_1"), "qg:{wh}:attempts:wh_1");
        assert_eq!(
            keys.fired(&customer, "lmt_1", Some(60)),
            "qg:{c:cust_1}:fired:lmt_1:60"
        );
        assert_eq!(
            keys.fired(&customer, "lmt_1", None),
            "qg:{c:cust_1}:fired:lmt_1:all"
        );
        let idem = keys.idempotency(&customer, "retry-1");
        assert!(
            idem.starts_with("qg:{c:cust_1}:idem:")
                && idem.len() == "qg:{c:cust_1}:idem:".len() + 32
        );
    }

    #[test]
    fn config_keys_share_one_slot_tag() {
        let keys = Keys::new("qg");
        assert_eq!(keys.config_docs(Kind::Meter), "qg:{cfg}:meters");
        assert_eq!(keys.config_index(Kind::Limit), "qg:{cfg}:limits:ids");
        assert_eq!(keys.config_changes(), "qg:{cfg}:changes");
        assert_eq!(keys.config_versions(), "qg:{cfg}:versions");
        assert_eq!(Keys::config_version_field(Kind::Meter, "mtr_1"), "2:mtr_1");
        assert_eq!(keys.alert_sweep_claim(), "qg:{wh}:sweep");
    }
}
