//! Balances: create, read, delete, credit, debit, check and transactions.
//!
//! A balance's document is configuration (every node caches it, so the counting step knows
//! which balances an event debits); its amount and transactions live with its customer's
//! counters. Creating one writes the amount first and the document second, and takes the
//! amount back if the document cannot be written, so no balance ever shows without its
//! initial credit.

use std::borrow::Borrow;

use chrono::{DateTime, Utc};

use super::Gateway;
use super::config::to_doc;
use super::error::{Resource, ServiceError, ServiceResult, corrupt};
use super::page::{Page, PageRequest};
use crate::domain::balance::{
    Balance, BalanceCheck, BalanceCheckRequest, BalancePatch, BalanceView, MovementResult,
    NewBalance, NewMovement, Transaction, TransactionEntry, TransactionKind,
};
use crate::domain::customer::Customer;
use crate::domain::ids::{CustomerId, IdKind};
use crate::storage::balances::{
    BalanceReading, Movement, MovementOutcome, split_transaction_member,
};
use crate::storage::{ConfigOp, Guard, Kind};

/// A credit or debit's answer, and whether it replays an earlier request's.
pub struct Moved {
    pub result: MovementResult,
    pub replayed: bool,
}

/// The ID of a balance's name document: customer IDs cannot contain `/`, so the first `/`
/// ends the customer.
fn name_key(customer: &CustomerId, name: &str) -> String {
    format!("{customer}/{name}")
}

/// The ops that delete a balance's document and its name.
pub(super) fn balance_deletion(balance: &Balance) -> [ConfigOp; 2] {
    [
        ConfigOp::Delete {
            kind: Kind::Balance,
            id: balance.id.clone(),
            guard: Guard::Present,
        },
        ConfigOp::Delete {
            kind: Kind::BalanceName,
            id: name_key(&balance.customer_id, &balance.name),
            guard: Guard::Always,
        },
    ]
}

fn decode_transaction(member: &str) -> ServiceResult<Transaction> {
    let undecodable = || {
        ServiceError::Storage(crate::storage::StoreError::Internal(
            "undecodable balance transaction".into(),
        ))
    };
    let (spent_after, entry) = split_transaction_member(member).ok_or_else(undecodable)?;
    let entry: TransactionEntry =
        serde_json::from_str(entry).map_err(|e| corrupt("transactions", e))?;
    Ok(entry.settled(spent_after))
}

/// A credit and a debit never share an idempotency key: a repeat is a repeat of the same
/// movement, and a key reused for the other kind is a caller's mistake that must not pass
/// as a replay of something it is not.
fn key_of_another_kind(first: TransactionKind) -> ServiceError {
    let first = match first {
        TransactionKind::Credit => "credit",
        TransactionKind::Debit => "debit",
    };
    ServiceError::Conflict(format!(
        "this Idempotency-Key was first used for a {first}; a key belongs to one kind of movement"
    ))
}

fn key_of_another_balance() -> ServiceError {
    ServiceError::Conflict(
        "this Idempotency-Key was first used for another balance; a key belongs to one balance"
            .into(),
    )
}

/// When the balance last moved by a credit or debit, from its newest transaction.
fn last_moved(reading: &BalanceReading) -> Option<DateTime<Utc>> {
    let member = reading.newest.as_deref()?;
    decode_transaction(member)
        .ok()
        .map(|transaction| transaction.entry.created_at)
}

