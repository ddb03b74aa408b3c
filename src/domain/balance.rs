//! Balances: prepaid credits per customer, moved by credits and debits, and optionally debited
//! by every event a meter counts.
//!
//! Storage keeps what a balance has spent (debits minus credits, initial balance included) as
//! one all-time counter, so that metered debits ride the same atomic counting step as limits:
//! a debit of `v` fits while `spent + held + v ≤ −minimumBalance`, the shape every sum limit
//! already has.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::field::{
    Dimensions, FieldError, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, Quantity, bounded_str, total,
    validate_dimensions,
};
use super::ids::CustomerId;
use super::meter::{Aggregation, Meter};
use super::time::serde_rfc3339;

const MAX_UNIT_CHARS: usize = 64;
const DEFAULT_UNIT: &str = "credits";

/// A balance as configuration stores it. Its amount lives in storage, next to its customer's
/// counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub id: String,
    pub customer_id: CustomerId,
    pub name: String,
    pub unit: String,
    pub minimum_balance: Quantity,
    /// With `meter_id`: only events carrying these dimensions are debited.
    pub dimension_filters: Dimensions,
    /// Every event this meter counts (and the filters match) debits its contribution.
    pub meter_id: Option<String>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/balances` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewBalance {
    pub customer_id: CustomerId,
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    /// Default `credits`.
    pub unit: Option<String>,
    /// Default 0; recorded as the first credit when above 0.
    pub initial_balance: Option<f64>,
    /// Debits may not take the balance below it (default 0; negative allows an overdraft).
    pub minimum_balance: Option<f64>,
    pub dimension_filters: Option<Dimensions>,
    pub meter_id: Option<String>,
}

/// `PUT /v1/balances/{id}` body: a partial update. The amount moves only by credits and
/// debits; `customerId`, `meterId` and `dimensionFilters` may be repeated unchanged, not changed.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalancePatch {
    pub name: Option<String>,
    pub unit: Option<String>,
    pub minimum_balance: Option<f64>,
    pub customer_id: Option<CustomerId>,
    pub meter_id: Option<String>,
    pub dimension_filters: Option<Dimensions>,
}

impl Balance {
    /// A new balance and its initial amount. `meter` is the meter named by `meterId`.
    pub fn create(
        id: String,
        input: NewBalance,
        meter: Option<&Meter>,
        now: DateTime<Utc>,
    ) -> Result<(Balance, f64), FieldError> {
        bounded_str("name", &input.name, 1, MAX_NAME_CHARS)?;
        let unit = input.unit.unwrap_or_else(|| DEFAULT_UNIT.to_string());
        bounded_str("unit", &unit, 1, MAX_UNIT_CHARS)?;
        let initial = Quantity::new("initialBalance", input.initial_balance.unwrap_or(0.0))?;
        if initial.get() < 0.0 {
            return Err(FieldError::invalid(
                "initialBalance",
                "must not be negative (use minimumBalance for an overdraft)",
            ));
        }
        let minimum_balance =
            Quantity::new("minimumBalance", input.minimum_balance.unwrap_or(0.0))?;
        let dimension_filters = input.dimension_filters.unwrap_or_default();
        match meter {
            Some(meter) => {
                if !matches!(meter.aggregation, Aggregation::Sum | Aggregation::Count) {
                    return Err(FieldError::invalid(
                        "meterId",
                        "must name a sum or count meter: only those say how much an event costs",
                    ));
                }
                super::limit::check_filters(meter, &dimension_filters)?;
            }
            None if !dimension_filters.is_empty() => {
                return Err(FieldError::invalid(
                    "dimensionFilters",
                    "only applies to a balance with a meterId",
                ));
            }
            None => validate_dimensions("dimensionFilters", &dimension_filters)?,
        }
        let balance = Balance {
            id,
            customer_id: input.customer_id,
            name: input.name,
            unit,
            minimum_balance,
            dimension_filters,
            meter_id: meter.map(|m| m.id.clone()),
            created_at: now,
        };
        Ok((balance, initial.get()))
    }

    pub fn apply(&mut self, patch: BalancePatch) -> Result<(), FieldError> {
        const FIXED: &str = "cannot be changed; create a new balance instead";
        if patch.customer_id.is_some_and(|c| c != self.customer_id) {
            return Err(FieldError::invalid("customerId", FIXED));
        }
        if patch.meter_id.is_some() && patch.meter_id != self.meter_id {
            return Err(FieldError::invalid("meterId", FIXED));
        }
        if patch
            .dimension_filters
            .is_some_and(|f| f != self.dimension_filters)
        {
            return Err(FieldError::invalid("dimensionFilters", FIXED));
        }
        let mut next = self.clone();
        if let Some(name) = patch.name {
            bounded_str("name", &name, 1, MAX_NAME_CHARS)?;
            next.name = name;
        }
        if let Some(unit) = patch.unit {
            bounded_str("unit", &unit, 1, MAX_UNIT_CHARS)?;
            next.unit = unit;
        }
        if let Some(minimum) = patch.minimum_balance {
            next.minimum_balance = Quantity::new("minimumBalance", minimum)?;
        }
        *self = next;
        Ok(())
    }

    /// The most the balance may have spent: a debit fits while `spent + held + v` stays at or
    /// under it.
    pub fn spending_ceiling(&self) -> f64 {
        -self.minimum_balance.get()
    }

    /// `currentBalance` and `availableBalance`, given what storage says it has spent.
    fn amounts(&self, spent: f64) -> (Quantity, Quantity) {
        // `+ 0.0` turns −0 (nothing spent) into 0.
        let current = total(-spent) + 0.0;
        let available = total(current - self.minimum_balance.get()) + 0.0;
        (Quantity::from_f64(current), Quantity::from_f64(available))
    }

    /// The balance as the API shows it, given what storage says it has spent.
    pub fn view(&self, spent: f64, updated_at: Option<DateTime<Utc>>) -> BalanceView {
        let (current_balance, available_balance) = self.amounts(spent);
        BalanceView {
            id: self.id.clone(),
            customer_id: self.customer_id.clone(),
            name: self.name.clone(),
            unit: self.unit.clone(),
            current_balance,
            minimum_balance: self.minimum_balance,
            available_balance,
            dimension_filters: self.dimension_filters.clone(),
            meter_id: self.meter_id.clone(),
            created_at: self.created_at,
            updated_at: updated_at.unwrap_or(self.created_at).max(self.created_at),
        }
    }
}

/// A balance on the wire: `availableBalance = currentBalance − minimumBalance`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BalanceView {
    pub id: String,
    pub customer_id: CustomerId,
    pub name: String,
    pub unit: String,
    /// A total, so not bounded like one amount.
    #[schema(value_type = f64)]
    pub current_balance: Quantity,
    pub minimum_balance: Quantity,
    #[schema(value_type = f64)]
    pub available_balance: Quantity,
    pub dimension_filters: Dimensions,
    pub meter_id: Option<String>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When the amount last moved by a credit or debit (metered debits aside).
    #[serde(with = "serde_rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/balances/credit` and `/debit` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMovement {
    pub customer_id: CustomerId,
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    #[schema(exclusive_minimum = 0, maximum = 1e15)]
    pub amount: f64,
    pub description: Option<String>,
    pub reference: Option<String>,
}

