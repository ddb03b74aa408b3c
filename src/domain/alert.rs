//! Alerts: which thresholds a limit watches, and the messages a crossing produces.
//!
//! Detection happens in storage, in the same atomic step that counts (so exactly one writer
//! sees each crossing); this module prepares what storage needs for it and names messages so
//! that every replica gives the same crossing the same ID.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::field::Quantity;
use super::ids::CustomerId;
use super::limit::Limit;
use super::period::Window;
use super::time::rfc3339;
use super::usage::ResolvedLimit;

/// The marker of the `limit.exceeded` "threshold" among the percents.
pub const EXCEEDED: &str = "x";

/// What storage needs to detect one limit's crossings. Everything here is cheap to build:
/// it goes with every counted event, while messages are only made for the rare crossing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// `80,100,x`: the limit's thresholds, then exceeded (every limit has that one).
    pub thresholds: String,
    pub limit_value: f64,
    /// Usage below this crosses nothing: the lowest threshold's level.
    pub lowest_level: f64,
    pub limit_id: String,
    /// The window (unix ms); `None` for all-time limits.
    pub window_ms: Option<(i64, i64)>,
}

/// The stable part of a message ID: the same (limit, customer, window start in unix
/// seconds; `None` for all-time) gives the same base on every replica; the threshold is
/// appended to it.
pub fn message_id_base(limit_id: &str, customer: &CustomerId, window_start: Option<i64>) -> String {
    let window_start = window_start.map_or_else(|| "all".to_string(), |s| s.to_string());
    let digest = Sha256::digest(format!("{limit_id}\n{customer}\n{window_start}").as_bytes());
    super::apikey::hex(&digest[..12])
}

pub fn rule(limit: &ResolvedLimit, window: Option<Window>) -> AlertRule {
    AlertRule {
        thresholds: limit.alert_thresholds.clone(),
        limit_value: limit.limit.limit_value.get(),
        lowest_level: limit.limit.limit_value.get() * limit.lowest_alert_percent / 100.0,
        limit_id: limit.limit.id.clone(),
        window_ms: window.map(|w| (w.start.timestamp_millis(), w.end.timestamp_millis())),
    }
}

/// A crossing as the counting step queued it in the customer's outbox. It carries no message
/// ID: naming it costs a hash, which only the rare crossing should pay, not every count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Crossing {
    pub exceeded: bool,
    pub threshold: f64,
    pub limit_id: String,
    /// 0 for all-time limits.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub limit: f64,
    pub usage: f64,
    pub at_ms: i64,
    /// `limit` and `usage` in full, as the usage script writes them beside the numbers, which
    /// its JSON encoder cuts to 14 digits (the numbers stay for nodes that predate the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_text: Option<String>,
}

fn number(value: f64) -> Value {
    serde_json::to_value(Quantity::from_f64(value)).unwrap_or(Value::Null)
}

fn instant(ms: i64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    DateTime::<Utc>::from_timestamp_millis(ms).map_or(Value::Null, |at| Value::String(rfc3339(at)))
}

impl Crossing {
    fn exact(number: f64, text: Option<&str>) -> f64 {
        text.and_then(|text| text.parse().ok()).unwrap_or(number)
    }

    /// The message ID: the same crossing gets the same ID on every replica, whichever node
    /// hands it over, however often.
    pub fn message_id(&self, customer: &CustomerId) -> String {
        let window_start =
            (self.window_start_ms != 0).then(|| self.window_start_ms.div_euclid(1000));
        let base = message_id_base(&self.limit_id, customer, window_start);
        if self.exceeded {
            format!("msg_{base}{EXCEEDED}")
        } else {
            format!("msg_{base}{}", self.threshold)
        }
    }

    /// The message for this crossing (API.md §7), named from the limit's current config
    /// when it still exists.
    pub fn message(&self, customer: &CustomerId, config: Option<&Limit>) -> QueuedMessage {
        let limit = Self::exact(self.limit, self.limit_text.as_deref());
        let usage = Self::exact(self.usage, self.usage_text.as_deref());
        QueuedMessage {
            id: self.message_id(customer),
            kind: if self.exceeded {
                "limit.exceeded"
            } else {
                "limit.threshold_reached"
            }
            .to_string(),
            created_at_ms: self.at_ms,
            data: json!({
                "customerId": customer,
                "limitId": self.limit_id,
                "limitName": config.map(|l| l.name.clone()),
                "meterId": config.map(|l| l.meter_id.clone()),
                "threshold": number(self.threshold),
                "limit": number(limit),
                "currentUsage": number(usage),
                "percentage": number(if limit > 0.0 { usage / limit * 100.0 } else { 0.0 }),
                "remaining": number((limit - usage).max(0.0)),
                "period": config.map(|l| l.period.as_str()),
                "windowStart": instant(self.window_start_ms),
                "windowEnd": instant(self.window_end_ms),
            }),
        }
    }
}