impl Gateway {
    pub async fn create_balance(&self, input: NewBalance) -> ServiceResult<BalanceView> {
        let meter = match input.meter_id.as_deref() {
            None => None,
            Some(id) => Some(self.get_meter(id).await?),
        };
        let now = self.clock.now();
        let (balance, initial) =
            Balance::create(self.new_id(IdKind::Balance), input, meter.as_ref(), now)?;
        let customer_id = balance.customer_id.clone();
        let mut updated_at = None;
        if initial > 0.0 {
            let entry = TransactionEntry::initial(
                self.new_id(IdKind::Transaction),
                &balance.id,
                initial,
                now,
            );
            let doc = to_doc(&entry)?;
            self.store
                .move_balance(
                    &customer_id,
                    &Movement {
                        balance_id: &balance.id,
                        spent_change: -initial,
                        ceiling: None,
                        transaction_id: &entry.id,
                        entry: &doc,
                        idempotency_key: None,
                    },
                )
                .await?;
            updated_at = Some(now);
        }
        // Touching the customer makes a concurrent delete of it start over and take this
        // balance with it.
        let mut ops = vec![
            ConfigOp::PutIfAbsent {
                kind: Kind::Customer,
                id: customer_id.to_string(),
                doc: to_doc(&Customer::with_defaults(
                    customer_id.clone(),
                    self.settings.default_timezone,
                    now,
                ))?,
            },
            ConfigOp::Touch {
                kind: Kind::Customer,
                id: customer_id.to_string(),
            },
        ];
        if let Some(meter) = &meter {
            ops.push(ConfigOp::Require {
                kind: Kind::Meter,
                id: meter.id.clone(),
            });
        }
        ops.push(ConfigOp::Put {
            kind: Kind::Balance,
            id: balance.id.clone(),
            doc: to_doc(&balance)?,
            guard: Guard::Absent,
        });
        ops.push(ConfigOp::Put {
            kind: Kind::BalanceName,
            id: name_key(&customer_id, &balance.name),
            doc: to_doc(&balance.id)?,
            guard: Guard::Absent,
        });
        let failed = match self.commit(&ops).await? {
            Ok(()) => return Ok(balance.view(-initial, updated_at)),
            Err(index) => &ops[index],
        };
        // Nothing references the amount written above: take it back.
        if let Err(error) = self.store.drop_balance(&customer_id, &balance.id).await {
            tracing::warn!(%error, balance = %balance.id, "could not drop an unused balance amount");
        }
        Err(match failed.kind() {
            Kind::Meter => ServiceError::NotFound(Resource::Meter),
            Kind::BalanceName => ServiceError::AlreadyExists(format!(
                "customer `{customer_id}` already has a balance named `{}`",
                balance.name
            )),
            _ => ServiceError::Conflict("balance ID collision".into()),
        })
    }

