//! Customers, meters and limits: create, read, list, update, delete.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Gateway;
use super::error::{Resource, ServiceError, ServiceResult, corrupt};
use super::page::{self, Page, PageRequest};
use crate::domain::balance::Balance;
use crate::domain::customer::{Customer, CustomerPatch, NewCustomer};
use crate::domain::ids::{CustomerId, IdKind};
use crate::domain::limit::{Limit, LimitPatch, NewLimit};
use crate::domain::meter::{Meter, MeterPatch, NewMeter};
use crate::storage::{ConfigOp, Guard, Kind};

/// How often a delete with its limits starts over when limits change under it.
const DELETE_ATTEMPTS: usize = 5;

/// A new ULID, strictly increasing within this process, so that IDs made in the same
/// millisecond still sort in the order they were made (event logs list newest first by ID).
pub fn next_ulid() -> ulid::Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

/// Which limits `GET /v1/limits` lists.
#[derive(Debug, Clone, Default)]
pub struct LimitQuery {
    /// `Some(None)`: the default limits; `Some(Some(id))`: that customer's own limits.
    pub customer: Option<Option<CustomerId>>,
    pub meter_id: Option<String>,
}

/// A value as stored JSON. Failing here is a bug (our own types always serialize), and is
/// answered as an internal error rather than a panic.
pub(crate) fn to_doc<T: Serialize>(value: &T) -> ServiceResult<String> {
    serde_json::to_string(value).map_err(|e| {
        ServiceError::Storage(crate::storage::StoreError::Internal(format!(
            "cannot serialize: {e}"
        )))
    })
}

