//! The embedding examples (`engine/examples/axum.rs`, `hyper.rs`) run as the apps they are: an HTTP server
//! of the app's own that hands its WebSockets to the engine.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{die_with_parent, first_stdout_line, workspace_root, LogBuffer};

/// An example binary: `$TETHER_EXAMPLES_DIR/NAME`, else `target/{release,debug}/examples/NAME`.
pub fn example_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TETHER_EXAMPLES_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.is_file(), "{} is not a file (TETHER_EXAMPLES_DIR)", path.display());
        return path;
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["release", "debug"] {
        let path = target.join(profile).join("examples").join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "example {name} not built: `cargo build --release -p tether --examples` (looked in {}/{{release,debug}}/examples)",
        target.display()
    )
}

/// A running example app, killed on drop.
pub struct App {
    child: Child,
    pub addr: SocketAddr,
    pub log: LogBuffer,
}

impl App {
    /// Starts `NAME --listen 127.0.0.1:0 <args>` and waits (up to 30 s) for its `... on http://ADDR ...` line.
    /// `nofile`: the app's RLIMIT_NOFILE (soft and hard), to show that adopted sockets do not count against it.
    pub fn start(name: &str, args: &[&str], nofile: Option<u64>) -> App {
        let bin = example_bin(name);
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        if let Some(limit) = nofile {
            // SAFETY: setrlimit(2) is async-signal-safe and changes only the child being set up.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let log = LogBuffer::capture(child.stderr.take().unwrap());
        let line = first_stdout_line(&mut child, Duration::from_secs(30)).unwrap_or_else(|got| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} printed no address line (got {got}); stderr:\n{}", bin.display(), log.tail(30));
        });
        let addr = line
            .split_once("http://")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line from {}: {line:?}", bin.display())
            });
        App { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Descriptors the app's process holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
