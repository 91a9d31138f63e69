//! 30,000 concurrent WebSocket connections against one tetherd: more than one process's fd limit
//! (20,000 here), so the clients are spread over two `ws-swarm` child processes, and the server must
//! hold them with its registered-file tables over several shards.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tether_tests::{close_lines, die_with_parent, log_field, wait_until, LogBuffer, Server};

/// A running ws-swarm, killed on drop.
struct Swarm {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: LogBuffer,
}

impl Swarm {
    fn start(name: &str, url: &str, count: usize, sources: &[&str], deadline_s: u64) -> Swarm {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-swarm"));
        cmd.arg(url)
            .arg(count.to_string())
            .arg(sources.join(","))
            .args(["--concurrency", "256", "--deadline", &deadline_s.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawning ws-swarm");
        let log = LogBuffer::capture(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Swarm { name: name.to_string(), stdin: child.stdin.take(), child, lines, log }
    }

    /// Waits for a stdout line starting with `prefix`; panics on `swarm FAILED`, exit, or the deadline.
    fn expect_line(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) if line.starts_with("swarm FAILED") => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("{}: {line}\nstderr:\n{}", self.name, self.log.tail(20))
                }
                Ok(line) => eprintln!("{}: {line}", self.name),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no {prefix:?} line before the deadline; stderr:\n{}", self.name, self.log.tail(20))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "{}: exited ({status:?}) before printing {prefix:?}; stderr:\n{}",
                        self.name,
                        self.log.tail(20)
                    )
                }
            }
        }
    }

    fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("releasing swarm");
        stdin.flush().unwrap();
    }

    fn wait_success(&mut self, deadline: Instant) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}; stderr:\n{}", self.name, self.log.tail(20));
                return;
            }
            assert!(Instant::now() < deadline, "{} did not exit before the deadline", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn summary_field(line: &str, key: &str) -> usize {
    log_field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn holds_30000_connections_from_two_processes() {
    let total: usize = std::env::var("TETHER_SWARM_TOTAL").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    let per_swarm = total / 2;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(240);

    let server = Server::start(&["--shards", "2"]);
    let url = server.ws_url("/swarm");
    // Each swarm uses its own four source addresses: ~3,750 ephemeral ports per address.
    let mut swarms = vec![
        Swarm::start("swarm-a", &url, per_swarm, &["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"], 230),
        Swarm::start("swarm-b", &url, per_swarm, &["127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"], 230),
    ];

    for swarm in &mut swarms {
        let line = swarm.expect_line("open ", deadline);
        assert_eq!(line, format!("open {per_swarm}"), "{}", swarm.name);
    }
    let opened_in = start.elapsed();
    let open = server.open_connections();
    assert!(
        open >= (2 * per_swarm) as u64,
        "/metrics shows {open} open connections with {} clients connected:\n{}",
        2 * per_swarm,
        server.metrics()
    );
    eprintln!("{} connections open after {opened_in:.1?}; /metrics open={open}", 2 * per_swarm);

    for swarm in &mut swarms {
        swarm.release();
    }
    for swarm in &mut swarms {
        let line = swarm.expect_line("swarm ok", deadline);
        for key in ["opened", "echoed", "closed"] {
            assert_eq!(summary_field(&line, key), per_swarm, "{}: {line}", swarm.name);
        }
        swarm.wait_success(deadline);
    }

    let left = deadline.saturating_duration_since(Instant::now());
    server.wait_open_at_most(1, left.max(Duration::from_secs(10)));

    // One close line per connection, code 1000, started by the peer.
    let want = 2 * per_swarm;
    let count_1000 = || {
        close_lines(&server.log)
            .iter()
            .filter(|l| log_field(l, "code") == Some("1000") && log_field(l, "initiator") == Some("peer"))
            .count()
    };
    let logged = wait_until(Duration::from_secs(30), Duration::from_millis(200), || count_1000() >= want);
    assert!(logged, "expected {want} close lines with code=1000 initiator=peer, found {}", count_1000());
    eprintln!("swarm test done in {:.1?}", start.elapsed());
}
