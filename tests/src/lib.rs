//! Shared helpers for the end-to-end tests.
//!
//! Every test starts its own `tetherd` ([`Server::start`]) on an ephemeral loopback port and talks to it
//! with clients nobody on the team wrote (tokio-tungstenite, Python's `websockets`) or, for the malformed
//! and protocol-error cases, with hand-written bytes over a plain [`TcpStream`] ([`raw`]).
//!
//! Tests assert behaviour, never speed: every wait here is a generous deadline that only bounds a test
//! that would otherwise hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The next data message or Close from a tokio-tungstenite client, skipping pings (tungstenite answers
/// them) and pongs; panics if none comes within `within`, or the stream ends or fails.
pub async fn next_data<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> tokio_tungstenite::tungstenite::Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(within, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message from the server within {within:?}"))
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

pub mod app;
pub mod load;
pub mod netns;
pub mod raw;

/// Path to the workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `tetherd` binary: `$TETHERD_BIN`, else `target/release/tetherd`, else `target/debug/tetherd`.
///
/// Panics with instructions when none exists: the tests never build it themselves.
pub fn tetherd_bin() -> PathBuf {
    workspace_bin("tetherd", "TETHERD_BIN", "tetherd")
}

/// A binary of the workspace: `$env_var`, else `target/{release,debug}/name` (honouring CARGO_TARGET_DIR).
pub fn workspace_bin(name: &str, env_var: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env_var}={} is not a file", path.display());
        return path;
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["release", "debug"] {
        let path = target.join(profile).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{name} binary not found: set {env_var} or build it first with `cargo build --release -p {package}` \
         (looked in {}/{{release,debug}}/{name})",
        target.display()
    );
}

/// A scratch folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("tether-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A binary of this crate (e.g. `ws-swarm`), built by cargo alongside the integration tests.
pub fn swarm_bin() -> PathBuf {
    // Cargo sets CARGO_BIN_EXE_<name> only for integration tests, so the tests pass it in; this is the
    // fallback for other callers: next to the running test executable's `deps/` folder.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("ws-swarm")
}

/// The first line a child writes to its (piped) stdout, within `timeout`; the rest is drained by a thread
/// so the child never blocks on a full pipe. `Err` says what came instead.
pub fn first_stdout_line(child: &mut Child, timeout: Duration) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("stdout is not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    match rx.recv_timeout(timeout) {
        Ok(Some(Ok(line))) => Ok(line),
        other => Err(format!("{other:?}")),
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it dies, so that a test killed
/// from outside (or a harness that aborts) never leaves a server or a swarm behind.
///
/// Note the *thread*: spawn children from the test's own thread, not from a short-lived helper thread
/// (tokio's `spawn_blocking` threads exit when idle).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        })
    }
}

/// Lines a child wrote to stderr, collected by a reader thread.
#[derive(Clone, Default)]
pub struct LogBuffer {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LogBuffer {
    /// Starts a thread that appends every line of `reader` to the buffer until EOF.
    pub fn capture(reader: impl Read + Send + 'static) -> LogBuffer {
        let buf = LogBuffer::default();
        let lines = buf.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                match line {
                    Ok(line) => lines.lock().unwrap().push(strip_ansi(&line)),
                    Err(_) => break,
                }
            }
        });
        buf
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Lines that contain every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<String> {
        self.lines.lock().unwrap().iter().filter(|l| needles.iter().all(|n| l.contains(n))).cloned().collect()
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

/// Removes ANSI escape sequences (colour codes a log formatter may add) so fields parse as `key=value`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters then one final byte in 0x40..=0x7e.
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A running `tetherd`, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub log: LogBuffer,
    exited: Option<ExitStatus>,
    /// The network namespace it runs in, if not this process's own.
    netns: Option<String>,
}

