//! `blastgate install`: the host set-up a package's postinst (or an admin on
//! a host without the package) runs once, and again at will.
//!
//! Every step looks at the host first and changes only what differs, so a
//! second run prints `unchanged` for each and touches no file: the package
//! can run it on every upgrade without rewriting what an admin adjusted
//! within the rules (an added ssh target's known_hosts line is the one kind
//! of change a rerun is for).

mod dirs;
mod enrol;
mod known_hosts;

use std::{fmt, path::Path};

use crate::{
    commands::ca::ssh_known_hosts_lines,
    config::{Config, DEFAULT_CONFIG},
    policy::masking,
    tls::{ssh_ca::SshCa, trust, LocalCa},
};

pub use known_hosts::SSH_KNOWN_HOSTS;

/// Where held credentials (target passwords, keys) belong, beside the
/// config file (`/etc/blastgate/secrets`): root-only.
pub const SECRETS_DIR: &str = "secrets";

/// What one step did to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Removed,
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Removed => "removed",
            Change::Unchanged => "unchanged",
        })
    }
}

fn report(change: Change, what: impl fmt::Display) {
    println!("{change:<9} {what}");
}

/// What `blastgate install` was asked for.
pub struct Request<'a> {
    pub config: Option<&'a Path>,
    /// Local users (names or uids) whose every process is an agent.
    pub enrol_users: &'a [String],
    /// The agent name those users' processes get (default: the user name).
    pub agent: Option<&'a str>,
}

pub fn run(req: Request) -> anyhow::Result<()> {
    let path = req.config.unwrap_or(Path::new(DEFAULT_CONFIG));
    let conf_dir = path.parent().unwrap_or(Path::new("/"));
    report(dirs::ensure_exists(conf_dir, 0o755)?, conf_dir.display());
    report(enrol::ensure_config_file(path)?, path.display());
    // Enrolment first: it is the step that can refuse (an unknown user,
    // root), and it leaves a config that still loads or none at all.
    let mut enrolled = false;
    for user in req.enrol_users {
        let (change, what) = enrol::enrol_user(path, user, req.agent)?;
        enrolled |= change != Change::Unchanged;
        report(change, what);
    }
    let cfg = Config::load(path)?;

    let secrets = conf_dir.join(SECRETS_DIR);
    report(dirs::ensure(&secrets, 0o700)?, secrets.display());
    for dir in [&cfg.records.spool_dir, &cfg.tls.ca_dir] {
        // /var/lib/blastgate for both with the defaults: said once.
        if let Some(parent) = dir.parent().filter(|p| *p != conf_dir) {
            let change = dirs::ensure_exists(parent, 0o755)?;
            if change != Change::Unchanged || dir == &cfg.records.spool_dir {
                report(change, parent.display());
            }
        }
        let mode = if dir == &cfg.tls.ca_dir {
            crate::tls::CA_DIR_MODE
        } else {
            0o700
        };
        report(dirs::ensure(dir, mode)?, dir.display());
    }

    let ca_dir = &cfg.tls.ca_dir;
    let had = LocalCa::present(ca_dir);
    let ca = LocalCa::load_or_create(ca_dir)
        .map_err(|e| anyhow::anyhow!("local CA in {}: {e}", ca_dir.display()))?;
    report(created_if(!had), format!("TLS CA in {}", ca_dir.display()));
    let had = SshCa::present(ca_dir);
    SshCa::load_or_create(ca_dir)
        .map_err(|e| anyhow::anyhow!("SSH CA in {}: {e}", ca_dir.display()))?;
    report(created_if(!had), format!("SSH CA in {}", ca_dir.display()));
    let key = ca_dir.join(masking::DEFAULT_KEY_FILE);
    let had = key.exists();
    masking::load_or_create_default_key(ca_dir).map_err(anyhow::Error::msg)?;
    report(
        created_if(!had),
        format!("masking hash key {}", key.display()),
    );

    let added = trust::install_host_anchor(&ca)?;
    report(
        created_if(added),
        format!("host trust store entry {}", trust::HOST_ANCHOR),
    );

    let lines = ssh_known_hosts_lines(&cfg)?;
    let change = known_hosts::put_block(Path::new(SSH_KNOWN_HOSTS), &lines)?;
    report(
        change,
        format!(
            "{} @cert-authority line(s) for the ssh targets in {SSH_KNOWN_HOSTS}",
            lines.len()
        ),
    );
    if enrolled {
        println!("a running daemon applies the enrolment when it is restarted");
    }
    Ok(())
}

/// `blastgate uninstall --undo-install`: the host-wide changes of
/// [`run`] that outlive blastgate's own directories. The state directories
/// (spool, CA) stay: unshipped records are not thrown away here; `dpkg
/// --purge` (or `rm`) removes them.
pub fn undo() -> anyhow::Result<()> {
    let removed = trust::remove_host_anchor()?;
    report(
        if removed {
            Change::Removed
        } else {
            Change::Unchanged
        },
        format!("host trust store entry {}", trust::HOST_ANCHOR),
    );
    let change = known_hosts::remove_block(Path::new(SSH_KNOWN_HOSTS))?;
    report(change, format!("blastgate's block in {SSH_KNOWN_HOSTS}"));
    Ok(())
}

fn created_if(created: bool) -> Change {
    if created {
        Change::Created
    } else {
        Change::Unchanged
    }
}
