//! The client protocol on a shard: [`GatewayHandler`] takes each command of a connection in order, answers
//! it, keeps the session's deadlines on the shard's wheel, and cleans up (presence, leave, registry) when
//! the connection goes. Work for a connection sent by the API from another thread arrives as a
//! [`Notice`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::proto::CloseInfo;
use tether::{
    Accept, Closed, ConnId, Ctx, Handler, HttpError, HttpRequest, HttpResponse, Message, Upgrade, UpgradeRequest,
};
use tracing::debug;

use super::admission::{admit, Admission};
use super::auth::TokenError;
use super::authorizer::SubscribeDecision;
use super::broker::{
    self, client_text, join_leave_topic, ClientId, Presence, Publish, Subscribe, Subscribed, Unsubscribe,
};
use super::config::NamespaceOptions;
use super::metrics::Rejection;
use super::protocol::{self, lines, parse_command, Disconnect, ErrorCode, Obj, Replies, Request};
use super::redis_engine::{self as redis, Done, HistoryOpts, Job, ReplyTo, SubAnswer, SubscribeJob};
use super::session::{sub_flag, Due, Ms, PendingConnect, Phase, Rate, Session, Sub};
use super::tenants::{TenantTable, Tenants};
use super::{Gateway, Notice};

/// The path clients connect to (Centrifugo's default `websocket.handler_prefix`).
pub const WEBSOCKET_PATH: &str = "/connection/websocket";
/// Sweep expired history streams this often (shard 0 only).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The gateway's [`Handler`]: one per shard, reading the node's gateways (the `--gateway` one and the
/// tenants) from the [`TenantTable`].
pub struct GatewayHandler {
    table: Arc<TenantTable>,
    /// The table's gateways as of `generation`.
    tenants: Arc<Tenants>,
    generation: u64,
    next_sweep: Option<Instant>,
}

/// What the engine keeps in a connection's slot: the gateway it came in through (set at the upgrade) and
/// its session.
#[derive(Default)]
pub struct Conn {
    gw: Option<Arc<Gateway>>,
    session: Session,
}

type H = GatewayHandler;

impl GatewayHandler {
    pub fn new(table: Arc<TenantTable>) -> Self {
        let tenants = table.snapshot();
        let generation = table.generation();
        GatewayHandler { table, tenants, generation, next_sweep: None }
    }

    /// The gateways in force (refreshed after a reload).
    fn tenants(&mut self) -> &Arc<Tenants> {
        let generation = self.table.generation();
        if generation != self.generation {
            self.tenants = self.table.snapshot();
            self.generation = generation;
        }
        &self.tenants
    }

    /// Takes the gateway and session out of the slot for the length of a callback (the callback needs `ctx`
    /// too). Moving the `Arc` out and back costs no reference count traffic. A connection whose gateway a
    /// reload replaced moves to the new one here (same state, new config).
    fn take(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) -> Option<(Arc<Gateway>, Session)> {
        let c = ctx.state(conn)?;
        let mut gw = c.gw.take()?;
        let session = std::mem::take(&mut c.session);
        if gw.superseded() {
            let tenants = self.tenants();
            let current = match gw.tenant.as_deref() {
                None => tenants.default.as_ref(),
                Some(name) => tenants.named.get(name),
            };
            if let Some(new) = current.filter(|n| Arc::ptr_eq(&n.state, &gw.state)) {
                gw = new.clone();
            }
        }
        Some((gw, session))
    }

    fn put(ctx: &mut Ctx<'_, Self>, conn: ConnId, gw: Arc<Gateway>, session: Session) {
        if let Some(c) = ctx.state(conn) {
            c.gw = Some(gw);
            c.session = session;
        }
    }

    /// The connection belongs to the admission's gateway from now on (after `on_upgrade`, or `on_adopt` for
    /// a socket the embedder upgraded).
    fn admitted(ctx: &mut Ctx<'_, Self>, conn: ConnId, admission: Admission) {
        if let Some(c) = ctx.state(conn) {
            c.gw = Some(admission.gw);
            c.session.set_preauth(admission.preauth);
        }
    }

    fn send(ctx: &mut Ctx<'_, Self>, conn: ConnId, text: &str) {
        let _ = ctx.send(conn, Message::Text(text));
    }
}

/// The embedder's subscribe decision, if it has an opinion: `Some(true)` allow, `Some(false)` deny.
fn gw_decides(gw: &Gateway, user: &str, channel: &str) -> Option<bool> {
    match gw.authorizer.as_ref()?.subscribe(user, channel) {
        SubscribeDecision::Default => None,
        SubscribeDecision::Allow => Some(true),
        SubscribeDecision::Deny => Some(false),
    }
}

/// How a command ended when it did not simply answer: the connection must be closed.
type Outcome = Result<(), Disconnect>;

/// What a subscription is made of, wherever it comes from (a client subscribe, a token's `channels`, the API).
struct SubArgs<'a> {
    channel: &'a str,
    ns: &'a NamespaceOptions,
    server_side: bool,
    recover: Option<(&'a str, u64)>,
    want_recoverable: bool,
    want_positioned: bool,
    want_join_leave: bool,
    chan_info: Option<Arc<str>>,
    data: Option<Arc<str>>,
    expires_at: Option<(Instant, u64)>,
}

/// A token for a subscription the Redis engine is taking (never 0).
fn next_token() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    loop {
        let t = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if t != 0 {
            return t;
        }
    }
}

/// A namespace's history options, as the Redis engine needs them.
pub fn history_opts(gw: &Gateway, ns: &NamespaceOptions) -> HistoryOpts {
    let meta_ttl = if ns.history_meta_ttl.is_zero() { gw.config.history_meta_ttl } else { ns.history_meta_ttl };
    HistoryOpts { size: ns.history_size, ttl: ns.history_ttl, meta_ttl }
}

/// The client protocol, for the gateway a connection came in through.
impl Gateway {
    /// The shard-clock deadline of an expiry given in unix seconds (`None`: never).
    fn expiry_deadline(&self, now: Instant, expire_unix: Option<u64>, now_unix: u64) -> Ms {
        // Total for any input: an expiry beyond what `Instant` can hold is "never" in practice.
        expire_unix
            .map(|t| Duration::from_secs(t.saturating_sub(now_unix).min(super::auth::MAX_EXPIRY_UNIX)))
            .and_then(|d| now.checked_add(d))
            .map_or(Ms::NONE, |at| self.timing.ms(at))
    }

    fn arm(&self, ctx: &mut Ctx<'_, H>, conn: ConnId, session: &Session) {
        match session.next_deadline(&self.timing) {
            Some(at) => ctx.set_timer(conn, at),
            None => ctx.cancel_timer(conn),
        };
    }

