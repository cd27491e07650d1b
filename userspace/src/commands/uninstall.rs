//! `blastgate uninstall`.

use crate::{config::Config, intercept};

pub fn run(config: &Config) -> anyhow::Result<()> {
    let removed = intercept::uninstall(&config.bpf.pin_dir)?;
    if removed.is_empty() {
        println!("nothing pinned under {}", config.bpf.pin_dir.display());
    } else {
        println!(
            "detached and removed {} pinned objects under {}",
            removed.len(),
            config.bpf.pin_dir.display()
        );
    }
    Ok(())
}
