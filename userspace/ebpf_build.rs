//! Builds the kernel crate for bpfel-unknown-none. Shared by `build.rs`
//! (which embeds the result) and `cargo xtask build-ebpf`.
//!
//! Debian's rustc-web ships a prebuilt `core` for the BPF target, so no
//! nightly or `-Z build-std` is needed; bpf-linker 0.13 links against the
//! same LLVM 22. Elsewhere (Ubuntu) rustup's nightly with rust-src builds
//! `core` itself. The build runs in a scrubbed environment so that the host
//! build's RUSTC, RUSTFLAGS and rustup proxies cannot leak into it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// How the kernel crate gets a `core` for the BPF target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// Debian's rustc-web with libstd-rust-web-dev-bpf (prebuilt `core`).
    Debian,
    /// rustup's nightly with rust-src, building `core` with `-Z build-std`.
    Nightly,
}

/// Debian's route when its BPF `core` is installed, else rustup nightly.
/// `BLASTGATE_BPF_TOOLCHAIN=debian|nightly` overrides.
pub fn toolchain() -> Toolchain {
    match env::var("BLASTGATE_BPF_TOOLCHAIN").as_deref() {
        Ok("nightly") => Toolchain::Nightly,
        Ok("debian") => Toolchain::Debian,
        _ if Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists() => Toolchain::Debian,
        _ => Toolchain::Nightly,
    }
}

/// A cargo command for the kernel crate in `programs`, with the toolchain
/// route's environment: `subcommand` (build, check, clippy) then `args`.
pub fn cargo(programs: &Path, subcommand: &str, args: &[&str]) -> Result<Command, String> {
    let linker_dir = find_linker().ok_or_else(|| {
        "bpf-linker not found. Run `cargo xtask setup` (installs the BPF toolchain and \
         bpf-linker 0.13), or set BLASTGATE_SKIP_EBPF=1 to build without kernel programs"
            .to_string()
    })?;
    let home = env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let mut cmd = match toolchain() {
        Toolchain::Debian => {
            let cargo = env::var("BLASTGATE_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
            let rustc = env::var("BLASTGATE_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
            for tool in [&cargo, &rustc] {
                if !Path::new(tool).exists() {
                    return Err(format!(
                        "{tool} not found: the kernel programs build with Debian's rustc-web \
                         toolchain; run `cargo xtask setup`"
                    ));
                }
            }
            let mut c = Command::new(&cargo);
            c.env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", linker_dir.display()))
                .env("RUSTC", &rustc)
                .arg(subcommand);
            c
        }
        Toolchain::Nightly => {
            let cargo_bin = env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cargo"))
                .join("bin");
            let mut c = Command::new(cargo_bin.join("cargo"));
            c.env_clear()
                .env(
                    "PATH",
                    format!(
                        "{}:{}:/usr/bin:/bin",
                        linker_dir.display(),
                        cargo_bin.display()
                    ),
                )
                .args(["+nightly", subcommand, "-Z", "build-std=core"]);
            c
        }
    };
    cmd.args(["--release", "--target", "bpfel-unknown-none"])
        .args(args);
    // aya-ebpf uses `asm_experimental_arch`, a nightly feature.
    cmd.current_dir(programs)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("HOME", &home);
    for keep in ["CARGO_HOME", "RUSTUP_HOME", "TMPDIR"] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    Ok(cmd)
}

/// Builds `programs` (the kernel crate directory); returns the object path.
pub fn build(programs: &Path) -> Result<PathBuf, String> {
    let mut cmd = cargo(programs, "build", &[])?;
    let status = cmd.status().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("building the kernel programs failed ({status})"));
    }
    Ok(programs.join("target/bpfel-unknown-none/release/blastgate"))
}

fn find_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = env::var_os("BLASTGATE_BPF_LINKER_DIR") {
        dirs.push(d.into());
    }
    dirs.push("/opt/blastgate-tools/bin".into());
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    dirs.into_iter().find(|d| d.join("bpf-linker").is_file())
}
