//! `blastgate ca export`.

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
