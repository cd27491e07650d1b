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
//!   `/opt/blastgate-tools/bin`, `~/.cargo/bin`, then `PATH`);
//! - `BLASTGATE_BPF_TOOLCHAIN=debian|nightly`: force a toolchain route.

#[path = "ebpf_build.rs"]
mod ebpf_build;

use std::{env, fs, path::PathBuf};

const KNOBS: &[&str] = &[
    "BLASTGATE_EBPF_OBJECT",
    "BLASTGATE_SKIP_EBPF",
    "BLASTGATE_BPF_CARGO",
    "BLASTGATE_BPF_RUSTC",
    "BLASTGATE_BPF_LINKER_DIR",
    "BLASTGATE_BPF_TOOLCHAIN",
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
        "../userspace/ebpf_build.rs",
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

    let object = ebpf_build::build(&ebpf.join("programs"))?;
    fs::copy(&object, &dest).map_err(|e| format!("copying {}: {e}", object.display()))?;
    Ok(())
}
