//! `blastgate install` on this host for real: directories, both CAs, the
//! masking key, the host trust store, the SSH known_hosts block and a
//! runner account enrolled by uid, whose processes the daemon then
//! intercepts. A second run changes nothing; `uninstall --undo-install`
//! takes the host-wide changes back.

mod harness;

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use harness::{users::TestUser, *};
use serde_json::Value;

const ANCHOR: &str = "/usr/local/share/ca-certificates/blastgate-local-ca.crt";
const KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const RUNNER: &str = "bg-install-runner";

/// Takes the host-wide changes back even when the test fails.
struct UndoInstall<'a>(&'a Env);

impl Drop for UndoInstall<'_> {
    fn drop(&mut self) {
        let _ = self.0.blastgate(&["uninstall", "--undo-install"]);
    }
}

/// Every file and directory install may touch: bytes, mode, owner, mtime.
fn snapshot(paths: &[PathBuf]) -> BTreeMap<PathBuf, (Vec<u8>, u32, u32, i64, i64)> {
    paths
        .iter()
        .filter_map(|p| {
            let m = std::fs::metadata(p).ok()?;
            let bytes = if m.is_file() {
                std::fs::read(p).ok()?
            } else {
                Vec::new()
            };
            Some((
                p.clone(),
                (bytes, m.mode(), m.uid(), m.mtime(), m.mtime_nsec()),
            ))
        })
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn install(env: &Env, more: &[&str]) -> Output {
    let mut args = vec!["install"];
    args.extend(more);
    env.blastgate(&args)
}

#[test]
fn install_sets_up_the_host_once_and_the_enrolled_runner_is_an_agent() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    assert!(
        !Path::new(ANCHOR).exists(),
        "{ANCHOR} exists: blastgate is installed on this host; this test would change it"
    );
    let before_known_hosts = std::fs::read_to_string(KNOWN_HOSTS).ok();
    assert!(
        !before_known_hosts
            .as_deref()
            .unwrap_or_default()
            .contains("BEGIN blastgate"),
        "{KNOWN_HOSTS} has blastgate's block already"
    );
    let runner = TestUser::create(RUNNER);
    let server = TestServer::start(&["127.0.0.2"]);
    let key = tempfile::tempdir().expect("tempdir");
    let key_file = key.path().join("id");
    harness::sshd::keygen(&key_file, "blastgate-test");
    let env = Env::new(&format!(
        "# the admin's own comment survives enrolment\n\
         [[targets]]\nname = \"orders\"\nprotocol = \"tcp\"\naddresses = [\"{}\"]\n\n\
         [[targets]]\nname = \"deploy\"\nprotocol = \"ssh\"\naddress = \"127.0.0.2:2222\"\n\
         hostnames = [\"deploy.internal\"]\n\n[targets.ssh]\nuser = \"deploy\"\nkey_file = \"{}\"\n\
         host_key = \"{}\"\n",
        server.addr(0),
        key_file.display(),
        std::fs::read_to_string(key_file.with_extension("pub"))
            .expect("public key")
            .trim()
    ));
    let _undo = UndoInstall(&env);
    let ca_dir = env.dir.path().join("ca");
    let secrets = env.dir.path().join("secrets");

    // Refusals first: they leave the config as it was.
    let config_before = std::fs::read(&env.config).expect("config");
    for (user, why) in [
        ("root", "root cannot be enrolled"),
        ("bg-no-such-user", "no such local user"),
    ] {
        let out = install(&env, &["--enrol-user", user]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(why), "{}", text(&out));
        assert_eq!(std::fs::read(&env.config).expect("config"), config_before);
    }

    let out = install(&env, &["--enrol-user", RUNNER]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    for line in [
        format!("created   {}", secrets.display()),
        format!("created   {}", env.spool.display()),
        format!("created   TLS CA in {}", ca_dir.display()),
        format!("created   SSH CA in {}", ca_dir.display()),
        format!("created   masking hash key {}/mask.key", ca_dir.display()),
        format!("created   host trust store entry {ANCHOR}"),
        format!("created   1 @cert-authority line(s) for the ssh targets in {KNOWN_HOSTS}"),
        format!(
            "created   user {RUNNER} (uid {}) enrolled as agent \"{RUNNER}\"",
            runner.uid
        ),
    ] {
        assert!(said.contains(&line), "no {line:?} in:\n{said}");
    }
    for dir in [&secrets, &env.spool] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    // Searchable, not listable: `run --user` agents open the bundle by name.
    assert_eq!(mode(&ca_dir), 0o711, "{}", ca_dir.display());
    assert_eq!(mode(&ca_dir.join("mask.key")), 0o600);

    // The trust store holds the CA `ca export` prints, in the bundle too.
    let pem = String::from_utf8(env.blastgate(&["ca", "export"]).stdout).expect("pem");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(std::fs::read_to_string(ANCHOR).expect("anchor"), pem);
    assert!(std::fs::read_to_string(SYSTEM_BUNDLE)
        .expect("bundle")
        .contains(pem.trim()));
    // The known_hosts block is exactly what `ca ssh-known-hosts` prints,
    // and the admin's lines (if any) are still there.
    let lines = String::from_utf8(env.blastgate(&["ca", "ssh-known-hosts"]).stdout).expect("utf8");
    assert!(
        lines.starts_with("@cert-authority deploy.internal,[deploy.internal]:2222 "),
        "{lines}"
    );
    let known = std::fs::read_to_string(KNOWN_HOSTS).expect("known_hosts");
    assert!(known.contains(&lines), "{known}");
    if let Some(before) = &before_known_hosts {
        assert!(known.starts_with(before.as_str()), "{known}");
    }
    let config = std::fs::read_to_string(&env.config).expect("config");
    assert!(
        config.contains("# the admin's own comment survives enrolment"),
        "{config}"
    );
    assert!(
        config.contains(&format!("{{ uid = {}, agent = \"{RUNNER}\" }}", runner.uid)),
        "{config}"
    );
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&env.config)
        .output()
        .expect("check-config");
    assert!(check.status.success(), "{}", text(&check));

    // A second run: every step unchanged, not one file touched.
    let touched: Vec<PathBuf> = [
        env.config.clone(),
        PathBuf::from(KNOWN_HOSTS),
        PathBuf::from(ANCHOR),
        PathBuf::from(SYSTEM_BUNDLE),
        secrets.clone(),
        env.spool.clone(),
        ca_dir.clone(),
    ]
    .into_iter()
    .chain(
        std::fs::read_dir(&ca_dir)
            .expect("ca dir")
            .filter_map(|e| e.ok().map(|e| e.path())),
    )
    .collect();
    let before = snapshot(&touched);
    let out = install(&env, &["--enrol-user", RUNNER]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    for line in said.lines() {
        assert!(
            line.starts_with("unchanged "),
            "a rerun changed something:\n{said}"
        );
    }
    assert_eq!(snapshot(&touched), before, "a rerun rewrote a file");

    // The daemon on that config: the runner's every process is an agent.
    let mut daemon = Daemon::start(&env);
    let dst = server.addr(0).to_string();
    let uid = runner.uid.to_string();
    let v = &run_json(Command::new(PROBE).args(["as-uid", &uid, &dst]))[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        !server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "{v}"
    );
    let pid = v["pid"].as_u64().expect("pid");
    let ev = env.wait_event("the runner's session", |e: &Value| {
        is_session(e, "session_closed", pid)
    });
    assert_eq!(ev["caller"]["agent"], RUNNER, "{ev}");
    assert_eq!(ev["caller"]["uid"], runner.uid, "{ev}");
    daemon.stop();

    // Undo: the trust store and known_hosts are as they were.
    let out = env.blastgate(&["uninstall", "--undo-install"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!Path::new(ANCHOR).exists());
    assert!(!std::fs::read_to_string(SYSTEM_BUNDLE)
        .expect("bundle")
        .contains(pem.trim()));
    assert_eq!(
        std::fs::read_to_string(KNOWN_HOSTS).ok(),
        before_known_hosts
    );
}
