//! Builds the kernel programs (`ebpf/programs`) and embeds the object in the
//! `blastgate` binary, so the daemon ships as one file.
//!
//! The kernel crate is compiled for `bpfel-unknown-none` by Debian's rustc
//! (which ships a prebuilt `core` for that target) and linked by bpf-linker;
//! see README "Building". Environment knobs:
//! - `BLASTGATE_EBPF_OBJECT=path`: embed a prebuilt object instead;
//! - `BLASTGATE_SKIP_EBPF=1`: embed nothing (for `cargo check` on machines
//!   without the BPF toolchain); such a binary refuses to run the daemon;
//! - `BLASTGATE_BPF_CARGO`, `BLASTGATE_BPF_RUSTC`: the toolchain to use
//!   (default `/usr/bin/cargo`, `/usr/bin/rustc`);
//! - `BLASTGATE_BPF_LINKER_DIR`: where bpf-linker lives (default: searched in
//!   `/opt/blastgate-tools/bin`, `~/.cargo/bin`, then `PATH`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const KNOBS: &[&str] = &[
    "BLASTGATE_EBPF_OBJECT",
    "BLASTGATE_SKIP_EBPF",
    "BLASTGATE_BPF_CARGO",
    "BLASTGATE_BPF_RUSTC",
    "BLASTGATE_BPF_LINKER_DIR",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let dest = out.join("blastgate-ebpf.o");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let ebpf = manifest.join("../ebpf");
    for knob in KNOBS {
        println!("cargo:rerun-if-env-changed={knob}");
    }
    for p in [
        "programs/src",
        "programs/Cargo.toml",
        "programs/Cargo.lock",
        "programs/.cargo/config.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(p).display());
    }

    if let Some(prebuilt) = env::var_os("BLASTGATE_EBPF_OBJECT") {
        fs::copy(&prebuilt, &dest).map_err(|e| format!("copying {prebuilt:?}: {e}"))?;
        return Ok(());
    }
    if env::var_os("BLASTGATE_SKIP_EBPF").is_some_and(|v| v != "0") {
        println!("cargo:warning=BLASTGATE_SKIP_EBPF is set: this blastgate has no kernel programs");
        fs::write(&dest, b"").map_err(|e| e.to_string())?;
        return Ok(());
    }

    let cargo = env::var("BLASTGATE_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("BLASTGATE_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let linker_dir = find_linker().ok_or_else(|| {
        "bpf-linker not found. Run `cargo xtask setup` (installs Debian's rustc-web and \
         bpf-linker 0.13), or set BLASTGATE_SKIP_EBPF=1 to build without kernel programs"
            .to_string()
    })?;
    for tool in [&cargo, &rustc] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} not found: the kernel programs build with Debian's rustc-web toolchain; \
                 run `cargo xtask setup`"
            ));
        }
    }

    // A clean environment: the host build's RUSTC, RUSTFLAGS and rustup
    // proxies must not leak into the BPF build.
    let programs = ebpf.join("programs");
    let path = format!("{}:/usr/bin:/bin", linker_dir.display());
    let mut cmd = Command::new(&cargo);
    cmd.env_clear()
        .current_dir(&programs)
        .env("PATH", path)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["build", "--release", "--target", "bpfel-unknown-none"]);
    for keep in ["HOME", "CARGO_HOME", "TMPDIR"] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building the kernel programs failed ({status})"));
    }
    let object = programs.join("target/bpfel-unknown-none/release/blastgate");
    fs::copy(&object, &dest).map_err(|e| format!("copying {}: {e}", object.display()))?;
    Ok(())
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
