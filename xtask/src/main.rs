//! `cargo xtask …`: machine set-up, the kernel build, the demo, the full
//! test suite and the benchmarks. Every command is idempotent and safe to
//! re-run on a machine that already has everything.

#[path = "../../userspace/ebpf_build.rs"]
mod ebpf_build;

mod aws_models;
mod bench;
mod bench_aws;
mod bench_git;
mod bench_http;
mod bench_postgres;
mod bench_ssh;
mod clickhouse;
mod deb;
mod demo;
mod fuzz;
mod netns;
mod oidc_provider;
mod setup;
mod sh;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "blastgate's build, set-up, demo, test and bench tasks"
)]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what blastgate needs to build and test (apt packages, the BPF
    /// toolchain, bpf-linker 0.13) and mount bpffs/tracefs. Needs root.
    Setup,
    /// Build the kernel programs (normally done by userspace/build.rs).
    BuildEbpf,
    /// Build the Debian package (cargo-deb): /usr/bin/blastgate with its
    /// kernel programs, the hardened systemd unit, the config and the
    /// shipped policies, and the maintainer scripts in packaging/. Prints
    /// the .deb's path.
    Deb {
        /// Package version, e.g. 0.1.0-2 (default: the crate's, revision 1).
        #[arg(long)]
        version: Option<String>,
        /// Cargo profile to build (and package) with.
        #[arg(long, default_value = "release")]
        profile: String,
        /// Package the profile's existing build instead of building.
        #[arg(long)]
        no_build: bool,
        /// Directory (or file) for the .deb (default: target/debian).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Set up, build, and show an agent being intercepted against a real
    /// PostgreSQL, sshd and HTTP server on loopback; fails if blastgate
    /// does not do what the demo shows.
    Demo {
        /// Use the daemon installed from the package instead of starting
        /// one (vagrant/provision.sh): agents are RUNNER's processes,
        /// enrolled by uid.
        #[arg(long, value_name = "RUNNER", requires = "restart")]
        installed: Option<String>,
        /// With --installed: the shell command that restarts the
        /// installed daemon.
        #[arg(long, value_name = "CMD")]
        restart: Option<String>,
    },
    /// Set up, then run fmt, clippy, every test (kernel tests included)
    /// and every fuzz target for its default time.
    Test,
    /// Regenerate the AWS routing data (userspace/src/protocols/http/aws/
    /// models.tsv.gz) from botocore's service models: each service's
    /// signing name, endpoint prefix, protocols, JSON target prefix and
    /// operations, with method and URI for REST operations.
    AwsModels {
        /// botocore's `data` directory (default: the one in
        /// /opt/blastgate-tools/moto-venv, which `cargo xtask setup` installs).
        #[arg(long)]
        botocore: Option<PathBuf>,
        /// Only check that the checked-in file is what the models give.
        #[arg(long)]
        check: bool,
    },
    /// Build the cargo-fuzz targets (`fuzz/`) and run each for a bounded
    /// time from the committed seed corpus; fails on a crash, a hang or
    /// memory over the limits. Prints executions per second and corpus
    /// size per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u32,
        /// Targets to run (default: all): pg_frames, pg_relay, sftp, git_push,
        /// http_request, ssh_command, sql_classify, json_mask.
        targets: Vec<String>,
    },
    /// A real local ClickHouse 26.7 for the demo and the tests.
    #[command(subcommand)]
    Clickhouse(ClickhouseTask),
    /// Measured side by side with the direct path in one run: interception
    /// (connect+1-byte echo latency, bulk TCP throughput, direct vs through
    /// blastgate; the cost of a CI job token per `blastgate run` and per
    /// connection), recording (hot-path cost per event, spool to ClickHouse
    /// throughput), PostgreSQL (pgbench direct, through PgBouncer and
    /// through blastgate's gateway), SSH (scp, two-way bulk and
    /// keystroke echo, direct and through blastgate's SSH gateway) and
    /// HTTPS (wrk, h2load and ab direct, through blastgate's HTTP gateway,
    /// an nginx reverse proxy and mitmproxy; the cost of JSON masking;
    /// egress passthrough by name against direct), AWS (`aws s3 cp` up and
    /// down and per-call latency against moto, direct, through blastgate's
    /// AWS gateway and through an nginx proxy) and git (push and clone of
    /// a generated repository over SSH and smart HTTP, direct, through
    /// blastgate's gateways and, for HTTP, through an nginx proxy).
    Bench {
        /// Only one part: `intercept`, `records`, `postgres`, `ssh`,
        /// `http`, `aws` or `git` (the same as `--only`).
        part: Option<String>,
        /// Only one part: `intercept`, `records`, `postgres`, `ssh`,
        /// `http`, `aws` or `git`.
        #[arg(long)]
        only: Option<String>,
        /// Events for the recording benchmark.
        #[arg(long, default_value_t = 500_000)]
        events: usize,
        /// Repetitions of each measurement (alternating direct/proxied);
        /// default 5, and 3 for ssh (its cells move whole files), http
        /// (34 client runs per repetition), aws and git.
        #[arg(long)]
        reps: Option<usize>,
        /// Connections per latency repetition.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Bytes per throughput repetition.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// PostgreSQL and HTTP: seconds per client run (pgbench; wrk,
        /// h2load, ab).
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// PostgreSQL: pgbench scale factor.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// PostgreSQL: paths to measure, comma-separated, direct included:
        /// direct, pgbouncer, blastgate, blastgate-limits, blastgate-before
        /// (skipped unless BLASTGATE_BENCH_BEFORE_BIN is set).
        #[arg(
            long,
            default_value = "direct,pgbouncer,blastgate,blastgate-limits,blastgate-before"
        )]
        paths: String,
        /// PostgreSQL: also measure the result-heavy cells (and one
        /// selecting an expression of the masked column) with a masking
        /// rule, on a daemon of its own.
        #[arg(long)]
        masking: bool,
        /// SSH: size of the file scp and ssh move, in MB.
        #[arg(long, default_value_t = 300)]
        ssh_mb: u64,
        /// HTTP: tables to measure, comma-separated: main (direct,
        /// blastgate, nginx, mitmproxy), masking, egress (passthrough
        /// against direct, by name, to a server in a network namespace).
        #[arg(long, default_value = "main,masking,egress")]
        tables: String,
        /// AWS: size of the file `aws s3 cp` moves, in MiB (the issue's
        /// cell is 1024, but moto 5.2.6 answers UploadPart with a 500 at
        /// that size, on every path).
        #[arg(long, default_value_t = 256)]
        aws_mib: u64,
        /// AWS: calls of each operation per latency run.
        #[arg(long, default_value_t = 200)]
        aws_calls: usize,
        /// git: size of the random blobs (one 1 MB blob per MB) of the
        /// repository pushed and cloned over SSH.
        #[arg(long, default_value_t = 200)]
        git_mb: u64,
        /// git: the same for smart HTTP (when it differs from --git-mb,
        /// the --git-mb repository is also pushed over HTTP through
        /// blastgate once and the outcome reported).
        #[arg(long, default_value_t = 200)]
        git_http_mb: u64,
        /// git: commits of the generated repository.
        #[arg(long, default_value_t = 3000)]
        git_commits: u64,
    },
}

