//! A shard's topics: which of its connections (slots) are subscribed to which names.
//!
//! Both directions are kept so that every operation is O(1) in the topic's size: a topic lists its member
//! slots, and each slot lists (topic, position in that topic's member list). Unsubscribing swaps the last
//! member into the hole and fixes that member's position; a connection's subscriptions all go when its slot
//! is freed. A topic with no members is removed and its index reused.

use std::sync::Arc;

use hashbrown::HashMap;
use smallvec::SmallVec;

struct Topic {
    name: Arc<str>,
    /// `Topics::changes` when its member list last changed: two publications that see the same
    /// (index, version) go to exactly the same members.
    version: u64,
    /// Inline up to two members: a personal channel (one subscriber per topic) allocates nothing more.
    members: SmallVec<[u32; 2]>,
}

/// A slot's subscriptions: (topic index, position in its members); boxed so a slot without any costs 8 bytes,
/// and the first one inline in the box.
type SlotSubs = Option<Box<SmallVec<[(u32, u32); 1]>>>;

#[derive(Default)]
pub(crate) struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    topics: Vec<Topic>,
    free: Vec<u32>,
    /// Per slot: (topic index, position in its members); `None` for a slot with no subscription.
    by_slot: Vec<SlotSubs>,
    subscriptions: usize,
    /// Membership changes so far (versions topics).
    changes: u64,
}

impl Topics {
    /// Subscribe `slot` to `name`; false if it already was.
    pub fn subscribe(&mut self, slot: u32, name: &str) -> bool {
        self.subscribe_shared(slot, name, || name.into())
    }

    /// As [`subscribe`](Topics::subscribe), keeping the caller's name for a new topic (no copy of it).
    pub fn subscribe_arc(&mut self, slot: u32, name: &Arc<str>) -> bool {
        self.subscribe_shared(slot, name, || name.clone())
    }

    fn subscribe_shared(&mut self, slot: u32, name: &str, owned: impl FnOnce() -> Arc<str>) -> bool {
        let topic = match self.by_name.get(name) {
            Some(&t) => {
                if self.position(slot, t).is_some() {
                    return false;
                }
                t
            }
            None => {
                let name: Arc<str> = owned();
                let entry = Topic { name: name.clone(), version: 0, members: SmallVec::new() };
                let t = match self.free.pop() {
                    Some(t) => {
                        self.topics[t as usize] = entry;
                        t
                    }
                    None => {
                        self.topics.push(entry);
                        (self.topics.len() - 1) as u32
                    }
                };
                self.by_name.insert(name, t);
                t
            }
        };
        self.changes += 1;
        let entry = &mut self.topics[topic as usize];
        entry.version = self.changes;
        let members = &mut entry.members;
        let pos = members.len() as u32;
        members.push(slot);
        let idx = slot as usize;
        if self.by_slot.len() <= idx {
            self.by_slot.resize_with(idx + 1, || None);
        }
        self.by_slot[idx].get_or_insert_with(Default::default).push((topic, pos));
        self.subscriptions += 1;
        true
    }

    /// False if `slot` was not subscribed to `name`.
    pub fn unsubscribe(&mut self, slot: u32, name: &str) -> bool {
        let Some(&topic) = self.by_name.get(name) else { return false };
        let Some(i) = self.position(slot, topic) else { return false };
        let list = self.by_slot[slot as usize].as_mut().expect("position found it");
        let (_, pos) = list.swap_remove(i);
        if list.is_empty() {
            self.by_slot[slot as usize] = None;
        }
        self.remove_member(topic, pos);
        true
    }

    /// Drop every subscription of `slot` (its connection is gone).
    pub fn remove_slot(&mut self, slot: u32) {
        let Some(list) = self.by_slot.get_mut(slot as usize).and_then(Option::take) else { return };
        for (topic, pos) in *list {
            self.remove_member(topic, pos);
        }
    }

