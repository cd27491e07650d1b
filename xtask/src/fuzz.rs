//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs
//! each for a bounded time, from the seed corpus committed beside them.
//!
//! A crash (panic, sanitizer report), a hang (`-timeout`) or an
//! allocation or RSS over the limits fails the run; the input that did it
//! is kept and its path printed. New corpus entries go to a scratch
//! directory, never into the repository (`fuzz/corpus/` holds the chosen
//! seeds and the regression inputs of fixed findings).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{setup, sh};

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "pg_frames",
    "pg_relay",
    "sftp",
    "git_push",
    "http_request",
    "ssh_command",
    "sql_classify",
    "json_mask",
];

/// libFuzzer's verdicts on one input: per-input time, memory per run and
/// per allocation. Inputs are at most `MAX_LEN` bytes.
const TIMEOUT_S: u32 = 10;
const RSS_LIMIT_MB: u32 = 2048;
const MALLOC_LIMIT_MB: u32 = 512;
const MAX_LEN: u32 = 65536;

pub struct Opts {
    pub seconds: u32,
    pub targets: Vec<String>,
}

/// How the fuzz build gets the nightly-only flags (sanitizers, coverage
/// instrumentation) it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    /// rustup's nightly, when installed.
    Nightly,
    /// The stable toolchain told to accept nightly flags: what a machine
    /// without a nightly gets, rather than a download.
    Bootstrap,
}

fn toolchain() -> Toolchain {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if nightly {
        Toolchain::Nightly
    } else {
        Toolchain::Bootstrap
    }
}

/// cargo-fuzz, where `cargo xtask setup` puts it (or an existing install).
pub fn cargo_fuzz() -> Option<PathBuf> {
    setup::tool_candidates("cargo-fuzz")
        .into_iter()
        .find(|p| p.exists())
}

/// A cargo-fuzz command on the chosen toolchain, from the repository root.
fn command(root: &Path, tool: &Path, toolchain: Toolchain) -> Command {
    let mut c = Command::new(tool);
    c.current_dir(root).arg("fuzz");
    // Whatever the outer `cargo xtask` was run with must not leak in.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO",
    ] {
        c.env_remove(var);
    }
    match toolchain {
        Toolchain::Nightly => {
            c.env("RUSTUP_TOOLCHAIN", "nightly")
                .env_remove("RUSTC_BOOTSTRAP");
        }
        Toolchain::Bootstrap => {
            c.env_remove("RUSTUP_TOOLCHAIN").env("RUSTC_BOOTSTRAP", "1");
        }
    }
    // The fuzz targets drive parsers, never the kernel: the build embeds
    // no kernel object (the product build is not affected: this variable
    // is set for this command only).
    c.env("BLASTGATE_SKIP_EBPF", "1");
    c
}

/// What one target's run came to.
struct Outcome {
    target: String,
    execs: u64,
    per_second: u64,
    corpus: u64,
    new: u64,
    peak_rss_mb: u64,
    failure: Option<String>,
}

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    let targets: Vec<String> = if opts.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        opts.targets.clone()
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "no fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let tool = cargo_fuzz().context("cargo-fuzz is not installed: run `cargo xtask setup`")?;
    let toolchain = toolchain();
    eprintln!(
        "fuzz: building {} with the {toolchain:?} toolchain",
        targets.join(", ")
    );
    let started = Instant::now();
    // One build of every target (cargo-fuzz builds one or all): they share
    // the whole dependency tree. 16 codegen units, not cargo-fuzz's 1: the
    // build is most of the time.
    sh::run(command(root, &tool, toolchain).args([
        "build",
        "--debug-assertions",
        "--codegen-units",
        "16",
    ]))?;
    eprintln!("fuzz: built in {} s", started.elapsed().as_secs());
    let scratch = std::env::temp_dir().join(format!("blastgate-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let bin = root.join("fuzz/target/x86_64-unknown-linux-gnu/release");
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_one(root, &bin, &scratch, t, opts.seconds)?);
    }
    println!("\nfuzz results ({} s per target):", opts.seconds);
    println!(
        "{:<14} {:>10} {:>9} {:>8} {:>6} {:>8}  result",
        "target", "execs", "execs/s", "corpus", "new", "rss MB"
    );
    for o in &outcomes {
        println!(
            "{:<14} {:>10} {:>9} {:>8} {:>6} {:>8}  {}",
            o.target,
            o.execs,
            o.per_second,
            o.corpus,
            o.new,
            o.peak_rss_mb,
            o.failure.as_deref().unwrap_or("ok")
        );
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found {} failing target(s); inputs and logs are kept in {}",
            failed.len(),
            scratch.display()
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn run_one(root: &Path, bin: &Path, scratch: &Path, target: &str, seconds: u32) -> Result<Outcome> {
    let found = scratch.join("corpus").join(target);
    let work = scratch.join("work").join(target);
    for d in [&found, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = root.join("fuzz/corpus").join(target);
    let log = scratch.join(format!("{target}.log"));
    let mut cmd = Command::new(bin.join(target));
    cmd.current_dir(root)
        .env("BLASTGATE_FUZZ_TMP", &work)
        // Not leak checks: the runtime, the policy engine and the caches
        // live for the whole run on purpose; growth that matters is caught
        // by -rss_limit_mb.
        .env("ASAN_OPTIONS", "detect_leaks=0:detect_odr_violation=0")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-detect_leaks=0")
        .arg("-print_final_stats=1")
        .arg(format!(
            "-artifact_prefix={}/",
            scratch.join("artifacts").join(target).display()
        ));
    std::fs::create_dir_all(scratch.join("artifacts").join(target))?;
    let dict = root.join("fuzz/dict").join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    // New entries go to the first directory; the seeds are only read.
    cmd.arg(&found);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(file.try_clone()?).stderr(file);
    eprintln!(
        "+ {} ({seconds} s; log {})",
        sh::describe(&cmd),
        log.display()
    );
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", bin.join(target).display()))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .rev()
            .filter_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .find_map(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // "#123 DONE cov: 1 ft: 2 corp: 45/6789b ..." (or the last pulse).
    let corpus = text
        .lines()
        .rev()
        .filter_map(|l| l.split(" corp: ").nth(1))
        .find_map(|c| c.split('/').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let failure = (!status.success()).then(|| {
        let why = text
            .lines()
            .find(|l| {
                l.contains("ERROR: libFuzzer")
                    || l.contains("ERROR: AddressSanitizer")
                    || l.contains("panic escaped the target")
            })
            .unwrap_or("failed")
            .trim()
            .to_string();
        let artifact = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .unwrap_or("(no input written)");
        eprintln!(
            "fuzz: {target} failed: {why}\n  input: {artifact}\n  log: {}",
            log.display()
        );
        for l in text
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  | {l}");
        }
        format!("FAILED: {why}")
    });
    Ok(Outcome {
        target: target.to_string(),
        execs: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        corpus,
        new: stat("new_units_added"),
        peak_rss_mb: stat("peak_rss_mb"),
        failure,
    })
}
