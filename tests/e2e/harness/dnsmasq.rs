//! A real resolver for the DNS tests: Debian's dnsmasq on a loopback port,
//! serving a `test` zone from a hosts file it re-reads on SIGHUP, and
//! NXDOMAIN for every other `.test` name. It never forwards anywhere.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{free_udp_port, wait_until};

/// A port free for UDP and TCP on 127.0.0.1.
fn free_port_both() -> u16 {
    loop {
        let port = free_udp_port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// `hosts` is hosts-file text (`10.0.0.1 name.test`).
    pub fn start(hosts: &str) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).expect("hosts");
        let log = dir.path().join("dnsmasq.log");
        // dnsmasq listens on TCP as well as UDP: a port another process
        // holds on either makes it exit, so a few ports are tried.
        for _ in 0..5 {
            let port = free_port_both();
            let mut child = Command::new(DNSMASQ)
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--conf-file=/dev/null",
                    "--user=root",
                    "--pid-file",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local=/test/",
                    "--local-ttl=1",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", file.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("dnsmasq log"))
                .spawn()
                .expect("dnsmasq (apt install dnsmasq-base: cargo xtask setup)");
            let up = wait_until(Duration::from_secs(10), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                let out = Command::new("dig")
                    .args(["+short", "+time=1", "+tries=1", "-p", &port.to_string()])
                    .args(["@127.0.0.1", "up.probe.test"])
                    .output()
                    .ok()?;
                out.status.success().then_some(true)
            });
            if up == Some(true) {
                return Dnsmasq {
                    child,
                    addr: format!("127.0.0.1:{port}").parse().expect("addr"),
                    hosts: file,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Replaces the zone and makes dnsmasq read it again.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("hosts");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
