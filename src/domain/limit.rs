//! Limits: a cap on one meter per customer per period, optionally narrowed by dimensions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::field::{
    Dimensions, FieldError, MAX_NAME_CHARS, Quantity, bounded_str, validate_dimensions,
};
use super::ids::CustomerId;
use super::meter::Meter;
use super::period::Period;
use super::time::serde_rfc3339;

/// The decision a limit gives when storage cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    pub id: String,
    pub name: String,
    pub meter_id: String,
    pub limit_value: Quantity,
    #[serde(with = "period_name")]
    pub period: Period,
    /// `None` makes a default limit: it applies to every customer, counted per customer.
    pub customer_id: Option<CustomerId>,
    pub dimension_filters: Dimensions,
    pub alert_thresholds: Vec<u8>,
    pub fail_mode: FailMode,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/limits` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewLimit {
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    pub meter_id: String,
    pub limit_value: f64,
    #[serde(with = "period_name")]
    pub period: Period,
    #[serde(default)]
    pub customer_id: Option<CustomerId>,
    pub dimension_filters: Option<Dimensions>,
    /// Read as numbers: `50.0` is the integer 50, as JSON Schema's `integer` has it.
    #[schema(value_type = Option<Vec<i64>>)]
    pub alert_thresholds: Option<Vec<f64>>,
    pub fail_mode: Option<FailMode>,
}

/// `PUT /v1/limits/{id}` body. `meterId` and `customerId` may be repeated unchanged, not changed.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitPatch {
    pub name: Option<String>,
    pub meter_id: Option<String>,
    pub limit_value: Option<f64>,
    #[serde(default, with = "period_name::option")]
    pub period: Option<Period>,
    pub customer_id: Option<CustomerId>,
    pub dimension_filters: Option<Dimensions>,
    /// Read as numbers: `50.0` is the integer 50, as JSON Schema's `integer` has it.
    #[schema(value_type = Option<Vec<i64>>)]
    pub alert_thresholds: Option<Vec<f64>>,
    pub fail_mode: Option<FailMode>,
}

const MAX_THRESHOLDS: usize = 10;

fn parse_thresholds(raw: Vec<f64>) -> Result<Vec<u8>, FieldError> {
    if raw.len() > MAX_THRESHOLDS {
        return Err(FieldError::invalid(
            "alertThresholds",
            format!("must have at most {MAX_THRESHOLDS} entries"),
        ));
    }
    let mut thresholds = Vec::with_capacity(raw.len());
    for (index, value) in raw.into_iter().enumerate() {
        match value {
            1.0..=100.0 if value.fract() == 0.0 => thresholds.push(value as u8),
            _ => {
                return Err(FieldError::invalid(
                    format!("alertThresholds[{index}]"),
                    "must be an integer from 1 to 100",
                ));
            }
        }
    }
    thresholds.sort_unstable();
    thresholds.dedup();
    Ok(thresholds)
}

/// A limit's own filters must not contradict its meter's: such a limit could never count.
pub(super) fn check_filters(meter: &Meter, filters: &Dimensions) -> Result<(), FieldError> {
    validate_dimensions("dimensionFilters", filters)?;
    for (key, value) in filters {
        if meter
            .event_filter
            .dimensions
            .get(key)
            .is_some_and(|v| v != value)
        {
            return Err(FieldError::invalid(
                format!("dimensionFilters.{key}"),
                "contradicts the meter's eventFilter",
            ));
        }
    }
    Ok(())
}

impl Limit {
    pub fn create(
        id: String,
        input: NewLimit,
        meter: &Meter,
        now: DateTime<Utc>,
    ) -> Result<Limit, FieldError> {
        bounded_str("name", &input.name, 1, MAX_NAME_CHARS)?;
        let limit_value = Quantity::positive("limitValue", input.limit_value)?;
        let dimension_filters = input.dimension_filters.unwrap_or_default();
        check_filters(meter, &dimension_filters)?;
        let alert_thresholds = parse_thresholds(input.alert_thresholds.unwrap_or_default())?;
        Ok(Limit {
            id,
            name: input.name,
            meter_id: meter.id.clone(),
            limit_value,
            period: input.period,
            customer_id: input.customer_id,
            dimension_filters,
            alert_thresholds,
            fail_mode: input.fail_mode.unwrap_or_default(),
            created_at: now,
            updated_at: now,
        })
    }

    pub fn apply(
        &mut self,
        patch: LimitPatch,
        meter: &Meter,
        now: DateTime<Utc>,
    ) -> Result<(), FieldError> {
        const FIXED: &str = "cannot be changed; create a new limit instead";
        if patch.meter_id.as_ref().is_some_and(|m| *m != self.meter_id) {
            return Err(FieldError::invalid("meterId", FIXED));
        }
        if patch.customer_id.is_some() && patch.customer_id != self.customer_id {
            return Err(FieldError::invalid("customerId", FIXED));
        }
        let mut next = self.clone();
        if let Some(name) = patch.name {
            bounded_str("name", &name, 1, MAX_NAME_CHARS)?;
            next.name = name;
        }
        if let Some(value) = patch.limit_value {
            next.limit_value = Quantity::positive("limitValue", value)?;
        }
        if let Some(period) = patch.period {
            next.period = period;
        }
        if let Some(filters) = patch.dimension_filters {
            check_filters(meter, &filters)?;
            next.dimension_filters = filters;
        }
        if let Some(thresholds) = patch.alert_thresholds {
            next.alert_thresholds = parse_thresholds(thresholds)?;
        }
        if let Some(fail_mode) = patch.fail_mode {
            next.fail_mode = fail_mode;
        }
        next.updated_at = now;
        *self = next;
        Ok(())
    }

    /// The dimensions an event must carry to count toward this limit: the meter's filter
    /// plus the limit's own.
    pub fn effective_filters(&self, meter: &Meter) -> Dimensions {
        let mut filters = meter.event_filter.dimensions.clone();
        filters.extend(
            self.dimension_filters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        filters
    }
}

/// Periods travel by their wire names (`all_time`).
pub(crate) mod period_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::period::Period;

    const EXPECTED: &str = "must be one of minute, hour, day, week, month, annual, all_time";

    pub fn serialize<S: Serializer>(period: &Period, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(period.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Period, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Period::parse(&raw).ok_or_else(|| serde::de::Error::custom(EXPECTED))
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Period>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(raw) => Period::parse(&raw)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(EXPECTED)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::meter::{Aggregation, NewMeter};

    fn meter_with_filter(key: &str, value: &str) -> Meter {
        let mut filter = crate::domain::meter::EventFilter::default();
        filter.dimensions.insert(key.into(), value.into());
        let input = NewMeter {
            name: "m".into(),
            description: None,
            aggregation: Aggregation::Sum,
            field: "values.tokens".into(),
            event_filter: Some(filter),
        };
        Meter::create("mtr_1".into(), input, Utc::now()).unwrap()
    }

    fn new_limit() -> NewLimit {
        NewLimit {
            name: "daily".into(),
            meter_id: "mtr_1".into(),
            limit_value: 100.0,
            period: Period::Day,
            customer_id: None,
            dimension_filters: None,
            alert_thresholds: Some(vec![100.0, 80.0, 80.0]),
            fail_mode: None,
        }
    }

    #[test]
    fn thresholds_are_sorted_deduplicated_and_bounded() {
        let meter = meter_with_filter("region", "eu");
        let limit = Limit::create("l".into(), new_limit(), &meter, Utc::now()).unwrap();
        assert_eq!(limit.alert_thresholds, vec![80, 100]);
        let mut input = new_limit();
        input.alert_thresholds = Some(vec![50.0, 101.0]);
        let error = Limit::create("l".into(), input, &meter, Utc::now()).unwrap_err();
        assert_eq!(error.field(), "alertThresholds[1]");
        let mut input = new_limit();
        input.alert_thresholds = Some(vec![12.5]);
        let error = Limit::create("l".into(), input, &meter, Utc::now()).unwrap_err();
        assert_eq!(error.field(), "alertThresholds[0]", "a percent is whole");
    }

    #[test]
    fn effective_filters_join_meter_and_limit() {
        let meter = meter_with_filter("region", "eu");
        let mut input = new_limit();
        input.dimension_filters = Some(Dimensions::from([("model".into(), "gpt-4".into())]));
        let limit = Limit::create("l".into(), input, &meter, Utc::now()).unwrap();
        let filters = limit.effective_filters(&meter);
        assert_eq!(filters.len(), 2);
        assert_eq!(filters["region"], "eu");
        let mut input = new_limit();
        input.dimension_filters = Some(Dimensions::from([("region".into(), "us".into())]));
        let error = Limit::create("l".into(), input, &meter, Utc::now()).unwrap_err();
        assert_eq!(error.field(), "dimensionFilters.region");
    }

    #[test]
    fn limit_value_must_be_positive_and_fixed_fields_stay() {
        let meter = meter_with_filter("region", "eu");
        let mut limit = Limit::create("l".into(), new_limit(), &meter, Utc::now()).unwrap();
        let patch = LimitPatch {
            limit_value: Some(0.0),
            ..Default::default()
        };
        assert_eq!(
            limit.apply(patch, &meter, Utc::now()).unwrap_err().field(),
            "limitValue"
        );
        let patch = LimitPatch {
            meter_id: Some("mtr_2".into()),
            ..Default::default()
        };
        assert_eq!(
            limit.apply(patch, &meter, Utc::now()).unwrap_err().field(),
            "meterId"
        );
        let patch = LimitPatch {
            limit_value: Some(250.0),
            period: Some(Period::Month),
            ..Default::default()
        };
        limit.apply(patch, &meter, Utc::now()).unwrap();
        assert_eq!(limit.limit_value.get(), 250.0);
        assert_eq!(limit.period, Period::Month);
    }
}