    fn close(&self, ctx: &mut Ctx<'_, H>, conn: ConnId, d: Disconnect, detail: &str) {
        debug!(conn = %conn, code = d.code, detail, "gateway disconnect");
        ctx.close(conn, d.code, d.reason);
    }

    fn command(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        id: u32,
        request: Request,
        out: &mut Replies,
    ) -> Outcome {
        match s.phase {
            Phase::Fresh if !matches!(request, Request::Connect(_)) => return Err(Disconnect::BAD_REQUEST),
            Phase::Unusable => return Err(Disconnect::BAD_REQUEST),
            _ => {}
        }
        s.alive();
        let rate = self.config.command_rate_limit;
        if rate > 0 && !matches!(request, Request::Pong) {
            match s.take_command(self.timing.ms(ctx.now()), rate as f32, self.config.command_burst() as f32) {
                Rate::Ok => {}
                Rate::Refused => {
                    self.metrics.reject(Rejection::CommandRate);
                    self.error(id, ErrorCode::TOO_MANY_REQUESTS, out);
                    let max = self.config.command_pause_cap();
                    if !max.is_zero() {
                        // Read nothing more until a command would be taken again (see the option).
                        let wait = s.command_wait(rate as f32).min(max);
                        ctx.pause_receive(conn, ctx.now() + wait);
                    }
                    return Ok(());
                }
                Rate::Exhausted => {
                    self.metrics.reject(Rejection::CommandRateClose);
                    return Err(Disconnect::TOO_MANY_REQUESTS);
                }
            }
        }
        let m = &self.metrics;
        match request {
            Request::Pong => Ok(()),
            Request::Connect(r) => self.connect(ctx, conn, s, id, r, out),
            Request::Subscribe(r) => {
                m.command("subscribe");
                self.subscribe(ctx, conn, s, id, r, out)
            }
            Request::Unsubscribe(r) => {
                m.command("unsubscribe");
                self.end_sub(ctx, Some(conn), s, &r.channel);
                out.result(id, "unsubscribe", "{}");
                Ok(())
            }
            Request::Publish(r) => {
                m.command("publish");
                self.publish(ctx, conn, s, id, r, out);
                Ok(())
            }
            Request::Presence(r) => {
                m.command("presence");
                self.presence(ctx, conn, s, id, &r.channel, false, out);
                Ok(())
            }
            Request::PresenceStats(r) => {
                m.command("presence_stats");
                self.presence(ctx, conn, s, id, &r.channel, true, out);
                Ok(())
            }
            Request::History(r) => {
                m.command("history");
                self.history(ctx, conn, s, id, r, out);
                Ok(())
            }
            Request::Send(_) => Ok(()),
            Request::Rpc(_) => {
                m.command("rpc");
                self.error(id, ErrorCode::METHOD_NOT_FOUND, out);
                Ok(())
            }
            Request::Refresh(r) => {
                m.command("refresh");
                self.refresh(ctx, s, id, &r.token, out)
            }
            Request::SubRefresh(r) => {
                m.command("sub_refresh");
                self.sub_refresh(ctx, s, id, &r.channel, &r.token, out)
            }
        }
    }

    fn error(&self, id: u32, code: ErrorCode, out: &mut Replies) {
        self.metrics.error(code);
        out.error(id, code);
    }