/// `POST /v1/balances/check` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalanceCheckRequest {
    pub customer_id: CustomerId,
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    #[schema(exclusive_minimum = 0, maximum = 1e15)]
    pub amount: f64,
}

impl BalanceCheckRequest {
    pub fn amount(&self) -> Result<f64, FieldError> {
        Ok(Quantity::positive("amount", self.amount)?.get())
    }
}

/// `POST /v1/balances/check` answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BalanceCheck {
    pub balance_id: String,
    pub name: String,
    pub unit: String,
    /// A total, so not bounded like one amount.
    #[schema(value_type = f64)]
    pub current_balance: Quantity,
    pub minimum_balance: Quantity,
    #[schema(value_type = f64)]
    pub available_balance: Quantity,
    pub requested_amount: Quantity,
    pub sufficient: bool,
}

impl BalanceView {
    pub fn check(&self, requested: f64) -> BalanceCheck {
        BalanceCheck {
            balance_id: self.id.clone(),
            name: self.name.clone(),
            unit: self.unit.clone(),
            current_balance: self.current_balance,
            minimum_balance: self.minimum_balance,
            available_balance: self.available_balance,
            requested_amount: Quantity::from_f64(requested),
            sufficient: requested <= self.available_balance.get(),
        }
    }
}

/// A balance that a consume or reservation debits, as its answer shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BalanceState {
    pub id: String,
    pub name: String,
    pub unit: String,
    /// A total, so not bounded like one amount.
    #[schema(value_type = f64)]
    pub current_balance: Quantity,
    #[schema(value_type = f64)]
    pub available_balance: Quantity,
    /// What reservations hold on it.
    #[schema(value_type = f64)]
    pub reserved: Quantity,
    /// What the event costs this balance.
    pub requested_amount: Quantity,
    /// Whether the balance covers the event (`availableBalance − reserved ≥ requestedAmount`
    /// before it was debited).
    pub sufficient: bool,
}

