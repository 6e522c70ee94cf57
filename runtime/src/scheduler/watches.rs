//! Watches (`as_completed`): a set of objects a client follows to learn which become ready, in
//! the order they do, each once. Owns the watch table; must not touch the objects it follows
//! except through their waiter lists (objects.rs).
//!
//! A watch registers once per object (`Waiting::Watch`), and a `NextReady` request takes every
//! index that became ready since the last one: the client never sends the ids again, and each
//! result costs O(1) here.

use std::collections::VecDeque;

use crate::Error;
use crate::protocol::{Id, ToWorker};

use super::Scheduler;
use super::messages::Requester;
use super::objects::{ObjState, Waiting};
use super::requests::RequestKind;

/// The objects a client follows, by their index in its list.
pub(super) struct Watch {
    /// The objects followed, by index.
    ids: Vec<Id>,
    /// Indices whose objects are ready (or failed, or gone) and not yet handed out, in the
    /// order they became so.
    ready: VecDeque<u32>,
    /// Indices not yet ready.
    pending: usize,
    /// The `NextReady` request waiting for the next index, if any.
    waiting: Option<u64>,
    /// The client that made the watch: only it may read or end it.
    owner: Option<u32>,
}

impl Scheduler {
    /// Starts watch `watch` over `ids` for `slot` (the driver for `None`).
    pub(super) fn watch(&mut self, slot: Option<u32>, watch: Id, ids: Vec<Id>) {
        if self.watches.contains_key(&watch) {
            return self.bad(slot, "a watch id that exists");
        }
        let mut w = Watch {
            ids: ids.clone(),
            ready: VecDeque::new(),
            pending: 0,
            waiting: None,
            owner: slot,
        };
        for (i, id) in ids.into_iter().enumerate() {
            let i = i as u32;
            match self.objects.get_mut(&id) {
                Some(o) if matches!(o.state, ObjState::Pending) => {
                    o.waiters.push(Waiting::Watch(watch, i));
                    w.pending += 1;
                }
                // Ready, failed, or unknown (reading it gives the error): ready to hand out.
                _ => w.ready.push_back(i),
            }
        }
        self.watches.insert(watch, w);
    }

    /// The followed objects not ready yet (for nesting what a blocked frame waits for,
    /// scheduler rule 2).
    pub(super) fn watch_pending(&self, watch: Id) -> Vec<Id> {
        self.watches.get(&watch).map_or_else(Vec::new, |w| {
            w.ids
                .iter()
                .copied()
                .filter(|&id| !self.is_ready(id))
                .collect()
        })
    }

    /// Ends every watch of a dead worker (it can no longer end them itself).
    pub(super) fn drop_watches_of(&mut self, slot: u32) {
        self.watches.retain(|_, w| w.owner != Some(slot));
    }

    /// Ends a watch; its registrations become no-ops.
    pub(super) fn unwatch(&mut self, slot: Option<u32>, watch: Id) {
        if self.watches.get(&watch).is_some_and(|w| w.owner == slot) {
            if let Some(rid) = self.watches.remove(&watch).and_then(|w| w.waiting) {
                self.complete_request(rid, None);
            }
        }
    }

    /// Object `index` of `watch` is ready (from `notify`).
    pub(super) fn watched_ready(&mut self, watch: Id, index: u32) {
        let Some(w) = self.watches.get_mut(&watch) else {
            return;
        };
        w.ready.push_back(index);
        w.pending = w.pending.saturating_sub(1);
        if let Some(rid) = w.waiting.take() {
            self.complete_request(rid, None);
        }
    }

    /// A `NextReady` request of `client` on `watch`.
    pub(super) fn next_ready(&mut self, client: Requester, watch: Id, timeout_ms: Option<u64>) {
        let owned = self
            .watches
            .get(&watch)
            .is_some_and(|w| w.owner == client.slot());
        if !owned {
            let e = Error::InvalidArgument(format!("no watch {watch:x} of this client"));
            return self.reply(&client, ToWorker::ReadyReply(Err(e)));
        }
        let kind = RequestKind::Ready { watch };
        if let Some(rid) = self.request(client, Vec::new(), kind, timeout_ms) {
            if let Some(w) = self.watches.get_mut(&watch) {
                w.waiting = Some(rid);
            }
        }
    }

    /// True if a `NextReady` on `watch` can be answered now.
    pub(super) fn has_ready(&self, watch: Id) -> bool {
        self.watches
            .get(&watch)
            .is_none_or(|w| !w.ready.is_empty() || w.pending == 0)
    }

    /// The `NextReady` waiting on `watch` ends without an answer (it timed out).
    pub(super) fn take_ready_request(&mut self, watch: Id) {
        if let Some(w) = self.watches.get_mut(&watch) {
            w.waiting = None;
        }
    }

    /// The answer to a `NextReady`: every index ready since the last one (empty once all were
    /// handed out, or when the watch ended).
    pub(super) fn take_ready(&mut self, watch: Id) -> Vec<u32> {
        let Some(w) = self.watches.get_mut(&watch) else {
            return Vec::new();
        };
        w.waiting = None;
        w.ready.drain(..).collect()
    }
}