impl Server {
    /// Starts `tetherd --listen 127.0.0.1:0 <args>` and waits (up to 30 s) for its
    /// `tetherd listening on 127.0.0.1:PORT` line.
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(tetherd_bin());
        cmd.arg("--listen").arg("127.0.0.1:0").args(args);
        Server::spawn(cmd, None)
    }

    /// Starts `tetherd --listen ADDR <args>` inside the network namespace `netns` (`ip netns exec`, which
    /// execs tetherd in place, so the child is tetherd itself). `/metrics` is then fetched from inside it.
    pub fn start_in_netns(netns: &str, listen: SocketAddr, args: &[&str]) -> Server {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(tetherd_bin()).arg("--listen").arg(listen.to_string()).args(args);
        Server::spawn(cmd, Some(netns.to_string()))
    }

    /// Spawns a prepared tetherd command line and waits (up to 30 s) for `tetherd listening on ADDR`.
    fn spawn(mut cmd: Command, netns: Option<String>) -> Server {
        let what = format!("{cmd:?}");
        cmd.env("RUST_LOG", std::env::var("TETHERD_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A developer's TETHER_* settings must not change what the tests run against.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TETHER_") {
                cmd.env_remove(key);
            }
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let log = LogBuffer::capture(child.stderr.take().unwrap());

        let line = first_stdout_line(&mut child, Duration::from_secs(30)).unwrap_or_else(|got| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!("{what} did not print its listening line (got {got}); stderr:\n{}", log.tail(50));
        });
        let addr: SocketAddr =
            line.trim().strip_prefix("tetherd listening on ").and_then(|a| a.trim().parse().ok()).unwrap_or_else(
                || {
                    let _ = child.kill();
                    panic!("unexpected first stdout line from tetherd: {line:?}")
                },
            );
        Server { child, addr, log, exited: None, netns }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://127.0.0.1:PORT<path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped while `self.exited` is None.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fetches `/metrics`.
    pub fn metrics(&self) -> String {
        let addr = self.addr;
        let get = move || http_get(addr, "/metrics");
        let got = match &self.netns {
            Some(ns) => netns::in_netns(ns, get),
            None => get(),
        };
        let (status, body) = got.unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// A counter's total from `/metrics` (`tether_pings_sent_total`); panics if the server has no such family.
    pub fn counter(&self, name: &str) -> u64 {
        self.counter_with(name, &[])
    }

    /// A counter's total over the samples that carry `labels` (`[("reason", "abnormal")]`); 0 when no sample
    /// has them (a family with no such label value yet).
    pub fn counter_with(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.metrics();
        let samples = parse_metrics(&text);
        assert!(samples.iter().any(|s| s.name == name), "no {name} in /metrics:\n{text}");
        family_total(&samples, name, labels).unwrap_or(0)
    }

    /// Open connections according to `/metrics` (see [`open_connections`]). Note that the scrape's own
    /// connection may be counted.
    pub fn open_connections(&self) -> u64 {
        let text = self.metrics();
        open_connections(&text).unwrap_or_else(|| panic!("no open-connections gauge found in /metrics:\n{text}"))
    }

    /// Waits until the open-connection gauge is at most `max` (the scrape itself may count as one).
    pub fn wait_open_at_most(&self, max: u64, timeout: Duration) -> u64 {
        let mut last = u64::MAX;
        let ok = wait_until(timeout, Duration::from_millis(200), || {
            last = self.open_connections();
            last <= max
        });
        assert!(
            ok,
            "open connections still {last} (> {max}) after {timeout:?}; server log tail:\n{}",
            self.log.tail(30)
        );
        last
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // Give the stderr reader a moment to catch the last lines.
            std::thread::sleep(Duration::from_millis(100));
            eprintln!("---- tetherd ({}) stderr, last 60 lines ----\n{}\n----", self.addr, self.log.tail(60));
        }
    }
}

/// A process's resident memory in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Polls `cond` every `every` until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let resp = read_http_response(&mut stream)?;
    Ok((resp.status, String::from_utf8_lossy(&resp.body).into_owned()))
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads the status line and headers byte by byte (so nothing after them is consumed), then a body
/// delimited by Content-Length, chunked encoding, or EOF. Does not read a body for 101 responses.
pub fn read_http_response(stream: &mut impl Read) -> std::io::Result<HttpResponse> {
    let head = read_http_head(stream)?;
    let mut resp = parse_http_head(&head)?;
    if resp.status == 101 || resp.status == 204 || resp.status == 304 {
        return Ok(resp);
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.trim().parse().map_err(|_| bad("bad content-length"))?;
        let mut body = vec![0; len];
        stream.read_exact(&mut body)?;
        resp.body = body;
    } else if resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let _ = stream.read_to_end(&mut resp.body);
    }
    Ok(resp)
}

