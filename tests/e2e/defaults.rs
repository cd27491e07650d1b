//! Secure defaults: a daemon configured without `[policy]` enforces the
//! policies shipped in its binary (it used to allow every agent
//! everything), and `blastgate status` names every setting that weakens
//! enforcement. Real PostgreSQL, Debian's sshd, real kernel hooks.

mod harness;

use std::process::Stdio;

use harness::{postgres::TestPostgres, sshd::*, *};

const SECRET: &str = "upstream-Secret-defaults";

#[test]
fn without_a_policy_section_the_shipped_policies_apply() {
    let _serial = serial();
    if !kernel_ready() || !TestPostgres::available() || !TestSshd::available() {
        return;
    }
    let pg = TestPostgres::start("127.0.0.2");
    pg.create_role("app", SECRET, true);
    pg.create_db("orders", "app");
    pg.load_fixture("orders", "app");
    let sshd = TestSshd::start("127.0.0.2");
    let user = deploy_user();
    let key = sshd.authorize_new_key(&user);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("orders-db");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret");
    let upstream_known = dir.path().join("upstream_known_hosts");
    std::fs::write(&upstream_known, format!("{}\n", sshd.known_hosts_line())).expect("kh");
    // No [policy] section; one target in shadow mode, which status must
    // name as weakened.
    let env = Env::new(&format!(
        "[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"orders-db\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\
         labels = {{ env = \"production\" }}\n\n[targets.postgres]\nuser = \"app\"\n\
         password_file = \"{}\"\n\n\
         [[targets]]\nname = \"deploy-host\"\nprotocol = \"ssh\"\naddress = \"{}\"\n\
         hostnames = [\"deploy.internal\", \"127.0.0.2\"]\n\n\
         [targets.ssh]\nuser = \"{user}\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n\n\
         [[targets]]\nname = \"legacy\"\nprotocol = \"tcp\"\naddress = \"127.0.0.9:9\"\nenforce = false\n",
        pg.addr(),
        secret_file.display(),
        sshd.addr(),
        key.display(),
        upstream_known.display(),
    ));
    let daemon = Daemon::start(&env);

    // A DROP TABLE in production is refused, and the table is still there.
    let conn = format!(
        "host={} port={} user=app dbname=orders sslmode=disable",
        pg.addr().ip(),
        pg.port()
    );
    let mut c = env.agent("claude", &[]);
    c.args(["psql", "-X", &conn, "-c", "DROP TABLE customers"])
        .env("PGPASSWORD", "anything");
    let out = c.output().expect("psql");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "DROP TABLE ran: {err}");
    assert!(err.contains("never run by agents"), "{err}");
    assert_eq!(
        pg.sql("orders", "SELECT count(*) > 0 FROM customers")
            .trim(),
        "t",
        "the table was dropped"
    );
    // A harmless read still runs.
    let mut c = env.agent("claude", &[]);
    c.args(["psql", "-X", "-At", &conn, "-c", "SELECT 1+1"])
        .env("PGPASSWORD", "anything");
    let out = c.output().expect("psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");

    // An unlisted SSH command is held for a human (denied here); the
    // listed git-upload-pack is not.
    let out = env.blastgate(&["ca", "ssh-known-hosts"]);
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, &out.stdout).expect("known_hosts");
    let port = sshd.port().to_string();
    let dest = format!("{user}@127.0.0.2");
    let ssh = ssh_command(&known_hosts, &["-p", &port, &dest, "id"]);
    let mut c = env.agent("claude", &[]);
    c.arg(ssh.get_program())
        .args(ssh.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("ssh");
    let id = env.pending_approval();
    env.answer_approval("deny", &id);
    let out = child.wait_with_output().expect("ssh");
    assert!(!out.status.success(), "the unlisted command ran: {out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("uid="),
        "{out:?}"
    );
    env.wait_event("the held ssh command, denied", |e| {
        e["action"] == "ssh:exec"
            && e["policy_id"] == "ssh-unlisted-command"
            && e["verdict"] == "deny"
    });
    // What the daemon says it enforces, and what weakens it.
    let status = env.blastgate(&["status"]);
    let said = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{said}");
    assert!(said.contains("policies: <built-in policies>"), "{said}");
    assert!(
        said.contains("target legacy: enforce = false"),
        "shadow mode is not named as weakened: {said}"
    );
    assert!(said.contains("target legacy: protocol = \"tcp\""), "{said}");
    assert!(said.contains("enrol: no rules"), "{said}");
    assert!(
        !said.contains("orders-db:") && !said.contains("deploy-host:"),
        "targets at their defaults are not weakened: {said}"
    );
    let json = env.blastgate(&["status", "--json"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json");
    // The three named above, plus whatever kernel protection this kernel
    // refused (the BPF LSM, here).
    let weakened = parsed["weakened"].as_array().expect("weakened list");
    let config_lines = weakened
        .iter()
        .filter(|w| !w.as_str().unwrap_or_default().starts_with("kernel: "))
        .count();
    assert_eq!(config_lines, 3, "{parsed}");
    drop(daemon);
}
