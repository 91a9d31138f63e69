//! `--listen ADDR --threads N`, the whole command line of the peer echo servers.
//!
//! Hand-rolled rather than clap so that the peers stay as small as the servers people actually write.

use std::net::SocketAddr;

/// What every peer echo server is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerArgs {
    pub listen: SocketAddr,
    /// Runtime worker threads; 1 means a current-thread runtime.
    pub threads: usize,
}

impl ServerArgs {
    /// Parses `std::env::args()`, printing usage and exiting on a mistake.
    pub fn from_env() -> ServerArgs {
        let program = std::env::args().next().unwrap_or_else(|| "echo".into());
        match ServerArgs::parse(std::env::args().skip(1)) {
            Ok(args) => args,
            Err(message) => {
                eprintln!("{program}: {message}");
                eprintln!("usage: {program} [--listen ADDR (default 127.0.0.1:9002)] [--threads N (default 1)]");
                std::process::exit(2);
            }
        }
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<ServerArgs, String> {
        let mut parsed = ServerArgs { listen: "127.0.0.1:9002".parse().unwrap(), threads: 1 };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (flag.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
            match name.as_str() {
                "--listen" => {
                    let value = value()?;
                    parsed.listen = value.parse().map_err(|e| format!("--listen {value}: {e}"))?;
                }
                "--threads" => {
                    let value = value()?;
                    parsed.threads = value.parse().map_err(|e| format!("--threads {value}: {e}"))?;
                    if parsed.threads == 0 {
                        return Err("--threads must be at least 1".into());
                    }
                }
                "-h" | "--help" => return Err("help".into()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(parsed)
    }

    /// A tokio runtime the way these servers are usually run: current-thread for 1, multi-thread otherwise.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(self.threads).enable_all().build()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerArgs, String> {
        ServerArgs::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let args = parse(&["--listen", "0.0.0.0:80", "--threads=4"]).unwrap();
        assert_eq!(args.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(args.threads, 4);
        assert_eq!(parse(&[]).unwrap().threads, 1);
        assert!(parse(&["--threads", "0"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
