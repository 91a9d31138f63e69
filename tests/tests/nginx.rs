//! nginx in front: a reverse proxy with `proxy_read_timeout 5s` between the clients (tether-load) and
//! tetherd, the setup of DESIGN.md's problem statement with the timeout shortened from 60 s to 5 s.
//!
//! nginx resets its timeout on traffic in either direction, so the clients here never keep a connection
//! alive by themselves: no client pings, no TCP-level help, and echo traffic (if any) slower than the timeout.
//! - With server pings every 2 s, 1,000 connections stay open and echo for 30 s with zero drops.
//! - With pings off, nginx closes every one of them at about 5 s, and the clients see 1006.
//!
//! Needs Debian's `nginx-light` (or `nginx`) package: the test fails, naming it, when nginx is missing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether_tests::load::Load;
use tether_tests::{die_with_parent, wait_until, LogBuffer, Server, TempDir};

/// nginx's idle limit on a proxied (upgraded) connection, in both config and assertions.
const PROXY_TIMEOUT_S: u64 = 5;
const CONNECTIONS: u64 = 1000;

/// The nginx binary: `$NGINX_BIN`, else `nginx` on PATH, else the usual sbin folders.
fn nginx_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "NGINX_BIN={} is not a file (Debian: apt-get install -y nginx-light)", path.display());
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"].map(PathBuf::from);
    on_path.into_iter().chain(fixed).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "nginx not found (looked on PATH, in /usr/sbin, /usr/local/sbin and /usr/local/nginx/sbin; or set \
             NGINX_BIN): install Debian's nginx-light package: apt-get install -y nginx-light"
        )
    })
}

/// A free loopback port (bound and released: nginx binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("ephemeral port").port()
}

/// nginx as a single foreground process (`master_process off`, so killing the child kills all of nginx),
/// with every file it writes inside its own temp dir. Killed on drop, and by the kernel if the test thread dies.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    stderr: LogBuffer,
    error_log: PathBuf,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Nginx {
        let bin = nginx_bin();
        let dir = TempDir::new("nginx");
        let d = dir.0.display().to_string();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        // The temp-path directives of optional modules exist only where the module is compiled in.
        let version = Command::new(&bin).arg("-V").output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        let version = version.unwrap_or_else(|e| panic!("running {} -V: {e}", bin.display()));
        let mut temp_paths = format!("client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n");
        for module in ["fastcgi", "uwsgi", "scgi"] {
            if !version.contains(&format!("--without-http_{module}_module")) {
                temp_paths.push_str(&format!("    {module}_temp_path {d}/{module};\n"));
            }
        }
        let error_log = dir.0.join("error.log");
        // No `user` directive: with master_process off there are no workers to switch user. The error log is
        // at `info` because nginx logs "upstream timed out" on a proxied (upgraded) connection at that level.
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 8192;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    {temp_paths}
    server {{
        listen {addr} backlog=4096;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_connect_timeout 5s;
            proxy_read_timeout {PROXY_TIMEOUT_S}s;
            proxy_send_timeout {PROXY_TIMEOUT_S}s;
        }}
    }}
}}
"#
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");

        let mut cmd = Command::new(&bin);
        cmd.arg("-p").arg(format!("{d}/")).arg("-c").arg(&conf_path);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let stderr = LogBuffer::capture(child.stderr.take().unwrap());
        let mut nginx = Nginx { child, addr, stderr, error_log, dir };

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = nginx.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "nginx exited at start-up ({status}); stderr:\n{}\nerror log:\n{}",
                    nginx.stderr.text(),
                    nginx.error_log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not accept on {addr} within 15 s; stderr:\n{}\nerror log:\n{}",
                nginx.stderr.text(),
                nginx.error_log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn error_log_text(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// Lines of nginx's error log that contain `needle`.
    fn error_log_count(&self, needle: &str) -> usize {
        self.error_log_text().lines().filter(|l| l.contains(needle)).count()
    }

    fn error_log_tail(&self, n: usize) -> String {
        let text = self.error_log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- nginx ({}) in {} ----\nstderr:\n{}\nerror log, last 30 lines:\n{}\n----",
                self.addr,
                self.dir.0.display(),
                self.stderr.tail(30),
                self.error_log_tail(30)
            );
        }
    }
}

/// `tether_closed_by_reason_total{reason=...}`.
fn closed_by_reason(server: &Server, reason: &str) -> u64 {
    server.counter_with("tether_closed_by_reason_total", &[("reason", reason)])
}