/// Reads up to and including the blank line that ends an HTTP head (at most 64 KiB).
pub fn read_http_head(stream: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(bad("HTTP head longer than 64 KiB"));
        }
        match stream.read(&mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("EOF inside HTTP head after {:?}", String::from_utf8_lossy(&head)),
                ))
            }
            _ => head.push(byte[0]),
        }
    }
    Ok(head)
}

pub fn parse_http_head(head: &[u8]) -> std::io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("bad status line {status_line:?}")));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse { status, headers, body: Vec::new() })
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text format loosely: `name{k="v",...} value [timestamp]`, comments skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..open], parse_labels(&line[open + 1..close]), &line[close + 1..])
            }
            None => match line.split_once(char::is_whitespace) {
                Some((name, rest)) => (name, Vec::new(), rest),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        out.push(Sample { name: name.trim().to_string(), labels, value });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.trim_start().strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key, value));
        rest = &after[end..];
    }
    labels
}

/// The value of a gauge or counter family: the sample labelled `shard="total"` if there is one, else an
/// unlabelled sample, else the sum of the per-shard samples.
pub fn gauge_total(samples: &[Sample], name: &str) -> Option<u64> {
    family_total(samples, name, &[])
}

/// Like [`gauge_total`], over the samples of `name` that also carry every label in `labels` (for
/// `tether_closed_by_reason_total{reason="abnormal",shard=...}` and the like).
pub fn family_total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let family: Vec<&Sample> =
        samples.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v))).collect();
    if family.is_empty() {
        return None;
    }
    if let Some(total) = family.iter().find(|s| s.label("shard") == Some("total")) {
        return Some(total.value as u64);
    }
    if let Some(plain) = family.iter().find(|s| s.label("shard").is_none()) {
        return Some(plain.value as u64);
    }
    Some(family.iter().filter(|s| s.label("shard").is_some()).map(|s| s.value as u64).sum())
}

/// Open connections from a `/metrics` text: `tether_connections_open` (or a close variant of that name).
pub fn open_connections(metrics_text: &str) -> Option<u64> {
    let samples = parse_metrics(metrics_text);
    for name in ["tether_connections_open", "tether_open_connections", "tether_connections"] {
        if let Some(v) = gauge_total(&samples, name) {
            return Some(v);
        }
    }
    // Loose fallback: a tether_* family about open connections that is not a counter and not the
    // websocket-only gauge.
    let name = samples
        .iter()
        .map(|s| s.name.as_str())
        .find(|n| {
            n.starts_with("tether_")
                && n.contains("open")
                && n.contains("conn")
                && !n.contains("websocket")
                && !n.ends_with("_total")
                && !n.ends_with("_created")
        })?
        .to_string();
    gauge_total(&samples, &name)
}

/// Connections closed with `code` according to `/metrics`: the sum over every `tether_*closed*`
/// sample labelled `code="<code>"` (per-shard samples are skipped when a total exists).
pub fn closed_with_code(metrics_text: &str, code: u16) -> u64 {
    let code = code.to_string();
    let samples: Vec<Sample> = parse_metrics(metrics_text)
        .into_iter()
        .filter(|s| {
            s.name.starts_with("tether_")
                && s.name.contains("closed")
                && !s.name.ends_with("_created")
                && s.label("code") == Some(code.as_str())
        })
        .collect();
    let has_total = samples.iter().any(|s| s.label("shard") == Some("total"));
    samples
        .iter()
        .filter(|s| !has_total || s.label("shard").is_none() || s.label("shard") == Some("total"))
        .map(|s| s.value as u64)
        .sum()
}

/// Parses `key=value` fields (values optionally double-quoted) out of a log line.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let mut search = 0;
    while let Some(pos) = line[search..].find(&needle) {
        let start = search + pos;
        // Must be the start of a field, not the tail of another key (e.g. "reason" in "close_reason").
        let at_boundary =
            start == 0 || !line.as_bytes()[start - 1].is_ascii_alphanumeric() && line.as_bytes()[start - 1] != b'_';
        let value_start = start + needle.len();
        if at_boundary {
            let rest = &line[value_start..];
            if let Some(quoted) = rest.strip_prefix('"') {
                return quoted.find('"').map(|end| &quoted[..end]);
            }
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
        search = value_start;
    }
    None
}

