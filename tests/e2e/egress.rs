//! Egress by name, against the real kernel, a real resolver (dnsmasq), real
//! servers (openssl s_server, python's http.server) in a network namespace
//! of the test's own, and real clients (curl through glibc).
//!
//! Servers live on a veth address in the namespace (a non-loopback
//! address the host routes to); every agent lookup goes to 127.0.0.53
//! through a bind-mounted resolv.conf, so nothing leaves the machine even
//! if the redirect failed.

mod harness;

use std::{process::Command, time::Duration};

use harness::{dnsmasq::Dnsmasq, https_upstream::ca_and_leaf, netns::NetNs, podman, *};

/// Servers for `allowed.test` and `denied.test` (one address, as a CDN
/// front hosts many names) in a namespace of the test's own: HTTPS with a
/// certificate for both from a CA of the test's own and, with `http`,
/// plain HTTP; dnsmasq serving both names; a daemon with `egress`.
struct Scene {
    env: Env,
    server: std::net::Ipv4Addr,
    server6: std::net::Ipv6Addr,
    ca: String,
    daemon: Option<Daemon>,
    upstream: std::net::SocketAddr,
    _zone: Dnsmasq,
    _ns: NetNs,
    _dir: tempfile::TempDir,
}

impl Scene {
    fn start(egress: &str, http: bool) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        ca_and_leaf(dir.path(), &["allowed.test", "denied.test"]);
        let mut ns = NetNs::new();
        let server = ns.ns_ip;
        let path = |n: &str| dir.path().join(n).display().to_string();
        // One s_server per address family: it accepts on one address.
        let server6 = ns.ns_ip6;
        for accept in [format!("{server}:443"), format!("[{server6}]:443")] {
            ns.spawn(&[
                "openssl",
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                &accept,
                "-cert",
                &path("leaf.pem"),
                "-key",
                &path("leaf.key"),
            ]);
        }
        if http {
            ns.http_server(&server.to_string(), 80, &path(""));
            ns.http_server(&server6.to_string(), 80, &path(""));
        }
        // Probe connections are closed at once: s_server serves one at a
        // time.
        let up = wait_until(Duration::from_secs(10), || {
            let https = std::net::TcpStream::connect((server, 443)).is_ok()
                && std::net::TcpStream::connect((server6, 443)).is_ok();
            let http = !http
                || (std::net::TcpStream::connect((server, 80)).is_ok()
                    && std::net::TcpStream::connect((server6, 80)).is_ok());
            (https && http).then_some(())
        });
        assert!(up.is_some(), "the servers in the namespace did not start");
        let zone = Dnsmasq::start(&format!(
            "{server} allowed.test\n{server} denied.test\n{server6} allowed.test\n{server6} denied.test\n"
        ));
        let env = Env::with_sections("", &format!("upstreams = [\"{}\"]\n", zone.addr), egress);
        let daemon = Daemon::start(&env);
        Scene {
            env,
            server,
            server6,
            ca: path("ca.pem"),
            daemon: Some(daemon),
            upstream: zone.addr,
            _zone: zone,
            _ns: ns,
            _dir: dir,
        }
    }

    /// Stops the daemon and starts another with `egress` instead (its own
    /// config and spool; same servers, same zone).
    fn restart_with(&mut self, egress: &str) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        self.env = Env::with_sections(
            "",
            &format!("upstreams = [\"{}\"]\n", self.upstream),
            egress,
        );
        self.daemon = Some(Daemon::start(&self.env));
    }

    /// curl as agent `agent`, printing only the HTTP status.
    fn curl(&self, agent: &str, args: &str) -> std::process::Output {
        self.env.agent_resolving(
            agent,
            &format!(
                "curl -sS --max-time 10 --cacert {} -o /dev/null -w '%{{http_code}}' {args}",
                self.ca
            ),
        )
    }
}