#[derive(Subcommand)]
enum ClickhouseTask {
    /// Install (npm, pinned) and start the server; prints its URL once /ping answers.
    Start {
        #[arg(long, default_value_t = clickhouse::DEFAULT_PORT)]
        port: u16,
        #[arg(long, default_value = clickhouse::DEFAULT_DATA)]
        data: PathBuf,
        #[command(flatten)]
        cluster: clickhouse::ClusterArgs,
    },
    /// Stop the server started from DATA.
    Stop {
        #[arg(long, default_value = clickhouse::DEFAULT_DATA)]
        data: PathBuf,
    },
    /// Run the server in the foreground (what `start` runs in the background).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        cluster: clickhouse::ClusterArgs,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root()?;
    match args.task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => {
            let object =
                ebpf_build::build(&root.join("ebpf/programs")).map_err(anyhow::Error::msg)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Deb {
            version,
            profile,
            no_build,
            output,
        } => deb::run(
            &root,
            &deb::Opts {
                version,
                profile,
                no_build,
                output,
            },
        )
        .map(drop),
        Task::Demo { installed, restart } => {
            setup::run()?;
            let mode = match (installed, restart) {
                (Some(runner), Some(restart)) => demo::Mode::Installed { runner, restart },
                _ => demo::Mode::Own,
            };
            demo::run(&root, &mode)
        }
        Task::Test => {
            setup::run()?;
            test(&root)
        }
        Task::AwsModels { botocore, check } => aws_models::run(&root, botocore, check),
        Task::Fuzz { seconds, targets } => fuzz::run(&root, &fuzz::Opts { seconds, targets }),
        Task::Clickhouse(ClickhouseTask::Start {
            port,
            data,
            cluster,
        }) => clickhouse::start_node(port, &data, &cluster).map(drop),
        Task::Clickhouse(ClickhouseTask::Stop { data }) => clickhouse::stop(&data),
        Task::Clickhouse(ClickhouseTask::Serve {
            port,
            data,
            cluster,
        }) => clickhouse::serve(port, &data, &cluster),
        Task::Bench {
            part,
            only,
            events,
            reps,
            connections,
            bytes,
            secs,
            scale,
            paths,
            masking,
            ssh_mb,
            tables,
            aws_mib,
            aws_calls,
            git_mb,
            git_http_mb,
            git_commits,
        } => {
            let only = match (part, only) {
                (Some(p), Some(o)) if p != o => {
                    bail!("`bench {p}` and `--only {o}` name different parts")
                }
                (p, o) => p.or(o),
            };
            let ssh = bench_ssh::Opts {
                reps: reps.unwrap_or(3),
                mb: ssh_mb,
            };
            let http = bench_http::Opts {
                reps: reps.unwrap_or(3),
                secs,
                tables: bench_http::Tables::parse(&tables)?,
            };
            let aws = bench_aws::Opts {
                reps: reps.unwrap_or(3),
                mib: aws_mib,
                calls: aws_calls,
            };
            let git = bench_git::Opts {
                reps: reps.unwrap_or(3),
                mb: git_mb,
                http_mb: git_http_mb,
                commits: git_commits,
            };
            let reps = reps.unwrap_or(5);
            let postgres = bench_postgres::Opts {
                reps,
                secs,
                scale,
                routes: bench_postgres::Route::parse_list(&paths)?,
                masking,
            };
            setup::run()?;
            match only.as_deref() {
                None => {
                    bench::run(&root, reps, connections, bytes)?;
                    bench::records(&root, events)?;
                    bench_postgres::run(&root, &postgres)?;
                    bench_ssh::run(&root, &ssh)?;
                    bench_http::run(&root, &http)?;
                    bench_aws::run(&root, &aws)?;
                    bench_git::run(&root, &git)
                }
                Some("intercept") => bench::run(&root, reps, connections, bytes),
                Some("records") => bench::records(&root, events),
                Some("postgres") => bench_postgres::run(&root, &postgres),
                Some("ssh") => bench_ssh::run(&root, &ssh),
                Some("http") => bench_http::run(&root, &http),
                Some("aws") => bench_aws::run(&root, &aws),
                Some("git") => bench_git::run(&root, &git),
                Some(other) => {
                    anyhow::bail!(
                        "--only takes intercept, records, postgres, ssh, http, aws or git, \
                         not {other:?}"
                    )
                }
            }
        }
    }
}

