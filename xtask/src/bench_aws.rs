//! `cargo xtask bench aws`: the real AWS CLI and boto3 against moto's
//! server (PyPI `moto[server]`, the tests' stand-in for AWS) over HTTPS
//! with a CA of its own and SigV4 and IAM checking on (moto's
//! `reset-auth` with 0 after the bench's IAM user, key and bucket are
//! made: the same as `INITIAL_NO_AUTH_ACTION_COUNT=0` from then on, so a
//! badly signed request fails), over three paths in the same run:
//!
//! - **direct**: the client signs with the real key, straight to moto;
//! - **blastgate**: the client runs under `blastgate run` (placeholder
//!   key, blastgate's CA) and dials moto's own address; the kernel
//!   redirects it to the daemon, whose `https` target of `kind = "aws"`
//!   decides each operation by the shipped policies and masking.toml (the
//!   target has no `env = "production"` label, so nothing is held or
//!   refused), re-signs
//!   it with the key it holds, forwards it over TLS checked against moto's
//!   CA and records it;
//! - **nginx**: Debian's nginx as a TLS-terminating reverse proxy in front
//!   of moto (the client signs with the real key for nginx's host, which
//!   nginx passes on unchanged), the generic proxy a team would otherwise
//!   deploy. No AWS-specific re-signing proxy installs from crates.io,
//!   PyPI, Debian or npm, so this peer neither decides nor re-signs: it is
//!   the floor of a TLS hop in front of the same server.
//!
//! Cells, each run on every path in turn per repetition (the order
//! rotated each repetition, so no path always goes first), medians and
//! min–max reported with ratios to direct and to nginx:
//! - `aws s3 cp` of a random file (`--aws-mib`, default 256 MiB; the
//!   issue's cell is 1 GiB, where moto 5.2.6 answers UploadPart with a
//!   500 on every path, direct included) up (multipart,
//!   aws-chunked with a checksum trailer, what the CLI sends over HTTPS)
//!   and down (ranged GETs), the CLI's default concurrency: MB/s;
//! - per-call latency: one boto3 process per path and repetition calls
//!   `sts.get_caller_identity`, `s3.head_bucket` and
//!   `ec2.describe_instances` N times each over kept-alive connections
//!   (after 10 unmeasured calls), p50 and p99 of each call's wall time,
//!   and the µs blastgate and nginx add at p50.
//!
//! moto is Python and is likely the bottleneck of the transfers: the
//! direct figures are printed as they are, with moto's CPU per run, so
//! readers see how far the server limits every path.
//!
//! Checked, not assumed: before measuring, each path uploads and
//! downloads a small multipart file (sha256 compared) and
//! `get_caller_identity` answers with the held user on every path (on
//! blastgate's, the agent never had the key); every measured upload's
//! object has the right size (`head-object`, direct), every download's
//! file too, the first on each path also its sha256; afterwards the spool
//! must hold a `request` event per call the latency cells made through
//! blastgate.
//!
//! Pinning as in the other benches: clients on CPU 0 (BLASTGATE_BENCH_
//! CLIENT_CPUS), moto on CPU 1 (…_SERVER_CPUS), the daemon and nginx on
//! CPU 1 (…_PROXY_CPUS): a proxy's CPU is taken from the server's. Files
//! live on /dev/shm. Everything started here is stopped on every way out
//! (guards, by pid; PR_SET_PDEATHSIG), the pin directory uninstalled and
//! the scratch directory removed.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{
    bench_http::{cpu_ticks, fmt, fmt_cpu, make_certs, nginx_conf, spool_lines, start_nginx},
    bench_postgres::{
        check_interrupted, die_with_parent, free_port, median, prepare, run_bounded, tail, Daemon,
        DaemonOpts, ScratchDir, INTERRUPTED,
    },
    bench_ssh::{random_file, sha256, shipped_policies},
    demo::{wait_for, Guard},
    sh,
};

/// moto, the AWS CLI and boto3 (`cargo xtask setup`).
const VENV_BIN: &str = "/opt/blastgate-tools/moto-venv/bin";
const PIN_DIR: &str = "/sys/fs/bpf/blastgate-bench-aws";
const AGENT: &str = "bench";
/// Where moto listens; the agent dials it and is redirected.
const MOTO_IP: &str = "127.0.0.2";
/// Where the nginx peer listens.
const FRONT_IP: &str = "127.0.0.1";
const BUCKET: &str = "bench";
const REGION: &str = "us-east-1";
/// The name on moto's certificate blastgate checks (the bench CA's
/// upstream leaf).
const MOTO_NAME: &str = "upstream.bench";
/// The object the transfer cells write and read.
const KEY: &str = "big.bin";
/// The checked round trip before measuring: multipart at the CLI's
/// default 8 MiB threshold.
const CHECK_MIB: u64 = 20;

