//! Network namespaces for the tests that need a real middlebox between client and server: a NAT that
//! forgets idle flows, built from the kernel's own conntrack and iptables.
//!
//! Everything here runs as root (network namespaces, iptables). The namespaces carry the test process's pid
//! in their names and are deleted on drop (their veths and conntrack tables go with them), so parallel tests
//! and a test killed half-way never collide with each other.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `f` on a fresh thread that has joined the network namespace `ns` (a name under /run/netns), so
/// sockets it opens live there; the calling thread's namespace is untouched.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns(2) on a namespace fd we hold open; CLONE_NEWNET affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (is the package installed? scripts/test.sh installs it)"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with a clear message unless this process can build namespaces and NAT rules.
pub fn require_netns_tools() {
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the middlebox tests need root (network namespaces, iptables); run them as root");
    for tool in ["ip", "iptables", "sysctl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file());
        assert!(found, "`{tool}` not found: install iproute2 and iptables (scripts/test.sh does)");
    }
}

/// Three namespaces in a row, client -- NAT -- server, joined by veth pairs:
///
/// ```text
///   client 10.77.1.2/24 (c0) -- (n0) 10.77.1.1  NAT  10.77.2.1 (n1) -- (s0) 10.77.2.2/24 server
/// ```
///
/// The NAT masquerades the client behind 10.77.2.1, drops conntrack-INVALID packets and forgets an
/// established TCP flow after `idle_timeout_s` seconds without a packet (`nf_conntrack_tcp_loose=0`, so a
/// forgotten flow is never picked up again mid-stream). The server has no route to the client's subnet:
/// replies can only pass through a live mapping. These are private addresses inside namespaces this rig
/// made itself; nothing leaves the machine.
pub struct NatRig {
    pub client: String,
    pub nat: String,
    pub server: String,
}

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);

impl NatRig {
    pub fn new(tag: &str, idle_timeout_s: u32) -> NatRig {
        require_netns_tools();
        let base = format!("tt{}{tag}", std::process::id());
        let rig = NatRig { client: format!("{base}c"), nat: format!("{base}n"), server: format!("{base}s") };
        for ns in [&rig.client, &rig.nat, &rig.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns]);
        }
        let (c, n, s) = (rig.client.as_str(), rig.nat.as_str(), rig.server.as_str());
        run(&["ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "n0", "netns", n]);
        run(&["ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "name", "n1", "netns", n]);
        for (ns, dev, addr) in
            [(c, "c0", "10.77.1.2/24"), (n, "n0", "10.77.1.1/24"), (n, "n1", "10.77.2.1/24"), (s, "s0", "10.77.2.2/24")]
        {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        for ns in [c, n, s] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&["ip", "-n", c, "route", "add", "default", "via", "10.77.1.1"]);
        rig.nat_exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        rig.nat_exec(&["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "n1", "-j", "MASQUERADE"]);
        rig.nat_exec(&["iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]);
        rig.nat_exec(&["iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]);
        // The conntrack sysctls appear once the rules above have loaded conntrack into this namespace.
        let timeout = format!("net.netfilter.nf_conntrack_tcp_timeout_established={idle_timeout_s}");
        rig.nat_exec(&["sysctl", "-qw", &timeout, "net.netfilter.nf_conntrack_tcp_loose=0"]);
        rig
    }

    /// Runs a command inside the NAT namespace.
    pub fn nat_exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", self.nat.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// The server's address for a port.
    pub fn server_addr(port: u16) -> SocketAddr {
        SocketAddr::from((SERVER_ADDR, port))
    }

    /// Flows the NAT currently tracks (established TCP entries), from its conntrack table.
    pub fn tracked_flows(&self) -> usize {
        in_netns(&self.nat, || std::fs::read_to_string("/proc/net/nf_conntrack").unwrap_or_default())
            .lines()
            .filter(|l| l.contains("ESTABLISHED"))
            .count()
    }

    /// The client vanishes: from now on the NAT forwards nothing in either direction (a laptop that went to
    /// sleep, a VPN relay that restarted, a NAT box that rebooted). Neither end is told.
    pub fn vanish_client(&self) {
        self.nat_exec(&["iptables", "-I", "FORWARD", "1", "-j", "DROP"]);
    }
}

impl Drop for NatRig {
    fn drop(&mut self) {
        for ns in [&self.client, &self.nat, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
