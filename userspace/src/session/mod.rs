//! One agent connection as every part of blastgate sees it: its identity
//! and records ([`Session`]), its byte counts ([`Counters`]), the tasks it
//! started ([`SessionTasks`]) and why it ended ([`SessionError`]).
//!
//! A leaf: nothing here knows the proxy or any protocol, so the driver in
//! `proxy` and the gateways in `protocols` both build on it without
//! depending on each other.

mod counters;
mod error;
mod record;
mod tasks;

pub use counters::Counters;
pub use error::{Fault, SessionError};
pub use record::Session;
pub use tasks::{SessionTasks, WIND_DOWN};
