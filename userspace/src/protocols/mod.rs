//! Protocol gateways: what happens to a connection once the proxy knows who
//! is calling and which target they want. Each gateway implements the same
//! [`phases::Phases`] (handshake, connect, relay, refuse) and speaks its
//! protocol to the agent and to the upstream; the session driver in
//! `proxy::driver` runs the phases, owns the session's tasks and always
//! writes the records that open and close it.

pub mod egress;
pub mod gateway;
pub mod git;
pub mod http;
pub mod phases;
pub mod postgres;
pub mod relay;
pub mod ssh;
pub mod stream;
pub mod target;
pub mod tcp;

pub use target::Target;
