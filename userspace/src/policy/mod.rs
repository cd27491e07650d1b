//! The policy engine: one question for every protocol handler — may this
//! agent do this action on this target, given what was parsed?
//!
//! - [`bundle`]: a policy directory (Cedar schema + `*.cedar` files) loaded
//!   and validated as one unit;
//! - [`decide`]: the request and the allow / deny / hold / error decision;
//! - [`fixtures`]: golden tests for `blastgate policy test`;
//! - [`masking`]: field rules and value detectors, compiled to the plan
//!   handlers apply to responses;
//! - [`Engine`]: the daemon's current bundle, swapped whole on reload.

pub mod bundle;
mod cache;
pub mod decide;
pub mod diagnostic;
pub mod fixtures;
pub mod masking;
mod reload;
mod scope;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

pub use bundle::Bundle;
pub use decide::{AgentAttrs, Asker, Decision, OidcClaims, TargetAttrs, Verdict};
pub use diagnostic::Diagnostic;
pub use reload::watch;

/// The bundle in force. Readers take an `Arc` of it for the whole request,
/// so a reload never changes the policies under a request in flight.
pub struct Engine {
    /// The watched directory; `None` for the built-in policies.
    dir: Option<PathBuf>,
    current: RwLock<Arc<Bundle>>,
    /// Counts swaps, so long sessions can re-decide what they were allowed
    /// under the previous policies.
    swaps: tokio::sync::watch::Sender<u64>,
}

impl Engine {
    pub fn load(dir: &Path) -> Result<Engine, Vec<Diagnostic>> {
        let bundle = Bundle::load(dir)?;
        Ok(Engine::with(Some(dir.to_path_buf()), bundle))
    }

    /// The policies shipped in `policies/`, compiled into the binary: what
    /// a daemon without `[policy]` enforces, so that leaving the section
    /// out never means "allow everything".
    pub fn builtin() -> Result<Engine, Vec<Diagnostic>> {
        let bundle = Bundle::build(bundle::Sources::builtin())?;
        Ok(Engine::with(None, bundle))
    }

    fn with(dir: Option<PathBuf>, bundle: Bundle) -> Engine {
        Engine {
            dir,
            current: RwLock::new(Arc::new(bundle)),
            swaps: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes each time a new set of policies takes force.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// The directory policies are loaded from; `None` when built in.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where the policies in force come from, for logs and status.
    pub fn origin(&self) -> String {
        match &self.dir {
            Some(d) => d.display().to_string(),
            None => bundle::BUILTIN_ORIGIN.to_string(),
        }
    }

    pub fn current(&self) -> Arc<Bundle> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the directory again; swaps only if the whole set is valid.
    pub fn reload(&self) -> Result<usize, Vec<Diagnostic>> {
        let Some(dir) = &self.dir else {
            return Ok(self.current().meta.len());
        };
        let bundle = Bundle::load(dir)?;
        let n = bundle.meta.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(bundle);
        self.swaps.send_modify(|n| *n += 1);
        Ok(n)
    }
}