    async fn load_balance(&self, id: &str) -> ServiceResult<Balance> {
        if !IdKind::Balance.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Balance));
        }
        self.load(Kind::Balance, id, Resource::Balance).await
    }

    /// A customer's balance by name, read from storage rather than this node's cache: a
    /// balance deleted on another node a moment ago must not take a credit or debit.
    async fn balance_named(&self, customer: &CustomerId, name: &str) -> ServiceResult<Balance> {
        let id: String = self
            .load(
                Kind::BalanceName,
                &name_key(customer, name),
                Resource::Balance,
            )
            .await?;
        self.load_balance(&id).await
    }

    async fn views<B: Borrow<Balance>>(&self, balances: &[B]) -> ServiceResult<Vec<BalanceView>> {
        let Some(first) = balances.first() else {
            return Ok(Vec::new());
        };
        let ids: Vec<&str> = balances.iter().map(|b| b.borrow().id.as_str()).collect();
        let readings = self
            .store
            .balance_readings(&first.borrow().customer_id, &ids)
            .await?;
        Ok(balances
            .iter()
            .zip(readings)
            .map(|(balance, reading)| balance.borrow().view(reading.spent, last_moved(&reading)))
            .collect())
    }

    async fn view(&self, balance: &Balance) -> ServiceResult<BalanceView> {
        self.views(std::slice::from_ref(balance))
            .await?
            .pop()
            .ok_or(ServiceError::NotFound(Resource::Balance))
    }

    pub async fn get_balance(&self, id: &str) -> ServiceResult<BalanceView> {
        let balance = self.load_balance(id).await?;
        self.view(&balance).await
    }

    /// Every balance of a customer, ordered by ID.
    pub async fn customer_balances(&self, customer_id: &str) -> ServiceResult<Vec<BalanceView>> {
        let customer = self.get_customer(customer_id).await?;
        self.views(&self.cache.balances_of(&customer.id)).await
    }

    /// Renames, relabels or moves the minimum of a balance; a new name takes the old one's
    /// place in the same atomic step.
    pub async fn update_balance(
        &self,
        id: &str,
        patch: BalancePatch,
    ) -> ServiceResult<BalanceView> {
        let mut balance = self.load_balance(id).await?;
        let old_name = balance.name.clone();
        balance.apply(patch)?;
        let mut ops = vec![ConfigOp::Put {
            kind: Kind::Balance,
            id: balance.id.clone(),
            doc: to_doc(&balance)?,
            guard: Guard::Present,
        }];
        if balance.name != old_name {
            ops.push(ConfigOp::Delete {
                kind: Kind::BalanceName,
                id: name_key(&balance.customer_id, &old_name),
                guard: Guard::Always,
            });
            ops.push(ConfigOp::Put {
                kind: Kind::BalanceName,
                id: name_key(&balance.customer_id, &balance.name),
                doc: to_doc(&balance.id)?,
                guard: Guard::Absent,
            });
        }
        match self.commit(&ops).await? {
            Ok(()) => self.view(&balance).await,
            Err(0) => Err(ServiceError::NotFound(Resource::Balance)),
            Err(_) => Err(ServiceError::AlreadyExists(format!(
                "customer `{}` already has a balance named `{}`",
                balance.customer_id, balance.name
            ))),
        }
    }

    pub async fn delete_balance(&self, id: &str) -> ServiceResult<()> {
        let balance = self.load_balance(id).await?;
        self.commit(&balance_deletion(&balance))
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Balance))?;
        self.forget_balances(&[balance]).await;
        Ok(())
    }

    /// Drops the amounts and transactions of balances whose documents went. What fails here
    /// only leaves data nothing refers to.
    pub(super) async fn forget_balances(&self, balances: &[Balance]) {
        for balance in balances {
            if let Err(error) = self
                .store
                .drop_balance(&balance.customer_id, &balance.id)
                .await
            {
                tracing::warn!(%error, balance = %balance.id, "could not drop a deleted balance's amount");
            }
        }
    }

    /// Credits or debits a balance with its transaction, atomically. A debit beyond the
    /// available balance is answered `success: false` and changes nothing.
    pub async fn move_balance(
        &self,
        kind: TransactionKind,
        input: NewMovement,
        idempotency_key: Option<&str>,
    ) -> ServiceResult<Moved> {
        input.validate()?;
        let balance = self.balance_named(&input.customer_id, &input.name).await?;
        let entry = TransactionEntry::new(
            self.new_id(IdKind::Transaction),
            &balance.id,
            kind,
            &input,
            self.clock.now(),
        );
        let doc = to_doc(&entry)?;
        let movement = Movement {
            balance_id: &balance.id,
            spent_change: entry.spent_change(),
            ceiling: (kind == TransactionKind::Debit).then(|| balance.spending_ceiling()),
            transaction_id: &entry.id,
            entry: &doc,
            idempotency_key,
        };
        let (first, replayed) = match self
            .store
            .move_balance(&balance.customer_id, &movement)
            .await?
        {
            MovementOutcome::Duplicate(first) => (*first, true),
            outcome => (outcome, false),
        };
        let member = match first {
            MovementOutcome::Applied(member) => member,
            // Only debits are refused: a credit finding a refusal met a debit's key.
            MovementOutcome::Refused { .. } if kind != TransactionKind::Debit => {
                return Err(key_of_another_kind(TransactionKind::Debit));
            }
            MovementOutcome::Refused { spent, first_entry } => {
                // A repeat is refused as the first was, with the first's figures: what was
                // available then and what it asked for; `balance` is as it is now.
                let first: Option<TransactionEntry> = first_entry
                    .map(|entry| serde_json::from_str(&entry))
                    .transpose()
                    .map_err(|e| corrupt("balances", e))?;
                if first
                    .as_ref()
                    .is_some_and(|first| first.balance_id != balance.id)
                {
                    return Err(key_of_another_balance());
                }
                let requested = first.map_or(input.amount, |first| first.amount.get());
                let available = balance.view(spent, None).available_balance;
                let error = format!(
                    "insufficient balance: {} available, {} requested",
                    available.get(),
                    requested
                );
                return Ok(Moved {
                    result: MovementResult {
                        success: false,
                        transaction: None,
                        balance: Some(self.view(&balance).await?),
                        error: Some(error),
                    },
                    replayed,
                });
            }
            MovementOutcome::Duplicate(_) => {
                return Err(ServiceError::Storage(crate::storage::StoreError::Internal(
                    "a movement replayed twice over".into(),
                )));
            }
        };
        let transaction = decode_transaction(&member)?;
        if transaction.entry.kind != kind {
            return Err(key_of_another_kind(transaction.entry.kind));
        }
        if transaction.entry.balance_id != balance.id {
            return Err(key_of_another_balance());
        }
        let view = balance.view(
            -transaction.balance_after.get(),
            Some(transaction.entry.created_at),
        );
        Ok(Moved {
            result: MovementResult {
                success: true,
                transaction: Some(transaction),
                balance: Some(view),
                error: None,
            },
            replayed,
        })
    }

    /// Whether a balance covers an amount, changing nothing.
    pub async fn check_balance(&self, request: BalanceCheckRequest) -> ServiceResult<BalanceCheck> {
        let amount = request.amount()?;
        let balance = self
            .balance_named(&request.customer_id, &request.name)
            .await?;
        Ok(self.view(&balance).await?.check(amount))
    }

    /// A balance's transactions, newest first.
    pub async fn balance_transactions(
        &self,
        id: &str,
        request: &PageRequest,
    ) -> ServiceResult<Page<Transaction>> {
        let balance = self.load_balance(id).await?;
        let members = self
            .store
            .transactions(
                &balance.customer_id,
                &balance.id,
                request.after.as_deref(),
                request.limit + 1,
            )
            .await?;
        let items = members
            .iter()
            .map(|member| {
                let transaction = decode_transaction(member)?;
                Ok((transaction.entry.id.clone(), transaction))
            })
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(Page::from_items(items, request.limit))
    }
}
