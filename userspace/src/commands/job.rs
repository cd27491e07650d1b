//! `blastgate job start|end|audience`: what the CI runners' hooks run.
//!
//! The socket is the config's `[jobs] socket`, never a variable of the
//! environment: a job's `env:` / `variables:` reach the hook's environment
//! and could otherwise point it at a socket of the job's own.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context};

use super::cli::JobCommand;
use crate::{
    config::{CiProvider, Config},
    jobs::{
        env_vars,
        server::{JobRequest, JobResponse},
    },
};

/// How long the daemon gets to answer (a token may need its issuer's keys).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Start {
            provider,
            oidc_token_file,
            oidc_token_env,
            config,
        } => {
            let config = Config::load(&config)?;
            let provider = CiProvider::from(provider);
            let token = read_token(oidc_token_file.as_deref(), oidc_token_env.as_deref())?;
            let fields: BTreeMap<String, String> = env_vars(provider)
                .iter()
                .filter_map(|(field, var)| {
                    std::env::var(var)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .map(|v| (field.to_string(), v))
                })
                .collect();
            let req = JobRequest::Start {
                provider,
                fields,
                oidc_token: token,
            };
            match call(&config.jobs.socket_path(&config.control.socket), &req)? {
                JobResponse::Started { job, root_pid } => {
                    println!(
                        "blastgate: {} registered (job root pid {root_pid}, id {})",
                        job.describe(),
                        job.id
                    );
                    Ok(())
                }
                JobResponse::Error { message } => bail!("the job was not registered: {message}"),
                other => bail!("unexpected answer from the daemon: {other:?}"),
            }
        }
        JobCommand::End { config } => {
            let config = Config::load(&config)?;
            match call(
                &config.jobs.socket_path(&config.control.socket),
                &JobRequest::End,
            )? {
                JobResponse::Ended { job, closed } => {
                    println!(
                        "blastgate: {} ended; {closed} open session(s) closed",
                        job.describe()
                    );
                    Ok(())
                }
                JobResponse::Error { message } => bail!("{message}"),
                other => bail!("unexpected answer from the daemon: {other:?}"),
            }
        }
        JobCommand::Audience { provider, config } => {
            let config = Config::load(&config)?;
            let provider = CiProvider::from(provider);
            let issuer = config
                .oidc
                .issuers
                .iter()
                .find(|i| i.provider == Some(provider))
                .with_context(|| {
                    format!(
                        "no [[oidc.issuers]] with provider = \"{}\"",
                        provider.name()
                    )
                })?;
            println!("{}", issuer.audience);
            Ok(())
        }
    }
}

fn call(socket: &Path, req: &JobRequest) -> anyhow::Result<JobResponse> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the blastgate daemon at {}", socket.display()))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // A peer the daemon does not serve is answered and closed before it
    // writes: its answer is still there to read.
    let written = s.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(s.take(crate::jobs::server::MAX_REQUEST)).read_line(&mut answer);
    if answer.is_empty() {
        written.with_context(|| format!("{}", socket.display()))?;
        read.with_context(|| format!("{}: no answer", socket.display()))?;
    }
    serde_json::from_str(&answer)
        .with_context(|| format!("{}: bad answer {answer:?}", socket.display()))
}

/// The token from a file (a JWT, or GitHub's `{"value": …}` answer) or a
/// variable.
fn read_token(file: Option<&Path>, env: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(token) = super::run::read_token(file, env)? else {
        return Ok(None);
    };
    if token.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(&token).context("the token file is JSON but not valid")?;
        let Some(value) = v.get("value").and_then(|v| v.as_str()) else {
            bail!("the token file is JSON without a \"value\"");
        };
        return Ok(Some(value.trim().to_string()));
    }
    Ok(Some(token))
}