/// moto's set-up, run directly as the operator: an IAM user allowed
/// everything and its key (the key blastgate holds), the bucket, then
/// authentication on.
const SETUP: &str = r#"
import json, ssl, sys, urllib.request, boto3
url, ca, bucket = sys.argv[1:4]
kw = dict(endpoint_url=url, region_name="us-east-1", verify=ca,
          aws_access_key_id="testing", aws_secret_access_key="testing")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="bench-user")
iam.put_user_policy(UserName="bench-user", PolicyName="all",
    PolicyDocument=json.dumps({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="bench-user")["AccessKey"]
boto3.client("s3", **kw).create_bucket(Bucket=bucket)
req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0",
    headers={"Content-Type": "text/plain"}, method="POST")
urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca)).read()
print(json.dumps({"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"]}))
"#;

/// The latency cell's client: credentials and CA from the environment,
/// one connection per client kept alive, no retries.
const CALLS: &str = r#"
import json, sys, time, boto3, botocore.config
url, bucket, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = botocore.config.Config(retries={"max_attempts": 1}, max_pool_connections=1)
kw = dict(endpoint_url=url, region_name="us-east-1", config=cfg)
sts, s3, ec2 = (boto3.client(s, **kw) for s in ("sts", "s3", "ec2"))
calls = {
    "sts:GetCallerIdentity": sts.get_caller_identity,
    "s3:HeadBucket": lambda: s3.head_bucket(Bucket=bucket),
    "ec2:DescribeInstances": ec2.describe_instances,
}
out = {"arn": sts.get_caller_identity()["Arn"]}
for name, call in calls.items():
    for _ in range(10):
        call()
    t = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        t.append(time.perf_counter_ns() - start)
    t.sort()
    out[name] = {"p50_us": t[len(t) // 2] / 1e3,
                 "p99_us": t[min(len(t) - 1, -(-99 * len(t) // 100) - 1)] / 1e3}
print(json.dumps(out))
"#;

/// The calls of the latency cell, as [`CALLS`] names them.
const OPERATIONS: [&str; 3] = [
    "sts:GetCallerIdentity",
    "s3:HeadBucket",
    "ec2:DescribeInstances",
];

pub struct Opts {
    pub reps: usize,
    /// Size of the copied file, MiB.
    pub mib: u64,
    /// Calls of each operation per latency run.
    pub calls: usize,
}

/// A way from the client to the server, in the AWS and git benches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Via {
    Direct,
    Blastgate,
    /// The generic proxy a team would deploy instead (nginx here).
    Peer,
}

impl Via {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Blastgate => "blastgate",
            Via::Peer => "nginx",
        }
    }
}

/// `paths` in the order repetition `rep` runs them: rotated by one each
/// repetition, so every path goes first in turn.
pub(crate) fn rotated<T: Copy>(paths: &[T], rep: usize) -> Vec<T> {
    let mut v = paths.to_vec();
    if !v.is_empty() {
        let n = rep % v.len();
        v.rotate_left(n);
    }
    v
}

/// One timed run: wall seconds, and the CPU the proxy and the server
/// used meanwhile, percent of one CPU (NaN where there is none).
#[derive(Clone, Copy)]
pub(crate) struct Run {
    pub(crate) secs: f64,
    pub(crate) proxy_cpu: f64,
    pub(crate) server_cpu: f64,
}

/// Every repetition of one cell on one path: its runs, the first command
/// line, and the failure that stopped it (a failed cell is not retried).
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) runs: Vec<Run>,
    pub(crate) command: Option<String>,
    pub(crate) error: Option<String>,
}

impl Outcome {
    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }

    /// Runs `measure` into this outcome unless it already failed; errors
    /// only when interrupted.
    pub(crate) fn take(
        &mut self,
        what: &str,
        measure: impl FnOnce() -> Result<(Run, String)>,
    ) -> Result<()> {
        if self.error.is_some() {
            return Ok(());
        }
        check_interrupted()?;
        match measure() {
            Ok((run, command)) => {
                self.runs.push(run);
                self.command.get_or_insert(command);
            }
            Err(e) => {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Err(e);
                }
                eprintln!("bench: {what} FAILED: {e:#}");
                self.error = Some(format!("{e:#}"));
            }
        }
        Ok(())
    }
}

