//! The HTTP API publisher: `--publish-concurrency` threads (lanes), plain HTTP/1.1 over `std::net::TcpStream`,
//! each lane keeping its one connection open between requests (keep-alive, as API clients do: `cent`'s
//! requests session, Go's http.Client) and opening a new one when the server closed it; paced at the publish
//! rate. One channel per request goes to
//! `POST {prefix}/publish`; `--publish-batch` B > 1 sends B channels at once to `POST {prefix}/broadcast`
//! (same data, each channel its own publication and offset).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::codec::{publication_data, push_json_str};
use super::stats::{count, ApiStats};
use super::CentrifugoConfig;

/// `http://HOST[:PORT][/PREFIX]`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTarget {
    pub addr: SocketAddr,
    /// The Host header.
    pub host: String,
    /// The method path prefix, no trailing slash (default `/api`).
    pub prefix: String,
}

impl ApiTarget {
    pub fn parse(url: &str) -> Result<ApiTarget, String> {
        let rest =
            url.strip_prefix("http://").ok_or_else(|| format!("not an http:// URL: {url} (https is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("no host in {url}"));
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("cannot resolve {authority}: no IPv4 address"))?;
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() { "/api".to_string() } else { path.to_string() };
        Ok(ApiTarget { addr, host: authority.to_string(), prefix })
    }
}

/// A running publisher (`publish_concurrency` threads); [`Publisher::stop`] ends it and returns its counts.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ApiStats>>,
}

impl Publisher {
    /// Starts publishing now. `epoch` is the run's clock origin (the data's `t`); `seq` numbers publications
    /// over the whole run; `connections` sizes the expected deliveries.
    pub fn start(cfg: Arc<CentrifugoConfig>, connections: u64, epoch: Instant, seq: Arc<AtomicU64>) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let lanes = cfg.publish_concurrency.max(1);
        let threads = (0..lanes)
            .map(|lane| {
                let (cfg, seq, stop) = (cfg.clone(), seq.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("api-publisher-{lane}"))
                    .spawn(move || publish_loop(&cfg, connections, epoch, &seq, &stop, lane, lanes))
                    .expect("spawn the API publisher")
            })
            .collect();
        Publisher { stop, threads }
    }

    pub fn stop(self) -> ApiStats {
        self.stop.store(true, Relaxed);
        let mut total = ApiStats::default();
        for t in self.threads {
            total.merge(t.join().unwrap_or_default());
        }
        total
    }
}

fn publish_loop(
    cfg: &CentrifugoConfig,
    connections: u64,
    epoch: Instant,
    seq: &AtomicU64,
    stop: &AtomicBool,
    lane: u32,
    lanes: u32,
) -> ApiStats {
    let mut stats = ApiStats::default();
    if cfg.publish_rate <= 0.0 {
        return stats;
    }
    let batch = cfg.publish_batch.clamp(1, cfg.channels) as u64;
    // This lane's share: 1/lanes of the rate, and every lanes-th batch of channels.
    let rate = cfg.publish_rate / lanes as f64;
    // Lanes are staggered over one period of the total rate, so together they publish evenly, not in bursts.
    let start = Instant::now() + Duration::from_secs_f64(lane as f64 / cfg.publish_rate);
    let mut next_channel = ((lane as u64 * batch) % cfg.channels as u64) as u32;
    let step = ((lanes as u64 * batch) % cfg.channels as u64) as u32;
    let mut body = String::new();
    let mut data = String::new();
    let mut conn = ApiConn::default();
    while !stop.load(Relaxed) {
        // Batch n is due at n batch periods after this lane's start (the first at once).
        let due_at = start + Duration::from_secs_f64(stats.attempted as f64 / rate);
        let now = Instant::now();
        if now < due_at {
            // Short enough to see `stop` soon, long enough not to wake a lane many times per request.
            std::thread::sleep((due_at - now).min(Duration::from_millis(50)));
            continue;
        }
        let channels: Vec<u32> = (0..batch as u32).map(|i| (next_channel + i) % cfg.channels).collect();
        next_channel = ((next_channel as u64 + step as u64) % cfg.channels as u64) as u32;
        data.clear();
        let sent_ns = super::stamp_ns(epoch, Instant::now());
        publication_data(&mut data, sent_ns, seq.fetch_add(1, Relaxed), cfg.publication_size);
        body.clear();
        let method = if batch == 1 {
            body.push_str("{\"channel\":");
            push_json_str(&mut body, &cfg.channel_name(channels[0]));
            "publish"
        } else {
            body.push_str("{\"channels\":[");
            for (i, c) in channels.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                push_json_str(&mut body, &cfg.channel_name(*c));
            }
            body.push(']');
            "broadcast"
        };
        body.push_str(",\"data\":");
        body.push_str(&data);
        body.push('}');
        let path = format!("{}/{method}", cfg.api.prefix);
        stats.attempted += batch;
        stats.requests += 1;
        let sent = Instant::now();
        let answer = conn.post(&cfg.api, &path, cfg.api_key.as_deref(), &body);
        stats.request_us.saturating_record((sent.elapsed().as_micros() as u64).max(1));
        let outcomes = match answer.and_then(|(status, body)| outcomes(status, &body, channels.len())) {
            Ok(outcomes) => outcomes,
            Err(why) => {
                count(&mut stats.failures, why);
                stats.unanswered += batch;
                continue;
            }
        };
        for (channel, outcome) in channels.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    stats.published += 1;
                    stats.expected_deliveries += cfg.subscribers(connections, *channel);
                }
                Err(code) => count(&mut stats.errors_by_code, code),
            }
        }
    }
    stats
}

