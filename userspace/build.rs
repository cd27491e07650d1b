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
    embed_policies(
        &manifest.join("../policies"),
        &out.join("builtin_policies.rs"),
    )?;
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

/// The shipped policies (`policies/*.cedar`, the schema, `masking.toml`)
/// become part of the binary, so a daemon configured without `[policy]`
/// enforces them instead of allowing everything. Every file in the
/// directory is taken, so a policy added there cannot be left out.
fn embed_policies(dir: &std::path::Path, dest: &std::path::Path) -> Result<(), String> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let listed = |d: &std::path::Path| -> Result<Vec<PathBuf>, String> {
        Ok(fs::read_dir(d)
            .map_err(|e| format!("reading {}: {e}", d.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect())
    };
    let mut files: Vec<PathBuf> = listed(dir)?
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "cedar" || x == "cedarschema")
                || p.file_name().is_some_and(|n| n == "masking.toml")
        })
        .collect();
    // The golden fixtures go along, so an exported set can be tested.
    let tests = dir.join("tests");
    println!("cargo:rerun-if-changed={}", tests.display());
    files.extend(
        listed(&tests)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "toml")),
    );
    let mut code = String::from("&[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .strip_prefix(dir)
            .ok()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a UTF-8 name", f.display()))?;
        let path = f
            .canonicalize()
            .map_err(|e| format!("{}: {e}", f.display()))?;
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("]\n");
    fs::write(dest, code).map_err(|e| format!("writing {}: {e}", dest.display()))
}
