//! `cargo xtask deb`: the Debian package, built from the workspace by
//! cargo-deb (pinned; `cargo xtask setup` installs it). Its build is the
//! normal one: userspace/build.rs compiles and embeds the kernel programs.
//! What goes in the package, and its maintainer scripts, is declared in
//! userspace/Cargo.toml `[package.metadata.deb]` and packaging/.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{setup, sh};

pub const CARGO_DEB_VERSION: &str = "3.8.0";

pub struct Opts {
    /// The package version (default: the crate's, revision 1).
    pub version: Option<String>,
    /// Cargo profile (default release).
    pub profile: String,
    /// Package what the profile's target directory already holds.
    pub no_build: bool,
    /// Where the .deb goes (default target/debian).
    pub output: Option<PathBuf>,
}

/// cargo-deb at the pinned version: in TOOLS_ROOT (where setup puts it) or
/// ~/.cargo/bin.
pub fn cargo_deb() -> Option<PathBuf> {
    setup::tool_candidates("cargo-deb").into_iter().find(|p| {
        sh::stdout(Command::new(p).arg("--version"))
            .is_ok_and(|v| v.split_whitespace().last() == Some(CARGO_DEB_VERSION))
    })
}

/// Builds the package; prints and returns its path.
pub fn run(root: &Path, opts: &Opts) -> Result<PathBuf> {
    let Some(tool) = cargo_deb() else {
        bail!("cargo-deb {CARGO_DEB_VERSION} is not installed: run `cargo xtask setup`");
    };
    let mut cmd = Command::new(tool);
    cmd.current_dir(root)
        .args(["-p", "blastgate", "--locked", "--profile", &opts.profile])
        // A binary without its kernel programs refuses to run the daemon.
        .env_remove("BLASTGATE_SKIP_EBPF")
        .env_remove("BLASTGATE_EBPF_OBJECT");
    if let Some(v) = &opts.version {
        cmd.args(["--deb-version", v]);
    }
    if opts.no_build {
        cmd.arg("--no-build");
    }
    if let Some(out) = &opts.output {
        cmd.arg("--output").arg(out);
    }
    eprintln!("+ {}", sh::describe(&cmd));
    let started = Instant::now();
    let out = sh::stdout(&mut cmd)?;
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo-deb named no .deb: {out}"))?;
    eprintln!(
        "deb: built {} in {:.0} s",
        deb.display(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", deb.display());
    Ok(deb)
}
