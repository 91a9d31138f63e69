//! `ws://` and `wss://host[:port][/path][?query]` targets and source address lists.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// A parsed and resolved WebSocket target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (for messages and the report).
    pub url: String,
    /// The Host header value (`host` or `host:port` as written).
    pub host: String,
    /// Path plus query, starting with `/`.
    pub path: String,
    pub addr: SocketAddr,
    /// `wss://`: speak TLS (the client config comes from `--tls-ca` / `--tls-insecure`).
    pub tls: bool,
    /// The host without port or brackets: the name the server's certificate must carry (and SNI).
    pub server_name: String,
}

/// Parses a `ws://` or `wss://` URL and resolves its host (IPv4 preferred). Errors are one line, ready to
/// print after `error: `.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let lower = url.to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("wss://") {
        (true, url.get(6..))
    } else if lower.starts_with("ws://") {
        (false, url.get(5..))
    } else {
        (false, None)
    };
    let Some(rest) = rest else {
        return Err(format!("not a ws:// or wss:// URL: {url}"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = match path.find('#') {
        Some(i) => path[..i].to_string(),
        None => path,
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("not a ws:// URL (no usable host): {url}"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) =
        split_host_port(authority, default_port).ok_or_else(|| format!("not a ws:// URL (bad port): {url}"))?;
    let addrs: Vec<SocketAddr> =
        (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {host}: no addresses"))?;
    Ok(Target { url: url.to_string(), host: authority.to_string(), path, addr, tls, server_name: host })
}

/// Splits `host[:port]` / `[v6][:port]`; the host comes back without brackets, the port defaults to
/// `default_port`.
fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = rest[..end].to_string();
        let port = match &rest[end + 1..] {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// Parses `127.0.0.1-127.0.0.40`, `127.0.0.1,127.0.0.2`, or a mix (`10.0.0.1,127.0.0.2-127.0.0.9`).
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad source address range: {part}"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad source address range: {part}"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_535 {
                    return Err(format!("bad source address range: {part}"));
                }
                out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            }
            None => out.push(part.parse().map_err(|_| format!("bad source address: {part}"))?),
        }
    }
    if out.is_empty() {
        return Err(format!("no source addresses in {spec:?}"));
    }
    Ok(out)
}

/// Connections per source address the default spreads to. Of ~28,000 ephemeral ports, connect(2) slows
/// sharply past about 14,000 in use towards one server port (measured: 25,000 per address timed out a third
/// of 50,000 handshakes; BENCHMARKS.md, section 3), so stay well below that.
pub const CONNECTIONS_PER_SOURCE_IP: usize = 12_000;

/// The default source addresses for `connections` to a loopback target: enough from 127.0.0.2 upward,
/// skipping the target's own address (a client bound to the server's address shares its ephemeral ports and
/// its TIME_WAIT history; see the crate README). Other targets get none (the kernel picks the address).
pub fn default_source_ips(target: &SocketAddr, connections: usize) -> Vec<IpAddr> {
    let IpAddr::V4(own) = target.ip() else {
        return Vec::new();
    };
    if !own.is_loopback() {
        return Vec::new();
    }
    let n = connections.div_ceil(CONNECTIONS_PER_SOURCE_IP).clamp(1, 250);
    (2u32..)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + i))
        .filter(|ip| *ip != own)
        .take(n)
        .map(IpAddr::V4)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = parse_target("ws://127.0.0.1:9001/chat?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path, "/chat?x=1");
        let t = parse_target("ws://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = parse_target("WS://localhost:81?q").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (81, "/?q"));
        assert!(parse_target("http://127.0.0.1/").unwrap_err().starts_with("not a ws:// or wss:// URL: http://"));
        let t = parse_target("wss://localhost/x").unwrap();
        assert!(t.tls);
        assert_eq!((t.addr.port(), t.server_name.as_str(), t.path.as_str()), (443, "localhost", "/x"));
        let t = parse_target("wss://[::1]:9443").unwrap();
        assert_eq!((t.addr.port(), t.server_name.as_str()), (9443, "::1"));
        assert!(!parse_target("ws://127.0.0.1:1/").unwrap().tls);
        assert!(parse_target("ws://127.0.0.1:99999/").is_err());
        assert!(parse_target("ws:///x").is_err());
    }

    #[test]
    fn parses_source_ips() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.40").unwrap();
        assert_eq!(ips.len(), 40);
        assert_eq!(ips[39], "127.0.0.40".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.1, 127.0.0.3").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_source_ips("x").is_err());
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(default_source_ips(&lo, 50_000).len(), 5);
        assert_eq!(default_source_ips(&lo, 10), vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        let two: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(default_source_ips(&two, 30_000)[1], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert!(default_source_ips(&"10.1.1.1:1".parse().unwrap(), 10).is_empty());
    }
}
