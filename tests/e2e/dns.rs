//! blastgate as the agents' resolver, against the real kernel, a real
//! resolver (dnsmasq) and real clients (dig, glibc through getent).
//!
//! Every agent lookup here is sent to a loopback address (127.0.0.53, ::1)
//! or happens inside a mount namespace whose resolv.conf names one: if the
//! redirect failed, nothing would leave the host.

mod harness;

use std::{process::Command, time::Duration};

use harness::{dnsmasq::Dnsmasq, pg_gateway, postgres::TestPostgres, *};
use serde_json::Value;

const ZONE: &str = "10.231.0.2 allowed.test\nfd10::2 allowed.test\n10.231.0.3 denied.test\n\
                    10.231.0.4 a.wild.test\n";

/// `dig` as the agent `ci`, with `args` after the defaults.
fn dig(env: &Env, args: &[&str]) -> String {
    let mut cmd = vec!["dig", "+time=2", "+tries=1"];
    cmd.extend(args);
    let out = env.agent("ci", &cmd).output().expect("dig");
    text(&out)
}

fn env_with(dns: &Dnsmasq, dns_extra: &str, extra: &str) -> Env {
    Env::with_sections(
        "",
        &format!("upstreams = [\"{}\"]\n{dns_extra}", dns.addr),
        extra,
    )
}

/// dnsmasq serving [`ZONE`], and a daemon forwarding to it that allows
/// `allowed.test` and `*.wild.test`, with `dns_extra` in `[dns]`.
fn zone_and_daemon(dns_extra: &str) -> (Dnsmasq, Env, Daemon) {
    let zone = Dnsmasq::start(ZONE);
    let env = env_with(
        &zone,
        dns_extra,
        "[egress]\nallow = [\"allowed.test:443\", \"*.wild.test:443\"]\n",
    );
    let d = Daemon::start(&env);
    (zone, env, d)
}

fn queries(env: &Env, name: &str) -> Vec<Value> {
    env.events()
        .into_iter()
        .filter(|e| e["kind"] == "dns_query" && e["dst_name"] == name)
        .collect()
}

#[test]
fn agents_resolve_allowed_names_through_blastgate_and_nothing_else() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let (_zone, env, _d) = zone_and_daemon("");

    // Over UDP to an IPv4 resolver, over TCP, and over UDP to an IPv6 one:
    // each answered by blastgate (the agent asked 127.0.0.53 / ::1, where
    // nothing listens) with dnsmasq's answer.
    let a = dig(&env, &["@127.0.0.53", "allowed.test", "A", "+short"]);
    assert_eq!(a.trim(), "10.231.0.2", "{a}");
    let tcp = dig(
        &env,
        &["+tcp", "@127.0.0.53", "allowed.test", "A", "+short"],
    );
    assert_eq!(tcp.trim(), "10.231.0.2", "{tcp}");
    let aaaa = dig(&env, &["@::1", "allowed.test", "AAAA", "+short"]);
    assert_eq!(aaaa.trim(), "fd10::2", "{aaaa}");
    let wild = dig(&env, &["@127.0.0.53", "A.Wild.test", "A", "+short"]);
    assert_eq!(wild.trim(), "10.231.0.4", "{wild}");
    // The reply comes from the address asked (dig checks it, and glibc).
    let full = dig(&env, &["@127.0.0.53", "allowed.test", "A"]);
    assert!(full.contains("SERVER: 127.0.0.53#53"), "{full}");

    // glibc's resolver, as every program uses it.
    let getent = text(&env.agent_resolving("ci", "getent ahostsv4 allowed.test"));
    assert!(getent.contains("10.231.0.2"), "{getent}");

    // A name no rule allows: NXDOMAIN, and never forwarded.
    let denied = dig(&env, &["@127.0.0.53", "denied.test", "A"]);
    assert!(denied.contains("status: NXDOMAIN"), "{denied}");
    let denied_tcp = dig(&env, &["+tcp", "@127.0.0.53", "denied.test", "A"]);
    assert!(denied_tcp.contains("status: NXDOMAIN"), "{denied_tcp}");

    // What the resolver recorded.
    env.wait_event("the denied lookup", |e| {
        e["kind"] == "dns_query" && e["dst_name"] == "denied.test"
    });
    let allowed = queries(&env, "allowed.test");
    assert!(allowed.len() >= 4, "{allowed:#?}");
    assert!(
        allowed.iter().all(|e| e["verdict"] == "allow"),
        "{allowed:#?}"
    );
    assert!(
        allowed
            .iter()
            .any(|e| e["action"] == "dns:AAAA"
                && e["text"].as_str().unwrap_or("").contains("fd10::2")),
        "{allowed:#?}"
    );
    assert!(
        allowed.iter().all(|e| e["caller"]["agent"] == "ci"),
        "{allowed:#?}"
    );
    let refused = queries(&env, "denied.test");
    assert!(
        !refused.is_empty() && refused.iter().all(|e| e["verdict"] == "deny"),
        "{refused:#?}"
    );

    // Not an agent: its UDP is not redirected, and the resolver's port does
    // not answer it (only redirected agents are served).
    let port = env.dns_port.to_string();
    let out = Command::new("dig")
        .args([
            "+time=1",
            "+tries=1",
            "-p",
            &port,
            "@127.0.0.1",
            "allowed.test",
        ])
        .output()
        .expect("dig");
    assert!(!text(&out).contains("10.231.0.2"), "{}", text(&out));

    // Agents' other UDP is still refused.
    let v = &run_json(&mut env.agent("ci", &[PROBE, "udp", "127.0.0.1:9999"]))[0];
    assert_eq!(v["ok"], false, "{v}");
}

