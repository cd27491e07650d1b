//! `blastgate policy test`: golden request → decision fixtures in
//! `DIR/tests/*.toml`, run against the bundle in `DIR`.
//!
//! A fixture file has optional `[defaults]` (agent, target) and any number
//! of `[[case]]`s: `name`, `agent`, `target`, `action`, `context`,
//! `expect` (allow | deny | hold), and optionally `policy` (the deciding
//! policy id) and `approval` (the approver group of a hold). Every shipped
//! policy must decide at least one case, or the run fails as uncovered.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;

use super::{
    bundle::Bundle,
    decide::{AgentAttrs, TargetAttrs, Verdict},
};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    agent: Option<AgentAttrs>,
    target: Option<TargetAttrs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    agent: Option<AgentAttrs>,
    target: Option<TargetAttrs>,
    action: String,
    #[serde(default)]
    context: Option<toml::Value>,
    expect: Verdict,
    policy: Option<String>,
    approval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: Vec<String>,
    /// Policies no case was decided by.
    pub uncovered: Vec<String>,
    /// Fixture files that could not be read or parsed.
    pub broken: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.uncovered.is_empty() && self.broken.is_empty()
    }
}

pub fn run(bundle: &Bundle, dir: &Path) -> Report {
    let mut report = Report::default();
    let mut covered = BTreeSet::new();
    let tests = dir.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        report
            .broken
            .push(format!("{}: no *.toml fixture files", tests.display()));
    }
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<FixtureFile>(&t).map_err(|e| e.to_string()));
        let fixtures = match parsed {
            Ok(f) => f,
            Err(e) => {
                report.broken.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        for case in fixtures.case {
            let label = format!("{}: {}", file.display(), case.name);
            let (Some(agent), Some(target)) = (
                case.agent.as_ref().or(fixtures.defaults.agent.as_ref()),
                case.target.as_ref().or(fixtures.defaults.target.as_ref()),
            ) else {
                report
                    .failed
                    .push(format!("{label}: no agent or target (and no defaults)"));
                continue;
            };
            let context = case
                .context
                .as_ref()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            match bundle.decide(agent, target, &case.action, &context) {
                Err(e) => report.failed.push(format!("{label}: {e}")),
                Ok(d) => {
                    covered.extend(d.policy_id.iter().cloned());
                    covered.extend(d.if_approved.iter().cloned());
                    let mut wrong = Vec::new();
                    if d.verdict != case.expect {
                        wrong.push(format!("expected {:?}, got {:?}", case.expect, d.verdict));
                    }
                    if case.policy.is_some() && case.policy != d.policy_id {
                        wrong.push(format!(
                            "expected policy {:?}, decided by {:?}",
                            case.policy, d.policy_id
                        ));
                    }
                    if case.approval.is_some() && case.approval != d.approval {
                        wrong.push(format!(
                            "expected approval group {:?}, got {:?}",
                            case.approval, d.approval
                        ));
                    }
                    if wrong.is_empty() {
                        report.passed += 1;
                    } else {
                        report
                            .failed
                            .push(format!("{label}: {} ({})", wrong.join("; "), d.reason));
                    }
                }
            }
        }
    }
    let mut ids: Vec<&String> = bundle.meta.keys().collect();
    ids.sort();
    report.uncovered = ids
        .into_iter()
        .filter(|id| !covered.contains(*id))
        .cloned()
        .collect();
    report
}