    fn connect(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        id: u32,
        r: protocol::ConnectRequest,
        out: &mut Replies,
    ) -> Outcome {
        let cfg = &self.config;
        if s.phase == Phase::Connected {
            return Err(Disconnect::BAD_REQUEST);
        }
        let now_unix = Gateway::now_unix();
        let claims = if let Some(claims) = s.take_preauth() {
            claims
        } else if r.token.is_empty() {
            if !(cfg.allow_anonymous_connect_without_token || cfg.insecure) {
                return Err(Disconnect::BAD_REQUEST);
            }
            Default::default()
        } else {
            match self.verifier.connect(&r.token, now_unix) {
                Ok(c) => c,
                Err(TokenError::Expired) => {
                    s.phase = Phase::Unusable;
                    self.error(id, ErrorCode::TOKEN_EXPIRED, out);
                    return Ok(());
                }
                Err(TokenError::Invalid(e)) => {
                    debug!(conn = %conn, error = %e, "invalid connection token");
                    return Err(Disconnect::INVALID_TOKEN);
                }
            }
        };
        let expire = claims.expiry();
        if expire.is_some_and(|t| t <= now_unix) {
            s.phase = Phase::Unusable;
            self.error(id, ErrorCode::TOKEN_EXPIRED, out);
            return Ok(());
        }
        if self.retired() {
            return Err(Disconnect::TENANT_REMOVED);
        }
        let user: Arc<str> = claims.user.as_str().into();
        let client: ClientId = *uuid::Uuid::new_v4().as_bytes();
        if !self.admit_client() {
            self.metrics.reject(Rejection::ConnectionLimit);
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        if !self.registry.add(&user, client, conn, cfg.user_connection_limit) {
            self.client_gone();
            self.metrics.reject(Rejection::UserConnectionLimit);
            return Err(Disconnect::CONNECTION_LIMIT);
        }
        let now = ctx.now();
        s.phase = Phase::Connected;
        s.client = client;
        s.user = Some(user);
        s.conn_info = claims.info.as_ref().map(|i| Arc::from(i.get()));
        s.expires_at = self.expiry_deadline(now, expire, now_unix);
        // The first ping at a random point of the second half of the first interval (as Centrifugo), so
        // that a mass reconnect does not ping in step for the rest of the connections' lives. A zero
        // interval (`client.ping_interval: -1`) turns the protocol's pings off.
        let interval = cfg.ping_interval;
        if !interval.is_zero() {
            let jitter = Duration::from_nanos(fastrand::u64(0..=(interval.as_nanos() / 2) as u64));
            s.next_ping = self.timing.ms(now + interval / 2 + jitter);
        }
        self.metrics.connected();

        let mut subs = Obj::new();
        let mut any_sub = false;
        let mut later = Vec::new();
        for channel in &claims.channels {
            let Some(ns) = cfg.namespace_for(channel) else { continue };
            let wanted = r.subs.get(channel.as_str());
            let args = SubArgs {
                channel,
                ns,
                server_side: true,
                recover: wanted.filter(|w| w.recover).map(|w| (w.epoch.as_str(), w.offset)),
                want_recoverable: false,
                want_positioned: false,
                want_join_leave: false,
                chan_info: None,
                data: None,
                expires_at: None,
            };
            match self.take_sub(ctx, conn, s, args, ReplyTo::ConnectSub { conn }) {
                Ok(Some(result)) => {
                    subs = subs.raw(&json_key(channel), &result);
                    any_sub = true;
                }
                // The Redis engine answers later: the connect reply waits for it.
                Ok(None) => later.push((Arc::from(channel.as_str()), None)),
                Err(_) => {}
            }
        }
        let mut result = Obj::new().str("client", &client_text(&client)).str("version", env!("CARGO_PKG_VERSION"));
        if let Some(t) = expire {
            result = result.bool_if("expires", true).num("ttl", t - now_unix);
        }
        if !interval.is_zero() {
            // The SDKs expect a ping at most `ping` seconds apart and answer with a pong when `pong` is set.
            result = result.num("ping", interval.as_secs().max(1)).bool_if("pong", !cfg.pong_timeout.is_zero());
        }
        if !later.is_empty() {
            let mut head = result.finish();
            head.pop();
            let waiting = s.wait();
            waiting.connect = Some(PendingConnect { id, head, subs: later });
            return Ok(());
        }
        if any_sub {
            result = result.raw("subs", &subs.finish());
        }
        out.result(id, "connect", &result.finish());
        Ok(())
    }

    fn subscribe(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        id: u32,
        r: protocol::SubscribeRequest,
        out: &mut Replies,
    ) -> Outcome {
        let cfg = &self.config;
        let channel = r.channel.as_str();
        if !self.valid_channel(channel) || r.kind != 0 {
            self.error(id, ErrorCode::BAD_REQUEST, out);
            return Ok(());
        }
        let Some(ns) = cfg.namespace_for(channel) else {
            self.error(id, ErrorCode::UNKNOWN_CHANNEL, out);
            return Ok(());
        };
        let user = s.user().to_string();
        let anonymous = user.is_empty();
        let mut chan_info = None;
        let mut data = None;
        let mut expires_at = None;
        if !r.token.is_empty() {
            match self.subscription_verifier().subscribe(&r.token, Gateway::now_unix()) {
                Ok(c) => {
                    if c.channel != channel
                        || c.user != user
                        || c.client.as_deref().is_some_and(|cl| cl != client_text(&s.client))
                    {
                        return Err(Disconnect::INVALID_TOKEN);
                    }
                    chan_info = c.info.as_ref().map(|i| Arc::from(i.get()));
                    data = c.data.as_ref().map(|d| Arc::from(d.get()));
                    if let Some(t) = c.expiry() {
                        let ttl = t.saturating_sub(Gateway::now_unix()).min(super::auth::MAX_EXPIRY_UNIX);
                        expires_at = ctx.now().checked_add(Duration::from_secs(ttl)).map(|at| (at, ttl));
                    }
                }
                Err(TokenError::Expired) => {
                    self.error(id, ErrorCode::TOKEN_EXPIRED, out);
                    return Ok(());
                }
                Err(TokenError::Invalid(e)) => {
                    debug!(conn = %conn, error = %e, "invalid subscription token");
                    self.error(id, ErrorCode::PERMISSION_DENIED, out);
                    return Ok(());
                }
            }
        } else if let Some(decision) = gw_decides(self, &user, channel) {
            if !decision {
                self.error(id, ErrorCode::PERMISSION_DENIED, out);
                return Ok(());
            }
        } else {
            let user_limited = ns.allow_user_limited_channels
                && channel.rsplit_once('#').is_some_and(|(_, users)| users.split(',').any(|u| u == user));
            let allowed = user_limited
                || (!channel.starts_with('$')
                    && ((ns.allow_subscribe_for_client && (!anonymous || ns.allow_subscribe_for_anonymous))
                        || cfg.insecure));
            if !allowed {
                self.error(id, ErrorCode::PERMISSION_DENIED, out);
                return Ok(());
            }
        }
        // The subscription being made counts for the `_for_subscriber` permissions (as Centrifugo's OnSubscribe).
        let history_allowed = self.history_permission(ns, true, anonymous);
        let presence_allowed = self.presence_permission(ns, true, anonymous);
        let args = SubArgs {
            channel,
            ns,
            server_side: false,
            recover: r.recover.then_some((r.epoch.as_str(), r.offset)),
            want_recoverable: r.recoverable && (ns.allow_recovery || history_allowed),
            want_positioned: r.positioned && (ns.allow_positioning || history_allowed),
            want_join_leave: r.join_leave && presence_allowed,
            chan_info,
            data,
            expires_at,
        };
        match self.take_sub(ctx, conn, s, args, ReplyTo::Command { conn, id }) {
            Ok(Some(result)) => out.result(id, "subscribe", &result),
            Ok(None) => {}
            Err(code) => self.error(id, code, out),
        }
        Ok(())
    }

    /// Takes a subscription for `s` and builds its result (the `subscribe` reply body or push body); `None`
    /// when the Redis engine takes it and the reply (to `reply`) comes later ([`Gateway::redis_done`]).
    fn take_sub(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        a: SubArgs<'_>,
        reply: ReplyTo,
    ) -> Result<Option<String>, ErrorCode> {
        let cfg = &self.config;
        if s.sub(a.channel).is_some() {
            return Err(ErrorCode::ALREADY_SUBSCRIBED);
        }
        if s.subs.len() >= cfg.channel_limit {
            self.metrics.reject(Rejection::ChannelLimit);
            return Err(ErrorCode::LIMIT_EXCEEDED);
        }
        let ns = a.ns;
        let history = ns.history_enabled();
        let recoverable = history && (ns.force_recovery || a.want_recoverable);
        let positioned = history && (recoverable || ns.force_positioning || a.want_positioned);
        let join_leave = ns.join_leave && (ns.force_push_join_leave || a.want_join_leave);
        let keeps_presence = ns.presence || ns.join_leave;
        let presence = keeps_presence.then(|| Presence {
            user: s.user.clone().unwrap_or_else(|| "".into()),
            conn_info: s.conn_info.clone(),
            chan_info: a.chan_info.clone(),
        });
        let recover = if recoverable { a.recover } else { None };
        let answer = SubAnswer {
            ttl: a.expires_at.map(|e| e.1),
            recoverable,
            positioned,
            recover_offset: a.recover.map(|r| r.1),
            data: a.data.clone(),
        };
        // One copy of the name, shared by the session, the broker and the engine's topic table.
        let channel: Arc<str> = a.channel.into();
        let mut flags = 0;
        if keeps_presence {
            flags |= sub_flag::PRESENCE;
        }
        if join_leave {
            flags |= sub_flag::JOIN_LEAVE;
        }
        if ns.join_leave {
            flags |= sub_flag::EMIT_LEAVE;
        }
        if a.server_side {
            flags |= sub_flag::SERVER_SIDE;
        }
        let expires_at = a.expires_at.map_or(Ms::NONE, |e| self.timing.ms(e.0));
        if let Some(link) = &self.redis {
            let token = next_token();
            let job = SubscribeJob {
                conn,
                channel: channel.clone(),
                history: history.then(|| history_opts(self, ns)),
                recover: recover.map(|(e, o)| (e.to_string(), o)),
                recovery_limit: cfg.recovery_max_publication_limit,
                presence: presence.as_ref().map(|p| (s.client, p.info_json(&s.client))),
                positioned,
                join: presence.as_ref().filter(|_| ns.join_leave).map(|p| p.info_json(&s.client)),
                token,
                reply,
                answer,
            };
            if matches!(job.reply, ReplyTo::Command { .. }) {
                s.wait();
            }
            link.submit(ctx.handle(), Job::Subscribe(Box::new(job)));
            s.subs.push(Sub { channel, flags, expires_at, pending: token });
            return Ok(None);
        }
        let done = self.broker.subscribe(
            ctx.handle(),
            Subscribe {
                conn,
                channel: &channel,
                ns,
                positioned,
                recover,
                recovery_limit: cfg.recovery_max_publication_limit,
                join_leave,
                client: s.client,
                presence,
            },
        )?;
        s.subs.push(Sub { channel, flags, expires_at, pending: 0 });
        Ok(Some(self.sub_result(&answer, &done)))
    }

    /// The `subscribe` reply (or push) body.
    fn sub_result(&self, a: &SubAnswer, done: &Subscribed) -> String {
        let mut result = Obj::new();
        if let Some(ttl) = a.ttl {
            result = result.bool_if("expires", true).num("ttl", ttl);
        }
        result = result.bool_if("recoverable", a.recoverable).bool_if("positioned", a.positioned);
        let mut offset = 0;
        if let Some(p) = &done.position {
            result = result.str("epoch", &p.epoch);
            offset = p.offset;
        }
        if a.recover_offset.is_some() {
            result = result.bool_if("was_recovering", true);
        }
        if let Some(rec) = &done.recovery {
            self.metrics.recovery(rec.recovered);
            if rec.recovered {
                result = result.bool_if("recovered", true);
                // The client's own offset: the SDK advances it over the publications that follow.
                offset = a.recover_offset.unwrap_or(offset);
                if !rec.publications.is_empty() {
                    let mut list = String::from("[");
                    for (i, p) in rec.publications.iter().enumerate() {
                        if i > 0 {
                            list.push(',');
                        }
                        list.push_str(p);
                    }
                    list.push(']');
                    result = result.raw("publications", &list);
                }
            }
        }
        result = result.num_if("offset", offset).raw_opt("data", a.data.as_deref());
        result.finish()
    }

    /// Ends `s`'s subscription to `channel` (if any): topics, presence, leave.
    fn end_sub(&self, ctx: &mut Ctx<'_, H>, conn: Option<ConnId>, s: &mut Session, channel: &str) -> bool {
        let Some(sub) = s.take_sub(channel) else { return false };
        if let Some(link) = &self.redis {
            if let Some(conn) = conn {
                let topic = self.broker.topic_str(channel);
                ctx.unsubscribe(conn, &topic);
                if sub.has(sub_flag::JOIN_LEAVE) {
                    ctx.unsubscribe(conn, &join_leave_topic(&topic));
                }
            }
            let had_presence = sub.has(sub_flag::PRESENCE);
            let leave = (had_presence && sub.has(sub_flag::EMIT_LEAVE)).then(|| {
                let mut info = String::new();
                protocol::client_info(&mut info, s.user(), &client_text(&s.client), s.conn_info.as_deref(), None);
                info
            });
            let job = Job::Unsubscribe {
                shard: ctx.shard(),
                channel: sub.channel.clone(),
                presence: had_presence.then_some(s.client),
                leave,
            };
            link.submit(ctx.handle(), job);
            return true;
        }
        self.broker.unsubscribe(
            ctx.handle(),
            Unsubscribe {
                shard: ctx.shard(),
                conn,
                channel,
                join_leave: sub.has(sub_flag::JOIN_LEAVE),
                client: s.client,
                had_presence: sub.has(sub_flag::PRESENCE),
                emit_leave: sub.has(sub_flag::EMIT_LEAVE),
            },
        );
        true
    }

    fn publish(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        id: u32,
        r: protocol::PublishRequest,
        out: &mut Replies,
    ) {
        let cfg = &self.config;
        let channel = r.channel.as_str();
        if !self.valid_channel(channel) {
            return self.error(id, ErrorCode::BAD_REQUEST, out);
        }
        let Some(ns) = cfg.namespace_for(channel) else { return self.error(id, ErrorCode::UNKNOWN_CHANNEL, out) };
        let Some(data) = r.data else { return self.error(id, ErrorCode::BAD_REQUEST, out) };
        let anonymous = s.user().is_empty();
        let subscribed = s.sub(channel).is_some();
        let allowed = cfg.insecure
            || ((ns.allow_publish_for_client || (ns.allow_publish_for_subscriber && subscribed))
                && (!anonymous || ns.allow_publish_for_anonymous));
        if !allowed {
            return self.error(id, ErrorCode::PERMISSION_DENIED, out);
        }
        if !self.admit_publication(ctx.now()) {
            self.metrics.reject(Rejection::PublicationRate);
            return self.error(id, ErrorCode::TOO_MANY_REQUESTS, out);
        }
        // The publisher's ClientInfo (chan_info is kept in presence only, not per subscription).
        let mut info = String::new();
        protocol::client_info(&mut info, s.user(), &client_text(&s.client), s.conn_info.as_deref(), None);
        if let Some(link) = &self.redis {
            let history = ns.history_enabled().then(|| history_opts(self, ns));
            let publication: Arc<str> = protocol::publication(data.get(), Some(&info), 0, None).into();
            let reply = ReplyTo::Command { conn, id };
            link.submit(ctx.handle(), Job::Publish { channels: vec![(channel.into(), history)], publication, reply });
            s.wait();
            self.metrics.publication(false);
            return;
        }
        let publish = Publish { channel, ns, data: data.get(), info: Some(&info), tags: None, skip_history: false };
        match self.broker.publish(ctx.handle(), publish) {
            Ok(_) => {
                self.metrics.publication(false);
                out.result(id, "publish", "{}");
            }
            Err(code) => self.error(id, code, out),
        }
    }

    fn presence_permission(&self, ns: &NamespaceOptions, subscribed: bool, anonymous: bool) -> bool {
        self.config.insecure
            || ((ns.allow_presence_for_client || (ns.allow_presence_for_subscriber && subscribed))
                && (!anonymous || ns.allow_presence_for_anonymous))
    }

    fn history_permission(&self, ns: &NamespaceOptions, subscribed: bool, anonymous: bool) -> bool {
        self.config.insecure
            || ((ns.allow_history_for_client || (ns.allow_history_for_subscriber && subscribed))
                && (!anonymous || ns.allow_history_for_anonymous))
    }

    /// A channel name as Centrifugo takes it without `channel_regex`: ASCII, not empty, at most
    /// `channel.max_length` bytes; and without NUL or newline (tetherd's framing and topics rely on that).
    fn valid_channel(&self, channel: &str) -> bool {
        !channel.is_empty()
            && channel.len() <= self.config.channel_max_length
            && channel.is_ascii()
            && !channel.contains(['\0', '\n'])
    }

    #[allow(clippy::too_many_arguments)]
    fn presence(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        id: u32,
        channel: &str,
        stats: bool,
        out: &mut Replies,
    ) {
        if !self.valid_channel(channel) {
            return self.error(id, ErrorCode::BAD_REQUEST, out);
        }
        let Some(ns) = self.config.namespace_for(channel) else {
            return self.error(id, ErrorCode::UNKNOWN_CHANNEL, out);
        };
        if !ns.presence {
            return self.error(id, ErrorCode::NOT_AVAILABLE, out);
        }
        if !self.presence_permission(ns, s.sub(channel).is_some(), s.user().is_empty()) {
            return self.error(id, ErrorCode::PERMISSION_DENIED, out);
        }
        if let Some(link) = &self.redis {
            let job = Job::Presence { channel: channel.into(), stats, reply: ReplyTo::Command { conn, id } };
            s.wait();
            return link.submit(ctx.handle(), job);
        }
        if stats {
            out.result(id, "presence_stats", &presence_stats_json(self, channel));
        } else {
            out.result(id, "presence", &presence_json(self, channel));
        }
    }

    fn history(
        &self,
        ctx: &mut Ctx<'_, H>,
        conn: ConnId,
        s: &mut Session,
        id: u32,
        r: protocol::HistoryRequest,
        out: &mut Replies,
    ) {
        let channel = r.channel.as_str();
        if !self.valid_channel(channel) {
            return self.error(id, ErrorCode::BAD_REQUEST, out);
        }
        let Some(ns) = self.config.namespace_for(channel) else {
            return self.error(id, ErrorCode::UNKNOWN_CHANNEL, out);
        };
        if !ns.history_enabled() {
            return self.error(id, ErrorCode::NOT_AVAILABLE, out);
        }
        if !self.history_permission(ns, s.sub(channel).is_some(), s.user().is_empty()) {
            return self.error(id, ErrorCode::PERMISSION_DENIED, out);
        }
        if let Some(link) = &self.redis {
            let since = r.since.as_ref().map(|p| (p.offset, p.epoch.as_str()));
            match history_job(self, channel, ns, r.limit, since, r.reverse, ReplyTo::Command { conn, id }) {
                Ok(job) => {
                    s.wait();
                    link.submit(ctx.handle(), job)
                }
                Err(code) => self.error(id, code, out),
            }
            return;
        }
        match history_json(
            self,
            channel,
            ns,
            r.limit,
            r.since.as_ref().map(|p| (p.offset, p.epoch.as_str())),
            r.reverse,
        ) {
            Ok(body) => out.result(id, "history", &body),
            Err(code) => self.error(id, code, out),
        }
    }

    fn refresh(&self, ctx: &mut Ctx<'_, H>, s: &mut Session, id: u32, token: &str, out: &mut Replies) -> Outcome {
        let now_unix = Gateway::now_unix();
        let claims = match self.verifier.connect(token, now_unix) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Disconnect::EXPIRED),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN),
        };
        if claims.user != s.user() {
            return Err(Disconnect::INVALID_TOKEN);
        }
        let expire = claims.expiry();
        s.expires_at = self.expiry_deadline(ctx.now(), expire, now_unix);
        let mut result = Obj::new().str("client", &client_text(&s.client)).str("version", env!("CARGO_PKG_VERSION"));
        if let Some(t) = expire {
            result = result.bool_if("expires", true).num("ttl", t.saturating_sub(now_unix));
        }
        out.result(id, "refresh", &result.finish());
        Ok(())
    }

    fn sub_refresh(
        &self,
        ctx: &mut Ctx<'_, H>,
        s: &mut Session,
        id: u32,
        channel: &str,
        token: &str,
        out: &mut Replies,
    ) -> Outcome {
        let now_unix = Gateway::now_unix();
        let claims = match self.subscription_verifier().subscribe(token, now_unix) {
            Ok(c) => c,
            Err(TokenError::Expired) => {
                self.error(id, ErrorCode::TOKEN_EXPIRED, out);
                return Ok(());
            }
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN),
        };
        if claims.channel != channel || claims.user != s.user() {
            return Err(Disconnect::INVALID_TOKEN);
        }
        let expire = claims.expiry();
        let deadline = self.expiry_deadline(ctx.now(), expire, now_unix);
        let Some(sub) = s.subs.iter_mut().find(|x| &*x.channel == channel) else {
            self.error(id, ErrorCode::BAD_REQUEST, out);
            return Ok(());
        };
        sub.expires_at = deadline;
        let mut result = Obj::new();
        if let Some(t) = expire {
            result = result.bool_if("expires", true).num("ttl", t.saturating_sub(now_unix));
        }
        out.result(id, "sub_refresh", &result.finish());
        Ok(())
    }

    /// Server-side work sent by the API.
    fn notice(&self, ctx: &mut Ctx<'_, H>, conn: ConnId, s: &mut Session, notice: Notice) -> Option<Disconnect> {
        if s.phase != Phase::Connected {
            return None;
        }
        let mut close = None;
        match notice {
            Notice::Redis(done) => self.redis_done(ctx, conn, s, *done),
            Notice::Subscribe { channel, info, data, .. } => {
                if let Some(ns) = self.config.namespace_for(&channel) {
                    let args = SubArgs {
                        channel: &channel,
                        ns,
                        server_side: true,
                        recover: None,
                        want_recoverable: false,
                        want_positioned: false,
                        want_join_leave: false,
                        chan_info: info,
                        data,
                        expires_at: None,
                    };
                    if let Ok(Some(body)) = self.take_sub(ctx, conn, s, args, ReplyTo::Push { conn }) {
                        H::send(ctx, conn, &protocol::push(&channel, "subscribe", &body));
                    }
                }
            }
            Notice::Unsubscribe { channel, .. } => {
                if self.end_sub(ctx, Some(conn), s, &channel) {
                    let body = r#"{"code":2000,"reason":"server unsubscribe"}"#;
                    H::send(ctx, conn, &protocol::push(&channel, "unsubscribe", body));
                }
            }
            Notice::Refresh { expired, expire_at, .. } => {
                if expired {
                    close = Some(Disconnect::EXPIRED);
                } else {
                    s.expires_at = self.expiry_deadline(ctx.now(), expire_at, Gateway::now_unix());
                }
            }
        }
        self.arm(ctx, conn, s);
        close
    }
}

