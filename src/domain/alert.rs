//! Alerts: which thresholds a limit watches, and the messages a crossing produces.
//!
//! Detection happens in storage, in the same atomic step that counts (so exactly one writer
//! sees each crossing); this module prepares what storage needs for it and names messages so
//! that every replica gives the same crossing the same ID.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::ids::CustomerId;
use super::period::Window;
use super::time::rfc3339;
use super::usage::ResolvedLimit;

/// The marker of the `limit.exceeded` "threshold" among the percents.
pub const EXCEEDED: &str = "x";

/// What storage needs to detect one limit's crossings.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// `80,100,x`: the limit's thresholds, then exceeded (every limit has that one).
    pub thresholds: String,
    pub limit_value: f64,
    /// When the record of fired thresholds of this window may go; `None` for all-time.
    pub fired_until_ms: Option<i64>,
    /// `{"idBase": ..., "data": {...}}`: the message minus what only the crossing knows.
    pub template: String,
}

/// The stable part of a message ID: the same (limit, customer, window) gives the same base
/// on every replica; the threshold is appended to it.
pub fn message_id_base(limit_id: &str, customer: &CustomerId, window: Option<Window>) -> String {
    let window_start =
        window.map_or_else(|| "all".to_string(), |w| w.start.timestamp().to_string());
    let digest = Sha256::digest(format!("{limit_id}\n{customer}\n{window_start}").as_bytes());
    super::apikey::hex(&digest[..12])
}

pub fn rule(limit: &ResolvedLimit, customer: &CustomerId, window: Option<Window>) -> AlertRule {
    let mut thresholds: Vec<String> = limit
        .limit
        .alert_thresholds
        .iter()
        .map(u8::to_string)
        .collect();
    thresholds.push(EXCEEDED.to_string());
    let template = json!({
        "idBase": message_id_base(&limit.limit.id, customer, window),
        "data": {
            "customerId": customer,
            "limitId": limit.limit.id,
            "limitName": limit.limit.name,
            "meterId": limit.limit.meter_id,
            "limit": limit.limit.limit_value,
            "period": limit.limit.period.as_str(),
            "windowStart": window.map(|w| rfc3339(w.start)),
            "windowEnd": window.map(|w| rfc3339(w.end)),
        }
    });
    AlertRule {
        thresholds: thresholds.join(","),
        limit_value: limit.limit.limit_value.get(),
        fired_until_ms: window.map(|w| w.retain_until().timestamp_millis()),
        template: template.to_string(),
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
        let base = message_id_base("lmt_1", &customer, Some(window));
        assert_eq!(base, message_id_base("lmt_1", &customer, Some(window)));
        assert_ne!(base, message_id_base("lmt_1", &customer, Some(next)));
        assert_ne!(base, message_id_base("lmt_2", &customer, Some(window)));
        assert_eq!(base.len(), 24);
        assert!(base.bytes().all(|b| b.is_ascii_alphanumeric()));
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
        assert_eq!(payload["createdAt"], "2026-11-21T00:00:00.000Z");
        assert_eq!(payload["type"], "limit.exceeded");
    }
}