#[test]
fn lookups_that_carry_data_are_refused_without_slowing_other_agents() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let (_zone, env, _d) = zone_and_daemon("queries_per_sec = 1\nburst = 20\n");

    // Long labels and deep names under an allowed wildcard: refused by
    // shape, before anything is forwarded.
    let long = format!("{}.wild.test", "x".repeat(63));
    let deep = format!("{}wild.test", "a.".repeat(12));
    for name in [long.as_str(), deep.as_str()] {
        let out = dig(&env, &["@127.0.0.53", name, "A"]);
        // Long: dnsmasq has no such name, so only REFUSED shows the guard
        // held; deep: over max_labels.
        if name == deep {
            assert!(out.contains("status: REFUSED"), "{name}: {out}");
        }
    }
    // TXT, ANY and zone transfers of a denied name: NXDOMAIN or REFUSED,
    // never an answer.
    for (name, ty) in [
        ("denied.test", "TXT"),
        ("allowed.test", "ANY"),
        ("allowed.test", "AXFR"),
    ] {
        let out = dig(&env, &["@127.0.0.53", name, ty]);
        assert!(
            out.contains("status: NXDOMAIN")
                || out.contains("status: REFUSED")
                || out.contains("Transfer failed"),
            "{name} {ty}: {out}"
        );
    }
    // A flood of unique subdomains from one agent: past its rate, refused.
    let script = "for i in $(seq 1 60); do dig +time=1 +tries=1 +short @127.0.0.53 \
                  x$i.denied.test TXT; done; dig +time=1 +tries=1 @127.0.0.53 allowed.test A";
    let out = env
        .agent("flood", &["sh", "-c", script])
        .output()
        .expect("flood");
    let flood = text(&out);
    assert!(
        flood.contains("status: REFUSED"),
        "the flood's last lookup: {flood}"
    );
    // Another agent is not slowed or refused meanwhile.
    let other = dig(&env, &["@127.0.0.53", "allowed.test", "A", "+short"]);
    assert_eq!(other.trim(), "10.231.0.2", "{other}");

    env.wait_event("the rate refusal", |e| {
        e["kind"] == "dns_query"
            && e["verdict"] == "deny"
            && e["reason"].as_str().is_some_and(|r| r.contains("rate"))
    });
    // Every lookup of the flood is in some record: one by one within the
    // rate, past it in summaries that count them.
    let counted = |e: &Value| -> u64 {
        let reason = e["reason"].as_str().unwrap_or_default();
        let number = |s: &str| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        };
        if let Some(n) = number(reason).filter(|_| reason.contains("queries over")) {
            n
        } else if let Some((_, more)) = reason.split_once("; ") {
            1 + number(more).unwrap_or(0)
        } else {
            1
        }
    };
    let total = wait_until(Duration::from_secs(10), || {
        let n: u64 = env
            .events()
            .iter()
            .filter(|e| e["kind"] == "dns_query" && e["caller"]["agent"] == "flood")
            .map(counted)
            .sum();
        (n == 61).then_some(n)
    });
    assert_eq!(total, Some(61), "{:#?}", env.events());
}

