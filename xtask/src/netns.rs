//! A network namespace of a bench's own, joined to the host by a veth
//! pair on one /30: a server inside it has a non-loopback address the
//! host routes to (blastgate's egress never reaches loopback), and
//! nothing leaves the machine. Removed on drop, on every way out
//! (deleting the namespace deletes its end of the pair, and with it the
//! host's; the host's end is deleted too, in case).

use std::{net::Ipv4Addr, process::Command};

use anyhow::{bail, Context, Result};

use crate::sh;

pub struct NetNs {
    pub name: String,
    host_if: String,
    /// The namespace's end of the pair.
    pub ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes namespace `name` and host link `host_if`, whether or not they
/// exist.
fn remove(name: &str, host_if: &str) {
    for args in [["netns", "del", name], ["link", "del", host_if]] {
        let _ = Command::new("ip").args(args).output();
    }
}

impl NetNs {
    /// Namespace `name` with `host_if` on the host (`.1` of the /30 at
    /// `block`) and its peer inside (`.2`). A leftover of a killed run
    /// under the same names is removed first.
    pub fn create(name: &str, host_if: &str, block: Ipv4Addr) -> Result<NetNs> {
        let [a, b, c, d] = block.octets();
        if d % 4 != 0 {
            bail!("{block} does not start a /30");
        }
        let host_ip = Ipv4Addr::new(a, b, c, d + 1);
        let ns_ip = Ipv4Addr::new(a, b, c, d + 2);
        let ns_if = format!("{host_if}p");
        remove(name, host_if);
        ip(&["netns", "add", name])?;
        // From here the guard removes whatever a failed step leaves.
        let ns = NetNs {
            name: name.into(),
            host_if: host_if.into(),
            ns_ip,
        };
        let (host_cidr, ns_cidr) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", name])?;
        ip(&["addr", "add", &host_cidr, "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&["-n", name, "addr", "add", &ns_cidr, "dev", &ns_if])?;
        ip(&["-n", name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec NAME`: the program and its arguments follow. `ip`
    /// execs the program, so the child's pid is the program's.
    pub fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove(&self.name, &self.host_if);
        if sh::stdout(Command::new("ip").args(["netns", "list"]))
            .is_ok_and(|l| l.split_whitespace().any(|n| n == self.name))
        {
            eprintln!("warning: network namespace {} is still there", self.name);
        }
    }
}
