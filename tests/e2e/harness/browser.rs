//! Headless Chromium for the console tests: Debian's `chromium` and
//! `chromium-driver`, driven by Selenium from the tools venv through
//! `tests/e2e/browser/drive.py` (all installed by `cargo xtask setup`).
//!
//! The test decides the flow: it hands [`Browser::run_steps`] a JSON list
//! of steps (`open`, `login`, `wait_text`, `click`, `screenshot`,
//! `cookies`…; the vocabulary is documented at the top of drive.py) and
//! gets back drive.py's one JSON line: `{"ok": true, "results": [...]}`,
//! or `{"ok": false, "step", "error", "url", "page_text", "screenshot"…}`
//! with a screenshot of the failure in the artifacts directory.
//!
//! Each run is a fresh browser with a throwaway profile. HTTPS is trusted
//! properly: [`Browser::ca_file`] puts a CA into the NSS database Chromium
//! reads (a throwaway `$HOME/.pki/nssdb`, made with `certutil`), so no
//! certificate error is ever ignored unless a test asks for it. Chromium
//! resolves no name but those a test maps to loopback ([`Browser::map_host`]),
//! uses no proxy and makes none of its own background connections: only
//! 127.0.0.0/8 is ever contacted.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::https_upstream::PYTHON;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CERTUTIL: &str = "/usr/bin/certutil";

static RUN: AtomicUsize = AtomicUsize::new(0);

fn drive_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/browser/drive.py")
}

/// How a test's browser runs; [`Browser::default`] trusts only the public
/// roots Chromium ships with and gives a script two minutes.
#[derive(Clone, Debug)]
pub struct Browser {
    ca_files: Vec<PathBuf>,
    hosts: Vec<(String, String)>,
    ignore_certificate_errors: bool,
    timeout: Duration,
}

impl Default for Browser {
    fn default() -> Browser {
        Browser {
            ca_files: Vec::new(),
            hosts: Vec::new(),
            ignore_certificate_errors: false,
            timeout: Duration::from_secs(120),
        }
    }
}

