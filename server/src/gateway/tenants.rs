//! Many gateways on one node. The gateway of `--gateway` serves `/connection/websocket` and `/api/<method>`;
//! tenant NAME (`--tenant NAME=FILE`, a `tenant` entry of tetherd's config file, or `NAME.json|toml|yaml` in
//! `--tenants-dir`) serves `/t/NAME/connection/websocket` and `/t/NAME/api/<method>` with its own token keys,
//! API key, namespaces, limits, channels, history and presence. A tenant's channels live in engine topics of
//! their own (see [`Broker`](super::broker::Broker)), so a channel name in one tenant never sees another's
//! publications.
//!
//! The shards read the [`Tenants`] in force through the [`TenantTable`]: an `Arc` they cache and refresh
//! when the table's generation moves (one relaxed load per upgrade or HTTP request). A reload (SIGHUP, or
//! `POST /admin/reload` with the admin key) reads every file again and swaps in a new `Tenants`:
//! - a tenant whose file is unchanged keeps its `Gateway`;
//! - a changed one gets a new `Gateway` on the same [`State`](super::State) (channels, history, presence,
//!   connections carry over; each connection moves to the new config at its next event);
//! - a new one is added; a removed one's clients are closed with 3503 "tenant removed";
//! - a file that does not load is reported (one error line) and its tenant stays as it was.
//!
//! Nothing here touches another tenant's connections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tether::{EngineHandle, ProfileId};
use tracing::{error, info, warn};

use super::config::GatewayConfig;
use super::protocol::Disconnect;
use super::Gateway;

/// Where tenant routes live: `/t/NAME/...`.
pub const TENANT_PREFIX: &str = "/t/";

/// The gateways in force.
#[derive(Default)]
pub struct Tenants {
    /// The gateway of `--gateway`, on the unprefixed routes.
    pub default: Option<Arc<Gateway>>,
    pub named: BTreeMap<String, Arc<Gateway>>,
}

impl Tenants {
    /// The gateway a request path belongs to and the path within it (`/t/acme/api/publish` -> acme,
    /// `/api/publish`); `None` for an unknown tenant, or an unprefixed path without a `--gateway`.
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Arc<Gateway>, &'p str)> {
        match path.strip_prefix(TENANT_PREFIX) {
            Some(rest) => {
                let (name, _) = rest.split_once('/').unwrap_or((rest, ""));
                self.named.get(name).map(|gw| (gw, &rest[name.len()..]))
            }
            None => self.default.as_ref().map(|gw| (gw, path)),
        }
    }

    /// Every gateway, the `--gateway` one first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Gateway>> {
        self.default.iter().chain(self.named.values())
    }
}

/// A tenant name: letters, digits, `_` and `-`, 1-64 of them (it is a path segment and a metric label).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Finds the tenant files anew (for a reload): `(name, file)` pairs, or why they could not be listed.
pub type Sources = Box<dyn Fn() -> Result<Vec<(String, PathBuf)>, String> + Send + Sync>;

/// The table the shards read and a reload writes.
pub struct TenantTable {
    current: RwLock<Arc<Tenants>>,
    generation: AtomicU64,
    default_file: Option<PathBuf>,
    sources: Sources,
    /// `--admin-key`: what `POST /admin/reload` must carry; `None`: the endpoint is off.
    pub admin_key: Option<String>,
    profile: ProfileId,
    /// The engine profile's message size limit: no tenant can accept more without a restart.
    max_message_size: usize,
    reloading: Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// (tenant or file, error): these kept the config they had.
    pub failed: Vec<(String, String)>,
}

impl ReloadReport {
    pub fn to_json(&self) -> String {
        let failed: serde_json::Map<String, serde_json::Value> =
            self.failed.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        serde_json::json!({
            "added": self.added, "changed": self.changed, "removed": self.removed,
            "unchanged": self.unchanged, "failed": failed,
        })
        .to_string()
    }
}

/// The name the `--gateway` gateway goes by in reports.
const DEFAULT_NAME: &str = "(gateway)";

/// Loads one tenant file: the error names the tenant and the file.
fn load(name: &str, path: &Path) -> Result<GatewayConfig, String> {
    GatewayConfig::load(path).map_err(|e| format!("tenant {name}: {e}"))
}

/// Every config to start with: the `--gateway` file's and each tenant's. Errors name the file.
pub struct Initial {
    pub default: Option<GatewayConfig>,
    pub named: Vec<(String, GatewayConfig)>,
    /// Asked by every gateway built from this (embedders; tetherd has none).
    pub authorizer: Option<Arc<dyn super::authorizer::Authorizer>>,
}

