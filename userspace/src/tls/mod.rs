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

/// The CA directory's mode: others may open its public files by name (the
/// certificate and trust bundle `blastgate run --user` agents are pointed
/// at) but not list it; the keys in it are 0600 from their creation.
pub const CA_DIR_MODE: u32 = 0o711;
