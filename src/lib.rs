//! quotagate: usage metering and limit enforcement over HTTP, with Redis (or an embedded
//! in-memory store) holding every piece of state.
//!
//! Dependencies point one way: `http → service → domain` and `storage → domain`; the service
//! sees storage only through the traits in [`storage`].

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod service;
pub mod storage;
pub mod telemetry;
