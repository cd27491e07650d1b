//! `blastgate policy check|test|explain`.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    commands::cli::{ExplainArgs, PolicyCommand},
    commands::client_config,
    config::Config,
    policy::{diagnostic::Severity, fixtures, AgentAttrs, Bundle, TargetAttrs},
};

fn policy_dir(dir: Option<PathBuf>, config: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let cfg = client_config(config)?;
    Ok(cfg.policy.dir.unwrap_or_else(|| PathBuf::from("policies")))
}

/// Loads a bundle, printing every problem; `None` if it has errors.
fn load(dir: &std::path::Path) -> Option<Bundle> {
    match Bundle::load(dir) {
        Ok(b) => {
            for w in &b.warnings {
                eprintln!("{w}");
            }
            Some(b)
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            let errors = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            eprintln!("{}: {errors} error(s)", dir.display());
            None
        }
    }
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { dir, config } => {
            let dir = policy_dir(dir, config.as_deref())?;
            Ok(match load(&dir) {
                Some(b) => {
                    println!("{}: ok ({} policies)", dir.display(), b.meta.len());
                    ExitCode::SUCCESS
                }
                None => ExitCode::FAILURE,
            })
        }
        PolicyCommand::Test { dir, config } => {
            let dir = policy_dir(dir, config.as_deref())?;
            let Some(bundle) = load(&dir) else {
                return Ok(ExitCode::FAILURE);
            };
            let report = fixtures::run(&bundle, &dir);
            for b in &report.broken {
                println!("BROKEN {b}");
            }
            for f in &report.failed {
                println!("FAIL {f}");
            }
            for u in &report.uncovered {
                println!("UNCOVERED policy {u}: no fixture is decided by it");
            }
            println!("{} passed, {} failed", report.passed, report.failed.len());
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Explain(args) => {
            let ExplainArgs {
                agent,
                target,
                action,
                context,
                protocol,
                labels,
                uid,
                exe,
                comm,
                dir,
                config,
                json,
            } = *args;
            let cfg: Config = client_config(config.as_deref())?;
            let dir = dir
                .or(cfg.policy.dir.clone())
                .unwrap_or_else(|| PathBuf::from("policies"));
            let Some(bundle) = load(&dir) else {
                return Ok(ExitCode::FAILURE);
            };
            let target = match cfg.targets.iter().find(|t| t.name == target) {
                Some(t) => t.attrs(),
                None => TargetAttrs {
                    name: target,
                    protocol,
                    labels: labels
                        .iter()
                        .map(|l| {
                            l.split_once('=')
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected KEY=VALUE"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                },
            };
            let agent = AgentAttrs {
                name: agent,
                uid: uid.unwrap_or(0),
                exe: exe.unwrap_or_default(),
                comm: comm.unwrap_or_default(),
                lineage: Vec::new(),
                oidc: None,
            };
            let context: serde_json::Value = match context {
                Some(c) => {
                    serde_json::from_str(&c).map_err(|e| anyhow::anyhow!("--context: {e}"))?
                }
                None => serde_json::Value::Null,
            };
            let d = bundle.decide(&agent, &target, &action, &context)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("decision: {:?}", d.verdict);
            if let Some(id) = &d.policy_id {
                println!("deciding policy: {id}");
            }
            if let Some(g) = &d.approval {
                println!("approval by: {g}");
            }
            println!("reason: {}", d.reason);
            if d.matched.is_empty() {
                println!("matched: none");
            }
            for id in &d.matched {
                if let Some(m) = bundle.meta.get(id) {
                    println!(
                        "matched: {id} ({:?}) at {}:{}{}",
                        m.effect,
                        m.file.display(),
                        m.line,
                        m.approval
                            .as_ref()
                            .map(|g| format!(", approval by {g}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
