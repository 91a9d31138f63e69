//! The gateway's counters, registered beside the engine's in `/metrics` (prefix `tether_gateway_`).
//!
//! Per-message counters are relaxed atomics; what changes only at a close or an API call (disconnects by
//! code, API calls by method and status) sits behind a mutex. Gauges (connections by state, channels,
//! subscriptions, history size) are read from the broker and registry at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::protocol::ErrorCode;
use super::Gateway;

type Labels = Vec<(&'static str, String)>;

/// Client commands counted by method.
const COMMANDS: [&str; 9] =
    ["subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "rpc", "refresh", "sub_refresh"];

#[derive(Default)]
pub struct GatewayMetrics {
    connects: AtomicU64,
    disconnects_connected: AtomicU64,
    publications_api: AtomicU64,
    publications_client: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    pings: AtomicU64,
    origin_refused: AtomicU64,
    commands: [AtomicU64; COMMANDS.len()],
    /// Reply errors by code 100..=113.
    errors: [AtomicU64; 14],
    closes: Mutex<BTreeMap<u16, u64>>,
    api: Mutex<BTreeMap<(String, u16), u64>>,
}

impl GatewayMetrics {
    pub fn connected(&self) {
        self.connects.fetch_add(1, Relaxed);
    }

    pub fn disconnected(&self) {
        self.disconnects_connected.fetch_add(1, Relaxed);
    }

    pub fn publication(&self, api: bool) {
        let c = if api { &self.publications_api } else { &self.publications_client };
        c.fetch_add(1, Relaxed);
    }

    pub fn recovery(&self, recovered: bool) {
        let c = if recovered { &self.recovered } else { &self.not_recovered };
        c.fetch_add(1, Relaxed);
    }

    pub fn ping(&self) {
        self.pings.fetch_add(1, Relaxed);
    }

    pub fn origin_refused(&self) {
        self.origin_refused.fetch_add(1, Relaxed);
    }

    pub fn command(&self, method: &str) {
        if let Some(i) = COMMANDS.iter().position(|m| *m == method) {
            self.commands[i].fetch_add(1, Relaxed);
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(c) = code.0.checked_sub(100).and_then(|i| self.errors.get(i as usize)) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn disconnect(&self, code: u16) {
        *self.closes.lock().entry(code).or_default() += 1;
    }

    pub fn api_call(&self, method: &str, status: u16) {
        *self.api.lock().entry((method.to_string(), status)).or_default() += 1;
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(value as i64);
    registry.register(name, help, g);
}

fn family(registry: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Counter>::default();
    for (labels, n) in rows {
        f.get_or_create(&labels).inc_by(n);
    }
    registry.register(name, help, f);
}

/// Registers every gateway metric (a snapshot) into `r`.
pub fn register(gw: &Gateway, r: &mut Registry) {
    let m = &gw.metrics;
    let r = r.sub_registry_with_prefix("gateway");
    let (clients, users, anonymous) = gw.registry.counts_detail();
    let (channels, subscriptions, entries, streams) = gw.broker.totals();
    let users_state = Family::<Labels, Gauge>::default();
    users_state.get_or_create(&vec![("state", "authenticated".into())]).set((clients - anonymous) as i64);
    users_state.get_or_create(&vec![("state", "anonymous".into())]).set(anonymous as i64);
    r.register("connections", "Connected clients (past connect), by user state", users_state);
    gauge(r, "users", "Distinct authenticated users connected", users as u64);
    gauge(r, "channels", "Channels with at least one subscriber", channels as u64);
    gauge(r, "subscriptions", "Client subscriptions to channels", subscriptions);
    gauge(r, "history_publications", "Publications held in history streams", entries);
    gauge(r, "history_streams", "Channels with a history stream", streams as u64);
    counter(r, "connects", "Successful connect commands", m.connects.load(Relaxed));
    counter(r, "disconnects", "Connected clients that went away", m.disconnects_connected.load(Relaxed));
    family(
        r,
        "publications",
        "Publications accepted, by source",
        [
            (vec![("source", "api".to_string())], m.publications_api.load(Relaxed)),
            (vec![("source", "client".to_string())], m.publications_client.load(Relaxed)),
        ],
    );
    family(
        r,
        "recoveries",
        "Recovering subscribes, by outcome",
        [
            (vec![("outcome", "recovered".to_string())], m.recovered.load(Relaxed)),
            (vec![("outcome", "not_recovered".to_string())], m.not_recovered.load(Relaxed)),
        ],
    );
    counter(r, "pings", "Protocol pings ({}) sent", m.pings.load(Relaxed));
    counter(r, "origin_refused", "Upgrades refused with 403 by client.allowed_origins", m.origin_refused.load(Relaxed));
    family(
        r,
        "commands",
        "Client commands, by method",
        COMMANDS.iter().zip(&m.commands).map(|(name, c)| (vec![("method", name.to_string())], c.load(Relaxed))),
    );
    family(
        r,
        "errors",
        "Error replies to client commands, by code",
        m.errors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load(Relaxed) > 0)
            .map(|(i, c)| (vec![("code", (100 + i).to_string())], c.load(Relaxed))),
    );
    family(
        r,
        "closes",
        "Client connections closed, by close code",
        m.closes.lock().iter().map(|(code, n)| (vec![("code", code.to_string())], *n)).collect::<Vec<_>>(),
    );
    family(
        r,
        "api_calls",
        "Server API calls, by method and HTTP status",
        m.api
            .lock()
            .iter()
            .map(|((method, status), n)| (vec![("method", method.clone()), ("status", status.to_string())], *n))
            .collect::<Vec<_>>(),
    );
    // The deliveries themselves are the engine's `tether_deliveries_total` (each queued push to a subscriber).
}
