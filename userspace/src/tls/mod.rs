//! TLS for the gateways: the local CA whose certificates agents are shown
//! ([`ca`]), and the client configurations blastgate uses upstream
//! ([`client`]). ring only, passed explicitly: nothing depends on a
//! process-wide crypto provider.

pub mod ca;
pub mod client;

pub use ca::{CaError, LeafCache, LocalCa};
