//! Key material for the gateways: the local CA whose certificates agents
//! are shown ([`ca`]), the client configurations blastgate uses upstream
//! ([`client`]), and the SSH certificate authority that signs the host
//! certificates the SSH gateway presents ([`ssh_ca`]), and how agents come
//! to trust the local CA ([`trust`]). ring only,
//! passed explicitly: nothing depends on a process-wide crypto provider.

pub mod ca;
pub mod client;
pub(crate) mod keyfile;
pub mod ssh_ca;
pub mod trust;

pub use ca::{CaError, LeafCache, LocalCa};