/// A lane's connection to the API, kept open between requests (`Connection: keep-alive`) and opened again
/// when the server closed it or a request on it failed. A failed request is not retried (a publication the
/// server took would then arrive twice).
#[derive(Default)]
pub struct ApiConn {
    stream: Option<TcpStream>,
}

impl ApiConn {
    /// One request; the status and body of the answer.
    pub fn post(
        &mut self,
        api: &ApiTarget,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        let io = |e: std::io::Error| format!("io: {}", e.kind());
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect_timeout(&api.addr, Duration::from_secs(5)).map_err(io)?;
                let _ = stream.set_nodelay(true);
                stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
                stream
            }
        };
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n",
            api.host,
            body.len()
        );
        if let Some(key) = key {
            request.push_str("X-API-Key: ");
            request.push_str(key);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut answer = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        let mut complete = false;
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                // The server closed after answering, with our request's bytes unread: the answer is all there.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !answer.is_empty() => 0,
                Err(e) => return Err(io(e)),
            };
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(Head { body_at, length: Some(length), .. }) = head(&answer) {
                if answer.len() >= body_at + length {
                    answer.truncate(body_at + length);
                    complete = true;
                    break;
                }
            }
        }
        let h = head(&answer).ok_or_else(|| "bad answer: no HTTP head".to_string())?;
        if complete && h.keep_alive {
            self.stream = Some(stream);
        }
        Ok((h.status, answer.split_off(h.body_at)))
    }
}

/// An HTTP answer's head: status, where the body starts, its Content-Length, and whether the server keeps
/// the connection (HTTP/1.1 without `Connection: close`).
struct Head {
    status: u16,
    body_at: usize,
    length: Option<usize>,
    keep_alive: bool,
}

/// The head of an HTTP answer, once it is complete.
fn head(answer: &[u8]) -> Option<Head> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&answer[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let (mut length, mut keep_alive) = (None, status_line.starts_with("HTTP/1.1 "));
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    Some(Head { status, body_at: end + 4, length, keep_alive })
}

