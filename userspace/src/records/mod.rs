//! Audit records: the event type and the durable local spool it goes to.

pub mod clickhouse;
pub mod event;
pub mod recovery;
pub mod redact;
pub mod spool;

pub use event::{Event, EventKind, IoChunk, IoStream, Verdict};
pub use spool::Recorder;
