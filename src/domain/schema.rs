//! OpenAPI schemas of the value types whose wire form serde derives cannot describe.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::customer::BillingCycleStart;
use super::field::Quantity;
use super::ids::CustomerId;
use super::meter::MeterField;
use super::period::Period;

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

impl PartialSchema for CustomerId {
    fn schema() -> RefOr<Schema> {
        string("The caller's own customer ID; `default` is reserved.")
            .pattern(Some("^[A-Za-z0-9_.:@-]{1,128}$"))
            .into()
    }
}
impl ToSchema for CustomerId {}

impl PartialSchema for Quantity {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .description(Some("A finite number within ±1e15."))
            .minimum(Some(-1e15))
            .maximum(Some(1e15))
            .into()
    }
}
impl ToSchema for Quantity {}

impl PartialSchema for Period {
    fn schema() -> RefOr<Schema> {
        string("A limit's period, in the customer's timezone and billing cycle.")
            .enum_values(Some(Period::ALL.iter().map(|p| p.as_str())))
            .into()
    }
}
impl ToSchema for Period {}

impl PartialSchema for BillingCycleStart {
    fn schema() -> RefOr<Schema> {
        string("A date (`2026-03-15`) or an RFC 3339 date-time whose day is read in the customer's timezone.").into()
    }
}
impl ToSchema for BillingCycleStart {}

impl PartialSchema for MeterField {
    fn schema() -> RefOr<Schema> {
        string("`values.<key>`, or `*` (every event) for `count`.").into()
    }
}
impl ToSchema for MeterField {}
