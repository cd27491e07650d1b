//! `blastgate run`: get labelled, drop privileges, exec.

use std::{ffi::CString, os::unix::process::CommandExt, path::Path};

use crate::identity::users::{self, User};

use anyhow::{bail, Context};

use crate::control::{
    client::Client,
    proto::{Request, Response},
};

/// `trust`: the variables that make the agent's clients trust the local CA
/// (see `tls::trust`); the agent's own settings of them are replaced.
pub fn run(
    socket: &Path,
    agent: &str,
    oidc_token: Option<String>,
    token_env: Option<&str>,
    user: Option<&str>,
    trust: &[(&str, std::path::PathBuf)],
    command: &[std::ffi::OsString],
) -> anyhow::Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given");
    };
    let resolved = user.map(lookup_user).transpose()?;
    match Client::call(
        socket,
        &Request::Label {
            agent: agent.to_string(),
            oidc_token,
        },
    ) {
        Ok(Response::Labelled {
            pid,
            agent_id,
            oidc,
            ..
        }) => {
            tracing::debug!(pid, agent_id, "labelled");
            if let Some(id) = oidc {
                tracing::info!(issuer = ?id.iss, subject = ?id.sub, "OIDC token verified");
            }
        }
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(crate::Error::Refused(message)) => bail!("{message}; nothing started"),
        Err(e) => bail!("{e}; refusing to start the agent unguarded"),
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(var) = token_env {
        cmd.env_remove(var);
    }
    for (name, path) in trust {
        cmd.env(name, path);
    }
    if let Some(u) = &resolved {
        drop_to(u)?;
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("exec {}", program.to_string_lossy()))
}

/// A token is a few KiB: a larger file is not one.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// The token `--oidc-token-file` or `--oidc-token-env` names, if either.
pub fn read_token(file: Option<&Path>, env: Option<&str>) -> anyhow::Result<Option<String>> {
    use std::io::Read;
    let token = match (file, env) {
        (Some(path), _) => {
            let mut text = String::new();
            std::fs::File::open(path)
                .with_context(|| format!("--oidc-token-file {}", path.display()))?
                .take(MAX_TOKEN_FILE)
                .read_to_string(&mut text)
                .with_context(|| format!("--oidc-token-file {}", path.display()))?;
            text
        }
        (None, Some(var)) => std::env::var(var)
            .with_context(|| format!("--oidc-token-env {var}: not set (or not UTF-8)"))?,
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the OIDC token given is empty; nothing started");
    }
    Ok(Some(token))
}

fn lookup_user(spec: &str) -> anyhow::Result<User> {
    users::lookup(spec).ok_or_else(|| anyhow::anyhow!("no such user: {spec}"))
}

/// Supplementary groups, gid, then uid: the order that leaves no way back.
fn drop_to(u: &User) -> anyhow::Result<()> {
    let name = CString::new(u.name.as_str()).context("user name contains NUL")?;
    // SAFETY: plain syscalls on valid arguments; each result is checked.
    unsafe {
        if libc::initgroups(name.as_ptr(), u.gid as libc::gid_t) != 0 {
            bail!(
                "initgroups({}): {}",
                u.name,
                std::io::Error::last_os_error()
            );
        }
        if libc::setgid(u.gid) != 0 {
            bail!("setgid({}): {}", u.gid, std::io::Error::last_os_error());
        }
        if libc::setuid(u.uid) != 0 {
            bail!("setuid({}): {}", u.uid, std::io::Error::last_os_error());
        }
        if u.uid != 0 && libc::setuid(0) == 0 {
            bail!("could still regain root after dropping to {}", u.name);
        }
    }
    Ok(())
}
