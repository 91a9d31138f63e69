//! `--protocol centrifugo`: tether-load as many Centrifugo clients plus a publisher. Against an in-process
//! stand-in (always; it also makes faults on purpose that the report must show), and against tetherd's
//! gateway (`--gateway CONFIG`; skipped when the tetherd binary has no such flag). The report must show every
//! publication delivered to every subscriber exactly once: deliveries == publications x subscribers, and no
//! gaps or duplicates by offset, also across `--reconnect-every` recoveries.

mod centrifugo_mock;
mod common;

use std::process::Command;
use std::time::Duration;

use centrifugo_mock::Fault;
use common::{scratch, start_server, tether_load, tetherd_bin, u};
use serde_json::Value;

const CONNECTIONS: u64 = 200;
const CHANNELS: u64 = 10;
const SUBS: u64 = 2;
/// Every channel has CONNECTIONS * SUBS / CHANNELS subscribers.
const PER_CHANNEL: u64 = CONNECTIONS * SUBS / CHANNELS;

/// Runs tether-load against `url` (API on the same address, key and secret of the stand-in and of the
/// gateway config below) with `extra` flags; the report's `centrifugo` section and the whole report.
fn load(name: &str, url: &str, extra: &[&str]) -> (Value, Value) {
    let shape = ["--connections", "200", "--rate", "2000/s", "--channels", "10", "--subscriptions-per-connection", "2"];
    load_shaped(name, url, &shape, extra)
}