/// A target named by `hosts`: the agent's connection reaches whatever
/// address the name has now, through the gateway.
#[test]
fn a_target_named_by_host_follows_its_address() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let first = TestServer::start(&["127.0.0.21"]);
    let second = TestServer::start(&["127.0.0.22"]);
    let port = first.addr(0).port();
    let zone = Dnsmasq::start("127.0.0.21 orders.test\n");
    let env = env_with(
        &zone,
        "",
        &format!(
            "[[targets]]\nname = \"orders\"\nprotocol = \"tcp\"\nhosts = [\"orders.test:{port}\", \"orders.test:{}\"]\n",
            second.addr(0).port()
        ),
    );
    let _d = Daemon::start(&env);
    let connect = |ip: &str, port: u16| {
        let script = format!(
            "dig +short +time=2 +tries=1 @127.0.0.53 orders.test A >/dev/null; {PROBE} connect {ip}:{port}"
        );
        run_json(&mut env.agent("ci", &["sh", "-c", &script]))
    };
    let v = &connect("127.0.0.21", port)[0];
    assert_eq!(v["ok"], true, "{v}");
    env.wait_event("a session to orders by name", |e| {
        e["kind"] == "session_opened" && e["target"] == "orders" && e["dst_name"] == "orders.test"
    });

    // The zone moves the name; no restart.
    zone.set_hosts("127.0.0.22 orders.test\n");
    let moved = wait_until(Duration::from_secs(10), || {
        let a = dig(&env, &["@127.0.0.53", "orders.test", "A", "+short"]);
        (a.trim() == "127.0.0.22").then_some(())
    });
    assert!(moved.is_some(), "dnsmasq did not serve the new address");
    let v = &connect("127.0.0.22", second.addr(0).port())[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        second.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the new address was not reached"
    );

    // An address of the same port the agent never resolved: refused.
    let stranger = TestServer::start(&["127.0.0.23"]);
    let v = &run_json(&mut env.agent(
        "ci",
        &[
            PROBE,
            "connect",
            &format!("127.0.0.23:{}", stranger.addr(0).port()),
        ],
    ))[0];
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        stranger.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an address never resolved was reached"
    );
}