/// A message as queued by storage: `createdAtMs` until it is delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedMessage {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at_ms: i64,
    pub data: Value,
}

impl QueuedMessage {
    /// The payload as delivered (API.md §7).
    pub fn payload(&self) -> Value {
        let created_at =
            DateTime::<Utc>::from_timestamp_millis(self.created_at_ms).unwrap_or_default();
        json!({"id": self.id, "type": self.kind, "createdAt": rfc3339(created_at), "data": self.data})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn message_ids_depend_on_limit_customer_and_window_only() {
        let customer = CustomerId::parse("c", "c1").unwrap();
        let window = Window {
            start: Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap(),
        };
        let next = Window {
            start: window.end,
            end: window.end + chrono::TimeDelta::days(1),
        };
        let start = Some(window.start.timestamp());
        let base = message_id_base("lmt_1", &customer, start);
        assert_eq!(base, message_id_base("lmt_1", &customer, start));
        assert_ne!(
            base,
            message_id_base("lmt_1", &customer, Some(next.start.timestamp()))
        );
        assert_ne!(base, message_id_base("lmt_2", &customer, start));
        assert_ne!(base, message_id_base("lmt_1", &customer, None));
        assert_eq!(base.len(), 24);
        assert!(base.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn crossings_become_full_messages() {
        let customer = CustomerId::parse("c", "c1").unwrap();
        let crossing = Crossing {
            exceeded: false,
            threshold: 80.0,
            limit_id: "lmt_1".into(),
            window_start_ms: 1_795_219_200_000,
            window_end_ms: 1_795_305_600_000,
            limit: 100.0,
            usage: 85.0,
            at_ms: 1_795_219_300_000,
            limit_text: None,
            usage_text: None,
        };
        let message = crossing.message(&customer, None);
        let base = message_id_base("lmt_1", &customer, Some(1_795_219_200));
        assert_eq!(message.id, format!("msg_{base}80"));
        let exceeded = Crossing {
            exceeded: true,
            threshold: 100.0,
            ..crossing.clone()
        };
        assert_eq!(exceeded.message_id(&customer), format!("msg_{base}x"));
        assert_eq!(message.kind, "limit.threshold_reached");
        let data = &message.data;
        assert_eq!(data["threshold"], 80);
        assert_eq!(data["percentage"], 85);
        assert_eq!(data["remaining"], 15);
        assert_eq!(data["windowStart"], "2026-11-21T00:00:00.000Z");
        assert_eq!(
            data["limitName"],
            Value::Null,
            "a deleted limit has no name any more"
        );
    }

    /// The script writes the limit and the usage twice: as numbers cut to 14 digits, which
    /// nodes that predate the text read, and in full as text, which wins.
    #[test]
    fn crossings_read_the_full_text_of_their_numbers() {
        let customer = CustomerId::parse("c", "c1").unwrap();
        let queued = |extra: &str| {
            format!(
                r#"{{"exceeded":true,"threshold":100,"limitId":"lmt_1","windowStartMs":0,"windowEndMs":0,"limit":100000.5,"usage":123456.12345679,"atMs":1{extra}}}"#
            )
        };
        let full = queued(r#","limitText":"100000.5","usageText":"123456.123456789""#);
        let crossing: Crossing = serde_json::from_str(&full).unwrap();
        let data = crossing.message(&customer, None).data;
        assert_eq!(data["currentUsage"], 123_456.123_456_789);
        assert_eq!(data["limit"], 100_000.5);
        let older: Crossing = serde_json::from_str(&queued("")).unwrap();
        assert_eq!(
            older.message(&customer, None).data["currentUsage"],
            123_456.123_456_79
        );
    }

    #[test]
    fn payload_formats_the_creation_time() {
        let message = QueuedMessage {
            id: "msg_x".into(),
            kind: "limit.exceeded".into(),
            created_at_ms: 1_795_219_200_000,
            data: json!({"threshold": 100}),
        };
        let payload = message.payload();
        assert!(payload["data"].is_object());
        assert_eq!(payload["createdAt"], "2026-11-21T00:00:00.000Z");
        assert_eq!(payload["type"], "limit.exceeded");
    }
}
