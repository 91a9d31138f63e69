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
use super::tenants::Tenants;
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
    rejections: [AtomicU64; REJECTIONS.len()],
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

/// What a limit refused, for `tether_gateway_rejections_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `client.allowed_origins`: HTTP 403.
    Origin,
    /// `client.connection_rate_limit`: HTTP 503.
    ConnectionRate,
    /// `client.connection_limit`: close 3504.
    ConnectionLimit,
    /// `client.user_connection_limit`: close 3504.
    UserConnectionLimit,
    /// `client.channel_limit`: error 106.
    ChannelLimit,
    /// `client.command_rate_limit`: error 111.
    CommandRate,
    /// `client.command_rate_limit` kept exceeded: close 3013.
    CommandRateClose,
    /// `client.publication_rate_limit`: error 111 to a publish command.
    PublicationRate,
    /// `websocket.message_size_limit`: close 1009 (the tenant's own limit, below the engine's).
    MessageSize,
    /// The embedder's [`Authorizer`](super::authorizer::Authorizer) refused the upgrade.
    Authorizer,
}

const REJECTIONS: [(Rejection, &str); 10] = [
    (Rejection::Origin, "origin"),
    (Rejection::ConnectionRate, "connection_rate"),
    (Rejection::ConnectionLimit, "connection_limit"),
    (Rejection::UserConnectionLimit, "user_connection_limit"),
    (Rejection::ChannelLimit, "channel_limit"),
    (Rejection::CommandRate, "command_rate"),
    (Rejection::CommandRateClose, "command_rate_close"),
    (Rejection::PublicationRate, "publication_rate"),
    (Rejection::MessageSize, "message_size"),
    (Rejection::Authorizer, "authorizer"),
];

impl GatewayMetrics {
    pub fn reject(&self, why: Rejection) {
        self.rejections[why as usize].fetch_add(1, Relaxed);
    }
}

/// A gateway's gauges that walk its tables under their stripe locks: read once per scrape, not once per
/// metric that shows them.
struct Counts {
    /// Connected clients, distinct authenticated users, anonymous clients.
    clients: usize,
    users: usize,
    anonymous: usize,
    /// Channels with subscribers and subscriptions (the node's, from its Redis thread with the Redis
    /// engine), publications and streams in history (0 with Redis: history lives there).
    channels: usize,
    subscriptions: u64,
    history_publications: u64,
    history_streams: usize,
}

impl Counts {
    fn of(gw: &Gateway) -> Counts {
        let (clients, users, anonymous) = gw.registry.counts_detail();
        let (channels, subscriptions, history_publications, history_streams) = match &gw.redis {
            Some(link) => {
                let (channels, subscriptions) = link.totals();
                (channels, subscriptions, 0, 0)
            }
            None => gw.broker.totals(),
        };
        Counts { clients, users, anonymous, channels, subscriptions, history_publications, history_streams }
    }
}

/// Rows of one metric over every gateway. With tenants, each row's labels get `tenant="NAME"` (`tenant=""`
/// for the `--gateway` one, which Prometheus reads as no label); without, a metric with no labels of its
/// own is a plain gauge or counter.
struct Rows<'t> {
    gateways: &'t [(Option<&'t str>, &'t Gateway, Counts)],
    labelled: bool,
}

impl<'t> Rows<'t> {
    fn collect(&self, rows: impl Fn(&Gateway, &Counts) -> Vec<(Labels, u64)>) -> Vec<(Labels, u64)> {
        let mut out = Vec::new();
        for (tenant, gw, counts) in self.gateways {
            for (mut labels, n) in rows(gw, counts) {
                if self.labelled {
                    labels.insert(0, ("tenant", tenant.unwrap_or("").to_string()));
                }
                out.push((labels, n));
            }
        }
        out
    }

    fn gauge(&self, r: &mut Registry, name: &str, help: &str, rows: impl Fn(&Gateway, &Counts) -> Vec<(Labels, u64)>) {
        let rows = self.collect(rows);
        if let [(labels, n)] = rows.as_slice() {
            if labels.is_empty() {
                let g = Gauge::<i64>::default();
                g.set(*n as i64);
                return r.register(name, help, g);
            }
        }
        let f = Family::<Labels, Gauge>::default();
        for (labels, n) in rows {
            f.get_or_create(&labels).set(n as i64);
        }
        r.register(name, help, f);
    }

    fn counter(
        &self,
        r: &mut Registry,
        name: &str,
        help: &str,
        rows: impl Fn(&Gateway, &Counts) -> Vec<(Labels, u64)>,
    ) {
        let rows = self.collect(rows);
        if let [(labels, n)] = rows.as_slice() {
            if labels.is_empty() {
                let c = Counter::<u64>::default();
                c.inc_by(*n);
                return r.register(name, help, c);
            }
        }
        let f = Family::<Labels, Counter>::default();
        for (labels, n) in rows {
            f.get_or_create(&labels).inc_by(n);
        }
        r.register(name, help, f);
    }
}