/// A transfer cell of a table: its name, the bytes each run moves, and
/// its outcome per path (direct first).
pub(crate) struct Transfer {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) paths: Vec<(Via, Outcome)>,
}

impl Transfer {
    pub(crate) fn new(name: impl Into<String>, bytes: u64, vias: &[Via]) -> Transfer {
        Transfer {
            name: name.into(),
            bytes,
            paths: vias.iter().map(|&v| (v, Outcome::default())).collect(),
        }
    }

    pub(crate) fn outcome(&mut self, via: Via) -> Result<&mut Outcome> {
        self.paths
            .iter_mut()
            .find(|(v, _)| *v == via)
            .map(|(_, o)| o)
            .with_context(|| format!("{} has no {} path", self.name, via.name()))
    }

    fn mb_s(&self, via: Via) -> f64 {
        self.paths
            .iter()
            .find(|(v, _)| *v == via)
            .map_or(f64::NAN, |(_, o)| {
                self.bytes as f64 / 1e6 / o.med(|r| r.secs)
            })
    }
}

/// Prints transfer cells as one table (per cell and path: median
/// seconds, min–max, MB/s, ratio to direct and to the peer, the proxy's
/// and the server's CPU) and returns them as JSON, by cell and path.
pub(crate) fn transfer_table(cells: &[Transfer], server: &str) -> Value {
    println!(
        "  {:<24} {:<10} {:>8} {:>15} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "cell",
        "path",
        "median s",
        "min–max s",
        "MB/s",
        "/direct",
        "/nginx",
        "proxy CPU",
        format!("{server} CPU")
    );
    let mut out = Map::new();
    for cell in cells {
        let direct = cell.mb_s(Via::Direct);
        let peer = cell.mb_s(Via::Peer);
        let mut paths = Map::new();
        for (via, o) in &cell.paths {
            let secs: Vec<f64> = o.runs.iter().map(|r| r.secs).collect();
            let mbs = cell.mb_s(*via);
            if o.runs.is_empty() {
                println!("  {:<24} {:<10} {:>8}", cell.name, via.name(), "FAILED");
            } else {
                let lo = secs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = secs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                println!(
                    "  {:<24} {:<10} {:>8} {:>15} {:>8} {:>8} {:>8} {:>10} {:>10}{}",
                    cell.name,
                    via.name(),
                    fmt(o.med(|r| r.secs), 2),
                    format!("{}–{}", fmt(lo, 2), fmt(hi, 2)),
                    fmt(mbs, 1),
                    fmt(mbs / direct, 2),
                    fmt(mbs / peer, 2),
                    fmt_cpu(o.med(|r| r.proxy_cpu)),
                    fmt_cpu(o.med(|r| r.server_cpu)),
                    if o.error.is_some() {
                        "  (then FAILED)"
                    } else {
                        ""
                    }
                );
            }
            paths.insert(
                via.name().into(),
                json!({
                    "median_secs": o.med(|r| r.secs), "secs_runs": secs,
                    "mb_per_s": mbs, "ratio_to_direct": mbs / direct, "ratio_to_nginx": mbs / peer,
                    "proxy_cpu_pct": o.med(|r| r.proxy_cpu),
                    "server_cpu_pct": o.med(|r| r.server_cpu),
                    "command": o.command, "error": o.error,
                }),
            );
        }
        out.insert(
            cell.name.clone(),
            json!({"bytes": cell.bytes, "paths": paths}),
        );
    }
    Value::Object(out)
}

/// Every failure of the cells, named.
pub(crate) fn failures(cells: &[Transfer]) -> Vec<String> {
    cells
        .iter()
        .flat_map(|c| {
            c.paths.iter().filter_map(move |(via, o)| {
                o.error
                    .as_ref()
                    .map(|e| format!("{} via {}: {e}", c.name, via.name()))
            })
        })
        .collect()
}

/// Runs `cmd` to success within `limit`, timed from spawn to exit (to
/// 10 ms), with the CPU the `proxy` and `server` processes (and their
/// children) used meanwhile; its stdout and the run.
pub(crate) fn timed(
    cmd: &mut Command,
    scratch: &Path,
    limit: Duration,
    what: &str,
    (proxy, server): (Option<u32>, Option<u32>),
) -> Result<(String, Run)> {
    // SAFETY: sysconf has no preconditions.
    let tck = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let before = (proxy.map(cpu_ticks), server.map(cpu_ticks));
    let start = Instant::now();
    let out = run_bounded(cmd, scratch, limit, what)?;
    let secs = start.elapsed().as_secs_f64();
    let pct = |pid: Option<u32>, at: Option<u64>| match (pid, at) {
        (Some(p), Some(a)) => cpu_ticks(p).saturating_sub(a) as f64 / tck / secs * 100.0,
        _ => f64::NAN,
    };
    Ok((
        out,
        Run {
            secs,
            proxy_cpu: pct(proxy, before.0),
            server_cpu: pct(server, before.1),
        },
    ))
}

