//! Who is connected: user -> connections and client id -> connection, node-wide, for the server API
//! (disconnect, subscribe, unsubscribe, refresh by user or client), `user_connection_limit` and `info`.
//! Striped locks; touched at connect and close only, never per message.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tether::ConnId;

use super::broker::ClientId;

const STRIPES: usize = 32;

#[derive(Default)]
struct Stripe {
    /// Most users hold one connection: it lives inline in the entry.
    users: HashMap<Arc<str>, SmallVec<[(ConnId, ClientId); 1]>>,
    clients: HashMap<ClientId, ConnId>,
}

pub struct Registry {
    stripes: Box<[Mutex<Stripe>]>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect() }
    }
}

fn hash(bytes: &[u8]) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    (h % STRIPES as u64) as usize
}

impl Registry {
    /// Adds a connection unless its user already has `limit` (0 = no limit); returns false when refused.
    pub fn add(&self, user: &Arc<str>, client: ClientId, conn: ConnId, limit: usize) -> bool {
        {
            let mut s = self.stripes[hash(user.as_bytes())].lock();
            let list = s.users.entry(user.clone()).or_default();
            if limit > 0 && !user.is_empty() && list.len() >= limit {
                return false;
            }
            list.push((conn, client));
        }
        self.stripes[hash(&client)].lock().clients.insert(client, conn);
        true
    }

    pub fn remove(&self, user: &str, client: ClientId, conn: ConnId) {
        {
            let mut s = self.stripes[hash(user.as_bytes())].lock();
            if let Some(list) = s.users.get_mut(user) {
                list.retain(|(c, _)| *c != conn);
                if list.is_empty() {
                    s.users.remove(user);
                }
            }
        }
        let mut s = self.stripes[hash(&client)].lock();
        if s.clients.get(&client) == Some(&conn) {
            s.clients.remove(&client);
        }
    }

    /// The connections an API call names: a user's (all, or the one with `client`), or one client's.
    pub fn select(&self, user: &str, client: Option<ClientId>) -> Vec<(ConnId, ClientId)> {
        if user.is_empty() {
            let Some(client) = client else { return Vec::new() };
            return self.stripes[hash(&client)]
                .lock()
                .clients
                .get(&client)
                .map(|c| vec![(*c, client)])
                .unwrap_or_default();
        }
        let s = self.stripes[hash(user.as_bytes())].lock();
        let Some(list) = s.users.get(user) else { return Vec::new() };
        list.iter().filter(|(_, c)| client.is_none_or(|want| *c == want)).copied().collect::<Vec<_>>()
    }

    /// Every connected client's connection.
    pub fn all(&self) -> Vec<ConnId> {
        self.stripes.iter().flat_map(|s| s.lock().clients.values().copied().collect::<Vec<_>>()).collect()
    }

    /// (connected clients, distinct users) on this node.
    pub fn counts(&self) -> (usize, usize) {
        let (clients, users, _) = self.counts_detail();
        (clients, users)
    }

    /// (connected clients, distinct authenticated users, anonymous clients).
    pub fn counts_detail(&self) -> (usize, usize, usize) {
        let (mut clients, mut users, mut anonymous) = (0, 0, 0);
        for stripe in self.stripes.iter() {
            let s = stripe.lock();
            clients += s.clients.len();
            users += s.users.keys().filter(|u| !u.is_empty()).count();
            anonymous += s.users.get("").map_or(0, |l| l.len());
        }
        (clients, users, anonymous)
    }

    /// Bytes the user and the client tables have allocated (their bucket arrays; what an entry points to is
    /// not counted). Under churn a hash table fills with tombstones and doubles once instead of rehashing in
    /// place; this gauge shows whether and when that happens, and that it stops there.
    pub fn table_bytes(&self) -> (usize, usize) {
        let (mut users, mut clients) = (0, 0);
        for stripe in self.stripes.iter() {
            let s = stripe.lock();
            users += s.users.allocation_size();
            clients += s.clients.allocation_size();
        }
        (users, clients)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u64) -> ConnId {
        ConnId::from_u64(n)
    }

    #[test]
    fn add_select_remove_and_limit() {
        let r = Registry::default();
        let u: Arc<str> = "42".into();
        assert!(r.add(&u, [1; 16], conn(1), 2));
        assert!(r.add(&u, [2; 16], conn(2), 2));
        assert!(!r.add(&u, [3; 16], conn(3), 2), "the third connection of a user with limit 2");
        let anon: Arc<str> = "".into();
        assert!(r.add(&anon, [4; 16], conn(4), 1));
        assert!(r.add(&anon, [5; 16], conn(5), 1), "anonymous connections are not limited per user");
        assert_eq!(r.select("42", None).len(), 2);
        assert_eq!(r.select("42", Some([2; 16])), vec![(conn(2), [2; 16])]);
        assert_eq!(r.select("", Some([4; 16])), vec![(conn(4), [4; 16])]);
        assert_eq!(r.counts(), (4, 1));
        r.remove("42", [1; 16], conn(1));
        assert_eq!(r.select("42", None), vec![(conn(2), [2; 16])]);
        r.remove("42", [2; 16], conn(2));
        assert!(r.select("42", None).is_empty());
        assert_eq!(r.counts(), (2, 0));
    }

    /// Churn at a steady size (every connection replaced by a new one, many times over) grows the tables at
    /// most to the next power of two once, never without bound.
    #[test]
    fn churn_at_a_steady_size_has_a_ceiling() {
        let r = Registry::default();
        let held = 20_000u64;
        let id = |n: u64| {
            let mut c = [0u8; 16];
            c[..8].copy_from_slice(&n.to_le_bytes());
            c
        };
        let user = |n: u64| -> Arc<str> { n.to_string().into() };
        for n in 0..held {
            assert!(r.add(&user(n), id(n), conn(n), 0));
        }
        let (users0, clients0) = r.table_bytes();
        assert!(users0 > 0 && clients0 > 0);
        let (mut users_max, mut clients_max) = (0, 0);
        for n in held..held * 30 {
            let old = n - held;
            r.remove(&user(old), id(old), conn(old));
            assert!(r.add(&user(n), id(n), conn(n), 0));
            let (u, c) = r.table_bytes();
            users_max = users_max.max(u);
            clients_max = clients_max.max(c);
        }
        assert_eq!(r.counts(), (held as usize, held as usize));
        assert!(users_max <= users0 * 2 + 64 * STRIPES, "users table {users0} -> {users_max} bytes");
        assert!(clients_max <= clients0 * 2 + 64 * STRIPES, "clients table {clients0} -> {clients_max} bytes");
    }
}
