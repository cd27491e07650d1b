//! Who is calling: the kernel's record of the connecting process, enriched
//! from /proc while the process is (probably) still there.

mod caller;
pub mod oidc;
pub mod procfs;
pub mod users;

pub use caller::{Ancestor, Caller, ProcessCache};