/// How long `cargo xtask test` fuzzes each target: six targets add about
/// eight minutes with the build.
const FUZZ_SECONDS: u32 = 60;

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// The whole suite, as CI runs it.
fn test(root: &Path) -> Result<()> {
    sh::run(sh::cargo(root).args(["fmt", "--all", "--check"]))?;
    sh::run(sh::cargo(root).args([
        "fmt",
        "--check",
        "--manifest-path",
        "ebpf/programs/Cargo.toml",
    ]))?;
    lint_kernel_crate(root)?;
    sh::run(sh::cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // A real ClickHouse for the records tests, stopped whatever happens.
    let ch_data = std::env::temp_dir().join("blastgate-test-clickhouse");
    let _ = std::fs::remove_dir_all(&ch_data);
    let url = clickhouse::start(clickhouse::TEST_PORT, &ch_data)?;
    let result = sh::run(
        sh::cargo(root)
            .env("BLASTGATE_TEST_CLICKHOUSE", &url)
            .args(["test", "--workspace", "--no-fail-fast", "--", "--nocapture"]),
    );
    if let Err(e) = clickhouse::stop(&ch_data) {
        eprintln!("warning: stopping the test ClickHouse: {e}");
    }
    let _ = std::fs::remove_dir_all(&ch_data);
    let leftovers = leftovers();
    if !leftovers.is_empty() {
        bail!("tests left state behind: {leftovers:?}");
    }
    result?;
    fuzz::run(
        root,
        &fuzz::Opts {
            seconds: FUZZ_SECONDS,
            targets: Vec::new(),
        },
    )
}

/// Clippy on the kernel crate, built for the BPF target on its own (in the
/// host workspace, feature unification would turn on the common crate's
/// userspace feature).
fn lint_kernel_crate(root: &Path) -> Result<()> {
    let programs = root.join("ebpf/programs");
    let mut cmd = match ebpf_build::toolchain() {
        ebpf_build::Toolchain::Debian => {
            let mut c = ebpf_build::cargo(&programs, "check", &[]).map_err(anyhow::Error::msg)?;
            c.env("RUSTC_WORKSPACE_WRAPPER", "/usr/bin/clippy-driver")
                .env("RUSTFLAGS", "-D warnings");
            c
        }
        ebpf_build::Toolchain::Nightly => {
            ebpf_build::cargo(&programs, "clippy", &["--", "-D", "warnings"])
                .map_err(anyhow::Error::msg)?
        }
    };
    sh::run(&mut cmd)
}

/// Pins and cgroups the tests create; none may survive a run.
fn leftovers() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dirs = ["/sys/fs/bpf", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("blastgate-test-")
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}
