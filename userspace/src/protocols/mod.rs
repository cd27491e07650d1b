//! Protocol handlers: what happens to a connection once the proxy knows who
//! is calling and which target they want. Each handler speaks its protocol
//! to the agent and to the upstream; the session driver in `proxy::session`
//! owns the lifecycle and always writes the record.

pub mod gateway;
pub mod http;
pub mod postgres;
pub mod relay;
pub mod ssh;
pub mod stream;
pub mod tcp;