impl Gateway {
    /// A Redis engine job of this connection finished: reply, or complete the pending subscription (its
    /// topics, its reply, then the publications that came meanwhile, in that order).
    fn redis_done(&self, ctx: &mut Ctx<'_, H>, conn: ConnId, s: &mut Session, done: Done) {
        let id = match done.reply {
            ReplyTo::Command { id, .. } => Some(id),
            _ => None,
        };
        let connect_sub = matches!(done.reply, ReplyTo::ConnectSub { .. });
        let mut out = Replies::default();
        let mut extra = Vec::new();
        match done.outcome {
            redis::Outcome::Subscribed { channel, token, answer, result } => {
                let found = s.subs.iter().position(|x| x.channel == channel && x.pending == token);
                match (found, result) {
                    (Some(i), Ok((subscribed, pubs))) => {
                        s.subs[i].pending = 0;
                        let topic = self.broker.topic(&s.subs[i].channel);
                        ctx.subscribe(conn, &topic);
                        if s.subs[i].has(sub_flag::JOIN_LEAVE) {
                            ctx.subscribe(conn, &join_leave_topic(&topic));
                        }
                        let body = self.sub_result(&answer, &subscribed);
                        match id {
                            Some(id) => out.result(id, "subscribe", &body),
                            None if connect_sub => connect_result(s, &channel, Some(body)),
                            None => H::send(ctx, conn, &protocol::push(&channel, "subscribe", &body)),
                        }
                        extra = pubs.iter().map(|p| protocol::push(&channel, "pub", p)).collect();
                    }
                    // Redis failed, or the subscription was ended meanwhile (the API's unsubscribe: its
                    // Unsubscribe job went already): an error reply; a connect's reply goes without it.
                    (found, result) => {
                        if let (Some(_), Err(e)) = (found, &result) {
                            tracing::warn!(conn = %conn, channel = %channel, error = %e, "subscribe through Redis failed");
                            self.end_sub(ctx, Some(conn), s, &channel);
                        }
                        if let Some(id) = id {
                            self.error(id, ErrorCode::INTERNAL, &mut out);
                        }
                        if connect_sub {
                            connect_result(s, &channel, None);
                        }
                    }
                }
            }
            redis::Outcome::Published(results) => match (id, results.first()) {
                (Some(id), Some(Ok(_))) => out.result(id, "publish", "{}"),
                (Some(id), _) => self.error(id, ErrorCode::INTERNAL, &mut out),
                _ => {}
            },
            redis::Outcome::Presence { stats, result } => match (id, result) {
                (Some(id), Ok(entries)) => {
                    let kind = if stats { "presence_stats" } else { "presence" };
                    out.result(id, kind, &redis_presence_body(&entries, stats))
                }
                (Some(id), Err(_)) => self.error(id, ErrorCode::INTERNAL, &mut out),
                _ => {}
            },
            redis::Outcome::History(result) => match (id, result) {
                (Some(id), Ok((pubs, position))) => out.result(id, "history", &history_body(&pubs, &position)),
                (Some(id), Err(None)) => self.error(id, ErrorCode::UNRECOVERABLE_POSITION, &mut out),
                (Some(id), Err(Some(_))) => self.error(id, ErrorCode::INTERNAL, &mut out),
                _ => {}
            },
            redis::Outcome::Removed(_) | redis::Outcome::Channels(_) | redis::Outcome::Batch(_) => {}
        }
        // The connect reply, once every server-side subscription has its result.
        let connect_done =
            s.waiting().and_then(|w| w.connect.as_ref()).is_some_and(|c| c.subs.iter().all(|x| x.1.is_some()));
        if connect_done {
            let c = s.waiting_mut().and_then(|w| w.connect.take()).expect("checked");
            let mut subs = Obj::new();
            for (channel, result) in &c.subs {
                subs = subs.raw(&json_key(channel), result.as_deref().unwrap_or("{}"));
            }
            let mut body = c.head;
            if !c.subs.is_empty() {
                body.push_str(",\"subs\":");
                body.push_str(&subs.finish());
            }
            body.push('}');
            out.result(c.id, "connect", &body);
        }
        for frame in extra {
            out.push_raw(&frame);
        }
        // A command's answer (or the connect's) came: the commands that waited behind it run now.
        let released = id.is_some() || connect_done;
        let mut outcome = Ok(());
        if released && s.waiting().is_some_and(|w| w.connect.is_none()) {
            let waiting = s.take_waiting().expect("checked");
            for line in waiting.backlog.iter() {
                outcome = self.run_line(ctx, conn, s, line, &mut out);
                if outcome.is_err() {
                    break;
                }
            }
        }
        if !out.is_empty() {
            H::send(ctx, conn, &out.out);
        }
        if let Err(d) = outcome {
            self.close(ctx, conn, d, "command");
        }
    }

