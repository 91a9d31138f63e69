//! Running the real `tether-load` binary from a test: in this namespace or inside one the test built, in the
//! background while the test changes the network under it, and reading its JSON report.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{die_with_parent, workspace_bin, TempDir};

/// The `tether-load` binary: `$TETHER_LOAD_BIN`, else `target/{release,debug}/tether-load`.
pub fn tether_load_bin() -> PathBuf {
    workspace_bin("tether-load", "TETHER_LOAD_BIN", "tether-load")
}

/// A tether-load run in progress; killed on drop if it was not waited for.
pub struct Load {
    child: Option<Child>,
    json: PathBuf,
    _dir: TempDir,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// What a finished run left: exit code (None if it had to be killed), output, and the JSON report.
#[derive(Debug)]
pub struct LoadRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<serde_json::Value>,
}

impl Load {
    /// Starts `tether-load <args> --quiet --json FILE`, inside the network namespace `netns` if given.
    pub fn spawn(netns: Option<&str>, args: &[&str]) -> Load {
        let dir = TempDir::new("load");
        let json = dir.path().join("report.json");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(tether_load_bin());
                c
            }
            None => Command::new(tether_load_bin()),
        };
        cmd.args(args).arg("--quiet").arg("--json").arg(&json);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning tether-load: {e}"));
        let read_all = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = Some(read_all(Box::new(child.stdout.take().unwrap())));
        let stderr = Some(read_all(Box::new(child.stderr.take().unwrap())));
        Load { child: Some(child), json, _dir: dir, stdout, stderr }
    }

    /// Runs to completion (killed after `limit`).
    pub fn run(netns: Option<&str>, args: &[&str], limit: Duration) -> LoadRun {
        Load::spawn(netns, args).wait(limit)
    }

    /// `tether-load run --url URL <args>` to completion in this namespace (killed after `limit`).
    pub fn run_url(url: &str, args: &[&str], limit: Duration) -> LoadRun {
        let all: Vec<&str> = ["run", "--url", url].into_iter().chain(args.iter().copied()).collect();
        Load::run(None, &all, limit)
    }

    /// Waits for the run to end, at most `limit` (then kills it: `code` is None).
    pub fn wait(mut self, limit: Duration) -> LoadRun {
        let mut child = self.child.take().expect("waited once");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap_or_default();
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        let report = std::fs::read_to_string(&self.json)
            .ok()
            .map(|t| serde_json::from_str(&t).unwrap_or_else(|e| panic!("invalid JSON report: {e}\n{t}")));
        LoadRun { code: status.and_then(|s| s.code()), stdout, stderr, report }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl LoadRun {
    /// The report; panics with the run's output when there is none.
    pub fn report(&self) -> &serde_json::Value {
        self.report.as_ref().unwrap_or_else(|| panic!("tether-load wrote no report: {}", self.describe()))
    }

    /// A number at a dotted path of the report (`drops.by_code.1006`); a missing key reads as 0 only under
    /// `drops.by_code.` (codes that never occurred are absent), anything else missing panics.
    pub fn u(&self, path: &str) -> u64 {
        let mut cur = self.report();
        for key in path.split('.') {
            cur = &cur[key];
        }
        if cur.is_null() && path.starts_with("drops.by_code.") {
            return 0;
        }
        cur.as_u64().unwrap_or_else(|| panic!("{path} is not a number in the report: {}", self.describe()))
    }

    /// All `n` connections established, none dropped, every one closed cleanly; a failure says `context` and
    /// the run's output.
    pub fn assert_all_clean(&self, n: u64, context: &str) {
        let d = format!("{context}: {}", self.describe());
        assert_eq!(self.u("connections.established"), n, "{d}");
        assert_eq!(self.u("drops.total"), 0, "{d}");
        assert_eq!(self.u("closes.clean"), n, "{d}");
    }

    /// Exit code, the table it printed and its stderr, for failure messages.
    pub fn describe(&self) -> String {
        format!("exit code {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}
