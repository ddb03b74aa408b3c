//! Meters: which events count, and how (sum / count / max / latest of one field).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::field::{
    Dimensions, FieldError, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, bounded_str, is_map_key,
    validate_dimensions,
};
use super::time::serde_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Sum,
    Count,
    Max,
    Latest,
}

/// Which event value a meter reads: `values.<key>`, or `*` (every event) for `count`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MeterField {
    EveryEvent,
    Value(String),
}

impl MeterField {
    pub fn parse(raw: &str, aggregation: Aggregation) -> Result<MeterField, FieldError> {
        if raw == "*" {
            return if aggregation == Aggregation::Count {
                Ok(MeterField::EveryEvent)
            } else {
                Err(FieldError::invalid(
                    "field",
                    "`*` is only allowed with aggregation `count`",
                ))
            };
        }
        match raw.strip_prefix("values.") {
            Some(key) if is_map_key(key) => Ok(MeterField::Value(key.to_string())),
            _ => Err(FieldError::invalid(
                "field",
                "must be `values.<key>` with key [A-Za-z0-9_]{1,64}, or `*` for count",
            )),
        }
    }

    pub fn as_wire(&self) -> String {
        match self {
            MeterField::EveryEvent => "*".to_string(),
            MeterField::Value(key) => format!("values.{key}"),
        }
    }
}

impl Serialize for MeterField {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_wire())
    }
}

impl<'de> Deserialize<'de> for MeterField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        if raw == "*" {
            return Ok(MeterField::EveryEvent);
        }
        MeterField::parse(&raw, Aggregation::Sum).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// Which events a meter sees: an event matches when its type equals `eventType` (if given)
/// and it carries every listed dimension with the same value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventFilter {
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub dimensions: Dimensions,
}

impl EventFilter {
    fn validate(&self) -> Result<(), FieldError> {
        if let Some(event_type) = &self.event_type {
            bounded_str("eventFilter.eventType", event_type, 1, 128)?;
        }
        validate_dimensions("eventFilter.dimensions", &self.dimensions)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Meter {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub aggregation: Aggregation,
    pub field: MeterField,
    pub event_filter: EventFilter,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/meters` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMeter {
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    pub description: Option<String>,
    pub aggregation: Aggregation,
    pub field: String,
    pub event_filter: Option<EventFilter>,
}

/// `PUT /v1/meters/{id}` body. The counting fields may be repeated unchanged (so a client can
/// send back what it read) but not changed: usage already counted would not match them.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub aggregation: Option<Aggregation>,
    pub field: Option<String>,
    pub event_filter: Option<EventFilter>,
}

fn validate_description(description: &Option<String>) -> Result<(), FieldError> {
    match description {
        Some(text) => bounded_str("description", text, 0, MAX_DESCRIPTION_CHARS),
        None => Ok(()),
    }
}

impl Meter {
    pub fn create(id: String, input: NewMeter, now: DateTime<Utc>) -> Result<Meter, FieldError> {
        bounded_str("name", &input.name, 1, MAX_NAME_CHARS)?;
        validate_description(&input.description)?;
        let field = MeterField::parse(&input.field, input.aggregation)?;
        let event_filter = input.event_filter.unwrap_or_default();
        event_filter.validate()?;
        Ok(Meter {
            id,
            name: input.name,
            description: input.description,
            aggregation: input.aggregation,
            field,
            event_filter,
            created_at: now,
            updated_at: now,
        })
    }

    pub fn apply(&mut self, patch: MeterPatch, now: DateTime<Utc>) -> Result<(), FieldError> {
        const IMMUTABLE: &str = "cannot be changed; create a new meter instead";
        if patch.aggregation.is_some_and(|a| a != self.aggregation) {
            return Err(FieldError::invalid("aggregation", IMMUTABLE));
        }
        if let Some(raw) = &patch.field
            && MeterField::parse(raw, self.aggregation)? != self.field
        {
            return Err(FieldError::invalid("field", IMMUTABLE));
        }
        if patch
            .event_filter
            .as_ref()
            .is_some_and(|f| *f != self.event_filter)
        {
            return Err(FieldError::invalid("eventFilter", IMMUTABLE));
        }
        if let Some(name) = &patch.name {
            bounded_str("name", name, 1, MAX_NAME_CHARS)?;
        }
        validate_description(&patch.description)?;
        if let Some(name) = patch.name {
            self.name = name;
        }
        if patch.description.is_some() {
            self.description = patch.description;
        }
        self.updated_at = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_meter(aggregation: Aggregation, field: &str) -> NewMeter {
        NewMeter {
            name: "tokens".into(),
            description: None,
            aggregation,
            field: field.into(),
            event_filter: None,
        }
    }

    #[test]
    fn star_field_only_for_count() {
        let now = Utc::now();
        assert!(Meter::create("m".into(), new_meter(Aggregation::Count, "*"), now).is_ok());
        let error = Meter::create("m".into(), new_meter(Aggregation::Sum, "*"), now).unwrap_err();
        assert_eq!(error.field(), "field");
        let error =
            Meter::create("m".into(), new_meter(Aggregation::Sum, "tokens"), now).unwrap_err();
        assert_eq!(error.field(), "field");
    }

    #[test]
    fn counting_fields_are_immutable() {
        let now = Utc::now();
        let mut meter = Meter::create(
            "m".into(),
            new_meter(Aggregation::Sum, "values.tokens"),
            now,
        )
        .unwrap();
        let same = MeterPatch {
            aggregation: Some(Aggregation::Sum),
            field: Some("values.tokens".into()),
            name: Some("renamed".into()),
            ..Default::default()
        };
        meter.apply(same, now).unwrap();
        assert_eq!(meter.name, "renamed");
        let changed = MeterPatch {
            field: Some("values.other".into()),
            ..Default::default()
        };
        assert_eq!(meter.apply(changed, now).unwrap_err().field(), "field");
        let filter = MeterPatch {
            event_filter: Some(EventFilter {
                event_type: Some("x".into()),
                dimensions: Dimensions::new(),
            }),
            ..Default::default()
        };
        assert_eq!(meter.apply(filter, now).unwrap_err().field(), "eventFilter");
    }

    #[test]
    fn wire_shape_round_trips() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        let meter = Meter::create(
            "m".into(),
            new_meter(Aggregation::Max, "values.latency_ms"),
            now,
        )
        .unwrap();
        let json = serde_json::to_value(&meter).unwrap();
        assert_eq!(json["field"], "values.latency_ms");
        assert_eq!(json["aggregation"], "max");
        assert_eq!(serde_json::from_value::<Meter>(json).unwrap(), meter);
    }
}
