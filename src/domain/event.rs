//! Usage events: what callers record, validated once at the edge.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::field::{
    Dimensions, FieldError, MAX_METADATA_BYTES, Quantity, bounded_str, is_map_key,
    validate_dimensions,
};
use super::ids::CustomerId;
use super::time::{parse_usage_instant, serde_rfc3339};

pub const MAX_VALUES: usize = 32;
/// How far in the future a timestamp may be (clock skew between callers and the gateway).
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// `POST /v1/events/record` body (also the body of consume, and each item of a batch).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEvent {
    pub customer_id: CustomerId,
    #[schema(min_length = 1, max_length = 128)]
    pub event_type: String,
    pub values: Option<BTreeMap<String, Quantity>>,
    pub dimensions: Option<Dimensions>,
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Map<String, Value>>,
    pub timestamp: Option<String>,
    #[schema(min_length = 1, max_length = 256, pattern = r"^[!-~]([\t -~]*[!-~])?$")]
    pub idempotency_key: Option<String>,
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    pub customer_id: CustomerId,
    pub event_type: String,
    pub values: BTreeMap<String, Quantity>,
    pub dimensions: Dimensions,
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
    #[serde(with = "serde_rfc3339")]
    pub timestamp: DateTime<Utc>,
    #[serde(with = "serde_rfc3339")]
    pub received_at: DateTime<Utc>,
    #[serde(skip)]
    pub idempotency_key: Option<IdempotencyKey>,
}

/// What an event is de-duplicated by (per customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyKey {
    /// The caller's own key: `idempotencyKey` or the `Idempotency-Key` header.
    Caller(String),
    /// Event `index` of a batch sent with the `Idempotency-Key` header `batch` that has no
    /// key of its own, so a retried batch counts none of its events twice.
    BatchItem { batch: String, index: usize },
    /// A reservation's commit: a commit retried before its reservation was marked committed
    /// never records twice.
    Commit { reservation_id: String },
    /// A balance movement's own key (credits and debits), beside the customer's event keys.
    Movement(String),
    /// A reservation's `Idempotency-Key`, beside the customer's event keys.
    Reservation(String),
}

impl IdempotencyKey {
    /// The bytes storage hashes into the key's record. A caller's event key is hashed as it
    /// is (as before keys were scoped); every other key starts with 0xFF, which no UTF-8 text
    /// starts with, then names its kind, so no two kinds ever meet.
    pub fn digest_input(&self) -> Cow<'_, [u8]> {
        // Keys and IDs are text without NUL, so a NUL ends each part unambiguously.
        let derived = |kind: &[u8], parts: &[&[u8]]| {
            let mut input = b"\xFF".to_vec();
            input.extend_from_slice(kind);
            for part in parts {
                input.push(0);
                input.extend_from_slice(part);
            }
            Cow::Owned(input)
        };
        match self {
            IdempotencyKey::Caller(key) => Cow::Borrowed(key.as_bytes()),
            IdempotencyKey::BatchItem { batch, index } => {
                derived(b"batch", &[batch.as_bytes(), index.to_string().as_bytes()])
            }
            IdempotencyKey::Commit { reservation_id } => {
                derived(b"commit", &[reservation_id.as_bytes()])
            }
            IdempotencyKey::Movement(key) => derived(b"balance", &[key.as_bytes()]),
            IdempotencyKey::Reservation(key) => derived(b"reservation", &[key.as_bytes()]),
        }
    }
}

/// An idempotency key, whether it comes as the `Idempotency-Key` header or an event's
/// `idempotencyKey`: the two are one key, so both take only what a header carries as it was
/// sent, 1 to 256 printable ASCII characters: spaces and tabs inside it, never at its ends
/// (HTTP drops those from a header).
pub fn check_idempotency_key(field: &str, key: &str) -> Result<(), FieldError> {
    let printable = |c: char| c == '\t' || (' '..='~').contains(&c);
    let padded = key.starts_with([' ', '\t']) || key.ends_with([' ', '\t']);
    if key.is_empty() || key.len() > 256 || !key.chars().all(printable) || padded {
        return Err(FieldError::invalid(
            field,
            "must be 1 to 256 printable ASCII characters, with no space or tab at either end",
        ));
    }
    Ok(())
}

