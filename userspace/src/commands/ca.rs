//! `blastgate ca export|install|uninstall|ssh-known-hosts`.

use crate::{
    commands::{cli::CaCommand, client_config},
    config::{Config, Protocol},
    tls::{trust, LocalCa},
};

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Export { config } => {
            let cfg = client_config(config.as_deref())?;
            let ca = LocalCa::load_or_create(&cfg.tls.ca_dir)
                .map_err(|e| anyhow::anyhow!("local CA in {}: {e}", cfg.tls.ca_dir.display()))?;
            print!("{}", ca.cert_pem());
            Ok(())
        }
        CaCommand::Install { config } => {
            let cfg = client_config(config.as_deref())?;
            let ca = LocalCa::load_or_create(&cfg.tls.ca_dir)
                .map_err(|e| anyhow::anyhow!("local CA in {}: {e}", cfg.tls.ca_dir.display()))?;
            if trust::install_host_anchor(&ca)? {
                println!("installed {}", trust::HOST_ANCHOR);
            } else {
                println!("{} already installed", trust::HOST_ANCHOR);
            }
            Ok(())
        }
        CaCommand::Uninstall => {
            if trust::remove_host_anchor()? {
                println!("removed {}", trust::HOST_ANCHOR);
            } else {
                println!("{} is not installed", trust::HOST_ANCHOR);
            }
            Ok(())
        }
        CaCommand::SshKnownHosts { config } => {
            let cfg = client_config(config.as_deref())?;
            for line in ssh_known_hosts_lines(&cfg)? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// The `@cert-authority` lines that make OpenSSH accept the SSH gateway
/// for every configured ssh target, by each name and port agents may use
/// (creating the SSH CA if there is none yet).
pub fn ssh_known_hosts_lines(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let ca = crate::tls::ssh_ca::SshCa::load_or_create(&cfg.tls.ca_dir)
        .map_err(|e| anyhow::anyhow!("SSH CA in {}: {e}", cfg.tls.ca_dir.display()))?;
    let mut lines = Vec::new();
    for t in cfg.targets.iter().filter(|t| t.protocol == Protocol::Ssh) {
        let addrs = t.resolve().map_err(anyhow::Error::msg)?;
        let names: Vec<String> = if t.hostnames.is_empty() {
            addrs.iter().map(|a| a.ip().to_string()).collect()
        } else {
            t.hostnames.clone()
        };
        let mut ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            lines.push(ca.known_hosts_line(&names, Some(port)));
        }
    }
    Ok(lines)
}