/// The load average, as /proc/loadavg's first three fields.
pub(crate) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scratch directory on tmpfs where there is one (disk speed is not
/// what is measured).
pub(crate) fn scratch(label: &str) -> Result<(PathBuf, ScratchDir)> {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("blastgate-bench-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok((dir.clone(), ScratchDir(dir)))
}

/// Where each path is and how its clients are run.
struct Bench {
    blastgate: PathBuf,
    config: PathBuf,
    client_cpus: String,
    scratch: PathBuf,
    ca: PathBuf,
    moto_port: u16,
    nginx_port: u16,
    /// The held key: the direct and nginx clients sign with it.
    key: (String, String),
    daemon_pid: Option<u32>,
    nginx_pid: Option<u32>,
    moto_pid: Option<u32>,
    /// Longest a transfer may take: 1 MB/s and two minutes.
    limit: Duration,
}

impl Bench {
    fn endpoint(&self, via: Via) -> String {
        match via {
            Via::Direct | Via::Blastgate => format!("https://{MOTO_IP}:{}", self.moto_port),
            Via::Peer => format!("https://{FRONT_IP}:{}", self.nginx_port),
        }
    }

    /// `taskset -c CLIENT [blastgate run --agent bench --config C --]
    /// program`, with no AWS configuration from the host; off blastgate's
    /// path the held key and the bench CA, on it nothing (`blastgate run`
    /// sets the placeholder and its own CA).
    fn client(&self, via: Via, program: &str) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", &self.client_cpus]).current_dir(&self.scratch);
        if via == Via::Blastgate {
            c.arg(&self.blastgate)
                .args(["run", "--agent", AGENT, "--config"])
                .arg(&self.config)
                .arg("--");
        }
        c.arg(format!("{VENV_BIN}/{program}"))
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_DEFAULT_REGION", REGION)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        if via == Via::Blastgate {
            for var in [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_CA_BUNDLE",
            ] {
                c.env_remove(var);
            }
        } else {
            c.env("AWS_ACCESS_KEY_ID", &self.key.0)
                .env("AWS_SECRET_ACCESS_KEY", &self.key.1)
                .env("AWS_CA_BUNDLE", &self.ca);
        }
        c
    }

    fn aws(&self, via: Via, args: &[&str]) -> Command {
        let mut c = self.client(via, "aws");
        c.args(["--endpoint-url", &self.endpoint(via), "--region", REGION])
            .args(args);
        c
    }

    fn proxy_pid(&self, via: Via) -> Option<u32> {
        match via {
            Via::Direct => None,
            Via::Blastgate => self.daemon_pid,
            Via::Peer => self.nginx_pid,
        }
    }

    /// `aws s3 cp` up (`local` to the object) or down, timed.
    fn copy(&self, via: Via, upload: bool, local: &Path) -> Result<(Run, String)> {
        let object = format!("s3://{BUCKET}/{KEY}");
        let local = local.display().to_string();
        let (from, to) = if upload {
            (local.as_str(), object.as_str())
        } else {
            (object.as_str(), local.as_str())
        };
        let mut c = self.aws(via, &["s3", "cp", "--only-show-errors", from, to]);
        let command = sh::describe(&c);
        let what = format!("aws s3 cp {from} {to} via {}", via.name());
        let (_, run) = timed(
            &mut c,
            &self.scratch,
            self.limit,
            &what,
            (self.proxy_pid(via), self.moto_pid),
        )?;
        Ok((run, command))
    }

    /// The object's size, asked directly.
    fn object_size(&self) -> Result<u64> {
        let mut c = self.aws(
            Via::Direct,
            &["s3api", "head-object", "--bucket", BUCKET, "--key", KEY],
        );
        let out = run_bounded(&mut c, &self.scratch, self.limit, "head-object")?;
        let v: Value = serde_json::from_str(&out).with_context(|| format!("head-object: {out}"))?;
        v["ContentLength"]
            .as_u64()
            .with_context(|| format!("head-object: {out}"))
    }

    /// One run of the latency client: per operation p50 and p99 (µs), and
    /// the identity the calls ran as.
    fn calls(&self, via: Via, n: usize) -> Result<Value> {
        let mut c = self.client(via, "python");
        c.arg(self.scratch.join("calls.py"))
            .arg(self.endpoint(via))
            .arg(BUCKET)
            .arg(n.to_string());
        let what = format!("{n} calls of each operation via {}", via.name());
        let out = run_bounded(&mut c, &self.scratch, self.limit, &what)?;
        serde_json::from_str(out.trim()).with_context(|| format!("{what} printed {out:?}"))
    }
}