    /// One command line: run now, or queued behind a command the Redis engine is answering.
    fn run_line(&self, ctx: &mut Ctx<'_, H>, conn: ConnId, s: &mut Session, line: &str, out: &mut Replies) -> Outcome {
        if let Some(w) = s.waiting_mut() {
            w.bytes += line.len();
            if w.bytes > 4 * self.config.message_size_limit {
                self.metrics.reject(Rejection::CommandRateClose);
                return Err(Disconnect::TOO_MANY_REQUESTS);
            }
            w.backlog.push_back(line.into());
            s.alive();
            return Ok(());
        }
        match parse_command(line) {
            Ok((id, request)) => self.command(ctx, conn, s, id, request, out),
            Err(bad) => {
                debug!(conn = %conn, error = %bad.0, "bad command");
                Err(Disconnect::BAD_REQUEST)
            }
        }
    }
}

/// A server-side subscription's result for the connect reply waiting for it; `None`: it failed, and the
/// reply goes without it (as for a refused server-side subscription).
fn connect_result(s: &mut Session, channel: &Arc<str>, body: Option<String>) {
    let Some(c) = s.waiting_mut().and_then(|w| w.connect.as_mut()) else { return };
    match body {
        Some(body) => {
            if let Some(entry) = c.subs.iter_mut().find(|(ch, r)| ch == channel && r.is_none()) {
                entry.1 = Some(body);
            }
        }
        None => c.subs.retain(|(ch, _)| ch != channel),
    }
}

