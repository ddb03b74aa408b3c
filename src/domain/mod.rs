//! Pure domain: validated values, config entities, periods. No I/O, no clock reads:
//! `now` is always a parameter.

pub mod alert;
pub mod apikey;
pub mod balance;
pub mod customer;
pub mod event;
pub mod field;
pub mod ids;
pub mod limit;
pub mod meter;
pub mod period;
pub mod reservation;
pub mod schema;
pub mod time;
pub mod usage;
pub mod webhook;
