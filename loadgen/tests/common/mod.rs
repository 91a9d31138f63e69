//! Shared helpers for the integration tests: run the built binary with a deadline, start servers, read the
//! JSON report.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tether-load");

/// What a finished tether-load run left behind.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<serde_json::Value>,
}

/// A scratch directory under the target dir, unique per test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tether-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs tether-load with `args` (plus `--json FILE` when `json` is set), killed after `limit`.
pub fn tether_load(args: &[&str], json: Option<&Path>, limit: Duration) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(path) = json {
        cmd.arg("--json").arg(path);
    }
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn tether-load");
    let (code, stdout, stderr) = wait_bounded(child, limit);
    let json = json
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| serde_json::from_str(&t).expect("valid JSON report"));
    Run { code, stdout, stderr, json }
}

/// Waits for `child` for at most `limit` (then kills it); returns its exit code and output.
pub fn wait_bounded(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(status.is_some(), "tether-load ran past {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (status.and_then(|s| s.code()), stdout, stderr)
}

/// A server process that is killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and reads its stdout until a line contains `marker`; the port is the number after the last
/// ':' of that line.
pub fn start_server(mut cmd: Command, marker: &str) -> Server {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if line.contains(&marker) {
                let port = line.trim().rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok());
                let _ = tx.send(port);
                break;
            }
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let port = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(port)) => port,
        other => {
            let _ = child.kill();
            panic!("server did not report its port: {other:?}");
        }
    };
    Server { child, port }
}

/// The Python `websockets` test server (tests/ws_server.py) in `mode`.
pub fn python_server(args: &[&str]) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("ws_server.py");
    // scripts/test.sh names the interpreter it installed `websockets` for (a venv on PEP 668 systems).
    let mut cmd = Command::new(std::env::var_os("TETHER_PYTHON").unwrap_or_else(|| "python3".into()));
    cmd.arg("-u").arg(script).args(args);
    start_server(cmd, "listening on")
}

/// The tetherd binary: $TETHERD_BIN, else target/release/tetherd, else target/debug/tetherd.
pub fn tetherd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TETHERD_BIN") {
        return Some(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut targets = vec![workspace.join("target")];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        targets.insert(0, PathBuf::from(t));
    }
    for t in targets {
        for profile in ["release", "debug"] {
            let p = t.join(profile).join("tetherd");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

pub fn u(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}
