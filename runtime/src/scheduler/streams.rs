//! Generators' streams (scheduler rule 10): items, their order, back-pressure. Must not
//! touch workers except through requests.

use crate::Error;
use crate::protocol::Id;

use super::Scheduler;
use super::messages::Requester;
use super::objects::ObjState;
use super::requests::RequestKind;

/// The items of a generator task (scheduler rule 10).
pub(super) struct Stream {
    /// Items yielded so far; the stream holds one reference to each until the caller takes it
    /// (then `None`: the reference moved to the caller).
    pub(super) items: Vec<Option<Id>>,
    /// Items taken by the caller (the highest index asked for, plus one).
    pub(super) taken: u64,
    /// At most this many items wait untaken (0: no limit).
    pub(super) bound: u32,
    /// Requests waiting on this stream: `Next`s, and the generator's `YieldRoom`.
    pub(super) waiting: Vec<u64>,
    /// Nobody can take items any more (the caller dropped the generator while its task ran):
    /// items are dropped as they come and the generator is told to stop.
    pub(super) abandoned: bool,
    /// Items the current attempt yielded: a retry yields again the ones the stream has, and
    /// those are dropped, so the caller sees each item once.
    pub(super) this_attempt: u64,
}

impl Stream {
    pub(super) fn has_room(&self) -> bool {
        self.abandoned
            || self.bound == 0
            || (self.items.len() as u64).saturating_sub(self.taken) < self.bound as u64
    }
}

impl Scheduler {
    pub(super) fn has_item(&self, stream: Id, index: u64) -> bool {
        self.streams
            .get(&stream)
            .is_some_and(|st| index < st.items.len() as u64)
    }

    /// Item `index` of a stream, or its end: `None` after a task that finished, its error
    /// after one that failed.
    pub(super) fn stream_item(&self, stream: Id, index: u64) -> Result<Option<Id>, Error> {
        let Some(st) = self.streams.get(&stream) else {
            return Err(Error::Protocol(format!(
                "object {stream:x} is not a generator's (or it was freed)"
            )));
        };
        match st.items.get(index as usize) {
            Some(Some(item)) => return Ok(Some(*item)),
            Some(None) => {
                return Err(Error::Protocol(format!(
                    "item {index} of generator {stream:x} was already taken"
                )));
            }
            None => {}
        }
        match self.objects.get(&stream).map(|o| &o.state) {
            Some(ObjState::Failed(e)) => Err(e.clone()),
            _ => Ok(None),
        }
    }

    /// The caller took item `index`: the generator may have room again.
    pub(super) fn item_taken(&mut self, stream: Id, index: u64) {
        let Some(st) = self.streams.get_mut(&stream) else {
            return;
        };
        if let Some(i) = st.items.get_mut(index as usize) {
            *i = None;
        }
        st.taken = st.taken.max(index + 1);
        if !st.has_room() {
            return;
        }
        self.wake_stream_waiters(stream, |kind| matches!(kind, RequestKind::YieldRoom));
    }

    /// Answers the requests waiting on `stream` whose kind `ready` accepts.
    fn wake_stream_waiters(&mut self, stream: Id, ready: impl Fn(&RequestKind) -> bool) {
        let Some(st) = self.streams.get_mut(&stream) else {
            return;
        };
        let requests = &self.requests;
        let mut woken = Vec::new();
        st.waiting.retain(|rid| {
            let wake = requests.get(rid).is_some_and(|r| ready(&r.kind));
            if wake {
                woken.push(*rid);
            }
            !wake
        });
        for rid in woken {
            self.complete_request(rid, None);
        }
    }

    /// A generator yielded `item` (scheduler rule 10): checked, moved to its stream, handed to
    /// waiting callers; the generator goes on at once if the stream has room.
    pub(super) fn on_yield(&mut self, slot: u32, task: Id, item: Id) {
        let on_top = self
            .pool
            .workers
            .get(&slot)
            .is_some_and(|w| w.runs_on_top(task));
        let held = self
            .pool
            .workers
            .get(&slot)
            .is_some_and(|w| w.held.get(&item).is_some_and(|&n| n > 0));
        if !on_top || !held || !self.streams.contains_key(&task) || !self.is_ready(item) {
            return self.kill_worker(
                slot,
                "yield of an item it does not hold, or not from a generator",
            );
        }
        self.own(Some(slot), item, -1);
        let Some(st) = self.streams.get_mut(&task) else {
            return;
        };
        st.this_attempt += 1;
        let replayed = st.this_attempt <= st.items.len() as u64;
        if st.abandoned || replayed {
            // Nobody takes it (the answer to the `YieldRoom` below tells the generator to
            // stop), or a retry yielded it again: the caller has the first one.
            self.add_ref(item, -1);
            self.request(
                Requester::Worker(slot),
                vec![task],
                RequestKind::YieldRoom,
                None,
            );
            return;
        }
        st.items.push(Some(item));
        let len = st.items.len() as u64;
        self.wake_stream_waiters(
            task,
            |kind| matches!(kind, RequestKind::Next { index } if *index < len),
        );
        self.request(
            Requester::Worker(slot),
            vec![task],
            RequestKind::YieldRoom,
            None,
        );
    }

    /// The last reference to a running generator's stream is gone (scheduler rule 10): its
    /// untaken items are freed now, later ones as they come, and the generator is told to
    /// stop at its next yield (at once if it waits for room).
    pub(super) fn abandon_stream(&mut self, stream: Id) {
        let Some(st) = self.streams.get_mut(&stream) else {
            return;
        };
        if std::mem::replace(&mut st.abandoned, true) {
            return;
        }
        let items: Vec<Id> = st.items.iter_mut().filter_map(Option::take).collect();
        for item in items {
            self.add_ref(item, -1);
        }
        self.wake_stream_waiters(stream, |kind| matches!(kind, RequestKind::YieldRoom));
    }
}