impl Initial {
    pub fn load(default: Option<&Path>, tenants: &[(String, PathBuf)]) -> Result<Initial, String> {
        let default = default.map(GatewayConfig::load).transpose()?;
        let mut named = Vec::new();
        for (name, path) in tenants {
            if !valid_name(name) {
                return Err(format!("tenant name {name:?}: use 1-64 letters, digits, '_' or '-'"));
            }
            if named.iter().any(|(n, _)| n == name) {
                return Err(format!("tenant {name} is named twice"));
            }
            named.push((name.clone(), load(name, path)?));
        }
        Ok(Initial { default, named, authorizer: None })
    }

    /// The largest `websocket.message_size_limit` of them: the engine profile's limit.
    pub fn max_message_size(&self) -> usize {
        self.default.iter().chain(self.named.iter().map(|(_, c)| c)).map(|c| c.message_size_limit).max().unwrap_or(0)
    }

    /// Every config with where it came from, for the start-up log.
    pub fn configs(&self) -> impl Iterator<Item = (&str, &GatewayConfig)> {
        self.default.iter().map(|c| (DEFAULT_NAME, c)).chain(self.named.iter().map(|(n, c)| (n.as_str(), c)))
    }
}

impl TenantTable {
    /// Builds the gateways of `initial` on engine profile `profile` (whose message size limit is
    /// `max_message_size`).
    pub fn new(
        initial: Initial,
        default_file: Option<PathBuf>,
        sources: Sources,
        admin_key: Option<String>,
        profile: ProfileId,
        max_message_size: usize,
    ) -> Result<TenantTable, String> {
        let mut tenants = Tenants::default();
        if let Some(config) = initial.default {
            let gw = Gateway::tenant(None, config, profile)?.with_authorizer(initial.authorizer.clone());
            tenants.default = Some(Arc::new(gw));
        }
        for (name, config) in initial.named {
            let gw = Gateway::tenant(Some(&name), config, profile).map_err(|e| format!("tenant {name}: {e}"))?;
            tenants.named.insert(name, Arc::new(gw.with_authorizer(initial.authorizer.clone())));
        }
        Ok(TenantTable {
            current: RwLock::new(Arc::new(tenants)),
            generation: AtomicU64::new(0),
            default_file,
            sources,
            admin_key,
            profile,
            max_message_size,
            reloading: Mutex::new(()),
        })
    }

    /// The gateways in force now.
    pub fn snapshot(&self) -> Arc<Tenants> {
        self.current.read().clone()
    }

    /// Moves at every reload that changed something.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn checked(&self, name: &str, config: GatewayConfig) -> GatewayConfig {
        if config.message_size_limit > self.max_message_size {
            warn!(
                tenant = name,
                wanted = config.message_size_limit,
                limit = self.max_message_size,
                "websocket.message_size_limit above what this process started with: capped until a restart"
            );
        }
        config
    }

    /// Reads every file again and puts what loaded in force (see the module docs). `handle` closes the
    /// clients of removed tenants.
    pub fn reload(&self, handle: &EngineHandle) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock();
        let old = self.snapshot();
        let mut report = ReloadReport::default();
        let mut next = Tenants { default: old.default.clone(), named: BTreeMap::new() };

        if let (Some(path), Some(gw)) = (&self.default_file, &old.default) {
            match GatewayConfig::load(path) {
                Err(e) => report.failed.push((DEFAULT_NAME.into(), e)),
                Ok(config) if config == gw.config => report.unchanged.push(DEFAULT_NAME.into()),
                Ok(config) => match gw.reconfigured(self.checked(DEFAULT_NAME, config)) {
                    Ok(g) => {
                        next.default = Some(Arc::new(g));
                        report.changed.push(DEFAULT_NAME.into());
                    }
                    Err(e) => report.failed.push((DEFAULT_NAME.into(), format!("{}: {e}", path.display()))),
                },
            }
        }

        let sources = match (self.sources)() {
            Ok(s) => s,
            Err(e) => {
                // The list itself is unreadable: every tenant stays as it is.
                report.failed.push(("tenants".into(), e));
                next.named = old.named.clone();
                report.unchanged.extend(old.named.keys().cloned());
                return self.finish(old, next, report);
            }
        };
        for (name, path) in sources {
            if !valid_name(&name) {
                report.failed.push((name, "invalid tenant name: use 1-64 letters, digits, '_' or '-'".into()));
                continue;
            }
            if next.named.contains_key(&name) {
                report.failed.push((name, format!("named twice (again in {})", path.display())));
                continue;
            }
            let before = old.named.get(&name);
            match load(&name, &path) {
                Err(e) => {
                    if let Some(gw) = before {
                        next.named.insert(name.clone(), gw.clone());
                    }
                    report.failed.push((name, e));
                }
                Ok(config) => {
                    let built = match before {
                        Some(gw) if gw.config == config => {
                            next.named.insert(name.clone(), gw.clone());
                            report.unchanged.push(name);
                            continue;
                        }
                        Some(gw) => gw.reconfigured(self.checked(&name, config)),
                        None => Gateway::tenant(Some(&name), self.checked(&name, config), self.profile),
                    };
                    match built {
                        Ok(gw) => {
                            next.named.insert(name.clone(), Arc::new(gw));
                            if before.is_some() {
                                report.changed.push(name);
                            } else {
                                report.added.push(name);
                            }
                        }
                        Err(e) => {
                            if let Some(gw) = before {
                                next.named.insert(name.clone(), gw.clone());
                            }
                            report.failed.push((name.clone(), format!("tenant {name}: {e}")));
                        }
                    }
                }
            }
        }
        for (name, gw) in &old.named {
            if next.named.contains_key(name) || report.failed.iter().any(|(n, _)| n == name) {
                continue;
            }
            report.removed.push(name.clone());
            gw.retire();
            let d = Disconnect::TENANT_REMOVED;
            for conn in gw.registry.all() {
                let _ = handle.close(conn, d.code, d.reason);
            }
        }
        self.finish(old, next, report)
    }

    fn finish(&self, old: Arc<Tenants>, next: Tenants, report: ReloadReport) -> ReloadReport {
        let same = old.named.len() == next.named.len()
            && old.named.iter().all(|(n, g)| next.named.get(n).is_some_and(|h| Arc::ptr_eq(g, h)))
            && match (&old.default, &next.default) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            };
        if !same {
            let superseded: Vec<Arc<Gateway>> = old
                .all()
                .filter(|g| next.all().any(|n| Arc::ptr_eq(&n.state, &g.state) && !Arc::ptr_eq(n, g)))
                .cloned()
                .collect();
            *self.current.write() = Arc::new(next);
            self.generation.fetch_add(1, Ordering::Release);
            // After the new table is visible, so a connection that sees the flag finds its new config.
            for g in superseded {
                g.supersede();
            }
        }
        for (name, e) in &report.failed {
            error!(tenant = %name, error = %e, "reload: config rejected, the one in force stays");
        }
        info!(
            added = ?report.added,
            changed = ?report.changed,
            removed = ?report.removed,
            unchanged = report.unchanged.len(),
            failed = report.failed.len(),
            "reload"
        );
        report
    }
}