impl Browser {
    /// Chromium, chromedriver, certutil and Selenium are all installed;
    /// otherwise a loud skip (a failure when CI=true) and false.
    pub fn available() -> bool {
        for (path, what) in [
            (CHROMIUM, "Debian chromium"),
            (CHROMEDRIVER, "Debian chromium-driver"),
            (CERTUTIL, "certutil (Debian libnss3-tools)"),
            (PYTHON, "the tools venv"),
        ] {
            if !Path::new(path).exists() {
                blastgate::testing::skip(&format!(
                    "{what} is not installed at {path} (cargo xtask setup installs it)"
                ));
                return false;
            }
        }
        let selenium = Command::new(PYTHON)
            .args(["-c", "import selenium"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !selenium {
            blastgate::testing::skip(&format!(
                "selenium is not installed in {PYTHON}'s venv (cargo xtask setup installs it)"
            ));
        }
        selenium
    }

    /// Trusts `pem` (a CA certificate) for HTTPS, as a user who imported
    /// it would: through Chromium's own certificate verifier.
    pub fn ca_file(mut self, pem: &Path) -> Browser {
        self.ca_files.push(pem.to_path_buf());
        self
    }

    /// Resolves `name` to `ip`, which must be a loopback address (every
    /// other name stays unresolvable).
    pub fn map_host(mut self, name: &str, ip: &str) -> Browser {
        self.hosts.push((name.to_string(), ip.to_string()));
        self
    }

    /// Accepts any server certificate. Only for a test that cannot give
    /// the browser its CA; prefer [`Browser::ca_file`].
    pub fn ignore_certificate_errors(mut self) -> Browser {
        self.ignore_certificate_errors = true;
        self
    }

    /// The whole script's limit; past it drive.py's process group is
    /// killed (default two minutes).
    pub fn timeout(mut self, timeout: Duration) -> Browser {
        self.timeout = timeout;
        self
    }

    /// Runs `steps` (a JSON list) in a fresh browser; returns drive.py's
    /// verdict. `artifacts` receives the script, drive.py's stderr,
    /// chromedriver's log and a screenshot of any failure. A timeout, a
    /// crash or missing output come back as `{"ok": false, "error": …}`
    /// too, with `"stderr"`.
    pub fn run_steps(&self, steps: &Value, artifacts: &Path) -> Value {
        assert!(steps.is_array(), "steps are a JSON list: {steps}");
        std::fs::create_dir_all(artifacts).expect("artifacts dir");
        let n = RUN.fetch_add(1, Ordering::SeqCst);
        let script = artifacts.join(format!("script-{n}.json"));
        std::fs::write(&script, serde_json::to_vec_pretty(steps).expect("json")).expect("script");
        let out_path = artifacts.join(format!("drive-{n}.out"));
        let err_path = artifacts.join(format!("drive-{n}.stderr"));
        let mut cmd = Command::new(PYTHON);
        cmd.arg(drive_py())
            .arg(&script)
            .arg("--artifacts")
            .arg(artifacts);
        for ca in &self.ca_files {
            cmd.arg("--ca-file").arg(ca);
        }
        for (name, ip) in &self.hosts {
            cmd.arg("--map-host").arg(format!("{name}={ip}"));
        }
        if self.ignore_certificate_errors {
            cmd.arg("--ignore-certificate-errors");
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            // Its own process group (chromedriver and Chromium join it), so
            // a timeout can end them all.
            .process_group(0);
        // SAFETY: prctl in the child before exec, a plain system call:
        // drive.py (which then quits the browser) goes when the test does.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn drive.py");
        let pid = child.id() as i32;
        let end = Instant::now() + self.timeout;
        let mut timed_out = false;
        // Wait without reaping, so the group id cannot be reused while
        // what is left of the group is killed.
        while !exited_unreaped(pid) {
            if Instant::now() > end {
                timed_out = true;
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-pid, libc::SIGTERM) };
                let grace = Instant::now() + Duration::from_secs(10);
                while !exited_unreaped(pid) && Instant::now() < grace {
                    std::thread::sleep(Duration::from_millis(50));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group is still there (nothing, normally).
        // SAFETY: the leader is not reaped yet, so -pid is still our group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let status = child.wait().expect("wait for drive.py");
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail = |s: &str| s[s.len().saturating_sub(4000)..].to_string();
        if timed_out {
            return json!({
                "ok": false,
                "error": format!("drive.py timed out after {:?}; its process group was killed", self.timeout),
                "stderr": tail(&stderr),
            });
        }
        let verdict = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        match verdict {
            Some(v) if v["ok"].is_boolean() => {
                assert_eq!(
                    v["ok"].as_bool() == Some(true),
                    status.success(),
                    "drive.py's verdict and exit status ({status}) disagree: {v}"
                );
                v
            }
            _ => json!({
                "ok": false,
                "error": format!("drive.py printed no verdict ({status})"),
                "stdout": tail(&stdout),
                "stderr": tail(&stderr),
            }),
        }
    }

    /// [`Browser::run_steps`], which must succeed: the per-step results,
    /// or a panic that shows the failing step, URL, page text, screenshot
    /// and browser console.
    pub fn run_ok(&self, steps: &Value, artifacts: &Path) -> Vec<Value> {
        let v = self.run_steps(steps, artifacts);
        if v["ok"] != true {
            panic!("{}", describe_failure(&v, steps));
        }
        v["results"].as_array().cloned().unwrap_or_default()
    }
}

/// A failed verdict as a readable message.
pub fn describe_failure(v: &Value, steps: &Value) -> String {
    let step = v["step"].as_i64().unwrap_or(-1);
    let mut s = format!(
        "browser script failed at step {step} {}: {}\n  url: {}\n  screenshot: {}\n",
        usize::try_from(step)
            .ok()
            .and_then(|i| steps.get(i))
            .map(Value::to_string)
            .unwrap_or_default(),
        v["error"].as_str().unwrap_or("?"),
        v["url"].as_str().unwrap_or("-"),
        v["screenshot"].as_str().unwrap_or("-"),
    );
    if let Some(text) = v["page_text"].as_str() {
        s.push_str(&format!("  page text:\n{text}\n"));
    }
    for key in ["console", "killed_leftovers"] {
        if let Some(list) = v[key].as_array().filter(|l| !l.is_empty()) {
            s.push_str(&format!("  {key}: {list:?}\n"));
        }
    }
    for key in ["stdout", "stderr"] {
        if let Some(t) = v[key].as_str().filter(|t| !t.is_empty()) {
            s.push_str(&format!("  {key}:\n{t}\n"));
        }
    }
    s
}

/// True once `pid` (our child) has exited; it stays a zombie, unreaped.
fn exited_unreaped(pid: i32) -> bool {
    // SAFETY: waitid on our own child with a zeroed siginfo out-parameter;
    // WNOWAIT leaves it to be reaped by Child::wait.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() == pid
    }
}

/// Runs `steps` with the default [`Browser`].
pub fn run_steps(steps: &Value, artifacts: &Path) -> Value {
    Browser::default().run_steps(steps, artifacts)
}