/// moto's server on MOTO_IP, pinned; killed (by pid) on drop.
fn start_moto(dir: &Path, cert: &(PathBuf, PathBuf), cpus: &str) -> Result<(Guard, u16)> {
    let log = dir.join("moto.log");
    let port = free_port(MOTO_IP)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus])
        .arg(format!("{VENV_BIN}/moto_server"))
        .args(["-H", MOTO_IP, "-p", &port.to_string(), "-c"])
        .arg(&cert.0)
        .arg("-k")
        .arg(&cert.1)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?);
    die_with_parent(&mut cmd, libc::SIGKILL);
    let mut guard = Guard::spawn("moto_server", &mut cmd)?;
    let up = wait_for("moto_server", Duration::from_secs(60), || {
        guard.exited() || TcpStream::connect((MOTO_IP, port)).is_ok()
    });
    if up.is_err() || guard.exited() {
        guard.stop();
        bail!("moto_server did not start\n{}", tail(&log, 20));
    }
    Ok((guard, port))
}

fn daemon_config(
    dir: &Path,
    proxy_port: u16,
    moto_port: u16,
    policy: &Path,
    ca: &Path,
    ak: &str,
) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n\
         [control]\nsocket = \"{d}/control.sock\"\n\n\
         [bpf]\npin_dir = \"{PIN_DIR}\"\n\n\
         [records]\nspool_dir = \"{d}/spool\"\n\n\
         [policy]\ndir = \"{policy}\"\n\n\
         [tls]\nca_dir = \"{d}/ca\"\n\n\
         [[targets]]\nname = \"bench-aws\"\nprotocol = \"https\"\naddress = \"{MOTO_IP}:{moto_port}\"\n\n\
         [targets.http]\nkind = \"aws\"\nupstream_ca_file = \"{ca}\"\nserver_name = \"{MOTO_NAME}\"\n\n\
         [targets.http.aws]\nregion = \"{REGION}\"\naccess_key_id = \"{ak}\"\n\
         secret_access_key = {{ file = \"{d}/aws.secret\" }}\n",
        d = dir.display(),
        policy = policy.display(),
        ca = ca.display(),
    )
}

/// nginx in front of moto: TLS with the front leaf, `proxy_pass https://`
/// to a keepalive pool checked against the bench CA, request and response
/// bodies streamed, the Host the client signed passed on.
fn peer_conf(dir: &Path, port: u16, moto_port: u16, certs: &crate::bench_http::Certs) -> String {
    nginx_conf(
        dir,
        &format!(
            "    upstream moto {{\n\
             \x20       server {MOTO_IP}:{moto_port};\n\
             \x20       keepalive 64;\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen {FRONT_IP}:{port} ssl;\n\
             \x20       ssl_certificate {cert};\n\
             \x20       ssl_certificate_key {key};\n\
             \x20       client_max_body_size 0;\n\
             \x20       location / {{\n\
             \x20           proxy_pass https://moto;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_request_buffering off;\n\
             \x20           proxy_buffering off;\n\
             \x20           proxy_read_timeout 600s;\n\
             \x20           proxy_send_timeout 600s;\n\
             \x20           proxy_set_header Host $http_host;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20           proxy_ssl_verify on;\n\
             \x20           proxy_ssl_trusted_certificate {ca};\n\
             \x20           proxy_ssl_name {MOTO_NAME};\n\
             \x20           proxy_ssl_server_name on;\n\
             \x20           proxy_ssl_session_reuse on;\n\
             \x20       }}\n\
             \x20   }}\n",
            cert = certs.front.0.display(),
            key = certs.front.1.display(),
            ca = certs.ca.display(),
        ),
    )
}

