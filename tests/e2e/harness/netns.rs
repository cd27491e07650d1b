//! A network namespace of the test's own, joined to the host by a veth
//! pair on a /30 of 10.231.0.0/16: servers inside it have a non-loopback
//! address the host routes to, and nothing leaves the machine. Removed on
//! drop (deleting the namespace deletes its end of the pair, and with it
//! the host's).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
    host_if: String,
    /// The host's end and the namespace's end.
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    /// The same ends over IPv6 (a /64 of fd31:231::/32, unique local).
    pub host_ip6: Ipv6Addr,
    pub ns_ip6: Ipv6Addr,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn new() -> NetNs {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // Unique across concurrent test binaries: the pid's low bits pick
        // the /30 block, `n` the namespace within this process.
        let slot = (std::process::id() % 1000) * 8 + n % 8;
        let (third, fourth) = ((slot * 4) / 256, (slot * 4) % 256);
        let host_ip = Ipv4Addr::new(10, 231, third as u8, fourth as u8 + 1);
        let ns_ip = Ipv4Addr::new(10, 231, third as u8, fourth as u8 + 2);
        let v6 = |host: u16| Ipv6Addr::new(0xfd31, 0x231, slot as u16, 0, 0, 0, 0, host);
        let (host_ip6, ns_ip6) = (v6(1), v6(2));
        let name = format!("bgt-{}-{n}", std::process::id());
        let host_if = format!("bgh{slot}");
        let ns_if = format!("bgn{slot}");
        // A leftover of a killed run with the same numbers goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            ns_ip,
            host_ip6,
            ns_ip6,
            children: Vec::new(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // nodad: usable at once, not after duplicate address detection.
        ip(&[
            "addr",
            "add",
            &format!("{host_ip6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip6}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
        ns
    }

    /// Runs `cmd` inside the namespace; stopped on drop.
    pub fn spawn(&mut self, cmd: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// Python's http.server on `bind`:`port` inside the namespace, serving
    /// the files of `dir`.
    pub fn http_server(&mut self, bind: &str, port: u16, dir: &str) {
        let port = port.to_string();
        self.spawn(&[
            "python3",
            "-m",
            "http.server",
            &port,
            "--bind",
            bind,
            "--directory",
            dir,
        ]);
    }

    /// Adds an address to the namespace's loopback (never the host's).
    pub fn add_loopback_address(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "lo"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
