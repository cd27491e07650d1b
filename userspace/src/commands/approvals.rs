//! `blastgate approvals list|approve|deny`.

use crate::{
    commands::{cli::ApprovalsCommand, client_config},
    control::{
        client::Client,
        proto::{Request, Response},
    },
};

pub fn run(cmd: ApprovalsCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCommand::List { config, json } => {
            let cfg = client_config(config.as_deref())?;
            let Response::Approvals { pending } =
                Client::call(&cfg.control.socket, &Request::Approvals)?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&pending)?);
                return Ok(());
            }
            if pending.is_empty() {
                println!("no pending approval requests");
            }
            for r in pending {
                println!(
                    "{}  {}  agent={} pid={} target={} action={} policy={} group={}\n    {}\n    {}",
                    r.id,
                    humantime::format_rfc3339_seconds(r.created),
                    r.agent,
                    r.pid,
                    r.target,
                    r.action,
                    r.policy_id.as_deref().unwrap_or("-"),
                    r.group,
                    r.text,
                    r.reason
                );
                if let Some(job) = &r.ci_job {
                    println!("    CI job: {}", job.describe());
                }
            }
            Ok(())
        }
        ApprovalsCommand::Approve { id, reason, config } => decide(id, true, reason, config),
        ApprovalsCommand::Deny { id, reason, config } => decide(id, false, reason, config),
    }
}

fn decide(
    id: uuid::Uuid,
    approve: bool,
    reason: Option<String>,
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let cfg = client_config(config.as_deref())?;
    let req = Request::Decide {
        id,
        approve,
        reason,
        on_behalf_of: std::env::var("SUDO_USER").ok(),
    };
    match Client::call(&cfg.control.socket, &req)? {
        Response::Decided { id, by } => {
            println!(
                "{} {id} (as {by})",
                if approve { "approved" } else { "denied" }
            );
            Ok(())
        }
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}