/// Each path copies a small multipart file up and down (sha256 compared)
/// and is the held user.
fn check(b: &Bench, dir: &Path) -> Result<()> {
    let small = dir.join("check.bin");
    random_file(&small, CHECK_MIB << 20)?;
    let want = sha256(&small)?;
    let back = dir.join("check-back.bin");
    for via in [Via::Direct, Via::Blastgate, Via::Peer] {
        b.copy(via, true, &small)?;
        b.copy(via, false, &back)?;
        let got = sha256(&back)?;
        if got != want {
            bail!(
                "a {CHECK_MIB} MiB round trip via {} came back different",
                via.name()
            );
        }
        let v = b.calls(via, 1)?;
        if !v["arn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":user/bench-user"))
        {
            bail!(
                "via {} the calls ran as {}, not the held user",
                via.name(),
                v["arn"]
            );
        }
    }
    let _ = std::fs::remove_file(&small);
    let _ = std::fs::remove_file(&back);
    eprintln!("bench: every path copies whole and signs as the held user");
    Ok(())
}

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    if !sh::is_root() {
        bail!("the AWS benchmark attaches eBPF programs: run it as root");
    }
    if opts.reps == 0 || opts.mib == 0 || opts.calls == 0 {
        bail!("--reps, --aws-mib and --aws-calls must be at least 1");
    }
    let (moto_server, aws) = (format!("{VENV_BIN}/moto_server"), format!("{VENV_BIN}/aws"));
    let (bin, [client_cpus, server_cpus, proxy_cpus]) =
        prepare(root, &[&moto_server, &aws, crate::bench_http::NGINX])?;
    let bytes = opts.mib << 20;

    // Dropped in reverse: daemon, nginx, moto, then the directory.
    let (dir, _scratch) = scratch("aws")?;
    let certs = make_certs(&dir.join("certs"))?;
    eprintln!("bench: starting moto on {MOTO_IP} (CPU {server_cpus})");
    let (moto, moto_port) = start_moto(&dir, &certs.upstream, &server_cpus)?;
    std::fs::write(dir.join("setup.py"), SETUP)?;
    std::fs::write(dir.join("calls.py"), CALLS)?;
    let out = sh::stdout(
        Command::new(format!("{VENV_BIN}/python"))
            .arg(dir.join("setup.py"))
            .arg(format!("https://{MOTO_IP}:{moto_port}"))
            .arg(&certs.ca)
            .arg(BUCKET)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    )?;
    let v: Value = serde_json::from_str(out.trim()).context("moto set-up output")?;
    let (Some(ak), Some(sk)) = (v["ak"].as_str(), v["sk"].as_str()) else {
        bail!("moto set-up printed {out:?}");
    };
    let secret = dir.join("aws.secret");
    std::fs::write(&secret, format!("{sk}\n"))?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;

    let nginx_port = free_port(FRONT_IP)?;
    eprintln!("bench: starting the nginx peer on {FRONT_IP}:{nginx_port} (CPU {proxy_cpus})");
    let peer_dir = dir.join("nginx");
    let nginx = start_nginx(
        &peer_dir,
        &peer_conf(&peer_dir, nginx_port, moto_port, &certs),
        &proxy_cpus,
        (FRONT_IP, &[nginx_port]),
        None,
    )?;

    let policy = dir.join("policy");
    shipped_policies(root, &policy, &[])?;
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        daemon_config(
            &dir,
            free_port("127.0.0.1")?,
            moto_port,
            &policy,
            &certs.ca,
            ak,
        ),
    )?;
    sh::run(Command::new(&bin).arg("check-config").arg(&config))?;
    let limit = Duration::from_secs(120 + bytes / 1_000_000);
    let deadline = 900 + opts.reps as u64 * 6 * limit.as_secs();
    eprintln!("bench: starting the blastgate daemon (CPU {proxy_cpus})");
    let daemon = Daemon::start(
        &bin,
        &config,
        &dir,
        &DaemonOpts {
            pin_dir: PIN_DIR,
            label: "aws",
            cpus: &proxy_cpus,
            deadline_secs: deadline,
            log_filter: "warn",
        },
    )?;
    let b = Bench {
        blastgate: bin.clone(),
        config: config.clone(),
        client_cpus: client_cpus.clone(),
        scratch: dir.clone(),
        ca: certs.ca.clone(),
        moto_port,
        nginx_port,
        key: (ak.to_string(), sk.to_string()),
        daemon_pid: daemon.pid(),
        nginx_pid: nginx.pid(),
        moto_pid: moto.pid(),
        limit,
    };
    check(&b, &dir)?;

    eprintln!("bench: writing {} MiB of random data", opts.mib);
    let source = dir.join("source.bin");
    random_file(&source, bytes)?;
    let source_sha = sha256(&source)?;
    let down = dir.join("down.bin");
    let paths = [Via::Direct, Via::Blastgate, Via::Peer];
    let size = format!("{} MiB", opts.mib);
    let mut cells = vec![
        Transfer::new(format!("s3 cp up {size}"), bytes, &paths),
        Transfer::new(format!("s3 cp down {size}"), bytes, &paths),
    ];
    let mut verified = [false; 3];
    // Per path, per operation: each repetition's p50 and p99.
    let mut latency: Vec<Vec<(Vec<f64>, Vec<f64>)>> = paths
        .iter()
        .map(|_| OPERATIONS.iter().map(|_| Default::default()).collect())
        .collect();
    let mut latency_error: Option<String> = None;
    // check(): one run of the latency client with one call of each
    // operation, after the identity call and 10 warm-ups each.
    let mut calls_through_blastgate = 1 + OPERATIONS.len() * 11;
    for rep in 0..opts.reps {
        let order = rotated(&paths, rep);
        for &via in &order {
            let what = format!("s3 cp up via {}", via.name());
            cells[0].outcome(via)?.take(&what, || {
                let r = b.copy(via, true, &source)?;
                let size = b.object_size()?;
                if size != bytes {
                    bail!(
                        "the object uploaded via {} has {size} bytes, not {bytes}",
                        via.name()
                    );
                }
                Ok(r)
            })?;
        }
        for &via in &order {
            let what = format!("s3 cp down via {}", via.name());
            let i = paths.iter().position(|&p| p == via).unwrap_or(0);
            let verify = !verified[i];
            cells[1].outcome(via)?.take(&what, || {
                let r = b.copy(via, false, &down)?;
                let len = std::fs::metadata(&down)?.len();
                if len != bytes {
                    bail!(
                        "the download via {} has {len} bytes, not {bytes}",
                        via.name()
                    );
                }
                if verify && sha256(&down)? != source_sha {
                    bail!("the download via {} differs from the source", via.name());
                }
                Ok(r)
            })?;
            if cells[1].outcome(via)?.error.is_none() {
                verified[i] = true;
            }
            let _ = std::fs::remove_file(&down);
        }
        for &via in &order {
            if latency_error.is_some() {
                break;
            }
            check_interrupted()?;
            let i = paths.iter().position(|&p| p == via).unwrap_or(0);
            match b.calls(via, opts.calls) {
                Ok(v) => {
                    if via == Via::Blastgate {
                        calls_through_blastgate += 1 + OPERATIONS.len() * (10 + opts.calls);
                    }
                    for (j, op) in OPERATIONS.iter().enumerate() {
                        latency[i][j]
                            .0
                            .push(v[op]["p50_us"].as_f64().unwrap_or(f64::NAN));
                        latency[i][j]
                            .1
                            .push(v[op]["p99_us"].as_f64().unwrap_or(f64::NAN));
                    }
                }
                Err(e) => {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                    eprintln!("bench: the latency cell via {} FAILED: {e:#}", via.name());
                    latency_error = Some(format!("via {}: {e:#}", via.name()));
                }
            }
        }
        eprintln!("bench: repetition {}/{} done", rep + 1, opts.reps);
    }
    drop(daemon);
    let pins_left = Path::new(PIN_DIR).exists();
    let mut recorded = 0u64;
    spool_lines(&dir.join("spool"), |line| {
        if line.contains("\"kind\":\"request\"") && line.contains("\"action\":\"aws:") {
            recorded += 1;
        }
    });
    drop(nginx);
    drop(moto);

    println!(
        "\nblastgate aws bench: the AWS CLI and boto3 against moto {} over HTTPS (SigV4 and IAM \
         checked), medians of {} repetitions, path order rotated each repetition",
        version(),
        opts.reps
    );
    println!(
        "(clients on CPU {client_cpus}; moto on CPU {server_cpus}; blastgate and nginx on CPU \
         {proxy_cpus}; /direct and /nginx = MB/s ratios; CPU = that process's CPU time / wall \
         time; load average at the end: {})",
        load()
    );
    let table = transfer_table(&cells, "moto");
    let lat = latency_table(&paths, &latency, opts.calls);
    println!(
        "\nrecords: {recorded} aws request events in the spool for at least \
         {calls_through_blastgate} calls the latency client made through blastgate"
    );
    let up = cells[0].mb_s(Via::Blastgate) / cells[0].mb_s(Via::Direct);
    let dn = cells[1].mb_s(Via::Blastgate) / cells[1].mb_s(Via::Direct);
    println!("\ngoals:");
    for (name, r) in [("s3 cp up", up), ("s3 cp down", dn)] {
        let v = match (r.is_nan(), r >= 0.8) {
            (true, _) => "unknown (failed)",
            (false, true) => "met",
            (false, false) => "NOT met",
        };
        println!(
            "  {name} through blastgate >= 0.8x direct: {v} ({})",
            fmt(r, 2)
        );
    }
    println!("\ncommands (first repetition):");
    for cell in &cells {
        for (via, o) in &cell.paths {
            if let Some(c) = &o.command {
                println!("  {} / {}: {c}", cell.name, via.name());
            }
        }
    }
    let report = json!({
        "reps": opts.reps, "mib": opts.mib, "calls": opts.calls,
        "cpus": {"client": client_cpus, "server": server_cpus, "proxy": proxy_cpus},
        "load": load(), "moto": version(),
        "transfers": table, "latency": lat,
        "records": {"aws_request_events": recorded, "calls_through_blastgate": calls_through_blastgate},
        "latency_error": latency_error,
    });
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("aws.json"), serde_json::to_string_pretty(&report)?)?;
    println!("(also written to target/bench/aws.json)");

    let mut failed = failures(&cells);
    failed.extend(latency_error.map(|e| format!("latency {e}")));
    for f in &failed {
        println!("\nFAILED {f}");
    }
    if pins_left {
        bail!("the bench daemon left {PIN_DIR} behind");
    }
    if (recorded as usize) < calls_through_blastgate {
        bail!(
            "the daemon recorded {recorded} AWS requests but the latency client made \
             {calls_through_blastgate} through it"
        );
    }
    if !failed.is_empty() {
        bail!("{} AWS bench cell(s) failed (details above)", failed.len());
    }
    Ok(())
}

