//! Identifiers: caller-chosen customer IDs and prefixed server-made IDs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::field::FieldError;

/// A customer's own ID: 1–128 chars of `[A-Za-z0-9_.:@-]`; `default` is reserved for the
/// default limits. The character set keeps it safe inside Redis keys and hash tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CustomerId(String);

impl CustomerId {
    pub fn parse(field: &str, raw: &str) -> Result<CustomerId, FieldError> {
        if raw.is_empty() || raw.len() > 128 || !raw.bytes().all(is_customer_id_byte) {
            return Err(FieldError::invalid(
                field,
                "must be 1 to 128 characters of [A-Za-z0-9_.:@-]",
            ));
        }
        if raw == "default" {
            return Err(FieldError::invalid(field, "`default` is reserved"));
        }
        Ok(CustomerId(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_customer_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CustomerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        CustomerId::parse("", &raw).map_err(|e| match e {
            FieldError::Invalid { reason, .. } => serde::de::Error::custom(reason),
            FieldError::Missing { .. } => serde::de::Error::custom("is required"),
        })
    }
}

/// The kinds of server-made IDs and their wire prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Meter,
    Limit,
    Event,
    Reservation,
    Balance,
    Transaction,
    Webhook,
    Message,
    ApiKey,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Meter => "mtr_",
            IdKind::Limit => "lmt_",
            IdKind::Event => "evt_",
            IdKind::Reservation => "rsv_",
            IdKind::Balance => "bal_",
            IdKind::Transaction => "txn_",
            IdKind::Webhook => "wh_",
            IdKind::Message => "msg_",
            IdKind::ApiKey => "key_",
        }
    }

    /// A new ID: prefix plus a ULID, so IDs sort by creation time and lists page in that order.
    pub fn new_id(self, ulid: ulid::Ulid) -> String {
        format!("{}{}", self.prefix(), ulid)
    }

    /// Whether `raw` could be an ID of this kind; anything else in a path is a plain 404.
    pub fn is_plausible(self, raw: &str) -> bool {
        raw.strip_prefix(self.prefix()).is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_follow_the_contract() {
        assert!(CustomerId::parse("id", "cust_123").is_ok());
        assert!(CustomerId::parse("id", "user-42@acme.io:eu").is_ok());
        assert!(CustomerId::parse("id", &"a".repeat(128)).is_ok());
        assert!(CustomerId::parse("id", &"a".repeat(129)).is_err());
        assert!(CustomerId::parse("id", "").is_err());
        assert!(CustomerId::parse("id", "a b").is_err());
        assert!(CustomerId::parse("id", "a{b}").is_err());
        assert!(CustomerId::parse("id", "default").is_err());
    }

    #[test]
    fn server_ids_carry_their_prefix() {
        let id = IdKind::Meter.new_id(ulid::Ulid::nil());
        assert_eq!(id, "mtr_00000000000000000000000000");
        assert!(IdKind::Meter.is_plausible(&id));
        assert!(!IdKind::Limit.is_plausible(&id));
        assert!(!IdKind::Meter.is_plausible("mtr_"));
        assert!(!IdKind::Meter.is_plausible("mtr_../x"));
    }
}