/// Server pings every 2 s are traffic through nginx, so idle connections outlive its 5 s read timeout.
#[test]
fn server_pings_keep_connections_through_nginx_alive() {
    let server = Server::start(&["--ping-interval", "2s", "--pong-timeout", "10s"]);
    let nginx = Nginx::start(server.addr);

    let hold_s = 30;
    let run = Load::run(
        None,
        &[
            "run",
            "--url",
            &nginx.url("/nginx-pinged"),
            "--connections",
            &CONNECTIONS.to_string(),
            "--rate",
            "2000/s",
            "--duration",
            &format!("{hold_s}s"),
            // Nothing from the client may keep nginx's timer fresh: no client pings, no TCP keepalive (it
            // would not reach nginx anyway), and one echo message per connection every 10 s, twice the
            // timeout: without the server's pings, every connection would be idle past 5 s between two.
            "--ping-interval",
            "0",
            "--tcp-keepalive",
            "off",
            "--message-rate",
            "0.1",
            "--final-echo",
            "--source-ips",
            "127.0.3.1",
            "--strict",
        ],
        Duration::from_secs(hold_s + 60),
    );
    let d = run.describe();
    let ctx = || format!("{d}\nnginx error log tail:\n{}", nginx.error_log_tail(20));
    eprintln!("nginx, server pings every 2 s:\n{}", run.stdout);

    assert_eq!(run.u("connections.established"), CONNECTIONS, "established: {}", ctx());
    assert_eq!(run.u("connections.failed"), 0, "failed: {}", ctx());
    assert_eq!(run.u("drops.total"), 0, "connections dropped behind nginx despite server pings: {}", ctx());
    assert_eq!(run.u("closes.clean"), CONNECTIONS, "clean closes: {}", ctx());
    assert_eq!(run.u("closes.unclean"), 0, "unclean closes: {}", ctx());
    assert_eq!(run.code, Some(0), "tether-load --strict did not exit 0: {}", ctx());

    // Echo traffic made it both ways. Messages are ordered per connection, and tether-load waits for every
    // final echo before it closes, so each regular message sent before a final one was echoed before it.
    let sent = run.u("messages.sent");
    let echoed = run.u("messages.echoed");
    assert!(sent >= CONNECTIONS, "expected about 3 messages per connection at 0.1/s over {hold_s} s, got {sent}");
    assert_eq!(echoed, sent, "messages echoed != sent: {}", ctx());
    assert_eq!(run.u("messages.final_sent"), CONNECTIONS, "final echo sent: {}", ctx());
    assert_eq!(run.u("messages.final_echoed"), CONNECTIONS, "final echoes: {}", ctx());

    // The server really pinged (about hold/2 s = 15 per connection), through nginx, and the clients saw them.
    let min_pings = CONNECTIONS * 10;
    let client_saw = run.u("pings.server_pings");
    assert!(client_saw >= min_pings, "clients saw {client_saw} server pings (< {min_pings}): {}", ctx());
    let server_sent = server.counter("tether_pings_sent_total");
    assert!(server_sent >= min_pings, "tetherd sent {server_sent} pings (< {min_pings})");
    assert_eq!(server.counter("tether_pong_timeouts_total"), 0, "pong timeouts behind nginx");

    let timeouts = nginx.error_log_count("timed out");
    assert_eq!(timeouts, 0, "nginx timed connections out despite server pings:\n{}", nginx.error_log_tail(20));
    server.wait_open_at_most(1, Duration::from_secs(10));
}

/// Without pings, nginx's 5 s read timeout closes every idle connection, and the clients see 1006.
#[test]
fn without_pings_nginx_closes_idle_connections_at_its_timeout() {
    let server = Server::start(&["--ping-interval", "0"]);
    let nginx = Nginx::start(server.addr);

    let hold_s: u64 = 20;
    let run = Load::run(
        None,
        &[
            "run",
            "--url",
            &nginx.url("/nginx-idle"),
            "--connections",
            &CONNECTIONS.to_string(),
            "--rate",
            "2000/s",
            "--duration",
            &format!("{hold_s}s"),
            "--ping-interval",
            "0",
            "--tcp-keepalive",
            "off",
            "--message-rate",
            "0",
            "--source-ips",
            "127.0.3.2",
        ],
        Duration::from_secs(hold_s + 60),
    );
    let d = run.describe();
    let ctx = || format!("{d}\nnginx error log tail:\n{}", nginx.error_log_tail(20));

    assert_eq!(run.u("connections.established"), CONNECTIONS, "established: {}", ctx());
    assert_eq!(run.u("drops.by_code.1006"), CONNECTIONS, "expected every idle connection dropped as 1006: {}", ctx());
    assert_eq!(run.u("drops.total"), CONNECTIONS, "drops: {}", ctx());
    assert_eq!(run.u("drops.by_phase.hold"), CONNECTIONS, "drops in the hold: {}", ctx());

    // They died at nginx's timeout, not at the end of the hold: the average lifetime (connection-seconds
    // over connections; the ramp takes about 0.5 s) is about 5 s, far below the 20 s hold.
    let hours = run.report()["connection_hours"].as_f64().expect("connection_hours");
    let avg_s = hours * 3600.0 / CONNECTIONS as f64;
    eprintln!("nginx, no pings: average connection lifetime {avg_s:.2} s\n{}", run.stdout);
    assert!(
        (PROXY_TIMEOUT_S as f64 - 1.0..=12.0).contains(&avg_s),
        "average connection lifetime {avg_s:.2} s; expected about {PROXY_TIMEOUT_S} s (nginx's proxy_read_timeout), \
         well before the {hold_s} s hold ended: {}",
        ctx()
    );

    // nginx says why, once per connection.
    let timeouts = nginx.error_log_count("upstream timed out");
    assert_eq!(timeouts as u64, CONNECTIONS, "\"upstream timed out\" lines in nginx's error log: {}", ctx());

    // And tetherd, which never pinged, saw the upstream side simply end (no Close frame from nginx).
    server.wait_open_at_most(1, Duration::from_secs(10));
    let abnormal = closed_by_reason(&server, "abnormal");
    let ok = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        closed_by_reason(&server, "abnormal") >= CONNECTIONS
    });
    assert!(ok, "tetherd counted {abnormal} abnormal closes, expected {CONNECTIONS}:\n{}", server.metrics());
    assert_eq!(server.counter("tether_pings_sent_total"), 0, "tetherd pinged with --ping-interval 0");
}