impl Gateway {
    pub(super) async fn load<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
        resource: Resource,
    ) -> ServiceResult<T> {
        let doc = self
            .store
            .get(kind, id)
            .await?
            .ok_or(ServiceError::NotFound(resource))?;
        serde_json::from_str(&doc).map_err(|e| corrupt(kind.name(), e))
    }

    /// Applies ops atomically and mirrors them into this node's cache.
    /// `Err(index)` names the op whose guard failed: always an index into `ops`.
    pub(super) async fn commit(&self, ops: &[ConfigOp]) -> ServiceResult<Result<(), usize>> {
        match self.store.apply(ops).await? {
            Ok(logged) => {
                self.cache.apply_local(ops, logged);
                Ok(Ok(()))
            }
            Err(failed) if failed.index < ops.len() => Ok(Err(failed.index)),
            Err(failed) => Err(ServiceError::Storage(crate::storage::StoreError::Internal(
                format!(
                    "a config change of {} ops failed at op {}",
                    ops.len(),
                    failed.index
                ),
            ))),
        }
    }

    pub(super) fn new_id(&self, kind: IdKind) -> String {
        kind.new_id(next_ulid())
    }

    // --- customers -------------------------------------------------------------------------

    pub async fn create_customer(&self, input: NewCustomer) -> ServiceResult<Customer> {
        let (id, patch) = input.into_parts();
        let customer =
            Customer::create(id, patch, self.settings.default_timezone, self.clock.now())?;
        let op = ConfigOp::Put {
            kind: Kind::Customer,
            id: customer.id.to_string(),
            doc: to_doc(&customer)?,
            guard: Guard::Absent,
        };
        match self.commit(&[op]).await? {
            Ok(()) => Ok(customer),
            Err(_) => Err(ServiceError::AlreadyExists(format!(
                "customer `{}` already exists",
                customer.id
            ))),
        }
    }

    pub async fn get_customer(&self, id: &str) -> ServiceResult<Customer> {
        let id = parse_path_customer(id)?;
        self.load(Kind::Customer, id.as_str(), Resource::Customer)
            .await
    }

    pub async fn list_customers(&self, request: &PageRequest) -> ServiceResult<Page<Customer>> {
        page::list(
            self.store.as_ref(),
            Kind::Customer,
            request,
            |_: &Customer| true,
        )
        .await
    }

    /// Partial update; creates the customer when absent. Returns whether it was created.
    pub async fn put_customer(
        &self,
        id: &str,
        patch: CustomerPatch,
    ) -> ServiceResult<(Customer, bool)> {
        let id = parse_path_customer(id)?;
        let now = self.clock.now();
        let existing: Option<Customer> = match self
            .load(Kind::Customer, id.as_str(), Resource::Customer)
            .await
        {
            Ok(customer) => Some(customer),
            Err(ServiceError::NotFound(_)) => None,
            Err(error) => return Err(error),
        };
        let created = existing.is_none();
        let customer = match existing {
            Some(mut customer) => {
                customer.apply(patch, now)?;
                customer
            }
            None => Customer::create(id, patch, self.settings.default_timezone, now)?,
        };
        let op = ConfigOp::Put {
            kind: Kind::Customer,
            id: customer.id.to_string(),
            doc: to_doc(&customer)?,
            guard: Guard::Always,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Customer))?;
        Ok((customer, created))
    }

    /// Deletes the customer with its own limits and its balances, in one atomic step, then
    /// forgets its usage, so that a customer created again under the same ID starts from zero.
    pub async fn delete_customer(&self, id: &str) -> ServiceResult<String> {
        let id = parse_path_customer(id)?;
        // Read first: the customer's own limits and calendar go with it.
        let usage = self.usage_to_forget(&id).await?;
        self.delete_with_dependents(
            Kind::Customer,
            id.as_str(),
            Resource::Customer,
            |limit| limit.customer_id.as_ref() == Some(&id),
            Some(|balance: &Balance| balance.customer_id == id),
        )
        .await?;
        // The customer is gone whatever happens here. Usage this leaves behind is read by no
        // check (an unknown customer's reads nothing), and expires with its windows.
        if let Err(error) = self.store.forget_usage(&id, &usage).await {
            tracing::warn!(%error, customer = %id, "a deleted customer's usage was kept");
        }
        Ok(id.to_string())
    }

    // --- meters ----------------------------------------------------------------------------

    pub async fn create_meter(&self, input: NewMeter) -> ServiceResult<Meter> {
        let meter = Meter::create(self.new_id(IdKind::Meter), input, self.clock.now())?;
        let op = ConfigOp::Put {
            kind: Kind::Meter,
            id: meter.id.clone(),
            doc: to_doc(&meter)?,
            guard: Guard::Absent,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::Conflict("meter ID collision".into()))?;
        Ok(meter)
    }

    pub async fn get_meter(&self, id: &str) -> ServiceResult<Meter> {
        if !IdKind::Meter.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Meter));
        }
        self.load(Kind::Meter, id, Resource::Meter).await
    }

    pub async fn list_meters(&self, request: &PageRequest) -> ServiceResult<Page<Meter>> {
        page::list(self.store.as_ref(), Kind::Meter, request, |_: &Meter| true).await
    }

    pub async fn update_meter(&self, id: &str, patch: MeterPatch) -> ServiceResult<Meter> {
        let mut meter = self.get_meter(id).await?;
        meter.apply(patch, self.clock.now())?;
        let op = ConfigOp::Put {
            kind: Kind::Meter,
            id: meter.id.clone(),
            doc: to_doc(&meter)?,
            guard: Guard::Present,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Meter))?;
        Ok(meter)
    }

    /// Deletes the meter and every limit on it, in one atomic step. Returns how many limits went.
    pub async fn delete_meter(&self, id: &str) -> ServiceResult<usize> {
        if !IdKind::Meter.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Meter));
        }
        // A meter's balances stay: they hold money, and simply stop being debited.
        self.delete_with_dependents(
            Kind::Meter,
            id,
            Resource::Meter,
            |limit| limit.meter_id == id,
            None::<fn(&Balance) -> bool>,
        )
        .await
    }

    /// Deletes a document together with the limits that belong to it and, when the caller
    /// names them, the balances that do, in one atomic step. Returns how many limits went. A
    /// limit or balance created for the document between the read of its dependents and the
    /// delete touches it (see [`ConfigOp::Touch`]) and fails the step, which then starts over,
    /// so nothing is left behind pointing at nothing.
    async fn delete_with_dependents(
        &self,
        kind: Kind,
        id: &str,
        resource: Resource,
        limit_belongs: impl Fn(&Limit) -> bool,
        balance_belongs: Option<impl Fn(&Balance) -> bool>,
    ) -> ServiceResult<usize> {
        for _ in 0..DELETE_ATTEMPTS {
            let version = self.store.version(kind, id).await?;
            let mut ops = vec![
                ConfigOp::Delete {
                    kind,
                    id: id.to_string(),
                    guard: Guard::Present,
                },
                ConfigOp::Unchanged {
                    kind,
                    id: id.to_string(),
                    version,
                },
            ];
            let mut limits = 0;
            for limit in self.all::<Limit>(Kind::Limit).await? {
                if limit_belongs(&limit) {
                    ops.push(ConfigOp::Delete {
                        kind: Kind::Limit,
                        id: limit.id,
                        guard: Guard::Always,
                    });
                    limits += 1;
                }
            }
            let balances: Vec<Balance> = match &balance_belongs {
                Some(belongs) => self
                    .all::<Balance>(Kind::Balance)
                    .await?
                    .into_iter()
                    .filter(|balance| belongs(balance))
                    .collect(),
                None => Vec::new(),
            };
            for balance in &balances {
                ops.extend(super::balances::balance_deletion(balance));
            }
            match self.commit(&ops).await? {
                Ok(()) => {
                    self.forget_balances(&balances).await;
                    return Ok(limits);
                }
                Err(0) => return Err(ServiceError::NotFound(resource)),
                Err(_) => continue,
            }
        }
        Err(ServiceError::Conflict(
            "limits or balances on it kept being created while it was deleted; retry".into(),
        ))
    }

    // --- limits ----------------------------------------------------------------------------

    async fn all<T: DeserializeOwned>(&self, kind: Kind) -> ServiceResult<Vec<T>> {
        let docs = self.store.all(kind).await?;
        docs.iter()
            .map(|(_, doc)| serde_json::from_str(doc).map_err(|e| corrupt(kind.name(), e)))
            .collect()
    }

    pub async fn create_limit(&self, input: NewLimit) -> ServiceResult<Limit> {
        let meter = self.get_meter(&input.meter_id).await?;
        let now = self.clock.now();
        let limit = Limit::create(self.new_id(IdKind::Limit), input, &meter, now)?;
        // Touching the meter and the customer makes a concurrent delete of either start over
        // and take this limit with it.
        let mut ops = vec![
            ConfigOp::Require {
                kind: Kind::Meter,
                id: meter.id.clone(),
            },
            ConfigOp::Touch {
                kind: Kind::Meter,
                id: meter.id.clone(),
            },
        ];
        if let Some(customer_id) = &limit.customer_id {
            let customer =
                Customer::with_defaults(customer_id.clone(), self.settings.default_timezone, now);
            ops.push(ConfigOp::PutIfAbsent {
                kind: Kind::Customer,
                id: customer_id.to_string(),
                doc: to_doc(&customer)?,
            });
            ops.push(ConfigOp::Touch {
                kind: Kind::Customer,
                id: customer_id.to_string(),
            });
        }
        ops.push(ConfigOp::Put {
            kind: Kind::Limit,
            id: limit.id.clone(),
            doc: to_doc(&limit)?,
            guard: Guard::Absent,
        });
        match self.commit(&ops).await? {
            Ok(()) => Ok(limit),
            Err(0) => Err(ServiceError::NotFound(Resource::Meter)),
            Err(_) => Err(ServiceError::Conflict("limit ID collision".into())),
        }
    }

    pub async fn get_limit(&self, id: &str) -> ServiceResult<Limit> {
        if !IdKind::Limit.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Limit));
        }
        self.load(Kind::Limit, id, Resource::Limit).await
    }

    pub async fn list_limits(
        &self,
        query: &LimitQuery,
        request: &PageRequest,
    ) -> ServiceResult<Page<Limit>> {
        page::list(
            self.store.as_ref(),
            Kind::Limit,
            request,
            |limit: &Limit| {
                query
                    .customer
                    .as_ref()
                    .is_none_or(|customer| limit.customer_id == *customer)
                    && query
                        .meter_id
                        .as_ref()
                        .is_none_or(|meter| limit.meter_id == *meter)
            },
        )
        .await
    }

    pub async fn update_limit(&self, id: &str, patch: LimitPatch) -> ServiceResult<Limit> {
        let mut limit = self.get_limit(id).await?;
        let meter = match self.get_meter(&limit.meter_id).await {
            Err(ServiceError::NotFound(_)) => return Err(ServiceError::NotFound(Resource::Limit)),
            other => other?,
        };
        limit.apply(patch, &meter, self.clock.now())?;
        let op = ConfigOp::Put {
            kind: Kind::Limit,
            id: limit.id.clone(),
            doc: to_doc(&limit)?,
            guard: Guard::Present,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Limit))?;
        Ok(limit)
    }

    pub async fn delete_limit(&self, id: &str) -> ServiceResult<()> {
        if !IdKind::Limit.is_plausible(id) {
            return Err(ServiceError::NotFound(Resource::Limit));
        }
        let op = ConfigOp::Delete {
            kind: Kind::Limit,
            id: id.to_string(),
            guard: Guard::Present,
        };
        self.commit(&[op])
            .await?
            .map_err(|_| ServiceError::NotFound(Resource::Limit))
    }
}

/// A path ID that cannot be a customer ID is a 404, not a 400.
fn parse_path_customer(raw: &str) -> ServiceResult<CustomerId> {
    CustomerId::parse("id", raw).map_err(|_| ServiceError::NotFound(Resource::Customer))
}