/// A production database named by DNS fails over: the zone moves
/// `orders.test` from one address to another while the daemon runs. The
/// agent's next connection (psql resolving through glibc) reaches the new
/// address through the PostgreSQL gateway, with the shipped policy and
/// masking in force, no restart. Learned names expire (`min_ttl_secs = 1`
/// here): a session open across the expiry goes on, while a new
/// connection to an address the agent no longer holds a name for is
/// refused.
#[test]
fn a_postgres_target_named_by_hosts_follows_a_failover_with_policy_and_masking() {
    let _g = serial();
    if !kernel_ready() || !TestPostgres::available() {
        return;
    }
    let pg = TestPostgres::start_on(&["127.0.0.31", "127.0.0.32"]);
    pg.create_role("app", pg_gateway::SECRET, true);
    pg.create_db("orders", "app");
    pg.load_fixture("orders", "app");
    let port = pg.port();
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = secrets.path().join("orders-db");
    std::fs::write(&secret, pg_gateway::SECRET).expect("secret");
    let zone = Dnsmasq::start("127.0.0.31 orders.test\n");
    let env = env_with(
        &zone,
        "min_ttl_secs = 1\n",
        &format!(
            "[policy]\ndir = \"{}\"\n\n[[targets]]\nname = \"orders-db\"\nprotocol = \"postgres\"\n\
             hosts = [\"orders.test:{port}\"]\nlabels = {{ env = \"production\" }}\n\n[targets.postgres]\nuser = \"app\"\n\
             password_file = \"{}\"\n",
            pg_gateway::policies_dir().display(),
            secret.display()
        ),
    );
    let _d = Daemon::start(&env);
    let psql = |host: &str, sql: &str| {
        env.agent_resolving(
            "ci",
            &format!(
                "PGPASSWORD=anything psql -X -At -v ON_ERROR_STOP=1 \
                 'host={host} port={port} user=app dbname=orders sslmode=disable' -c \"{sql}\""
            ),
        )
    };
    let server = "SELECT host(inet_server_addr())";

    let out = psql("orders.test", server);
    assert_eq!(text(&out).trim(), "127.0.0.31", "{}", text(&out));

    zone.set_hosts("127.0.0.32 orders.test\n");
    let moved = wait_until(Duration::from_secs(10), || {
        let a = dig(&env, &["@127.0.0.53", "orders.test", "A", "+short"]);
        (a.trim() == "127.0.0.32").then_some(())
    });
    assert!(moved.is_some(), "dnsmasq did not serve the new address");
    let out = psql("orders.test", server);
    assert_eq!(text(&out).trim(), "127.0.0.32", "{}", text(&out));
    env.wait_event("the session to the new address", |e| {
        e["kind"] == "session_opened"
            && e["target"] == "orders-db"
            && e["dst_name"] == "orders.test"
            && e["orig_dst"] == format!("127.0.0.32:{port}")
    });

    // Masking and policy, on the new address.
    let out = psql("orders.test", "SELECT email FROM customers ORDER BY id");
    assert!(out.status.success(), "{}", text(&out));
    let emails = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!emails.contains("alice@example.com"), "{emails}");
    assert_eq!(emails.lines().count(), 3, "{emails}");
    let out = psql("orders.test", "DROP TABLE orders");
    assert!(
        text(&out).contains("sql-destroy-production"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pg.sql("orders", "SELECT count(*) FROM orders").trim(),
        "10",
        "the table survived"
    );

    // A session open across the learned name's expiry goes on.
    let out = psql(
        "orders.test",
        "SELECT pg_sleep(3); SELECT host(inet_server_addr())",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.32"), "{}", text(&out));
    // A new connection by address alone, with no lookup: the name has
    // expired, so the address is nobody's target.
    let out = psql("127.0.0.32", server);
    assert!(!out.status.success(), "{}", text(&out));
    env.wait_event("the refusal after expiry", |e| {
        e["kind"] == "session_denied" && e["orig_dst"] == format!("127.0.0.32:{port}")
    });
}

#[test]
fn a_wildcard_postgres_target_shows_the_name_the_agent_resolved_over_tls() {
    let _g = serial();
    if !kernel_ready() || !TestPostgres::available() {
        return;
    }
    let pg = TestPostgres::start_on(&["127.0.0.33"]);
    pg.create_role("app", pg_gateway::SECRET, true);
    pg.create_db("orders", "app");
    let port = pg.port();
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = secrets.path().join("orders-db");
    std::fs::write(&secret, pg_gateway::SECRET).expect("secret");
    let zone = Dnsmasq::start("127.0.0.33 orders.db.test\n");
    let env = env_with(
        &zone,
        "",
        &format!(
            "[policy]\ndir = \"{}\"\n\n[[targets]]\nname = \"dbs\"\nprotocol = \"postgres\"\n\
             hosts = [\"*.db.test:{port}\"]\n\n[targets.postgres]\nuser = \"app\"\n\
             password_file = \"{}\"\n",
            pg_gateway::policies_dir().display(),
            secret.display()
        ),
    );
    let _d = Daemon::start(&env);
    let ca = secrets.path().join("ca.pem");
    let out = env.blastgate(&["ca", "export"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&ca, &out.stdout).expect("ca");
    // psql checks the certificate names orders.db.test: the target has no
    // fixed name, so the one the agent resolved is presented.
    let out = env.agent_resolving(
        "ci",
        &format!(
            "PGPASSWORD=anything psql -X -At -v ON_ERROR_STOP=1 \
             'host=orders.db.test port={port} user=app dbname=orders sslmode=verify-full \
             sslrootcert={}' -c \"SELECT 'over tls'\"",
            ca.display()
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "over tls", "{}", text(&out));
}
