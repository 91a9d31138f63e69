//! Two embedded gateways (`GatewayServer`) on one real redis-server: the in-process API of one sees what the
//! other published (history, offsets, epoch), waits for Redis on the caller's thread, and turns a Redis that
//! is gone into error 100 with the reason. Needs Debian's `redis-server` (the test fails, naming it, when it
//! is missing).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tetherd::gateway::config::GatewayConfig;
use tetherd::gateway::embed::{GatewayServer, GatewayServerConfig};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e} (apt-get install -y redis-server)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(port: u16, prefix: &str) -> GatewayServer {
    let json = format!(
        r#"{{"http_api": {{"key": "k"}},
            "engine": {{"type": "redis", "redis": {{"address": "127.0.0.1:{port}", "prefix": "{prefix}"}}}},
            "channel": {{"namespaces": [{{"name": "chat", "history_size": 10, "history_ttl": "60s",
                                          "presence": true}}]}}}}"#
    );
    let gateway = GatewayConfig::from_json(&json).expect("config");
    let engine = tether::Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 1, ..Default::default() };
    GatewayServer::start(GatewayServerConfig { engine, gateway, authorizer: None }).expect("gateway starts")
}

#[test]
fn the_in_process_api_of_one_node_sees_what_another_published_through_redis() {
    let redis = Redis::start();
    let prefix = format!("embed{}", std::process::id());
    let (a, b) = (node(redis.port, &prefix), node(redis.port, &prefix));

    let first = a.api("publish", r#"{"channel": "chat:1", "data": {"n": 1}}"#).expect("publish on a");
    let second = b.api("publish", r#"{"channel": "chat:1", "data": {"n": 2}}"#).expect("publish on b");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!((first["offset"].as_u64(), second["offset"].as_u64()), (Some(1), Some(2)));
    assert_eq!(first["epoch"], second["epoch"], "one stream in Redis");

    let history = a.api("history", r#"{"channel": "chat:1", "limit": -1}"#).expect("history on a");
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let data: Vec<u64> =
        history["publications"].as_array().unwrap().iter().map(|p| p["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(data, [1, 2]);
    assert_eq!(history["offset"].as_u64(), Some(2));

    let stats = b.api("presence_stats", r#"{"channel": "chat:1"}"#).expect("presence_stats");
    assert_eq!(stats, r#"{"num_clients":0,"num_users":0}"#);
    // A batch mixes methods Redis answers with others.
    let batch = b.api("batch", r#"{"commands": [{"publish": {"channel": "chat:1", "data": {}}}, {"info": {}}]}"#);
    assert!(batch.as_deref().is_ok_and(|r| r.contains(r#""publish":{"offset":3"#) && r.contains("nodes")), "{batch:?}");
    // A namespace without presence is refused before Redis is asked.
    assert_eq!(a.api("presence", r#"{"channel": "x"}"#).unwrap_err().0, 108);

    drop(redis);
    let err = a.api("publish", r#"{"channel": "chat:1", "data": {"n": 3}}"#).expect_err("Redis is gone");
    assert_eq!(err.0, 100, "{err:?}");
    assert!(err.1.contains("redis"), "the reason is given: {err:?}");

    for g in [a, b] {
        g.shutdown(Duration::ZERO);
        g.wait();
    }
}
