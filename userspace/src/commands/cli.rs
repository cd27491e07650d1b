use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// blastgate: intercept, police and record what AI coding agents do over the
/// network from this host.
///
/// eBPF programs redirect every TCP connection of an agent process into the
/// blastgate proxy, which identifies the caller, routes the connection to a
/// configured target (unknown destinations are refused), applies policy
/// (per SQL statement, SSH command or HTTP/Kubernetes request, with held
/// credentials, approvals and masking) and records every session and action
/// in a durable local spool shipped to ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "blastgate", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the kernel programs, serve the proxy, the
    /// agents' DNS resolver, the control socket and, with `[console]`, the
    /// approvers' web console. Needs root.
    Daemon {
        /// TOML configuration file.
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Detach the kernel programs and remove the pins on exit. Without
        /// it they stay pinned, so agents are refused while the daemon is
        /// down (fail closed).
        #[arg(long)]
        detach_on_exit: bool,
        /// Stop after this many seconds, as if sent SIGTERM (test safety net).
        #[arg(long, value_name = "SECONDS")]
        deadline: Option<u64>,
    },
    /// Run CMD as agent NAME: the daemon labels this process, then it drops
    /// to USER (if given) and execs CMD. CMD and every process it starts are
    /// the agent; if the daemon cannot be reached, CMD is not started. Needs
    /// root (the control socket is root-only); use --user to run the agent
    /// unprivileged.
    Run {
        /// Agent name, as it appears in records and policies.
        #[arg(long)]
        agent: String,
        /// A CI job's OIDC ID token (GitHub Actions, GitLab CI) in this
        /// file: the daemon verifies it against `[[oidc.issuers]]` and
        /// binds its claims (repository, ref, workflow, actor, …) to the
        /// agent's processes, for policies and records. A token that does
        /// not verify starts nothing.
        #[arg(long, value_name = "FILE", conflicts_with = "oidc_token_env")]
        oidc_token_file: Option<PathBuf>,
        /// The same token from this environment variable, which the agent's
        /// command then does not inherit.
        #[arg(long, value_name = "VAR")]
        oidc_token_env: Option<String>,
        /// Drop to this user (name or uid) before exec.
        #[arg(long)]
        user: Option<String>,
        /// Config file, to find the control socket.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The command and its arguments (any bytes: an agent's arguments
        /// need not be UTF-8).
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// Show what is attached and pinned, labelled processes, degraded
    /// features and alarms (`ALARM:` lines, e.g. agent processes refused
    /// because the label map is full). Exits 3 if the daemon is not
    /// running. Needs root.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print recorded events: the last ones from the spool, or a live
    /// stream from the daemon with --follow. Needs root (the spool and the
    /// control socket are root-only).
    Events {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Stream events as the daemon records them.
        #[arg(long, short)]
        follow: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Without --follow: how many of the latest spooled events to print.
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
    /// Set up this host for the daemon (the Debian package's postinst runs
    /// it): the config file if there is none, root-only directories for
    /// secrets, the spool and the CA; the TLS CA, the SSH CA and the masking
    /// key; the CA in the host trust store; the SSH CA's `@cert-authority`
    /// lines in /etc/ssh/ssh_known_hosts; and, with --enrol-user, a CI
    /// runner's account enrolled by uid. Prints what it did; a second run
    /// changes nothing. Needs root.
    Install {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Enrol this local user (name or uid): every process it runs is
        /// an agent. Repeatable.
        #[arg(long, value_name = "USER")]
        enrol_user: Vec<String>,
        /// The agent name enrolled users get (default: the user's name).
        #[arg(long, value_name = "NAME", requires = "enrol_user")]
        agent: Option<String>,
    },
    /// Detach every kernel program and remove the pinned state. Agents are
    /// unguarded (connect directly) afterwards.
    Uninstall {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also undo what `blastgate install` changed outside blastgate's
        /// own directories: the CA in the host trust store and the
        /// @cert-authority block in /etc/ssh/ssh_known_hosts. The spool and
        /// the CA stay (`dpkg --purge` removes them).
        #[arg(long)]
        undo_install: bool,
    },
    /// Pending approval requests, and the decisions on them. Needs root
    /// (the control socket is root-only); the approver recorded is the
    /// local user (and SUDO_USER when run through sudo).
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// CI runner job hooks: register the job this process runs in (from
    /// the runner's job-started hook or pre_build_script), or end it. The
    /// job's identity (repository, workflow, run, actor, …) then marks
    /// every session of its processes. Runs as the runner's user; the
    /// socket comes from the config (`[jobs] socket`), never from the
    /// environment.
    #[command(subcommand)]
    Job(JobCommand),
    /// Recorded sessions, read from ClickHouse (`[clickhouse]` in the config).
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// The egress allow-list (`[egress]`).
    #[command(subcommand)]
    Egress(EgressCommand),
    /// blastgate's local certificate authority (`tls.ca_dir`), which issues
    /// the certificates gateways show agents that ask for TLS.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Policy administration: check, test and explain Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check a config file and exit non-zero with file:line: problem if it is invalid.
    CheckConfig {
        #[arg(default_value = crate::config::DEFAULT_CONFIG)]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse, schema-validate and lint a policy directory. Problems are
    /// printed as file:line:column; exits 1 if there is any error.
    Check {
        /// Policy directory (default: `policy.dir` from the config, else ./policies).
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the golden fixtures in DIR/tests/*.toml and print
    /// "N passed, N failed"; exits 1 on any failure or uncovered policy.
    Test {
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decide one request and show which policies matched and why.
    Explain(Box<ExplainArgs>),
    /// Write the policies built into this binary (what a daemon without
    /// `[policy]` enforces) to DIR, a new or empty directory: the starting
    /// point for a version-controlled policy directory.
    Export { dir: PathBuf },
    /// Measure decision latency (p50/p99, uncached and cached) on a copy of
    /// DIR with GENERATED extra policies.
    Bench {
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 200)]
        generated: usize,
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Agent name.
    #[arg(long)]
    pub agent: String,
    /// Target name; its protocol and labels come from the config when
    /// it is configured there.
    #[arg(long)]
    pub target: String,
    /// Action, e.g. connect, sql:delete, ssh:exec, http:DELETE.
    #[arg(long)]
    pub action: String,
    /// Context as a JSON object, e.g. '{"has_where": false}'.
    #[arg(long)]
    pub context: Option<String>,
    /// Target protocol when the target is not in the config.
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// Target label KEY=VALUE (repeatable) when the target is not in the config.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub exe: Option<String>,
    #[arg(long)]
    pub comm: Option<String>,
    /// Policy directory (default: `policy.dir` from the config, else ./policies).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List pending requests.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Release a held action.
    Approve {
        id: uuid::Uuid,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Refuse a held action.
    Deny {
        id: uuid::Uuid,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), creating the CA if there is none
    /// yet. Hosts that trust it accept the gateways' certificates
    /// (`sslrootcert=` for libpq with sslmode=verify-full).
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Add the CA to the host's trust store (Debian/Ubuntu:
    /// /usr/local/share/ca-certificates, then update-ca-certificates), so
    /// every program on the host accepts the HTTPS gateway. `blastgate run`
    /// already makes agents trust it without this.
    Install {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove the CA `install` added from the host's trust store.
    Uninstall,
    /// Print the `@cert-authority` lines for /etc/ssh/ssh_known_hosts that
    /// make OpenSSH accept the SSH gateway for the configured ssh targets
    /// (creating the SSH CA if there is none yet).
    SshKnownHosts {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Prints an `[egress]` allow-list from the spool's records: every
    /// `name:port` agents connected to, or tried to, outside the targets
    /// (what enforce mode refused, or audit mode would have). Run the job
    /// once in audit mode, then apply the list and switch to enforce. Needs
    /// root (the spool is root-only).
    Suggest {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this agent's records.
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Sessions, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Only sessions that started within this long, e.g. 1h, 30m, 7d.
        #[arg(long)]
        since: Option<humantime::Duration>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Every event of one session, in order.
    Show {
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Plays a session back as it happened: decisions on stderr, what the
    /// agent saw (terminal output, response summaries) on stdout, with the
    /// recorded pauses.
    Replay {
        id: uuid::Uuid,
        /// Playback speed: 2 plays twice as fast, 0.5 half as fast.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Writes a session's recording as an asciicast v2 file (asciinema
    /// play, the asciinema web player): terminal output, keystrokes and
    /// resizes with their timing, and each decision as a marker.
    Export {
        id: uuid::Uuid,
        /// The format (the only one so far; required so scripts stay
        /// valid when others come).
        #[arg(long, required = true)]
        asciicast: bool,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Register the job this process runs in, from the job's environment
    /// (GitHub: GITHUB_REPOSITORY, GITHUB_RUN_ID, …; GitLab:
    /// CI_PROJECT_PATH, CI_PIPELINE_ID, CI_JOB_ID, …). With a token, its
    /// claims must agree with the environment and the fields it vouches
    /// for are recorded as verified; without, every field is recorded as
    /// unverified. Exits non-zero if the daemon refuses: the hook then
    /// fails the job.
    Start {
        #[arg(long, value_enum, default_value = "github")]
        provider: JobProvider,
        /// The job's OIDC token in this file (a bare JWT, or the JSON
        /// GitHub's token endpoint answers with, `{"value": "…"}`).
        #[arg(long, value_name = "FILE", conflicts_with = "oidc_token_env")]
        oidc_token_file: Option<PathBuf>,
        /// The token from this environment variable (GitLab `id_tokens`).
        #[arg(long, value_name = "VAR")]
        oidc_token_env: Option<String>,
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// End the job this process runs in: its open sessions are closed and
    /// whatever it leaves running is refused from then on.
    End {
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the audience job tokens must be minted for (the first
    /// `[[oidc.issuers]]` of the provider), for the hook's token request.
    Audience {
        #[arg(long, value_enum, default_value = "github")]
        provider: JobProvider,
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum JobProvider {
    Github,
    Gitlab,
}

impl From<JobProvider> for crate::config::CiProvider {
    fn from(p: JobProvider) -> Self {
        match p {
            JobProvider::Github => crate::config::CiProvider::Github,
            JobProvider::Gitlab => crate::config::CiProvider::Gitlab,
        }
    }
}