impl BalanceState {
    /// `spent` and `reserved` as storage read them; `sufficient` as the decision found it.
    pub fn new(
        balance: &Balance,
        cost: f64,
        spent: f64,
        reserved: f64,
        sufficient: bool,
    ) -> BalanceState {
        let (current_balance, available_balance) = balance.amounts(spent);
        BalanceState {
            id: balance.id.clone(),
            name: balance.name.clone(),
            unit: balance.unit.clone(),
            current_balance,
            available_balance,
            reserved: Quantity::from_f64(reserved),
            requested_amount: Quantity::from_f64(cost),
            sufficient,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransactionKind {
    Credit,
    Debit,
}

/// A transaction as storage keeps it; the balance after it is stored beside it, since only
/// the atomic step that applies it knows that figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionEntry {
    pub id: String,
    pub balance_id: String,
    #[serde(rename = "type")]
    pub kind: TransactionKind,
    pub amount: Quantity,
    pub description: String,
    pub reference: Option<String>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: DateTime<Utc>,
}

impl NewMovement {
    pub fn validate(&self) -> Result<(), FieldError> {
        Quantity::positive("amount", self.amount)?;
        if let Some(description) = &self.description {
            bounded_str("description", description, 0, MAX_DESCRIPTION_CHARS)?;
        }
        if let Some(reference) = &self.reference {
            bounded_str("reference", reference, 0, MAX_NAME_CHARS)?;
        }
        Ok(())
    }
}

impl TransactionEntry {
    /// A credit or debit of `balance_id`, from a movement that passed [`NewMovement::validate`].
    pub fn new(
        id: String,
        balance_id: &str,
        kind: TransactionKind,
        input: &NewMovement,
        now: DateTime<Utc>,
    ) -> TransactionEntry {
        TransactionEntry {
            id,
            balance_id: balance_id.to_string(),
            kind,
            amount: Quantity::from_f64(input.amount),
            description: input.description.clone().unwrap_or_default(),
            reference: input.reference.clone(),
            created_at: now,
        }
    }

    /// The credit that a balance's initial amount is recorded as.
    pub fn initial(
        id: String,
        balance_id: &str,
        amount: f64,
        now: DateTime<Utc>,
    ) -> TransactionEntry {
        TransactionEntry {
            id,
            balance_id: balance_id.to_string(),
            kind: TransactionKind::Credit,
            amount: Quantity::from_f64(amount),
            description: "initial balance".to_string(),
            reference: None,
            created_at: now,
        }
    }

    /// How the transaction moves the balance's spent counter.
    pub fn spent_change(&self) -> f64 {
        match self.kind {
            TransactionKind::Credit => -self.amount.get(),
            TransactionKind::Debit => self.amount.get(),
        }
    }

    pub fn settled(self, spent_after: f64) -> Transaction {
        Transaction {
            balance_after: Quantity::from_f64(-spent_after + 0.0),
            entry: self,
        }
    }
}

/// A transaction on the wire:
/// `{id, balanceId, type, amount, description, reference, balanceAfter, createdAt}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    #[serde(flatten)]
    pub entry: TransactionEntry,
    /// A total, so not bounded like one amount.
    #[schema(value_type = f64)]
    pub balance_after: Quantity,
}

/// `POST /v1/balances/credit` and `/debit` answer. A debit beyond the available balance is
/// `success: false` with `error`, not an HTTP error.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MovementResult {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Transaction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap()
    }

    fn input(body: serde_json::Value) -> NewBalance {
        serde_json::from_value(body).unwrap()
    }

    fn meter(aggregation: &str) -> Meter {
        let field = if aggregation == "count" {
            "*"
        } else {
            "values.tokens"
        };
        let input = serde_json::from_value(json!({"name": "m", "aggregation": aggregation,
            "field": field, "eventFilter": {"dimensions": {"region": "eu"}}}))
        .unwrap();
        Meter::create("mtr_1".into(), input, now()).unwrap()
    }

    fn field_of(error: FieldError) -> String {
        error.field().to_string()
    }

    #[test]
    fn a_balance_starts_from_its_initial_amount_above_its_minimum() {
        let (balance, initial) = Balance::create(
            "bal_1".into(),
            input(
                json!({"customerId": "c1", "name": "prepaid", "initialBalance": 100,
                "minimumBalance": -20}),
            ),
            None,
            now(),
        )
        .unwrap();
        assert_eq!(initial, 100.0);
        assert_eq!(balance.unit, "credits");
        assert_eq!(balance.spending_ceiling(), 20.0);
        let view = balance.view(-initial, None);
        assert_eq!(view.current_balance.get(), 100.0);
        assert_eq!(view.available_balance.get(), 120.0);
        assert_eq!(view.updated_at, now());
        assert!(view.check(120.0).sufficient);
        assert!(!view.check(120.5).sufficient);
        // Spent nothing yet: the balance is zero, not "-0".
        let empty = balance.view(0.0, None);
        assert_eq!(serde_json::to_value(&empty).unwrap()["currentBalance"], 0);
    }

    #[test]
    fn bad_balances_name_the_field() {
        let create = |body: serde_json::Value, meter: Option<&Meter>| {
            Balance::create("bal_1".into(), input(body), meter, now()).map(|_| ())
        };
        let base = json!({"customerId": "c1", "name": "b"});
        let with = |extra: serde_json::Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        assert_eq!(
            field_of(create(json!({"customerId": "c1", "name": ""}), None).unwrap_err()),
            "name"
        );
        assert_eq!(
            field_of(create(with(json!({"initialBalance": -1})), None).unwrap_err()),
            "initialBalance"
        );
        assert_eq!(
            field_of(create(with(json!({"minimumBalance": 1e16})), None).unwrap_err()),
            "minimumBalance"
        );
        assert_eq!(
            field_of(create(with(json!({"unit": ""})), None).unwrap_err()),
            "unit"
        );
        assert_eq!(
            field_of(create(with(json!({"dimensionFilters": {"model": "x"}})), None).unwrap_err()),
            "dimensionFilters"
        );
        assert_eq!(
            field_of(create(base.clone(), Some(&meter("max"))).unwrap_err()),
            "meterId"
        );
        assert_eq!(
            field_of(
                create(
                    with(json!({"dimensionFilters": {"region": "us"}})),
                    Some(&meter("sum"))
                )
                .unwrap_err()
            ),
            "dimensionFilters.region"
        );
        assert!(create(base.clone(), Some(&meter("count"))).is_ok());
    }

    #[test]
    fn updates_change_name_unit_and_minimum_only() {
        let (mut balance, _) = Balance::create(
            "bal_1".into(),
            input(json!({"customerId": "c1", "name": "b"})),
            Some(&meter("sum")),
            now(),
        )
        .unwrap();
        let patch =
            |body: serde_json::Value| -> BalancePatch { serde_json::from_value(body).unwrap() };
        balance
            .apply(patch(
                json!({"name": "c", "unit": "usd", "minimumBalance": -50,
                "customerId": "c1", "meterId": "mtr_1", "dimensionFilters": {}}),
            ))
            .unwrap();
        assert_eq!(
            (
                balance.name.as_str(),
                balance.unit.as_str(),
                balance.spending_ceiling()
            ),
            ("c", "usd", 50.0)
        );
        for (body, field) in [
            (json!({"customerId": "c2"}), "customerId"),
            (json!({"meterId": "mtr_2"}), "meterId"),
            (
                json!({"dimensionFilters": {"region": "eu"}}),
                "dimensionFilters",
            ),
            (json!({"name": ""}), "name"),
            (json!({"unit": "u".repeat(65)}), "unit"),
            (json!({"minimumBalance": 1e16}), "minimumBalance"),
        ] {
            let before = balance.clone();
            assert_eq!(balance.apply(patch(body)).unwrap_err().field(), field);
            assert_eq!(balance, before, "a rejected update changes nothing");
        }
        assert!(
            serde_json::from_value::<BalancePatch>(json!({"initialBalance": 5})).is_err(),
            "the amount moves only by credits and debits"
        );
    }

    #[test]
    fn transactions_move_what_was_spent() {
        let movement: NewMovement =
            serde_json::from_value(json!({"customerId": "c1", "name": "b", "amount": 2.5}))
                .unwrap();
        movement.validate().unwrap();
        let credit = TransactionEntry::new(
            "txn_1".into(),
            "bal_1",
            TransactionKind::Credit,
            &movement,
            now(),
        );
        assert_eq!(credit.spent_change(), -2.5);
        assert_eq!(credit.description, "");
        let debit = TransactionEntry::new(
            "txn_2".into(),
            "bal_1",
            TransactionKind::Debit,
            &movement,
            now(),
        );
        assert_eq!(debit.spent_change(), 2.5);
        let wire = serde_json::to_value(debit.settled(-7.5)).unwrap();
        assert_eq!(
            wire,
            json!({"id": "txn_2", "balanceId": "bal_1", "type": "debit", "amount": 2.5,
                "description": "", "reference": null, "balanceAfter": 7.5,
                "createdAt": "2026-11-21T10:00:00.000Z"})
        );
        let zero: NewMovement =
            serde_json::from_value(json!({"customerId": "c1", "name": "b", "amount": 0})).unwrap();
        assert_eq!(zero.validate().unwrap_err().field(), "amount");
        let long: NewMovement = serde_json::from_value(
            json!({"customerId": "c1", "name": "b", "amount": 1, "reference": "r".repeat(257)}),
        )
        .unwrap();
        assert_eq!(long.validate().unwrap_err().field(), "reference");
    }
}
