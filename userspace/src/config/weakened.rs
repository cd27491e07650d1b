//! Every setting in force that makes blastgate enforce less than its
//! defaults, in words an operator can act on. `blastgate status` prints
//! the list and `/metrics` counts it, so a weakened host is visible without
//! reading the config: the defaults are the secure choice, and anything
//! else must be seen.

use super::{Config, Protocol};
use crate::{
    policy::Engine,
    protocols::{
        http::{Oversize, Unmaskable},
        postgres::UpstreamTls,
    },
};

/// How the policies in force differ from the shipped set, by rule id:
/// (ids they lack, ids they keep with other scopes or conditions). A
/// directory that leaves out a shipped rule, or keeps its id with `when
/// { false }` in it, enforces less than no `[policy]` at all.
fn shipped_rules_changed(engine: &Engine) -> (Vec<String>, Vec<String>) {
    if engine.dir().is_none() {
        return (Vec::new(), Vec::new());
    }
    let Ok(shipped) = Engine::builtin() else {
        return (Vec::new(), Vec::new());
    };
    let shipped = shipped.current();
    let current = engine.current();
    let (mut missing, mut changed) = (Vec::new(), Vec::new());
    let mut ids: Vec<&String> = shipped.meta.keys().collect();
    ids.sort();
    for id in ids {
        let pid = cedar_policy::PolicyId::new(id);
        match (shipped.all.policy(&pid), current.all.policy(&pid)) {
            (_, None) => missing.push(id.clone()),
            (Some(a), Some(b)) if enforced(a) != enforced(b) => changed.push(id.clone()),
            _ => {}
        }
    }
    (missing, changed)
}

/// Shipped masking rules the policies in force lack: detectors (by kind)
/// that no longer apply everywhere, field rules (by id) left out.
fn missing_shipped_masking(engine: &Engine) -> Vec<String> {
    if engine.dir().is_none() {
        return Vec::new();
    }
    let Ok(shipped) = Engine::builtin() else {
        return Vec::new();
    };
    let (shipped, current) = (shipped.current(), engine.current());
    let kept = current.masking.universal_detectors();
    let mut out: Vec<String> = shipped
        .masking
        .universal_detectors()
        .into_iter()
        .filter(|k| !kept.contains(k))
        .map(|k| format!("detector {k:?}"))
        .collect();
    let ids = current.masking.field_ids();
    out.extend(
        shipped
            .masking
            .field_ids()
            .into_iter()
            .filter(|id| !ids.contains(id))
            .map(|id| format!("field {id}")),
    );
    out
}

/// What a policy enforces: effect, scope and conditions, without the
/// annotations (a reworded `@reason` enforces the same).
fn enforced(p: &cedar_policy::Policy) -> Option<serde_json::Value> {
    let mut json = p.to_json().ok()?;
    if let Some(o) = json.as_object_mut() {
        o.remove("annotations");
    }
    Some(json)
}

/// The weakening settings of `config` (with `engine` in force and the
/// kernel protections the loader could not attach), one line each.
pub fn list(config: &Config, engine: &Engine, degraded: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for d in degraded {
        out.push(format!("kernel: {d}"));
    }
    let (missing, changed) = shipped_rules_changed(engine);
    if !missing.is_empty() {
        out.push(format!(
            "policy: {} lacks shipped rules {}",
            engine.origin(),
            missing.join(", ")
        ));
    }
    if !changed.is_empty() {
        out.push(format!(
            "policy: {} changes shipped rules {} (same id, other scope or conditions)",
            engine.origin(),
            changed.join(", ")
        ));
    }
    let masking = missing_shipped_masking(engine);
    if !masking.is_empty() && !engine.current().masking.is_empty() {
        out.push(format!(
            "policy: {} lacks shipped masking rules ({}): agents read what they mask",
            engine.origin(),
            masking.join(", ")
        ));
    }
    if engine.current().masking.is_empty() {
        out.push(format!(
            "policy: {} has no masking rules (masking.toml): agents read every value",
            engine.origin()
        ));
    }
    if config.egress.mode == super::EgressMode::Audit {
        out.push(
            "egress: mode = \"audit\": agents reach any name and address that is not a \
             target; what enforce would refuse is only recorded"
                .into(),
        );
    }
    for p in config.egress.patterns().unwrap_or_default() {
        if let crate::egress::pattern::Host::Cidr { prefix, .. } = p.host {
            if prefix < 8 {
                out.push(format!(
                    "egress: allow entry \"{p}\" names a /{prefix} range: agents reach any \
                     server in it on that port, with no name checked"
                ));
            }
        }
    }
    if config.oidc.on_expiry == super::OnExpiry::KeepClaims {
        out.push(
            "oidc: on_expiry = \"keep_claims\": a job whose token expired keeps opening \
             connections with the claims last verified"
                .into(),
        );
    }
    if config.oidc.clock_skew_secs > 300 {
        out.push(format!(
            "oidc: clock_skew_secs = {}: tokens are accepted that long after they expire",
            config.oidc.clock_skew_secs
        ));
    }
    if config.jobs.require == Some(false) {
        out.push(
            "jobs: require = false: a runner's processes outside a registered, live CI job \
             (cron, systemd-run --user, a job that skipped its hook) connect without any job"
                .into(),
        );
    }
    let e = &config.enrol;
    if e.uids.is_empty() && e.cgroups.is_empty() && e.exes.is_empty() && e.scripts.is_empty() {
        out.push("enrol: no rules: only processes started with `blastgate run` are guarded".into());
    }
    for t in &config.targets {
        let name = &t.name;
        if !t.enforce {
            out.push(format!(
                "target {name}: enforce = false (shadow mode: decisions are recorded, not applied)"
            ));
        }
        if t.protocol == Protocol::Tcp {
            out.push(format!(
                "target {name}: protocol = \"tcp\": only the connection is decided, not what is sent on it"
            ));
        }
        if let Some(h) = &t.http {
            if h.oversize == Oversize::Pass {
                out.push(format!(
                    "target {name}: oversize = \"pass\": responses over max_inspect_bytes reach agents unmasked"
                ));
            }
            if h.unmaskable == Unmaskable::Scan {
                out.push(format!(
                    "target {name}: unmaskable = \"scan\": responses that are not JSON reach agents with only the value detectors run, fields masked by JSON path as they are"
                ));
            }
            if h.upstream_tls == Some(false) && t.protocol == Protocol::Https {
                out.push(format!(
                    "target {name}: upstream_tls = false: requests agents send over TLS go upstream in clear text"
                ));
            }
        }
        if let Some(p) = &t.postgres {
            if p.tls == UpstreamTls::Require {
                out.push(format!(
                    "target {name}: tls = \"require\": the server's certificate is not verified"
                ));
            }
        }
    }
    out
}
