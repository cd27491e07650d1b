//! `[egress]`: where agents may go that is not a gateway target.

use serde::Deserialize;

use crate::egress::pattern::HostPattern;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(default)]
    pub mode: EgressMode,
    /// `name:port`, `*.suffix:port` or `cidr:port`. A name must have been
    /// resolved by the agent, through blastgate, to the address it
    /// connects to; TLS must name it in its SNI, plain HTTP in its Host.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// What the allow-list does not name is refused.
    #[default]
    Enforce,
    /// Everything passes; what enforce would refuse is recorded as such
    /// (`verdict = "audit"`), to build the list from a real run.
    Audit,
}

impl EgressConfig {
    pub fn patterns(&self) -> Result<Vec<HostPattern>, String> {
        self.allow
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let p = HostPattern::parse(a).map_err(|e| format!("egress.allow[{i}]: {e}"))?;
                if p.port.is_none() {
                    return Err(format!(
                        "egress.allow[{i}]: {a:?} needs a port (`{a}:443`): a name is allowed \
                         for the ports it lists"
                    ));
                }
                Ok(p)
            })
            .collect()
    }
}
