//! `blastgate ca export|install|uninstall|ssh-known-hosts`.

use crate::{
    commands::{cli::CaCommand, client_config},
    tls::LocalCa,
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
            let anchor = std::path::Path::new(crate::tls::trust::HOST_ANCHOR);
            let current = std::fs::read_to_string(anchor).unwrap_or_default();
            if current == ca.cert_pem() {
                println!("{} already installed", anchor.display());
                return Ok(());
            }
            if let Some(dir) = anchor.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
            }
            std::fs::write(anchor, ca.cert_pem())
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", anchor.display()))?;
            update_ca_certificates(&[])?;
            println!("installed {}", anchor.display());
            Ok(())
        }
        CaCommand::Uninstall => {
            let anchor = std::path::Path::new(crate::tls::trust::HOST_ANCHOR);
            match std::fs::remove_file(anchor) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{} is not installed", anchor.display());
                    return Ok(());
                }
                Err(e) => anyhow::bail!("removing {}: {e}", anchor.display()),
            }
            // --fresh: a removed anchor is only dropped from the bundle
            // when it is rebuilt.
            update_ca_certificates(&["--fresh"])?;
            println!("removed {}", anchor.display());
            Ok(())
        }
        CaCommand::SshKnownHosts { config } => {
            let cfg = client_config(config.as_deref())?;
            let ca = crate::tls::ssh_ca::SshCa::load_or_create(&cfg.tls.ca_dir)
                .map_err(|e| anyhow::anyhow!("SSH CA in {}: {e}", cfg.tls.ca_dir.display()))?;
            let ssh = cfg
                .targets
                .iter()
                .filter(|t| t.protocol == crate::config::Protocol::Ssh);
            for t in ssh {
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
                    println!("{}", ca.known_hosts_line(&names, Some(port)));
                }
            }
            Ok(())
        }
    }
}

fn update_ca_certificates(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("update-ca-certificates")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| anyhow::anyhow!("running update-ca-certificates: {e}"))?;
    if !status.success() {
        anyhow::bail!("update-ca-certificates failed ({status})");
    }
    Ok(())
}
