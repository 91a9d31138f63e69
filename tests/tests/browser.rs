//! A real browser: headless Chromium opens a page (tests/web/browser.html, served from this test on loopback)
//! whose script connects to tetherd, sits idle through several server pings (the browser answers them by
//! itself; JavaScript never sees them), sends a message, shows the echo in the DOM, closes with 1000 and
//! reports what it saw with `fetch('/report?...')`, then calls `window.close()`.
//!
//! Needs Debian's `chromium` package: the test fails, naming it, when Chromium is missing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tether_tests::{close_lines, die_with_parent, log_field, wait_until, LogBuffer, Server, TempDir};

const PAGE: &str = include_str!("../web/browser.html");

/// The Chromium binary: `$CHROMIUM_BIN`, else `chromium` / `chromium-browser` on PATH or in /usr/bin.
fn chromium_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "CHROMIUM_BIN={} is not a file (Debian: apt-get install -y chromium)", path.display());
        return path;
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.push("/usr/bin".into());
    for name in ["chromium", "chromium-browser"] {
        if let Some(path) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            return path;
        }
    }
    panic!(
        "Chromium not found (looked for chromium and chromium-browser on PATH and in /usr/bin; or set CHROMIUM_BIN): \
         install Debian's chromium package: apt-get install -y chromium"
    )
}

