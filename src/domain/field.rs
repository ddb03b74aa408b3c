//! Field-level validation shared by every entity: the error that names the offending field,
//! bounded strings, dimension maps and numeric quantities.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A rejected input, naming the field with its JSON path (`events[3].values.tokens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    Missing { field: String },
    Invalid { field: String, reason: String },
}

impl FieldError {
    pub fn missing(field: impl Into<String>) -> Self {
        FieldError::Missing {
            field: field.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn field(&self) -> &str {
        match self {
            FieldError::Missing { field } | FieldError::Invalid { field, .. } => field,
        }
    }

    /// Re-roots the error under `prefix`, e.g. `values` under `events[2]`.
    pub fn within(self, prefix: &str) -> Self {
        let join = |field: String| {
            if field.is_empty() {
                prefix.to_string()
            } else if field.starts_with('[') {
                format!("{prefix}{field}")
            } else {
                format!("{prefix}.{field}")
            }
        };
        match self {
            FieldError::Missing { field } => FieldError::Missing { field: join(field) },
            FieldError::Invalid { field, reason } => FieldError::Invalid {
                field: join(field),
                reason,
            },
        }
    }

    pub fn message(&self) -> String {
        match self {
            FieldError::Missing { field } => format!("`{field}` is required"),
            FieldError::Invalid { field, reason } => format!("`{field}` {reason}"),
        }
    }
}

pub const MAX_NAME_CHARS: usize = 256;
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
pub const MAX_DIMENSIONS: usize = 32;
pub const MAX_DIMENSION_VALUE_CHARS: usize = 256;
pub const MAX_QUANTITY: f64 = 1e15;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Checks a string's length in characters (not bytes): what a user counts.
pub fn bounded_str(field: &str, value: &str, min: usize, max: usize) -> Result<(), FieldError> {
    let chars = value.chars().count();
    if chars < min || chars > max {
        let reason = if min == 0 {
            format!("must be at most {max} characters")
        } else {
            format!("must be {min} to {max} characters")
        };
        return Err(FieldError::invalid(field, reason));
    }
    Ok(())
}

/// Keys of `values` and `dimensions`: `[A-Za-z0-9_]{1,64}`, so they are safe inside storage keys.
pub fn is_map_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Dimension names to values. Ordered, so that equal filters always serialize (and hash) alike.
pub type Dimensions = BTreeMap<String, String>;

pub fn validate_dimensions(field: &str, dimensions: &Dimensions) -> Result<(), FieldError> {
    if dimensions.len() > MAX_DIMENSIONS {
        return Err(FieldError::invalid(
            field,
            format!("must have at most {MAX_DIMENSIONS} entries"),
        ));
    }
    for (key, value) in dimensions {
        if !is_map_key(key) {
            return Err(FieldError::invalid(
                format!("{field}.{key}"),
                "key must match [A-Za-z0-9_]{1,64}",
            ));
        }
        bounded_str(
            &format!("{field}.{key}"),
            value,
            0,
            MAX_DIMENSION_VALUE_CHARS,
        )?;
    }
    Ok(())
}

/// Below this magnitude a double still has a ninth decimal place to round (2^53 / 1e9).
const ROUNDED_BELOW: f64 = 9e6;

/// A total of amounts, to nine decimal places: finer than the 1e-6 the API promises, and what
/// callers mean, since binary fractions do not add up as decimals do (0.1 + 0.2 is
/// 0.30000000000000004, which would refuse a third 0.1 under a limit of 0.3). Totals are
/// rounded before they are compared with a limit or shown. `lua/usage.lua` and
/// `lua/balance_move.lua` round the same way, with the same double operations.
pub fn total(x: f64) -> f64 {
    if x.abs() < ROUNDED_BELOW {
        (x * 1e9 + 0.5).floor() / 1e9
    } else {
        x
    }
}

/// A finite number within ±1e15: event values, limit values, usage.
///
/// Serialized as a JSON integer when it has no fractional part, so `100` stays `100` on the
/// wire instead of becoming `100.0`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Quantity(f64);

impl Quantity {
    pub const ZERO: Quantity = Quantity(0.0);

    pub fn new(field: &str, value: f64) -> Result<Quantity, FieldError> {
        if !value.is_finite() || value.abs() > MAX_QUANTITY {
            return Err(FieldError::invalid(
                field,
                "must be a finite number within ±1e15",
            ));
        }
        Ok(Quantity(value))
    }

    /// For values computed by the gateway itself (sums of valid quantities).
    pub fn from_f64(value: f64) -> Quantity {
        Quantity(value)
    }

    pub fn positive(field: &str, value: f64) -> Result<Quantity, FieldError> {
        let quantity = Quantity::new(field, value)?;
        if value <= 0.0 {
            return Err(FieldError::invalid(field, "must be greater than 0"));
        }
        Ok(quantity)
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_number(self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if !value.is_finite() || value.abs() > MAX_QUANTITY {
            return Err(serde::de::Error::custom(
                "must be a finite number within ±1e15",
            ));
        }
        Ok(Quantity(value))
    }
}

/// Integral values up to 2^53 go out as integers, the rest as floats.
pub fn serialize_number<S: Serializer>(value: f64, serializer: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if value.fract() == 0.0 && value.abs() <= EXACT {
        serializer.serialize_i64(value as i64)
    } else {
        serializer.serialize_f64(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_as_decimals() {
        assert_eq!(0.2 + 0.1, 0.30000000000000004, "what binary fractions do");
        assert_eq!(total(0.2 + 0.1), 0.3);
        assert_eq!(total(-(0.2 + 0.1)), -0.3);
        assert_eq!(total((0..1000).map(|_| 0.001).sum()), 1.0);
        assert_eq!(total(0.000_000_001), 0.000_000_001, "nine places are kept");
        assert_eq!(
            total(1e15 - 0.5),
            1e15 - 0.5,
            "too large to round: unchanged"
        );
        assert_eq!(total(123_456_789.0), 123_456_789.0);
    }

    #[test]
    fn quantity_serializes_integers_without_fraction() {
        let json =
            serde_json::to_string(&[Quantity(100.0), Quantity(0.5), Quantity(-3.0)]).unwrap();
        assert_eq!(json, "[100,0.5,-3]");
    }

    #[test]
    fn quantity_rejects_out_of_range() {
        assert!(Quantity::new("v", 1e15).is_ok());
        assert!(Quantity::new("v", 1.0000001e15).is_err());
        assert!(Quantity::new("v", f64::NAN).is_err());
        assert!(Quantity::positive("v", 0.0).is_err());
    }

    #[test]
    fn map_keys_are_restricted() {
        assert!(is_map_key("model_2"));
        assert!(!is_map_key(""));
        assert!(!is_map_key("a:b"));
        assert!(!is_map_key(&"k".repeat(65)));
    }

    #[test]
    fn errors_are_rerooted_under_a_prefix() {
        let error = FieldError::invalid("values.tokens", "bad").within("events[2]");
        assert_eq!(error.field(), "events[2].values.tokens");
        let error = FieldError::missing("").within("events[0]");
        assert_eq!(error.field(), "events[0]");
    }

    #[test]
    fn dimension_values_are_bounded() {
        let mut dims = Dimensions::new();
        dims.insert("model".into(), "x".repeat(257));
        let error = validate_dimensions("dimensions", &dims).unwrap_err();
        assert_eq!(error.field(), "dimensions.model");
    }
}