/// As [`load`] with the connections, channels and subscriptions given in `shape`.
fn load_shaped(name: &str, url: &str, shape: &[&str], extra: &[&str]) -> (Value, Value) {
    let dir = scratch(name);
    let json = dir.join("report.json");
    let mut args =
        vec!["run", "--url", url, "--protocol", "centrifugo", "--token-secret", "s", "--api-key", "k", "--quiet"];
    args.extend_from_slice(shape);
    args.extend_from_slice(extra);
    let run = tether_load(&args, Some(&json), Duration::from_secs(90));
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let r = run.json.unwrap_or_else(|| panic!("no report\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr));
    println!("{}", run.stdout);
    (r["centrifugo"].clone(), r)
}

/// Every subscriber got every accepted publication exactly once, nothing failed.
fn assert_exact(c: &Value, r: &Value) {
    assert_eq!(u(r, "connections.established"), CONNECTIONS, "{r:#}");
    assert_eq!(u(c, "connects"), u(r, "connections.established") + u(r, "connections.reconnects"), "{c:#}");
    assert_eq!(u(c, "subscribed_at_end"), CONNECTIONS * SUBS, "{c:#}");
    let ok = u(c, "publications.ok");
    assert!(ok > 0, "nothing published: {c:#}");
    assert_eq!(ok, u(c, "publications.attempted"), "{c:#}");
    assert_eq!(u(c, "deliveries.expected"), ok * PER_CHANNEL, "{c:#}");
    assert_eq!(u(c, "deliveries.total"), ok * PER_CHANNEL, "{c:#}");
    assert_eq!(u(c, "deliveries.missing"), 0, "{c:#}");
    assert_eq!(u(c, "deliveries.gaps"), 0, "{c:#}");
    assert_eq!(u(c, "deliveries.duplicates"), 0, "{c:#}");
    assert_eq!(u(c, "deliveries.unexpected"), 0, "{c:#}");
    assert_eq!(u(c, "deliveries.untracked"), 0, "every channel keeps history: {c:#}");
    assert_eq!(u(c, "deliveries.unstamped"), 0, "{c:#}");
    assert_eq!(u(c, "recovery.not_recovered"), 0, "{c:#}");
    assert_eq!(c["errors_by_code"], serde_json::json!({}), "{c:#}");
    assert_eq!(c["api_failures"], serde_json::json!({}), "{c:#}");
    assert_eq!(u(c, "pushes.malformed"), 0, "{c:#}");
    // Every delivery was timed: live ones in one histogram, recovered ones in the other.
    assert!(u(c, "latency_us.count") > 0, "{c:#}");
    assert_eq!(u(c, "latency_us.count") + u(c, "recovered_latency_us.count"), u(c, "deliveries.total"), "{c:#}");
    assert!(u(c, "latency_us.p50") <= u(c, "latency_us.p99") && u(c, "latency_us.p99") <= u(c, "latency_us.max"));
}

fn no_reconnects(c: &Value, r: &Value) {
    assert_eq!(u(r, "drops.total"), 0, "{r:#}");
    assert_eq!(u(c, "recovery.cycles"), 0, "{c:#}");
    assert_eq!(u(c, "deliveries.recovered"), 0, "{c:#}");
    assert_eq!(u(c, "subscribes"), CONNECTIONS * SUBS, "{c:#}");
    // Only our own closes at the end.
    assert_eq!(c["close_codes"], serde_json::json!({"1000": CONNECTIONS}), "{c:#}");
}

fn recovered(c: &Value) {
    assert!(u(c, "recovery.cycles") > 0, "{c:#}");
    assert!(u(c, "recovery.recovered") > 0, "{c:#}");
    assert!(u(c, "resubscribes") >= u(c, "recovery.recovered"), "{c:#}");
    assert_eq!(u(c, "recovery.epoch_changes"), 0, "{c:#}");
}

// ----- against the in-process stand-in -----

#[test]
fn stand_in_api_publish_is_delivered_exactly_once() {
    let (_engine, addr) = centrifugo_mock::start(Fault::None);
    let url = format!("ws://{addr}");
    let hgrm = scratch("cf-mock-hgrm").join("delivery.hgrm");
    let (c, r) = load(
        "cf-mock-api",
        &url,
        &["--publish-rate", "200/s", "--duration", "3s", "--delivery-hgrm", hgrm.to_str().unwrap()],
    );
    assert_exact(&c, &r);
    no_reconnects(&c, &r);
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.contains(&format!("Total count    = {:>12}]", u(&c, "latency_us.count"))), "{hgrm}");
    assert_eq!(u(&c, "publications.api_requests"), u(&c, "publications.ok"));
    // The stand-in pings every second.
    assert!(u(&c, "server_pings") >= CONNECTIONS, "{c:#}");
}

#[test]
fn stand_in_broadcast_and_client_publish() {
    let (_engine, addr) = centrifugo_mock::start(Fault::None);
    let url = format!("ws://{addr}/connection/websocket");
    let (c, r) = load("cf-mock-batch", &url, &["--publish-rate", "300/s", "--publish-batch", "5", "--duration", "2s"]);
    assert_exact(&c, &r);
    no_reconnects(&c, &r);
    assert_eq!(u(&c, "publications.api_requests") * 5, u(&c, "publications.ok"), "{c:#}");
    let (c, r) = load(
        "cf-mock-client",
        &url,
        &["--publish-via", "client", "--publish-rate", "200/s", "--publication-size", "200", "--duration", "3s"],
    );
    assert_exact(&c, &r);
    no_reconnects(&c, &r);
    assert_eq!(u(&c, "publications.api_requests"), 0);
}

#[test]
fn stand_in_reconnects_recover_every_offset() {
    let (_engine, addr) = centrifugo_mock::start(Fault::None);
    let url = format!("ws://{addr}");
    let (c, r) =
        load("cf-mock-cycle", &url, &["--publish-rate", "200/s", "--reconnect-every", "1s", "--duration", "4s"]);
    assert_exact(&c, &r);
    recovered(&c);
    assert!(u(&c, "deliveries.recovered") > 0, "{c:#}");
}

#[test]
fn faulty_recoveries_show_as_gaps_and_duplicates() {
    for (fault, what) in
        [(Fault::SkipOnRecovery, "deliveries.gaps"), (Fault::RepeatOnRecovery, "deliveries.duplicates")]
    {
        let (_engine, addr) = centrifugo_mock::start(fault);
        let url = format!("ws://{addr}");
        let (c, _) = load(
            "cf-mock-fault",
            &url,
            &["--publish-rate", "300/s", "--reconnect-every", "1s", "--duration", "3s", "--publish-batch", "10"],
        );
        assert!(u(&c, "recovery.recovered") > 0, "{c:#}");
        assert!(u(&c, what) > 0, "{what} not counted: {c:#}");
        let other = if what == "deliveries.gaps" { "deliveries.duplicates" } else { "deliveries.gaps" };
        assert_eq!(u(&c, other), 0, "{c:#}");
    }
}

// ----- against tetherd's gateway -----

/// tetherd with `--gateway CONFIG` (a Centrifugo v6 config), or None when the binary has no gateway.
fn tetherd_gateway(name: &str) -> Option<common::Server> {
    let Some(bin) = tetherd_bin() else {
        eprintln!("SKIPPED: no tetherd binary (set TETHERD_BIN or build tetherd first)");
        return None;
    };
    let help = Command::new(&bin).arg("--help").output().expect("tetherd --help");
    if !String::from_utf8_lossy(&help.stdout).contains("--gateway") {
        eprintln!("SKIPPED: {} has no --gateway", bin.display());
        return None;
    }
    let dir = scratch(name);
    let config = dir.join("centrifugo.json");
    let text = serde_json::json!({
        "client": {"token": {"hmac_secret_key": "s"}, "ping_interval": "2s", "pong_timeout": "1s"},
        "http_api": {"key": "k"},
        "channel": {"namespaces": [{
            "name": "bench",
            "history_size": 1000,
            "history_ttl": "300s",
            "force_recovery": true,
            "allow_subscribe_for_client": true,
            "allow_publish_for_client": true
        }]}
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let mut cmd = Command::new(bin);
    // Warnings only: every close is an INFO line.
    cmd.env("RUST_LOG", "warn").args(["--listen", "127.0.0.1:0", "--gateway"]).arg(&config);
    Some(start_server(cmd, "tetherd listening on"))
}

#[test]
fn tetherd_gateway_delivers_exactly_once() {
    let Some(server) = tetherd_gateway("cf-tetherd") else { return };
    let url = format!("ws://127.0.0.1:{}", server.port);
    let (c, r) = load("cf-tetherd-api", &url, &["--publish-rate", "200/s", "--duration", "4s"]);
    assert_exact(&c, &r);
    no_reconnects(&c, &r);
    // ping_interval 2s over a 4 s hold.
    assert!(u(&c, "server_pings") >= CONNECTIONS, "{c:#}");
    let (c, r) =
        load("cf-tetherd-batch", &url, &["--publish-rate", "400/s", "--publish-batch", "5", "--duration", "2s"]);
    assert_exact(&c, &r);
    no_reconnects(&c, &r);
    let (c, r) =
        load("cf-tetherd-client", &url, &["--publish-via", "client", "--publish-rate", "200/s", "--duration", "3s"]);
    assert_exact(&c, &r);
    no_reconnects(&c, &r);
}

#[test]
fn tetherd_gateway_recovers_every_offset_across_reconnects() {
    let Some(server) = tetherd_gateway("cf-tetherd-cycle") else { return };
    let url = format!("ws://127.0.0.1:{}", server.port);
    let (c, r) =
        load("cf-tetherd-cycle", &url, &["--publish-rate", "200/s", "--reconnect-every", "2s", "--duration", "8s"]);
    assert_exact(&c, &r);
    recovered(&c);
}

/// One channel with more subscribers per shard than the engine delivers in one chunk (2,048): each
/// publication goes out over several loop iterations, while publications keep arriving and clients keep
/// leaving and recovering. Every subscriber must still get every offset exactly once, in order.
#[test]
fn tetherd_gateway_chunked_fan_out_keeps_order_and_recovery_exact() {
    let Some(server) = tetherd_gateway("cf-tetherd-big") else { return };
    let url = format!("ws://127.0.0.1:{}", server.port);
    let connections = 6000u64;
    let shape = ["--connections", "6000", "--rate", "6000/s", "--channels", "1", "--subscriptions-per-connection", "1"];
    let extra = ["--publish-rate", "20/s", "--publish-concurrency", "4", "--reconnect-every", "3s", "--duration", "6s"];
    let (c, r) = load_shaped("cf-tetherd-big", &url, &shape, &extra);
    assert_eq!(u(&r, "connections.established"), connections, "{r:#}");
    assert_eq!(u(&c, "subscribed_at_end"), connections, "{c:#}");
    let ok = u(&c, "publications.ok");
    assert!(ok > 0, "nothing published: {c:#}");
    assert_eq!(ok, u(&c, "publications.attempted"), "{c:#}");
    assert_eq!(u(&c, "deliveries.expected"), ok * connections, "{c:#}");
    assert_eq!(u(&c, "deliveries.total"), ok * connections, "{c:#}");
    assert_eq!(u(&c, "deliveries.gaps"), 0, "{c:#}");
    assert_eq!(u(&c, "deliveries.duplicates"), 0, "{c:#}");
    assert_eq!(u(&c, "deliveries.unexpected"), 0, "{c:#}");
    assert_eq!(u(&c, "recovery.not_recovered"), 0, "{c:#}");
    recovered(&c);
}