/// A tiny HTTP/1.1 server on loopback: `GET /` (any query) answers the test page, `GET /report?QUERY` hands
/// QUERY to the test, anything else is 404. One thread per connection (a browser may open sockets it never
/// uses), each bounded by a read timeout; stopped on drop.
struct PageServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    fn start() -> (PageServer, Receiver<String>) {
        PageServer::start_with_cookie(None)
    }

    /// As `start`, the page answer also setting `cookie` (`name=value`) for the host: a browser sends it to
    /// every port of 127.0.0.1, the WebSocket app's included.
    fn start_with_cookie(cookie: Option<&'static str>) -> (PageServer, Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let tx = tx.clone();
                            std::thread::spawn(move || serve(stream, tx, cookie));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("page server accept: {e}"),
                    }
                }
            })
        };
        (PageServer { addr, stop, thread: Some(thread) }, rx)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream` and closes it.
fn serve(mut stream: TcpStream, reports: Sender<String>, cookie: Option<&str>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let set_cookie = match (path, cookie) {
        ("/", Some(c)) => format!("Set-Cookie: {c}; Path=/; SameSite=Lax\r\n"),
        _ => String::new(),
    };
    let (status, content_type, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        "/report" => {
            let _ = reports.send(query.to_string());
            ("200 OK", "text/plain", "thanks\n".to_string())
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         {set_cookie}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// Decodes an `application/x-www-form-urlencoded` query (what `URLSearchParams` writes).
fn parse_query(query: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Headless Chromium in its own process group, killed with the whole group on drop (and its main process
/// by the kernel if the test thread dies).
struct Chromium {
    child: Child,
    output: LogBuffer,
    exited: bool,
    // Last: removed once the browser is gone.
    profile: TempDir,
}

impl Chromium {
    fn open(url: &str) -> Chromium {
        let bin = chromium_bin();
        let profile = TempDir::new("chromium-profile");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url)
        // Chromium's crash handler (a daemon outside our process group) and caches write under $HOME: keep
        // them in the temp dir too, where [`Chromium::kill_group`] can find them by their command line.
        .env("HOME", &profile.0)
        .env("XDG_CONFIG_HOME", profile.0.join(".config"))
        .env("XDG_CACHE_HOME", profile.0.join(".cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let output = LogBuffer::capture(child.stderr.take().unwrap());
        Chromium { child, output, exited: false, profile }
    }

    /// Whether the browser process has exited (by itself).
    fn has_exited(&mut self) -> bool {
        if !self.exited {
            self.exited = self.child.try_wait().expect("try_wait").is_some();
        }
        self.exited
    }

    /// SIGKILL to the whole process group (browser, zygote, renderers, utilities), then reap the main one;
    /// then to any process that still names this browser's temp dir on its command line (the crash handler,
    /// which daemonizes into its own session: `--database=<our HOME>/.config/chromium/Crash Reports`).
    fn kill_group(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created for this child
        // (process_group(0) made its pid the group id); nothing else is in that group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        self.exited = true;
        let marker = self.profile.0.to_string_lossy().into_owned();
        for pid in pids_with_cmdline_containing(&marker) {
            // SAFETY: kill(2) on a process started by this browser (its command line names our temp dir).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Even if the main process exited by itself, helpers of its group might linger: kill the group always.
        self.kill_group();
        if std::thread::panicking() {
            eprintln!("---- chromium stderr, last 40 lines ----\n{}\n----", self.output.tail(40));
        }
    }
}

/// Processes (other than this one) whose command line contains `marker`.
fn pids_with_cmdline_containing(marker: &str) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits for the page's one report (or the browser dying without one, or `deadline`); `server_log` is shown
/// on failure.
fn await_report(
    browser: &mut Chromium,
    reports: &Receiver<String>,
    deadline: Instant,
    server_log: &dyn Fn() -> String,
) -> HashMap<String, String> {
    loop {
        match reports.recv_timeout(Duration::from_millis(200)) {
            Ok(query) => return parse_query(&query),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("page server gone: {e}"),
        }
        if browser.has_exited() {
            // One last chance for a report that raced the exit.
            if let Ok(query) = reports.recv_timeout(Duration::from_millis(500)) {
                return parse_query(&query);
            }
            panic!(
                "chromium exited without a report from the page; its stderr:\n{}\nserver log:\n{}",
                browser.output.tail(40),
                server_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no report from the page within the test's deadline; chromium stderr:\n{}\nserver log:\n{}",
            browser.output.tail(40),
            server_log()
        );
    }
}

#[test]
fn chromium_stays_connected_through_server_pings_and_echoes() {
    // Bound for the whole test: the page reports by itself well before this (about 5 s idle + start-up).
    let test_deadline = Instant::now() + Duration::from_secs(60);
    let ping_interval = Duration::from_secs(1);
    // Four and a half ping intervals: about 4 pings (at about 1, 2, 3 and 4 s) reach the idle browser, at
    // least 3 even if a timer runs late.
    let idle = ping_interval * 9 / 2;

    let server = Server::start(&["--ping-interval", "1s", "--pong-timeout", "1s"]);
    let (pages, reports) = PageServer::start();
    let message = format!("hello from chromium, test {}", std::process::id());
    let ws_url = server.ws_url("/browser");
    let page_url = format!(
        "http://{}/?ws={ws_url}&idle_ms={}&message={}&deadline_ms=30000",
        pages.addr,
        idle.as_millis(),
        message.replace(' ', "+").replace(',', "%2C"),
    );
    let mut browser = Chromium::open(&page_url);

    let report = await_report(&mut browser, &reports, test_deadline, &|| server.log.tail(20));
    eprintln!("report from the page: {report:?}");
    let field = |k: &str| report.get(k).map(String::as_str).unwrap_or("");
    let ctx = format!("page report: {report:?}\ntetherd log:\n{}", server.log.tail(20));

    // What the page saw: one open, an echo after the idle time, then our close 1000; no error, no early close.
    assert_eq!(field("outcome"), "done", "{ctx}");
    assert_eq!(field("ready_state_after_idle"), "1", "socket not OPEN after the idle time: {ctx}");
    assert_eq!(field("echo"), message, "echo shown in the DOM: {ctx}");
    assert_eq!(field("close_code"), "1000", "close event code: {ctx}");
    assert_eq!(field("close_clean"), "true", "close event wasClean: {ctx}");
    let events: Vec<&str> = field("events").split(' ').map(|e| e.split('@').next().unwrap_or("")).collect();
    assert_eq!(
        events,
        ["open", "idle-over:readyState=1", "message", "close:1000"],
        "WebSocket events on the page (exactly one open, one close, no error): {ctx}"
    );

    // window.close() on the only tab ends the browser by itself; not asserted (the page's report is what counts),
    // but recorded. The group is killed on drop in any case.
    let exited_by_itself = wait_until(Duration::from_secs(10), Duration::from_millis(100), || browser.has_exited());
    eprintln!("chromium exited by itself after window.close(): {exited_by_itself}");
    drop(browser);

    // tetherd's side: the browser's Close 1000, and pings sent and answered while the page sat idle. The
    // counters are server-wide, and this server has had exactly one WebSocket connection: the browser's.
    let found = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        close_lines(&server.log).iter().any(|l| log_field(l, "code") == Some("1000"))
    });
    let closes = close_lines(&server.log);
    assert!(found, "no close line with code=1000 in tetherd's log:\n{}", server.log.tail(20));
    assert_eq!(closes.len(), 1, "expected exactly one WebSocket close (the browser's): {closes:#?}");
    let line = &closes[0];
    assert_eq!(log_field(line, "code"), Some("1000"), "close line: {line}");
    assert_eq!(log_field(line, "initiator"), Some("peer"), "close line: {line}");
    // The server's connection began before the page's idle timer started and ended after it fired, so it
    // spans the idle time (less a little slack for two clocks and timer coalescing in the browser).
    let lived_ms: u64 = log_field(line, "duration_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        lived_ms + 200 >= idle.as_millis() as u64,
        "the browser's connection lived {lived_ms} ms, less than the {idle:?} the page sat idle: {line}"
    );

    let pings = server.counter("tether_pings_sent_total");
    let pongs = server.counter("tether_pongs_received_total");
    eprintln!("tetherd: {pings} pings sent, {pongs} pongs received; close line: {line}");
    assert!(pings >= 3, "tetherd sent {pings} pings (< 3) during {idle:?} idle at a {ping_interval:?} interval");
    assert!(pongs >= 3, "tetherd got {pongs} pongs (< 3) from the browser for {pings} pings");
    assert_eq!(server.counter("tether_pong_timeouts_total"), 0, "pong timeouts with a browser that answers");
    drop(pages);
}

/// The example apps (engine/examples/axum.rs and hyper.rs): the page sets the app's session cookie, Chromium
/// sends it with the WebSocket upgrade, the app's auth accepts, the engine adopts the socket; the browser
/// answers the engine's pings (1 s interval, 1 s pong deadline) through 4.5 s of idle, echoes, and closes
/// with 1000.
fn chromium_through_app(name: &str) {
    let test_deadline = Instant::now() + Duration::from_secs(60);
    let idle = Duration::from_millis(4500);
    let app = tether_tests::app::App::start(name, &["--ping-interval", "1s", "--pong-timeout", "1s"], None);
    let (pages, reports) = PageServer::start_with_cookie(Some("session=demo"));
    let message = format!("hello {name} app, test {}", std::process::id());
    let page_url = format!(
        "http://{}/?ws=ws://{}/ws&idle_ms={}&message={}&deadline_ms=30000",
        pages.addr,
        app.addr,
        idle.as_millis(),
        message.replace(' ', "+").replace(',', "%2C"),
    );
    let mut browser = Chromium::open(&page_url);
    let report = await_report(&mut browser, &reports, test_deadline, &|| app.log.tail(20));
    eprintln!("{name}: report from the page: {report:?}");
    let field = |k: &str| report.get(k).map(String::as_str).unwrap_or("");
    let ctx = format!("{name}: page report: {report:?}\napp stderr:\n{}", app.log.tail(20));
    // The greeting (`hello demo`) arrives while the page has no message handler yet; what it checks is the
    // echo after the idle time, which only an open, pinged-and-answering connection gets.
    assert_eq!(field("outcome"), "done", "{ctx}");
    assert_eq!(field("ready_state_after_idle"), "1", "socket not OPEN after the idle time: {ctx}");
    assert_eq!(field("echo"), message, "echo shown in the DOM: {ctx}");
    assert_eq!(field("close_code"), "1000", "close event code: {ctx}");
    assert_eq!(field("close_clean"), "true", "close event wasClean: {ctx}");
    drop(browser);
    drop(pages);
}

#[test]
fn chromium_reaches_an_axum_app_that_adopts_its_websocket() {
    chromium_through_app("axum");
}

#[test]
fn chromium_reaches_a_hyper_app_that_adopts_its_websocket() {
    chromium_through_app("hyper");
}