    /// The member slots of `name` and a key that changes whenever they do (`None` if nobody subscribed).
    pub fn members_keyed(&self, name: &str) -> Option<(&[u32], (u32, u64))> {
        let &t = self.by_name.get(name)?;
        let topic = &self.topics[t as usize];
        Some((&topic.members, (t, topic.version)))
    }

    /// The member slots of `name` (empty if nobody subscribed).
    #[cfg(test)]
    pub fn members(&self, name: &str) -> &[u32] {
        self.by_name.get(name).map_or(&[], |&t| &self.topics[t as usize].members)
    }

    pub fn topic_count(&self) -> usize {
        self.by_name.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Where in `slot`'s own list its subscription to `topic` is.
    fn position(&self, slot: u32, topic: u32) -> Option<usize> {
        self.by_slot.get(slot as usize)?.as_ref()?.iter().position(|(t, _)| *t == topic)
    }

    fn remove_member(&mut self, topic: u32, pos: u32) {
        self.changes += 1;
        let entry = &mut self.topics[topic as usize];
        entry.version = self.changes;
        entry.members.swap_remove(pos as usize);
        self.subscriptions -= 1;
        if let Some(&moved) = entry.members.get(pos as usize) {
            // The former last member now sits at `pos`: fix its own record.
            if let Some(list) = self.by_slot.get_mut(moved as usize).and_then(Option::as_mut) {
                if let Some(e) = list.iter_mut().find(|(t, _)| *t == topic) {
                    e.1 = pos;
                }
            }
        }
        if entry.members.is_empty() {
            let name = std::mem::replace(&mut entry.name, Arc::from(""));
            entry.members = SmallVec::new();
            self.by_name.remove(&name);
            self.free.push(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted(v: &[u32]) -> Vec<u32> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    #[test]
    fn subscribe_unsubscribe_and_slot_removal() {
        let mut t = Topics::default();
        assert!(t.subscribe(1, "a"));
        assert!(!t.subscribe(1, "a"));
        assert!(t.subscribe(2, "a"));
        assert!(t.subscribe(3, "a"));
        assert!(t.subscribe(2, "b"));
        assert_eq!(sorted(t.members("a")), [1, 2, 3]);
        assert_eq!((t.topic_count(), t.subscription_count()), (2, 4));
        assert!(t.unsubscribe(1, "a"));
        assert!(!t.unsubscribe(1, "a"));
        assert_eq!(sorted(t.members("a")), [2, 3]);
        t.remove_slot(2);
        assert_eq!(t.members("a"), [3]);
        assert!(t.members("b").is_empty());
        assert_eq!((t.topic_count(), t.subscription_count()), (1, 1));
        // A removed topic's index is reused.
        assert!(t.subscribe(9, "c"));
        assert_eq!(t.members("c"), [9]);
        assert_eq!(t.topics.len(), 2);
    }

    proptest! {
        #[test]
        fn matches_a_simple_model(ops in proptest::collection::vec((0u8..3, 0u32..8, 0u8..4), 0..200)) {
            let mut t = Topics::default();
            let mut model: std::collections::BTreeSet<(String, u32)> = Default::default();
            for (op, slot, topic) in ops {
                let name = format!("t{topic}");
                match op {
                    0 => prop_assert_eq!(t.subscribe(slot, &name), model.insert((name.clone(), slot))),
                    1 => prop_assert_eq!(t.unsubscribe(slot, &name), model.remove(&(name.clone(), slot))),
                    _ => {
                        t.remove_slot(slot);
                        model.retain(|(_, s)| *s != slot);
                    }
                }
                for k in 0..4u8 {
                    let name = format!("t{k}");
                    let want: Vec<u32> = model.iter().filter(|(n, _)| *n == name).map(|(_, s)| *s).collect();
                    prop_assert_eq!(sorted(t.members(&name)), want);
                }
                prop_assert_eq!(t.subscription_count(), model.len());
            }
        }
    }
}
