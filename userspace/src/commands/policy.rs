//! `blastgate policy check|test|explain`.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    commands::cli::{ExplainArgs, PolicyCommand},
    commands::client_config,
    config::Config,
    policy::{diagnostic::Severity, fixtures, AgentAttrs, Asker, Bundle, TargetAttrs},
};

fn policy_dir(dir: Option<PathBuf>, config: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let cfg = client_config(config)?;
    Ok(cfg.policy.dir.unwrap_or_else(|| PathBuf::from("policies")))
}

/// Writes the built-in policy files into `dir`, which must be new or
/// empty: an export never overwrites an admin's edits.
fn export(dir: &std::path::Path) -> anyhow::Result<()> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty: export into a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    for (name, text) in crate::policy::bundle::builtin_files() {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
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
                    println!(
                        "{}: ok ({} policies, {} masking rules)",
                        dir.display(),
                        b.meta.len(),
                        b.masking.rule_count()
                    );
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
        PolicyCommand::Export { dir } => {
            export(&dir)?;
            println!(
                "{}: the built-in policies; point [policy] dir at it to edit them",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Bench {
            dir,
            generated,
            iterations,
            config,
        } => {
            let dir = policy_dir(dir, config.as_deref())?;
            bench(&dir, generated, iterations)?;
            Ok(ExitCode::SUCCESS)
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
                job: None,
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

/// Typical requests, one per protocol family.
fn bench_requests() -> Vec<(AgentAttrs, TargetAttrs, &'static str, serde_json::Value)> {
    let agent = AgentAttrs {
        name: "claude".into(),
        uid: 1001,
        exe: "/usr/bin/psql".into(),
        comm: "psql".into(),
        lineage: vec!["bash".into(), "claude".into()],
        oidc: None,
        job: None,
    };
    let target = |name: &str, protocol: &str, env: &str| TargetAttrs {
        name: name.into(),
        protocol: protocol.into(),
        labels: [("env".to_string(), env.to_string())].into_iter().collect(),
    };
    vec![
        (
            agent.clone(),
            target("orders-db", "postgres", "production"),
            "connect",
            serde_json::Value::Null,
        ),
        (
            agent.clone(),
            target("orders-db", "postgres", "production"),
            "sql:select",
            serde_json::json!({"command": "SELECT", "tables_read": ["public.orders"], "has_where": true}),
        ),
        (
            agent.clone(),
            target("orders-db", "postgres", "production"),
            "sql:delete",
            serde_json::json!({"command": "DELETE", "tables_written": ["public.orders"]}),
        ),
        (
            agent.clone(),
            target("deploy", "ssh", "staging"),
            "ssh:exec",
            serde_json::json!({"command": "systemctl restart app"}),
        ),
        (
            agent,
            target("k8s", "https", "production"),
            "http:DELETE",
            serde_json::json!({"method": "DELETE", "path": "/api/v1/namespaces/shop", "k8s_resource": "namespaces"}),
        ),
    ]
}

fn bench(dir: &std::path::Path, generated: usize, iterations: usize) -> anyhow::Result<()> {
    let tmp = tempfile_dir()?;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.join(e.file_name()))?;
        }
    }
    let mut extra = String::new();
    // Realistic extra rules: per-agent and per-target restrictions, the
    // kind an admin adds as agents and targets multiply.
    for i in 0..generated {
        let scope = if i % 2 == 0 {
            format!("principal == Agent::\"agent-{i}\", action in Action::\"sql\", resource")
        } else {
            format!("principal, action in [Action::\"sql:delete\", Action::\"sql:update\"], resource == Target::\"db-{i}\"")
        };
        extra += &format!(
            "@id(\"generated-{i}\")\n@reason(\"generated for the benchmark\")\nforbid ({scope})\nwhen {{ context.tables_written.contains(\"t{i}\") }};\n\n"
        );
    }
    std::fs::write(tmp.join("zz-generated.cedar"), extra)?;
    let Some(bundle) = load(&tmp) else {
        anyhow::bail!("the benchmark policy set does not load");
    };
    // A session serialises its agent and target once, for all it asks.
    let requests: Vec<_> = bench_requests()
        .into_iter()
        .map(|(a, t, action, ctx)| (Asker::new(a, t), action, ctx))
        .collect();
    let measure = |cached: bool| -> anyhow::Result<(f64, f64)> {
        let mut lat = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let (asker, action, ctx) = &requests[i % requests.len()];
            let start = std::time::Instant::now();
            let d = if cached {
                bundle.decide_cached_for(asker, action, ctx)?
            } else {
                bundle.decide_for(asker, action, ctx)?
            };
            lat.push(start.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(d);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        Ok((pct(0.5), pct(0.99)))
    };
    measure(false)?; // warm-up
    let (u50, u99) = measure(false)?;
    let (c50, c99) = measure(true)?;
    let mut by_kind = Vec::new();
    {
        for (asker, action, ctx) in &requests {
            let mut lat: Vec<f64> = (0..2000)
                .map(|_| {
                    let s = std::time::Instant::now();
                    let _ = std::hint::black_box(bundle.decide_for(asker, action, ctx));
                    s.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            lat.sort_by(|x, y| x.total_cmp(y));
            by_kind.push(format!(
                "    {action:<12} p50 {:>7.2} µs  p99 {:>7.2} µs",
                lat[1000], lat[1980]
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "{} policies ({} shipped + {generated} generated), {} request kinds, {iterations} decisions each:",
        bundle.meta.len(),
        bundle.meta.len() - generated,
        requests.len()
    );
    println!("  uncached  p50 {u50:>7.2} µs  p99 {u99:>7.2} µs   (all kinds mixed)");
    println!("  cached    p50 {c50:>7.2} µs  p99 {c99:>7.2} µs");
    println!("  uncached, by request kind (2000 each):");
    for line in by_kind {
        println!("{line}");
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("blastgate-policy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
