//! Reservations: an estimate held against limits until the actual cost is known.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::event::NewEvent;
use super::field::{Dimensions, FieldError, Quantity};
use super::ids::CustomerId;
use super::time::serde_rfc3339;
use super::usage::CounterId;

pub const DEFAULT_TTL_SECONDS: i64 = 300;
pub const MAX_TTL_SECONDS: i64 = 3600;

/// `POST /v1/reservations` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewReservation {
    pub customer_id: CustomerId,
    #[schema(min_length = 1, max_length = 128)]
    pub event_type: String,
    /// The estimate: each value ≥ 0.
    pub values: BTreeMap<String, Quantity>,
    pub dimensions: Option<Dimensions>,
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_seconds: Option<i64>,
}

impl NewReservation {
    /// The event this reservation estimates. An estimate is never negative: a negative hold
    /// would add room to every limit it touches, letting other consumes pass the limit. (A
    /// recorded or committed negative value is a correction of past usage, and stays allowed.)
    pub fn event_input(&self) -> Result<NewEvent, FieldError> {
        if let Some((key, _)) = self.values.iter().find(|(_, v)| v.get() < 0.0) {
            return Err(FieldError::invalid(
                format!("values.{key}"),
                "an estimate must not be negative",
            ));
        }
        Ok(NewEvent {
            customer_id: self.customer_id.clone(),
            event_type: self.event_type.clone(),
            values: Some(self.values.clone()),
            dimensions: self.dimensions.clone(),
            properties: None,
            timestamp: None,
            idempotency_key: None,
        })
    }
}

/// `POST /v1/reservations/{id}/commit` body.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitReservation {
    pub values: Option<BTreeMap<String, Quantity>>,
}

/// `POST /v1/reservations/{id}/extend` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtendReservation {
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_seconds: i64,
}

pub fn parse_ttl(field: &str, ttl: Option<i64>) -> Result<i64, FieldError> {
    match ttl.unwrap_or(DEFAULT_TTL_SECONDS) {
        ttl @ 1..=MAX_TTL_SECONDS => Ok(ttl),
        _ => Err(FieldError::invalid(
            field,
            format!("must be an integer from 1 to {MAX_TTL_SECONDS}"),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    Held,
    Committed,
    Released,
    Expired,
}

impl ReservationStatus {
    /// The stored status with expiry applied: a hold past its time is expired.
    pub fn at(stored: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> ReservationStatus {
        match stored {
            "committed" => ReservationStatus::Committed,
            "released" => ReservationStatus::Released,
            _ if now >= expires_at => ReservationStatus::Expired,
            _ => ReservationStatus::Held,
        }
    }
}

/// A reservation as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub id: String,
    pub customer_id: CustomerId,
    pub event_type: String,
    pub values: BTreeMap<String, Quantity>,
    pub dimensions: Dimensions,
    pub status: ReservationStatus,
    #[serde(with = "serde_rfc3339")]
    pub expires_at: DateTime<Utc>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
}

impl Reservation {
    /// The event that settles this reservation, with the actual `values`.
    pub fn event_input(&self, values: BTreeMap<String, Quantity>) -> NewEvent {
        NewEvent {
            customer_id: self.customer_id.clone(),
            event_type: self.event_type.clone(),
            values: Some(values),
            dimensions: Some(self.dimensions.clone()),
            properties: None,
            timestamp: None,
            idempotency_key: None,
        }
    }
}

/// A hold on one counter; it never outlives the counter's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub counter: CounterId,
    pub window_end_ms: Option<i64>,
}

impl Hold {
    pub fn expires_at_ms(&self, reservation_expires_ms: i64) -> i64 {
        self.window_end_ms.map_or(reservation_expires_ms, |end| {
            end.min(reservation_expires_ms)
        })
    }
}

/// What storage keeps: the reservation and where it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredReservationDoc {
    pub reservation: Reservation,
    pub holds: Vec<Hold>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ttl_defaults_and_bounds() {
        assert_eq!(parse_ttl("ttlSeconds", None), Ok(300));
        assert_eq!(parse_ttl("ttlSeconds", Some(3600)), Ok(3600));
        assert!(parse_ttl("ttlSeconds", Some(0)).is_err());
        assert!(parse_ttl("ttlSeconds", Some(3601)).is_err());
    }

    #[test]
    fn estimates_are_never_negative() {
        let reservation = |tokens: f64| NewReservation {
            customer_id: CustomerId::parse("customerId", "c").unwrap(),
            event_type: "llm".into(),
            values: BTreeMap::from([
                ("calls".to_string(), Quantity::from_f64(1.0)),
                ("tokens".to_string(), Quantity::from_f64(tokens)),
            ]),
            dimensions: None,
            ttl_seconds: None,
        };
        assert!(reservation(0.0).event_input().is_ok());
        assert!(reservation(5.0).event_input().is_ok());
        let error = reservation(-1000.0).event_input().unwrap_err();
        assert_eq!(error.field(), "values.tokens");
    }

    #[test]
    fn status_applies_expiry_to_held_only() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            ReservationStatus::at("held", at, at - chrono::TimeDelta::seconds(1)),
            ReservationStatus::Held
        );
        assert_eq!(
            ReservationStatus::at("held", at, at),
            ReservationStatus::Expired
        );
        assert_eq!(
            ReservationStatus::at("committed", at, at),
            ReservationStatus::Committed
        );
    }

    #[test]
    fn holds_never_outlive_their_window() {
        let hold = Hold {
            counter: CounterId {
                meter_id: "m".into(),
                filters_hash: "_".into(),
                period: crate::domain::period::Period::Minute,
                window_start: Some(0),
            },
            window_end_ms: Some(60_000),
        };
        assert_eq!(hold.expires_at_ms(300_000), 60_000);
        assert_eq!(hold.expires_at_ms(30_000), 30_000);
    }
}
