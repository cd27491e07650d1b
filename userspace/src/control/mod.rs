//! The daemon's control socket: a root-only unix stream socket speaking one
//! JSON object per line. `blastgate run`, `status` and `events` are its
//! clients.

pub mod client;
pub mod proto;
pub mod server;

/// Longest request or response line accepted, so a confused peer cannot
/// make either side buffer without bound.
pub const MAX_LINE: usize = 1 << 20;