/// A channel name as a JSON object key.
pub fn json_key(channel: &str) -> String {
    // Obj writes keys verbatim inside quotes: escape what JSON needs.
    let quoted = serde_json::to_string(channel).expect("a str serializes");
    quoted[1..quoted.len() - 1].to_string()
}

/// `{"presence":{client:{ClientInfo}}}` (shared with the API).
pub fn presence_json(gw: &Gateway, channel: &str) -> String {
    let mut out = String::from("{\"presence\":{");
    for (i, (client, p)) in gw.broker.presence(channel).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        protocol::push_str(&mut out, &client_text(client));
        out.push(':');
        out.push_str(&p.info_json(client));
    }
    out.push_str("}}");
    out
}

/// `{"num_clients":N,"num_users":M}` (shared with the API; both always present).
pub fn presence_stats_json(gw: &Gateway, channel: &str) -> String {
    let (clients, users) = gw.broker.presence_stats(channel);
    Obj::new().num("num_clients", clients as u64).num("num_users", users as u64).finish()
}

/// `{"publications":[..],"epoch":"..","offset":N}` (shared with the API; all three always present).
pub fn history_json(
    gw: &Gateway,
    channel: &str,
    ns: &NamespaceOptions,
    limit: i32,
    since: Option<(u64, &str)>,
    reverse: bool,
) -> Result<String, ErrorCode> {
    let limit = history_limit(gw, limit, since, reverse)?;
    let (pubs, position) = gw.broker.history(channel, ns, since, limit, reverse)?;
    Ok(history_body(&pubs, &position))
}