#[test]
fn allowed_names_pass_through_untouched_and_everything_else_is_refused() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let scene = Scene::start(
        "[egress]\nallow = [\"allowed.test:443\", \"allowed.test:80\"]\n",
        true,
    );
    let (env, server) = (&scene.env, scene.server);
    let curl = |agent: &str, args: &str| scene.curl(agent, args);

    // Allowed: through, with the server's own certificate (curl verifies
    // it against the server's CA, not blastgate's).
    let out = curl("ci", "https://allowed.test/");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    let out = curl("ci", "http://allowed.test/");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    // Over IPv6 (an AAAA answer) as well.
    let out = curl("ci", "-6 https://allowed.test/");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    env.wait_event("the IPv6 egress session", |e| {
        e["kind"] == "session_closed"
            && e["target"] == "egress"
            && e["dst_name"] == "allowed.test"
            && e["orig_dst"]
                .as_str()
                .is_some_and(|d| d.starts_with("[fd31:"))
    });
    let out = curl(
        "ci",
        &format!(
            "-6 --resolve denied.test:443:[{}] https://denied.test/",
            scene.server6
        ),
    );
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "IPv6 domain fronting: {}",
        text(&out)
    );
    let opened = env.wait_event("the egress session", |e| {
        e["kind"] == "session_closed" && e["target"] == "egress" && e["dst_name"] == "allowed.test"
    });
    assert!(
        opened["bytes_to_agent"].as_u64().unwrap_or(0) > 0,
        "{opened}"
    );

    // A denied name fails at resolution.
    let out = curl("ci", "https://denied.test/");
    assert_eq!(
        out.status.code(),
        Some(6),
        "resolve failure: {}",
        text(&out)
    );

    // Domain fronting: the allowed name's address, a denied name's SNI.
    let out = curl(
        "ci",
        &format!("--resolve denied.test:443:{server} https://denied.test/"),
    );
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    // No SNI at all (an address as the URL).
    let out = curl("ci", &format!("-k https://{server}/"));
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    // Plain HTTP naming another host.
    let out = curl("ci", "-H 'Host: denied.test' http://allowed.test/");
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    // An agent that never resolved the address, with the allowed name.
    let out = curl(
        "fresh",
        &format!("--resolve allowed.test:443:{server} https://allowed.test/"),
    );
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    // An allowed name on a port the list does not name.
    let out = curl("ci", "https://allowed.test:8443/");
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );

    env.wait_event("the fresh agent's refusal", |e| {
        e["kind"] == "session_denied" && e["caller"]["agent"] == "fresh"
    });
    // A refusal after the connection opened is in the session's close,
    // recorded once the proxy has let go of it: after curl may have exited.
    for want in [
        "denied.test",
        "server name (SNI)",
        "Host",
        "resolved no allowed name",
    ] {
        env.wait_event(&format!("a refusal that mentions {want:?}"), |e| {
            (e["kind"] == "session_denied" || e["kind"] == "session_closed")
                && e["reason"].as_str().is_some_and(|r| {
                    (r.contains("egress") || r.contains("resolved")) && r.contains(want)
                })
        });
    }
}

#[test]
fn audit_mode_refuses_nothing_and_records_what_enforce_would() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let mut scene = Scene::start("[egress]\nmode = \"audit\"\nallow = []\n", false);
    let env = &scene.env;
    let out = scene.curl("ci", "https://denied.test/");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    env.wait_event("the audited lookup", |e| {
        e["kind"] == "dns_query"
            && e["dst_name"] == "denied.test"
            && e["shadow"] == true
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("would be refused"))
    });
    env.wait_event("the audited connection", |e| {
        e["kind"] == "request"
            && e["action"] == "egress:connect"
            && e["shadow"] == true
            && e["dst_name"] == "denied.test"
    });
    let status = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
    assert!(status.contains("egress: mode = \"audit\""), "{status}");

    // The list the run asks for, applied in enforce mode, lets it pass.
    let out = env.blastgate(&["egress", "suggest"]);
    let section = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        section.contains("\"denied.test:443\""),
        "{section}{}",
        text(&out)
    );
    scene.restart_with(&section);
    let out = scene.curl("ci", "https://denied.test/");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    let status = String::from_utf8_lossy(&scene.env.blastgate(&["status"]).stdout).into_owned();
    assert!(!status.contains("egress: mode"), "{status}");
}