fn one(n: impl TryInto<u64>) -> Vec<(Labels, u64)> {
    vec![(Vec::new(), n.try_into().unwrap_or(0))]
}

/// Registers every gateway's metrics (a snapshot) into `r`; a tenant's carry the label `tenant`.
pub fn register(tenants: &Tenants, r: &mut Registry) {
    let list: Vec<(Option<&str>, &Gateway, Counts)> =
        tenants.all().map(|g| (g.tenant.as_deref(), &**g, Counts::of(g))).collect();
    let rows = Rows { gateways: &list, labelled: !tenants.named.is_empty() };
    let r = r.sub_registry_with_prefix("gateway");
    rows.gauge(r, "connections", "Connected clients (past connect), by user state", |_, c| {
        vec![
            (vec![("state", "authenticated".into())], (c.clients - c.anonymous) as u64),
            (vec![("state", "anonymous".into())], c.anonymous as u64),
        ]
    });
    rows.gauge(r, "users", "Distinct authenticated users connected", |_, c| one(c.users));
    rows.gauge(r, "channels", "Channels with at least one subscriber", |_, c| one(c.channels));
    rows.gauge(r, "subscriptions", "Client subscriptions to channels", |_, c| one(c.subscriptions));
    rows.gauge(r, "history_publications", "Publications held in history streams", |_, c| one(c.history_publications));
    rows.gauge(r, "history_streams", "Channels with a history stream", |_, c| one(c.history_streams));
    rows.gauge(r, "table_bytes", "Bytes held by the gateway's hash tables (bucket arrays), by table", |gw, _| {
        let (users, clients) = gw.registry.table_bytes();
        vec![
            (vec![("table", "users".into())], users as u64),
            (vec![("table", "clients".into())], clients as u64),
            (vec![("table", "channels".into())], gw.broker.table_bytes() as u64),
        ]
    });
    rows.counter(r, "connects", "Successful connect commands", |gw, _| one(gw.metrics.connects.load(Relaxed)));
    rows.counter(r, "disconnects", "Connected clients that went away", |gw, _| {
        one(gw.metrics.disconnects_connected.load(Relaxed))
    });
    rows.counter(r, "publications", "Publications accepted, by source", |gw, _| {
        let m = &gw.metrics;
        vec![
            (vec![("source", "api".to_string())], m.publications_api.load(Relaxed)),
            (vec![("source", "client".to_string())], m.publications_client.load(Relaxed)),
        ]
    });
    rows.counter(
        r,
        "deliveries",
        "Publication pushes queued to subscribers (per tenant; the engine's tether_deliveries_total counts all)",
        |gw, _| one(gw.broker.deliveries()),
    );
    rows.counter(r, "recoveries", "Recovering subscribes, by outcome", |gw, _| {
        let m = &gw.metrics;
        vec![
            (vec![("outcome", "recovered".to_string())], m.recovered.load(Relaxed)),
            (vec![("outcome", "not_recovered".to_string())], m.not_recovered.load(Relaxed)),
        ]
    });
    rows.counter(r, "pings", "Protocol pings ({}) sent", |gw, _| one(gw.metrics.pings.load(Relaxed)));
    rows.counter(r, "origin_refused", "Upgrades refused with 403 by client.allowed_origins", |gw, _| {
        one(gw.metrics.origin_refused.load(Relaxed))
    });
    rows.counter(r, "rejections", "What the limits refused, by reason", |gw, _| {
        REJECTIONS
            .iter()
            .map(|(why, name)| (vec![("reason", name.to_string())], gw.metrics.rejections[*why as usize].load(Relaxed)))
            .collect()
    });
    rows.counter(r, "commands", "Client commands, by method", |gw, _| {
        COMMANDS
            .iter()
            .zip(&gw.metrics.commands)
            .map(|(name, c)| (vec![("method", name.to_string())], c.load(Relaxed)))
            .collect()
    });
    rows.counter(r, "errors", "Error replies to client commands, by code", |gw, _| {
        gw.metrics
            .errors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load(Relaxed) > 0)
            .map(|(i, c)| (vec![("code", (100 + i).to_string())], c.load(Relaxed)))
            .collect()
    });
    rows.counter(r, "closes", "Client connections closed, by close code", |gw, _| {
        gw.metrics.closes.lock().iter().map(|(code, n)| (vec![("code", code.to_string())], *n)).collect()
    });
    rows.counter(r, "api_calls", "Server API calls, by method and HTTP status", |gw, _| {
        gw.metrics
            .api
            .lock()
            .iter()
            .map(|((method, status), n)| (vec![("method", method.clone()), ("status", status.to_string())], *n))
            .collect()
    });
}
