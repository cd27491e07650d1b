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
    }
}