/// A history request's limit (-1 = all, capped by `client.history_max_publication_limit`); a reverse page
/// since offset 0 is error 107.
fn history_limit(gw: &Gateway, limit: i32, since: Option<(u64, &str)>, reverse: bool) -> Result<usize, ErrorCode> {
    let max = gw.config.history_max_publication_limit;
    if reverse && since.is_some_and(|s| s.0 == 0) {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(match limit {
        l if l < 0 => max,
        l => (l as usize).min(max),
    })
}

/// The Redis engine's job for a history request (shared with the API).
pub fn history_job(
    gw: &Gateway,
    channel: &str,
    ns: &NamespaceOptions,
    limit: i32,
    since: Option<(u64, &str)>,
    reverse: bool,
    reply: ReplyTo,
) -> Result<Job, ErrorCode> {
    if !ns.history_enabled() {
        return Err(ErrorCode::NOT_AVAILABLE);
    }
    let limit = history_limit(gw, limit, since, reverse)?;
    Ok(Job::History {
        channel: channel.into(),
        history: history_opts(gw, ns),
        since: since.map(|(o, e)| (o, e.to_string())),
        limit,
        reverse,
        reply,
    })
}

/// `{"publications":[..],"epoch":"..","offset":N}`.
pub fn history_body(pubs: &[Arc<str>], position: &broker::Position) -> String {
    let mut list = String::from("[");
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(p);
    }
    list.push(']');
    Obj::new().raw("publications", &list).str("epoch", &position.epoch).num("offset", position.offset).finish()
}

/// `{"presence":{..}}` or `{"num_clients":N,"num_users":M}` from the Redis engine's (client, ClientInfo)
/// pairs (shared with the API).
pub fn redis_presence_body(entries: &[(String, String)], stats: bool) -> String {
    if stats {
        let mut users: Vec<String> = entries
            .iter()
            .filter_map(|(_, info)| serde_json::from_str::<serde_json::Value>(info).ok())
            .map(|v| v.get("user").and_then(|u| u.as_str()).unwrap_or("").to_string())
            .collect();
        users.sort_unstable();
        users.dedup();
        return Obj::new().num("num_clients", entries.len() as u64).num("num_users", users.len() as u64).finish();
    }
    let mut out = String::from("{\"presence\":{");
    for (i, (client, info)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        protocol::push_str(&mut out, client);
        out.push(':');
        out.push_str(info);
    }
    out.push_str("}}");
    out
}

/// `Origin` against `client.allowed_origins` (patterns with `*`): no Origin header is always allowed
/// (scripted clients send none); an Origin with an empty list is refused, as Centrifugo does.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    allowed.iter().any(|p| p == "*" || broker::glob(&p.to_ascii_lowercase(), &origin))
}

impl Handler for GatewayHandler {
    type Conn = Conn;
    type Notice = Notice;

    fn on_upgrade(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, request: &UpgradeRequest) -> Upgrade {
        let Some((gw, path)) = self.tenants().route(&request.path) else {
            return Upgrade::Reject(HttpError::new(404, "Not Found", format!("no gateway at {}", request.path)));
        };
        if path != WEBSOCKET_PATH {
            return Upgrade::Reject(HttpError::new(
                404,
                "Not Found",
                format!("no WebSocket endpoint at {}", request.path),
            ));
        }
        let admission = match admit(gw, ctx.now(), request) {
            Ok(a) => a,
            Err(e) => return Upgrade::Reject(e),
        };
        let mut accept = Accept::new().profile(gw.profile);
        if let Some(p) = admission.subprotocol {
            accept = accept.subprotocol(p);
        }
        H::admitted(ctx, conn, admission);
        Upgrade::Accept(accept)
    }