/// The close lines of a server log: lines with `conn=`, `code=` and `initiator=`.
pub fn close_lines(log: &LogBuffer) -> Vec<String> {
    log.lines()
        .into_iter()
        .filter(|l| {
            log_field(l, "conn").is_some() && log_field(l, "code").is_some() && log_field(l, "initiator").is_some()
        })
        .collect()
}

/// Runs a future on a fresh runtime with an overall time limit, panicking if it is exceeded.
pub fn block_on_with_timeout<F: std::future::Future>(limit: Duration, fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| panic!("test exceeded its {limit:?} limit"))
    })
}

/// Writes `bytes` (tolerating a server that already closed), then expects Close `code` and EOF.
pub fn expect_close(server: &Server, mut stream: TcpStream, bytes: &[u8], code: u16, what: &str) {
    if let Err(e) = stream.write_all(bytes) {
        // The server may close before reading everything; the Close frame is still in our buffer.
        eprintln!("{what}: write failed ({e}), reading the close anyway");
    }
    let ending = raw::read_until_close(&mut stream, Duration::from_secs(10), true);
    assert_eq!(
        ending.close.as_ref().map(|c| c.0),
        Some(code),
        "{what}: expected Close {code}; saw {ending:?}\nserver log:\n{}",
        server.log.tail(10)
    );
    assert!(ending.eof, "{what}: connection not closed after Close {code}: {ending:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics_loosely() {
        let text = "# HELP tether_connections_open Open connections.\n\
                    # TYPE tether_connections_open gauge\n\
                    tether_connections_open{shard=\"0\"} 3\n\
                    tether_connections_open{shard=\"1\"} 4\n\
                    tether_closed_total{code=\"1000\",shard=\"0\"} 2\n\
                    tether_closed_total{code=\"1000\",shard=\"1\"} 5\n\
                    tether_closed_total{code=\"1001\"} 9\n";
        assert_eq!(open_connections(text), Some(7));
        assert_eq!(closed_with_code(text, 1000), 7);
        assert_eq!(closed_with_code(text, 1001), 9);
        let with_total = "tether_connections_open{shard=\"0\"} 3\n\
                          tether_connections_open{shard=\"total\"} 30000.0\n";
        assert_eq!(open_connections(with_total), Some(30000));
        assert_eq!(open_connections("tether_other 1\n"), None);
        let by_reason = "tether_closed_by_reason_total{reason=\"abnormal\",shard=\"0\"} 2\n\
                         tether_closed_by_reason_total{reason=\"abnormal\",shard=\"total\"} 5\n\
                         tether_closed_by_reason_total{reason=\"peer_close\",shard=\"total\"} 7\n";
        let samples = parse_metrics(by_reason);
        assert_eq!(family_total(&samples, "tether_closed_by_reason_total", &[("reason", "abnormal")]), Some(5));
        assert_eq!(family_total(&samples, "tether_closed_by_reason_total", &[("reason", "peer_close")]), Some(7));
        assert_eq!(family_total(&samples, "tether_closed_by_reason_total", &[("reason", "shutdown")]), None);
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(strip_ansi("\x1b[3mconn\x1b[0m\x1b[2m=\x1b[0m7 code=1000"), "conn=7 code=1000");
    }

    #[test]
    fn parses_log_fields() {
        let line = "2025 INFO closed conn=0:12:1 peer=127.0.0.1:5000 code=1011 reason=\"pong timeout\" \
                    initiator=local duration_ms=2100";
        assert_eq!(log_field(line, "conn"), Some("0:12:1"));
        assert_eq!(log_field(line, "code"), Some("1011"));
        assert_eq!(log_field(line, "reason"), Some("pong timeout"));
        assert_eq!(log_field(line, "initiator"), Some("local"));
        assert_eq!(log_field(line, "duration_ms"), Some("2100"));
        assert_eq!(log_field(line, "missing"), None);
    }
}