/// Per channel of the request: accepted, or the API error code. `Err` for an answer that is no API answer.
fn outcomes(status: u16, body: &[u8], channels: usize) -> Result<Vec<Result<(), u32>>, String> {
    if status != 200 {
        return Err(format!("http {status}"));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "bad answer: not JSON".to_string())?;
    let code = |e: &serde_json::Value| e["code"].as_u64().unwrap_or(0) as u32;
    if let Some(e) = v.get("error") {
        return Ok(vec![Err(code(e)); channels]);
    }
    let result = v.get("result").ok_or_else(|| "bad answer: no result".to_string())?;
    if channels == 1 {
        return Ok(vec![Ok(())]);
    }
    let responses = result["responses"].as_array().ok_or_else(|| "bad answer: no responses".to_string())?;
    if responses.len() != channels {
        return Err(format!("bad answer: {} responses for {channels} channels", responses.len()));
    }
    Ok(responses.iter().map(|r| r.get("error").filter(|e| !e.is_null()).map_or(Ok(()), |e| Err(code(e)))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn api_urls() {
        let t = ApiTarget::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((t.addr.port(), t.host.as_str(), t.prefix.as_str()), (8000, "127.0.0.1:8000", "/api"));
        let t = ApiTarget::parse("http://127.0.0.1:8000/x/api/").unwrap();
        assert_eq!(t.prefix, "/x/api");
        assert_eq!(ApiTarget::parse("http://localhost").unwrap().addr.port(), 80);
        assert!(ApiTarget::parse("https://127.0.0.1").is_err());
        assert!(ApiTarget::parse("http:///api").is_err());
    }

    #[test]
    fn answers() {
        assert_eq!(outcomes(200, br#"{"result":{"offset":3,"epoch":"e"}}"#, 1), Ok(vec![Ok(())]));
        assert_eq!(outcomes(200, br#"{"result":{}}"#, 1), Ok(vec![Ok(())]));
        assert_eq!(outcomes(200, br#"{"error":{"code":102,"message":"unknown channel"}}"#, 2), Ok(vec![Err(102); 2]));
        assert_eq!(
            outcomes(
                200,
                br#"{"result":{"responses":[{"result":{"offset":1}},{"error":{"code":102,"message":"x"}}]}}"#,
                2
            ),
            Ok(vec![Ok(()), Err(102)])
        );
        assert_eq!(outcomes(401, b"", 1), Err("http 401".into()));
        assert!(outcomes(200, b"nope", 1).is_err());
        assert!(outcomes(200, br#"{"result":{"responses":[]}}"#, 2).is_err());
    }

    /// A one-shot HTTP server: answers `answer` to the first request and hands the request back.
    fn one_shot(answer: &'static str) -> (ApiTarget, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("\"data\"") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(got).unwrap()
        });
        (ApiTarget::parse(&format!("http://{addr}/api")).unwrap(), server)
    }

    #[test]
    fn post_reads_a_content_length_answer() {
        let (api, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"result\":{}}");
        let (status, body) =
            ApiConn::default().post(&api, "/api/publish", Some("k"), r#"{"channel":"a","data":{}}"#).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"result\":{}}"[..]));
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /api/publish HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nX-API-Key: k\r\n"), "{request}");
        assert!(request.contains("\r\nContent-Length: 25\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"channel\":\"a\",\"data\":{}}"), "{request}");
    }

    /// A server that answers every request on the connections it accepts (keep-alive unless `close`), and
    /// counts the connections.
    fn keep_alive_server(requests: usize, close: bool) -> (ApiTarget, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut served, mut connections) = (0, 0);
            while served < requests {
                let (mut s, _) = listener.accept().unwrap();
                connections += 1;
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    while let Some(at) = String::from_utf8_lossy(&got).find("{}}") {
                        got.drain(..at + 3);
                        let connection = if close { "close" } else { "keep-alive" };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: {connection}\r\n\r\n{{\"result\":{{}}}}"
                        );
                        s.write_all(answer.as_bytes()).unwrap();
                        served += 1;
                    }
                    if close || served == requests {
                        break;
                    }
                }
            }
            connections
        });
        (ApiTarget::parse(&format!("http://{addr}/api")).unwrap(), server)
    }

    #[test]
    fn a_lane_keeps_its_connection_and_reopens_one_the_server_closed() {
        let (api, server) = keep_alive_server(3, false);
        let mut conn = ApiConn::default();
        for _ in 0..3 {
            let (status, body) = conn.post(&api, "/api/publish", None, r#"{"channel":"a","data":{}}"#).unwrap();
            assert_eq!((status, body.as_slice()), (200, &b"{\"result\":{}}"[..]));
        }
        assert_eq!(server.join().unwrap(), 1, "three requests, one connection");

        let (api, server) = keep_alive_server(3, true);
        let mut conn = ApiConn::default();
        for _ in 0..3 {
            assert_eq!(conn.post(&api, "/api/publish", None, r#"{"channel":"a","data":{}}"#).unwrap().0, 200);
        }
        assert_eq!(server.join().unwrap(), 3, "Connection: close answers: a connection per request");
    }
}