/// Issue 16's most reported failure elsewhere: DNS inside containers an
/// agent starts. A container on the host's network is the agent's own
/// descendant in the agent's network namespace, so its lookups and
/// connections are the agent's: allowed names resolve and pass, denied
/// ones fail at resolution. On podman's default bridge the container has
/// a network namespace of its own, where the kernel's redirect to the
/// daemon's loopback finds nothing: it fails closed, while the same
/// container started by a non-agent reaches the server (so the refusal is
/// blastgate's, not the bridge's).
#[test]
fn containers_an_agent_starts_reach_allowed_names_on_the_host_network_and_fail_closed_on_a_bridge()
{
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(podman) = podman::Podman::new() else {
        return;
    };
    let scene = Scene::start("[egress]\nallow = [\"allowed.test:443\"]\n", false);
    let env = &scene.env;
    let curl = |args: &str| {
        format!("curl -sS --max-time 10 --cacert /ca.pem -o /dev/null -w %{{http_code}} {args}")
    };
    let as_agent = |network: &str, args: &str| {
        env.agent(
            "ci",
            &["sh", "-c", &podman.run(network, &scene.ca, &curl(args))],
        )
        .output()
        .expect("podman as an agent")
    };

    let out = as_agent("host", "https://allowed.test/");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        text(&out)
    );
    env.wait_event("the container's egress session", |e| {
        e["kind"] == "session_closed" && e["target"] == "egress" && e["dst_name"] == "allowed.test"
    });
    let out = as_agent("host", "https://denied.test/");
    assert_eq!(
        out.status.code(),
        Some(6),
        "resolve failure: {}",
        text(&out)
    );
    env.wait_event("the container's refused lookup", |e| {
        e["kind"] == "dns_query" && e["dst_name"] == "denied.test"
    });

    // The bridge, in a network namespace of the test's own (netavark's
    // bridge and firewall rules go with it), to a plain server on that
    // namespace's side of the bridge.
    let mut ns = NetNs::new();
    ns.http_server("0.0.0.0", 18080, "/");
    let bridged = podman.run("", &scene.ca, &curl("http://10.88.0.1:18080/"));
    // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup
    // mounts runc needs.
    let netns = format!("--net=/run/netns/{}", ns.name);
    let in_ns = ["nsenter", &netns, "sh", "-c", &bridged];
    let direct = wait_until(Duration::from_secs(20), || {
        let out = Command::new(in_ns[0]).args(&in_ns[1..]).output().ok()?;
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(out)
    });
    assert!(
        direct.is_some(),
        "a non-agent's bridged container must reach the bridge's server"
    );
    let out = env
        .agent("ci", &in_ns)
        .output()
        .expect("podman as an agent");
    assert_eq!(
        out.status.code(),
        Some(7),
        "an agent's bridged container fails closed: {}",
        text(&out)
    );
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
}

/// Cloud metadata hands out the runner's own credentials. Run where the
/// metadata addresses exist, in a network namespace of the test's own
/// (169.254.169.254 and fd00:ec2::254 on its loopback, an HTTP server on
/// each): the daemon and the agent are in that namespace too, so nothing
/// touches the host's routes. Even an allow-list naming their ranges does
/// not reach them; a non-agent in the same namespace does (the refusal is
/// blastgate's).
#[test]
fn cloud_metadata_addresses_are_refused_even_when_the_allow_list_names_them() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let mut ns = NetNs::new();
    ns.add_loopback_address("169.254.169.254/32");
    ns.add_loopback_address("fd00:ec2::254/128");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "runner-credentials").expect("doc");
    let root = dir.path().display().to_string();
    for bind in ["169.254.169.254", "fd00:ec2::254"] {
        ns.http_server(bind, 80, &root);
    }
    let netns = format!("--net=/run/netns/{}", ns.name);
    let curl = |url: &str| {
        vec![
            "nsenter".to_string(),
            netns.clone(),
            "curl".into(),
            "-sS".into(),
            "--max-time".into(),
            "5".into(),
            "-g".into(),
            url.to_string(),
        ]
    };
    let urls = [
        "http://169.254.169.254/token",
        "http://[fd00:ec2::254]/token",
    ];
    for url in urls {
        let argv = curl(url);
        let got = wait_until(Duration::from_secs(10), || {
            let out = Command::new(&argv[0]).args(&argv[1..]).output().ok()?;
            (out.stdout == b"runner-credentials").then_some(())
        });
        assert!(
            got.is_some(),
            "a non-agent must reach {url} in the namespace"
        );
    }

    let env = Env::with_sections(
        "",
        "upstreams = [\"127.0.0.1:9\"]\n",
        "[egress]\nallow = [\"169.254.0.0/16:80\", \"[fd00::]/8:80\"]\n",
    );
    let _daemon = Daemon::start_in(&env, Some(&ns.name));
    for url in urls {
        let argv = curl(url);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = env.agent("ci", &args).output().expect("agent");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("runner-credentials"),
            "{url} reached: {}",
            text(&out)
        );
        assert_ne!(out.status.code(), Some(0), "{url}: {}", text(&out));
    }
    for addr in ["169.254.169.254", "fd00:ec2::254"] {
        env.wait_event("the metadata refusal", |e| {
            e["kind"] == "session_denied"
                && e["caller"]["agent"] == "ci"
                && e["orig_dst"].as_str().is_some_and(|d| d.contains(addr))
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cloud metadata"))
        });
    }
}