    /// A socket the embedder upgraded itself and adopted into the engine with an [`Admission`] from
    /// [`admit`] (see [`GatewayServer::adopt`](super::embed::GatewayServer::adopt)): the same state as after
    /// `on_upgrade`. Anything else is closed (1008).
    fn on_adopt(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, context: Box<dyn std::any::Any + Send>) {
        match context.downcast::<Admission>() {
            Ok(admission) => H::admitted(ctx, conn, *admission),
            Err(_) => ctx.close(conn, 1008, "adopted without a gateway admission"),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let now = ctx.now();
        let Some((gw, mut s)) = self.take(ctx, conn) else { return };
        s.opened = gw.timing.ms(now);
        gw.arm(ctx, conn, &s);
        H::put(ctx, conn, gw, s);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let Some((gw, mut s)) = self.take(ctx, conn) else { return };
        let Message::Text(text) = message else {
            H::put(ctx, conn, gw.clone(), s);
            return gw.close(ctx, conn, Disconnect::BAD_REQUEST, "binary message on a JSON connection");
        };
        if text.len() > gw.config.message_size_limit {
            // The engine's limit is the largest of all tenants'; this tenant's own is smaller.
            gw.metrics.reject(Rejection::MessageSize);
            H::put(ctx, conn, gw, s);
            ctx.close(conn, 1009, "message too big");
            return;
        }
        if lines(text).next().is_none() {
            // Centrifugo: "empty request received".
            H::put(ctx, conn, gw.clone(), s);
            return gw.close(ctx, conn, Disconnect::BAD_REQUEST, "empty message");
        }
        let mut out = Replies::default();
        let mut outcome = Ok(());
        for line in lines(text) {
            outcome = gw.run_line(ctx, conn, &mut s, line, &mut out);
            if outcome.is_err() {
                break;
            }
        }
        if !out.is_empty() {
            H::send(ctx, conn, &out.out);
        }
        gw.arm(ctx, conn, &s);
        let gw2 = (outcome.is_err()).then(|| gw.clone());
        H::put(ctx, conn, gw, s);
        if let (Err(d), Some(gw)) = (outcome, gw2) {
            gw.close(ctx, conn, d, "command");
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let now = ctx.now();
        let Some((gw, mut s)) = self.take(ctx, conn) else { return };
        let mut close = None;
        loop {
            match s.due(now, &gw.timing) {
                Due::Nothing => break,
                Due::Ping => {
                    gw.metrics.ping();
                    H::send(ctx, conn, "{}");
                }
                Due::Close(d) => {
                    close = Some(d);
                    break;
                }
                Due::ExpiredSubs(channels) => {
                    for channel in channels {
                        let server_side = s.sub(&channel).is_some_and(|x| x.has(sub_flag::SERVER_SIDE));
                        if server_side {
                            close = Some(Disconnect::SUBSCRIPTION_EXPIRED);
                            break;
                        }
                        gw.end_sub(ctx, Some(conn), &mut s, &channel);
                        let body = r#"{"code":2501,"reason":"subscription expired"}"#;
                        H::send(ctx, conn, &protocol::push(&channel, "unsubscribe", body));
                    }
                    if close.is_some() {
                        break;
                    }
                }
            }
        }
        if close.is_none() {
            gw.arm(ctx, conn, &s);
        }
        match close {
            Some(d) => {
                H::put(ctx, conn, gw.clone(), s);
                gw.close(ctx, conn, d, "deadline");
            }
            None => H::put(ctx, conn, gw, s),
        }
    }

    fn close_note(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, info: &CloseInfo) -> Option<String> {
        let c = ctx.state(conn)?;
        let s = &c.session;
        let meaning = protocol::close_meaning(info.code);
        let tenant = match c.gw.as_ref().and_then(|g| g.tenant.as_deref()) {
            Some(t) => format!("tenant={t} "),
            None => String::new(),
        };
        Some(match (&s.phase, &s.user) {
            (Phase::Connected, Some(u)) => {
                let user = if u.is_empty() { "(anonymous)" } else { u };
                format!("{tenant}user={user} client={} meaning=\"{meaning}\"", client_text(&s.client))
            }
            _ => format!("{tenant}user=(not connected) meaning=\"{meaning}\""),
        })
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, closed: &Closed) {
        let Some((gw, mut s)) = self.take(ctx, conn) else { return };
        gw.metrics.disconnect(closed.info.code);
        if s.phase != Phase::Connected {
            return;
        }
        let channels: Vec<Arc<str>> = s.subs.iter().map(|x| x.channel.clone()).collect();
        for channel in channels {
            // The engine dropped the topic subscriptions with the slot.
            gw.end_sub(ctx, None, &mut s, &channel);
        }
        gw.registry.remove(s.user(), s.client, conn);
        gw.client_gone();
        gw.metrics.disconnected();
    }

    fn on_http(&mut self, ctx: &mut Ctx<'_, Self>, request: &HttpRequest) -> HttpResponse {
        if request.path == super::admin::RELOAD_PATH {
            return super::admin::reload(&self.table, ctx.handle(), request);
        }
        let tenants = self.tenants().clone();
        if let Some((gw, path)) = tenants.route(&request.path) {
            if path == super::api::PREFIX || path.starts_with("/api/") {
                let notify = |shard: usize, notice: Notice| ctx.notify(shard, notice);
                match super::api::handle(gw, ctx.handle(), &notify, request, path) {
                    super::api::ApiReply::Now(response) => return response,
                    super::api::ApiReply::Later(job) => {
                        if let Some(link) = gw.redis.as_ref().filter(|_| ctx.defer_http(request)) {
                            link.submit(ctx.handle(), job);
                            return HttpResponse::new(200, "OK", "text/plain", "");
                        }
                        return HttpResponse::new(500, "Internal Server Error", "text/plain", "not deferred\n");
                    }
                }
            }
        }
        // `/healthz`, and `/metrics` with the engine's and every gateway's metrics in one exposition.
        let handle = ctx.handle();
        crate::http::route(&request.method, &request.path, || {
            Some(crate::metrics::render_with(&handle.stats(), &handle.shard_stats(), |r| {
                super::metrics::register(&tenants, r)
            }))
        })
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Self>) {
        if ctx.shard() != 0 {
            return;
        }
        let now = ctx.now();
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        for gw in self.tenants().all() {
            let cfg = &gw.config;
            gw.broker.sweep(now, |name| cfg.namespace_for(name).cloned());
        }
    }

    fn on_notice(&mut self, ctx: &mut Ctx<'_, Self>, notice: Notice) {
        let conn = match &notice {
            Notice::Subscribe { conn, .. } | Notice::Unsubscribe { conn, .. } | Notice::Refresh { conn, .. } => *conn,
            Notice::Redis(done) => match &done.reply {
                ReplyTo::Command { conn, .. } | ReplyTo::Push { conn } | ReplyTo::ConnectSub { conn } => *conn,
                ReplyTo::Api { conn, method } => {
                    let (conn, method) = (*conn, *method);
                    let Notice::Redis(done) = notice else { unreachable!() };
                    ctx.answer_http(conn, &super::api::redis_answer(method, done.outcome));
                    return;
                }
                ReplyTo::Caller(_) | ReplyTo::Nobody => return,
            },
        };
        let Some((gw, mut s)) = self.take(ctx, conn) else { return };
        let close = gw.notice(ctx, conn, &mut s, notice);
        match close {
            Some(d) => {
                H::put(ctx, conn, gw.clone(), s);
                gw.close(ctx, conn, d, "api refresh expired");
            }
            None => H::put(ctx, conn, gw, s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_state_stays_small() {
        // What the engine keeps per connection for the gateway: the gateway's Arc and the session.
        assert!(std::mem::size_of::<Conn>() <= 152, "{}", std::mem::size_of::<Conn>());
    }

    #[test]
    fn origins() {
        assert!(origin_allowed(&[], None), "no Origin header: scripted clients");
        assert!(!origin_allowed(&[], Some("http://a.example")), "an Origin with an empty list");
        let list = vec!["https://*.example.com".to_string(), "http://127.0.0.1:*".to_string()];
        assert!(origin_allowed(&list, Some("https://app.example.com")));
        assert!(origin_allowed(&list, Some("http://127.0.0.1:8080")));
        assert!(!origin_allowed(&list, Some("https://evil.com")));
        assert!(origin_allowed(&["*".to_string()], Some("https://evil.com")));
    }

    #[test]
    fn channel_keys_are_escaped() {
        assert_eq!(json_key("a\"b"), "a\\\"b");
        assert_eq!(json_key("chat:1"), "chat:1");
    }
}