/// The tenant files in `dir`: `NAME.json`, `NAME.toml`, `NAME.yaml` or `NAME.yml` (other files are left
/// alone), sorted by name.
pub fn scan_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "json" | "toml" | "yaml" | "yml") || !path.is_file() {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        out.push((name.to_string(), path.clone()));
    }
    out.sort();
    Ok(out)
}

/// `NAME=FILE` as given to `--tenant`.
pub fn parse_tenant_arg(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=FILE"))?;
    let name = name.trim();
    if !valid_name(name) {
        return Err(format!("tenant name {name:?}: use 1-64 letters, digits, '_' or '-'"));
    }
    if file.trim().is_empty() {
        return Err(format!("tenant {name}: empty file name"));
    }
    Ok((name.to_string(), PathBuf::from(file.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(name: Option<&str>) -> Arc<Gateway> {
        Arc::new(Gateway::tenant(name, GatewayConfig::default(), ProfileId::DEFAULT).unwrap())
    }

    #[test]
    fn routes() {
        let mut t = Tenants::default();
        t.named.insert("acme".into(), gw(Some("acme")));
        let (g, rest) = t.route("/t/acme/api/publish").unwrap();
        assert_eq!((g.tenant.as_deref(), rest), (Some("acme"), "/api/publish"));
        let (g, rest) = t.route("/t/acme/connection/websocket").unwrap();
        assert_eq!((g.tenant.as_deref(), rest), (Some("acme"), "/connection/websocket"));
        assert!(t.route("/t/other/api/publish").is_none(), "unknown tenant");
        assert!(t.route("/t/acm/api/publish").is_none(), "a prefix of a name is not the name");
        assert!(t.route("/api/publish").is_none(), "no --gateway");
        t.default = Some(gw(None));
        let (g, rest) = t.route("/api/publish").unwrap();
        assert_eq!((g.tenant.as_deref(), rest), (None, "/api/publish"));
    }

    #[test]
    fn names_and_args() {
        assert!(valid_name("acme-1_x"));
        for bad in ["", "a/b", "a b", "a\0", "ä", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(parse_tenant_arg("acme=/etc/a.json").unwrap(), ("acme".into(), PathBuf::from("/etc/a.json")));
        assert!(parse_tenant_arg("acme").is_err());
        assert!(parse_tenant_arg("a/b=x.json").is_err());
        assert!(parse_tenant_arg("acme=").is_err());
    }
}
