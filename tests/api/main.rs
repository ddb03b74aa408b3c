//! One integration-test binary: API scenarios on both stores, the storage contract suite,
//! and multi-process tests on a real Redis.

mod common;

mod auth;
mod bad_input;
mod balances;
mod cluster;
mod concurrency;
mod customers;
mod enforcement;
mod idempotency;
mod limits;
mod metering;
mod meters;
mod operations;
mod outage;
mod replicas;
mod store_contract;
mod webhooks;
