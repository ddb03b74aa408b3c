//! Customers: the caller's own IDs, with the timezone and billing anchor that shape their windows.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::field::{FieldError, MAX_METADATA_BYTES, MAX_NAME_CHARS, bounded_str};
use super::ids::CustomerId;
use super::period::BillingAnchor;
use super::time::{rfc3339, serde_rfc3339};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: CustomerId,
    pub name: Option<String>,
    pub email: Option<String>,
    #[serde(with = "tz_name")]
    #[schema(value_type = String, example = "America/New_York")]
    pub timezone: Tz,
    pub billing_cycle_start: BillingCycleStart,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/customers` body (`externalId` is an alias of `id`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCustomer {
    #[serde(alias = "externalId")]
    pub id: CustomerId,
    #[schema(max_length = 256)]
    pub name: Option<String>,
    #[schema(min_length = 3, max_length = 256)]
    pub email: Option<String>,
    pub timezone: Option<String>,
    pub billing_cycle_start: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

impl NewCustomer {
    pub fn into_parts(self) -> (CustomerId, CustomerPatch) {
        let patch = CustomerPatch {
            name: self.name,
            email: self.email,
            timezone: self.timezone,
            billing_cycle_start: self.billing_cycle_start,
            metadata: self.metadata,
        };
        (self.id, patch)
    }
}

/// `PUT /v1/customers/{id}` body: every field optional; absent or `null` leaves it unchanged.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomerPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub timezone: Option<String>,
    pub billing_cycle_start: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

impl Customer {
    /// A customer created implicitly (by recording usage, or by a limit naming it).
    pub fn with_defaults(id: CustomerId, default_timezone: Tz, now: DateTime<Utc>) -> Customer {
        Customer {
            id,
            name: None,
            email: None,
            timezone: default_timezone,
            billing_cycle_start: BillingCycleStart::Instant(now),
            metadata: Map::new(),
            created_at: now,
            updated_at: now,
        }
    }

    pub fn create(
        id: CustomerId,
        patch: CustomerPatch,
        default_timezone: Tz,
        now: DateTime<Utc>,
    ) -> Result<Customer, FieldError> {
        let mut customer = Customer::with_defaults(id, default_timezone, now);
        customer.apply(patch, now)?;
        Ok(customer)
    }

    /// Applies a validated patch; on error the customer is left untouched.
    pub fn apply(&mut self, patch: CustomerPatch, now: DateTime<Utc>) -> Result<(), FieldError> {
        let mut next = self.clone();
        if let Some(name) = patch.name {
            bounded_str("name", &name, 0, MAX_NAME_CHARS)?;
            next.name = Some(name);
        }
        if let Some(email) = patch.email {
            bounded_str("email", &email, 3, MAX_NAME_CHARS)?;
            if !email.contains('@') || email.chars().any(char::is_whitespace) {
                return Err(FieldError::invalid("email", "must be an email address"));
            }
            next.email = Some(email);
        }
        if let Some(timezone) = patch.timezone {
            next.timezone = parse_timezone("timezone", &timezone)?;
        }
        if let Some(start) = patch.billing_cycle_start {
            next.billing_cycle_start = BillingCycleStart::parse(&start).ok_or_else(|| {
                FieldError::invalid(
                    "billingCycleStart",
                    "must be a date (2026-03-15) or an RFC 3339 date-time",
                )
            })?;
        }
        if let Some(metadata) = patch.metadata {
            let size = serde_json::to_string(&metadata).map_or(usize::MAX, |s| s.len());
            if size > MAX_METADATA_BYTES {
                return Err(FieldError::invalid(
                    "metadata",
                    "must be at most 16 KiB serialized",
                ));
            }
            next.metadata = metadata;
        }
        next.updated_at = now;
        *self = next;
        Ok(())
    }

    pub fn billing_anchor(&self) -> BillingAnchor {
        self.billing_cycle_start.anchor(self.timezone)
    }
}

pub fn parse_timezone(field: &str, raw: &str) -> Result<Tz, FieldError> {
    raw.parse::<Tz>().map_err(|_| {
        FieldError::invalid(
            field,
            "must be an IANA timezone name, e.g. America/New_York",
        )
    })
}

/// Start of the billing cycle as the caller gave it: a calendar date, or an instant whose
/// day of month is read in the customer's timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingCycleStart {
    Date(NaiveDate),
    Instant(DateTime<Utc>),
}

impl BillingCycleStart {
    pub fn parse(raw: &str) -> Option<BillingCycleStart> {
        if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            return Some(BillingCycleStart::Date(date));
        }
        DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|at| BillingCycleStart::Instant(at.with_timezone(&Utc)))
    }

    pub fn anchor(self, timezone: Tz) -> BillingAnchor {
        match self {
            BillingCycleStart::Date(date) => {
                use chrono::Datelike;
                BillingAnchor::new(date.month(), date.day())
                    .expect("a calendar date is always a valid anchor")
            }
            BillingCycleStart::Instant(at) => BillingAnchor::from_instant(at, timezone),
        }
    }
}

impl Serialize for BillingCycleStart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BillingCycleStart::Date(date) => serializer.collect_str(&date.format("%Y-%m-%d")),
            BillingCycleStart::Instant(at) => serializer.serialize_str(&rfc3339(*at)),
        }
    }
}

impl<'de> Deserialize<'de> for BillingCycleStart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        BillingCycleStart::parse(&raw)
            .ok_or_else(|| serde::de::Error::custom("invalid billingCycleStart"))
    }
}

pub(crate) mod tz_name {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Tz, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse::<Tz>().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 10, 30, 0).unwrap()
    }

    fn id(raw: &str) -> CustomerId {
        CustomerId::parse("id", raw).unwrap()
    }

    #[test]
    fn defaults_anchor_on_creation_day_in_default_zone() {
        let customer = Customer::with_defaults(id("c1"), chrono_tz::Asia::Tokyo, now());
        assert_eq!(
            customer.billing_anchor(),
            BillingAnchor::new(11, 21).unwrap()
        );
    }

    #[test]
    fn date_time_anchor_takes_local_day() {
        let patch = CustomerPatch {
            timezone: Some("America/Los_Angeles".into()),
            billing_cycle_start: Some("2026-03-15T03:00:00Z".into()),
            ..Default::default()
        };
        let customer = Customer::create(id("c1"), patch, Tz::UTC, now()).unwrap();
        assert_eq!(
            customer.billing_anchor(),
            BillingAnchor::new(3, 14).unwrap()
        );
    }

    #[test]
    fn date_anchor_is_kept_as_date() {
        let patch = CustomerPatch {
            billing_cycle_start: Some("2026-01-31".into()),
            ..Default::default()
        };
        let customer = Customer::create(id("c1"), patch, Tz::UTC, now()).unwrap();
        assert_eq!(
            customer.billing_anchor(),
            BillingAnchor::new(1, 31).unwrap()
        );
        let json = serde_json::to_value(&customer).unwrap();
        assert_eq!(json["billingCycleStart"], "2026-01-31");
        let back: Customer = serde_json::from_value(json).unwrap();
        assert_eq!(back, customer);
    }

    #[test]
    fn bad_fields_are_named_and_leave_customer_untouched() {
        let mut customer = Customer::with_defaults(id("c1"), Tz::UTC, now());
        let before = customer.clone();
        let patch = CustomerPatch {
            name: Some("ok".into()),
            timezone: Some("Mars/Olympus".into()),
            ..Default::default()
        };
        let error = customer.apply(patch, now()).unwrap_err();
        assert_eq!(error.field(), "timezone");
        assert_eq!(customer, before);
        let patch = CustomerPatch {
            billing_cycle_start: Some("2026-02-30".into()),
            ..Default::default()
        };
        assert_eq!(
            customer.apply(patch, now()).unwrap_err().field(),
            "billingCycleStart"
        );
    }
}