/// Prints the per-call latency table (median over repetitions of each
/// run's p50 and p99; added = p50 minus direct's) and returns it.
fn latency_table(paths: &[Via], latency: &[Vec<(Vec<f64>, Vec<f64>)>], calls: usize) -> Value {
    println!(
        "\n  per-call latency, {calls} calls of each operation per run, one boto3 process per \
         path, connections kept alive:"
    );
    println!(
        "  {:<24} {:<10} {:>9} {:>9} {:>11} {:>15}",
        "call", "path", "p50 µs", "p99 µs", "added p50", "p50 min–max"
    );
    let mut out = Map::new();
    for (j, op) in OPERATIONS.iter().enumerate() {
        let direct = median(latency[0][j].0.clone());
        let mut row = Map::new();
        for (i, via) in paths.iter().enumerate() {
            let (p50s, p99s) = &latency[i][j];
            let (p50, p99) = (median(p50s.clone()), median(p99s.clone()));
            let lo = p50s.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = p50s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "  {:<24} {:<10} {:>9} {:>9} {:>11} {:>15}",
                op,
                via.name(),
                fmt(p50, 0),
                fmt(p99, 0),
                if *via == Via::Direct {
                    "-".to_string()
                } else {
                    format!("{:+.0}", p50 - direct)
                },
                format!("{}–{}", fmt(lo, 0), fmt(hi, 0)),
            );
            row.insert(
                via.name().into(),
                json!({"p50_us": p50, "p99_us": p99, "added_p50_us": p50 - direct,
                       "p50_us_runs": p50s, "p99_us_runs": p99s}),
            );
        }
        out.insert((*op).into(), Value::Object(row));
    }
    Value::Object(out)
}

/// moto's version, as its package says.
fn version() -> String {
    Command::new(format!("{VENV_BIN}/python"))
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_goes_first_in_turn() {
        let p = [Via::Direct, Via::Blastgate, Via::Peer];
        assert_eq!(rotated(&p, 0), p.to_vec());
        assert_eq!(rotated(&p, 1), vec![Via::Blastgate, Via::Peer, Via::Direct]);
        assert_eq!(rotated(&p, 3), p.to_vec());
        assert!(rotated::<Via>(&[], 2).is_empty());
    }

    #[test]
    fn mb_per_s_is_bytes_over_the_median_run() {
        let mut t = Transfer::new("x", 10_000_000, &[Via::Direct, Via::Blastgate]);
        for secs in [1.0, 4.0, 2.0] {
            t.paths[0].1.runs.push(Run {
                secs,
                proxy_cpu: f64::NAN,
                server_cpu: f64::NAN,
            });
        }
        assert_eq!(t.mb_s(Via::Direct), 5.0);
        assert!(t.mb_s(Via::Blastgate).is_nan());
        assert!(t.mb_s(Via::Peer).is_nan());
    }
}