/// An event as its customer's log keeps it: only what the entry's position (time and ID) and
/// the log's key (the customer) do not already say, which halves the log's memory.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoggedEvent<'a> {
    event_type: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "is_empty")]
    values: Cow<'a, BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "is_empty")]
    dimensions: Cow<'a, Dimensions>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    properties: Cow<'a, Map<String, Value>>,
    /// Left out when it is the event's own time (no `timestamp` was sent, nearly always),
    /// which the entry's position says: a quarter of a typical entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_at_ms: Option<i64>,
}

fn is_empty<V>(map: &BTreeMap<String, V>) -> bool {
    map.is_empty()
}

impl Event {
    /// The event's entry in its customer's log (see [`LoggedEvent`]).
    pub fn log_entry(&self) -> String {
        let logged = LoggedEvent {
            event_type: Cow::Borrowed(&self.event_type),
            values: Cow::Borrowed(&self.values),
            dimensions: Cow::Borrowed(&self.dimensions),
            properties: Cow::Borrowed(&self.properties),
            received_at_ms: (self.received_at != self.timestamp)
                .then(|| self.received_at.timestamp_millis()),
        };
        serde_json::to_string(&logged).unwrap_or_else(|_| "{}".into())
    }

    /// Rebuilds a logged event from its entry and what its position and log say. Entries
    /// written before the compact form (the full event JSON) are read too.
    pub fn from_log_entry(
        customer: &CustomerId,
        id: &str,
        timestamp_ms: i64,
        entry: &str,
    ) -> Result<Event, serde_json::Error> {
        let logged: LoggedEvent<'_> = match serde_json::from_str(entry) {
            Ok(logged) => logged,
            Err(error) => return serde_json::from_str(entry).map_err(|_| error),
        };
        let instant = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
        Ok(Event {
            id: id.to_string(),
            customer_id: customer.clone(),
            event_type: logged.event_type.into_owned(),
            values: logged.values.into_owned(),
            dimensions: logged.dimensions.into_owned(),
            properties: logged.properties.into_owned(),
            timestamp: instant(timestamp_ms),
            received_at: instant(logged.received_at_ms.unwrap_or(timestamp_ms)),
            idempotency_key: None,
        })
    }

    /// Validates `input` received at `now`. `header_key` is the `Idempotency-Key` header,
    /// the same key as the body's `idempotencyKey`: both may be given only if they are equal.
    pub fn validate(
        id: String,
        input: NewEvent,
        header_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Event, FieldError> {
        bounded_str("eventType", &input.event_type, 1, 128)?;
        let values = input.values.unwrap_or_default();
        if values.len() > MAX_VALUES {
            return Err(FieldError::invalid(
                "values",
                format!("must have at most {MAX_VALUES} entries"),
            ));
        }
        if let Some(key) = values.keys().find(|key| !is_map_key(key)) {
            return Err(FieldError::invalid(
                format!("values.{key}"),
                "key must match [A-Za-z0-9_]{1,64}",
            ));
        }
        let dimensions = input.dimensions.unwrap_or_default();
        validate_dimensions("dimensions", &dimensions)?;
        let properties = input.properties.unwrap_or_default();
        // Most events carry no properties; only measure those that do.
        let size = match properties.is_empty() {
            true => 2,
            false => serde_json::to_string(&properties).map_or(usize::MAX, |s| s.len()),
        };
        if size > MAX_METADATA_BYTES {
            return Err(FieldError::invalid(
                "properties",
                "must be at most 16 KiB serialized",
            ));
        }
        let timestamp = match &input.timestamp {
            None => now,
            Some(raw) => parse_usage_instant("timestamp", raw)?,
        };
        if timestamp > now + MAX_FUTURE_SKEW {
            return Err(FieldError::invalid(
                "timestamp",
                "must not be more than 5 minutes in the future",
            ));
        }
        let idempotency_key = match (input.idempotency_key, header_key) {
            (Some(body), Some(header)) if body != header => {
                return Err(FieldError::invalid(
                    "idempotencyKey",
                    "differs from the Idempotency-Key header (they are the same key: give one, or both equal)",
                ));
            }
            (body, header) => body.or_else(|| header.map(str::to_string)),
        };
        if let Some(key) = &idempotency_key {
            check_idempotency_key("idempotencyKey", key)?;
        }
        let idempotency_key = idempotency_key.map(IdempotencyKey::Caller);
        Ok(Event {
            id,
            customer_id: input.customer_id,
            event_type: input.event_type,
            values,
            dimensions,
            properties,
            timestamp,
            received_at: now,
            idempotency_key,
        })
    }

    /// Whether the event carries every one of `filters` with the same value.
    pub fn carries(&self, filters: &Dimensions) -> bool {
        filters
            .iter()
            .all(|(key, value)| self.dimensions.get(key) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
    }

    fn input() -> NewEvent {
        serde_json::from_value(serde_json::json!({
            "customerId": "c1", "eventType": "llm.call", "values": {"tokens": 12},
            "dimensions": {"model": "gpt-4"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_header_idempotency_key() {
        let event = Event::validate("evt_1".into(), input(), Some("k1"), now()).unwrap();
        assert_eq!(event.timestamp, now());
        assert_eq!(
            event.idempotency_key,
            Some(IdempotencyKey::Caller("k1".into()))
        );
        assert_eq!(event.values["tokens"].get(), 12.0);
    }

    #[test]
    fn body_and_header_keys_are_one_key() {
        let mut both = input();
        both.idempotency_key = Some("k1".into());
        let event = Event::validate("e".into(), both.clone(), Some("k1"), now()).unwrap();
        assert_eq!(
            event.idempotency_key,
            Some(IdempotencyKey::Caller("k1".into()))
        );
        let error = Event::validate("e".into(), both, Some("k2"), now()).unwrap_err();
        assert_eq!(error.field(), "idempotencyKey");
        assert!(error.message().contains("Idempotency-Key"), "{error:?}");
    }

    #[test]
    fn idempotency_keys_are_what_a_header_can_carry() {
        for key in ["k1", "a b", "tab\tkey", &"x".repeat(256)] {
            assert!(
                check_idempotency_key("idempotencyKey", key).is_ok(),
                "{key}"
            );
        }
        for key in [
            "",
            "clé",
            "new\nline",
            &"x".repeat(257),
            "ab ",
            " ab",
            "\tab",
        ] {
            let error = check_idempotency_key("idempotencyKey", key).unwrap_err();
            assert_eq!(error.field(), "idempotencyKey", "{key}");
        }
    }

    #[test]
    fn derived_batch_keys_never_meet_a_callers_key() {
        let item = |batch: &str, index| IdempotencyKey::BatchItem {
            batch: batch.into(),
            index,
        };
        let input = item("bx1", 3).digest_input().into_owned();
        assert!(String::from_utf8(input.clone()).is_err(), "not a text");
        assert_ne!(input, item("bx1", 4).digest_input().into_owned());
        assert_ne!(input, item("bx", 13).digest_input().into_owned());
        assert_eq!(
            IdempotencyKey::Caller("k".into()).digest_input().as_ref(),
            b"k"
        );
        // Nor do the keys of commits and balance movements, whatever a caller's key says.
        let commit = IdempotencyKey::Commit {
            reservation_id: "rsv_1".into(),
        };
        let movement = IdempotencyKey::Movement("k".into());
        let reservation = IdempotencyKey::Reservation("k".into());
        for key in [&commit, &movement, &reservation] {
            assert!(String::from_utf8(key.digest_input().into_owned()).is_err());
        }
        assert_ne!(commit.digest_input(), movement.digest_input());
        assert_ne!(movement.digest_input(), reservation.digest_input());
    }

    #[test]
    fn future_timestamps_are_refused_past_five_minutes() {
        let mut event = input();
        event.timestamp = Some("2026-11-21T12:05:00Z".into());
        assert!(Event::validate("e".into(), event.clone(), None, now()).is_ok());
        event.timestamp = Some("2026-11-21T12:05:01Z".into());
        let error = Event::validate("e".into(), event, None, now()).unwrap_err();
        assert_eq!(error.field(), "timestamp");
    }

    #[test]
    fn bounds_name_their_field() {
        let mut event = input();
        event.event_type = String::new();
        assert_eq!(
            Event::validate("e".into(), event, None, now())
                .unwrap_err()
                .field(),
            "eventType"
        );
        let mut event = input();
        event.values = Some((0..33).map(|i| (format!("v{i}"), Quantity::ZERO)).collect());
        assert_eq!(
            Event::validate("e".into(), event, None, now())
                .unwrap_err()
                .field(),
            "values"
        );
        let mut event = input();
        event.values = Some(BTreeMap::from([("a.b".to_string(), Quantity::ZERO)]));
        assert_eq!(
            Event::validate("e".into(), event, None, now())
                .unwrap_err()
                .field(),
            "values.a.b"
        );
        let mut event = input();
        event.idempotency_key = Some(String::new());
        assert_eq!(
            Event::validate("e".into(), event, None, now())
                .unwrap_err()
                .field(),
            "idempotencyKey"
        );
    }

    #[test]
    fn log_entries_keep_what_position_and_key_do_not_say() {
        let mut input = input();
        input.properties =
            Some(serde_json::from_value(serde_json::json!({"k": [1, "two"]})).unwrap());
        input.timestamp = Some("2026-11-21T11:59:58.123Z".into());
        let event = Event::validate("evt_1".into(), input, Some("retry-1"), now()).unwrap();
        let entry = event.log_entry();
        assert!(
            !entry.contains("evt_1") && !entry.contains("\"c1\""),
            "{entry}"
        );
        let back = Event::from_log_entry(
            &event.customer_id,
            "evt_1",
            event.timestamp.timestamp_millis(),
            &entry,
        )
        .unwrap();
        assert_eq!(
            Event {
                idempotency_key: Some(IdempotencyKey::Caller("retry-1".into())),
                ..back
            },
            event
        );
        // Empty maps are left out, and come back empty.
        let bare = Event::validate(
            "evt_2".into(),
            serde_json::from_value(serde_json::json!({"customerId": "c1", "eventType": "x"}))
                .unwrap(),
            None,
            now(),
        )
        .unwrap();
        // Received when it happened (no `timestamp` sent): the position says when.
        assert_eq!(bare.log_entry(), "{\"eventType\":\"x\"}");
        let back = Event::from_log_entry(
            &bare.customer_id,
            "evt_2",
            bare.timestamp.timestamp_millis(),
            &bare.log_entry(),
        )
        .unwrap();
        assert_eq!(back, bare);
    }

    #[test]
    fn log_entries_that_name_their_arrival_are_still_read() {
        let event = Event::validate("evt_1".into(), input(), None, now()).unwrap();
        let at = now().timestamp_millis();
        let entry = format!(
            "{{\"eventType\":\"llm.call\",\"values\":{{\"tokens\":12}},\"dimensions\":{{\"model\":\"gpt-4\"}},\"receivedAtMs\":{at}}}"
        );
        let back = Event::from_log_entry(&event.customer_id, "evt_1", at, &entry).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn log_entries_of_the_full_form_are_still_read() {
        let event = Event::validate("evt_1".into(), input(), None, now()).unwrap();
        let full = serde_json::to_string(&event).unwrap();
        let back =
            Event::from_log_entry(&event.customer_id, "evt_1", now().timestamp_millis(), &full)
                .unwrap();
        assert_eq!(back, event);
        assert!(Event::from_log_entry(&event.customer_id, "evt_1", 0, "{\"nope\":1}").is_err());
    }
}
