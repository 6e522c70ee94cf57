//! Requests (`get`, `wait`, `next`, a generator's room) and the deadlines of timeouts and
//! cancel timers. Touches workers only through `send_to` and their blocked frames.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::Error;
use crate::protocol::{Id, Resolved, ToWorker};

use super::Scheduler;
use super::messages::Requester;
use super::objects::{ObjState, Waiting};
use super::streams::Stream;

pub(super) enum RequestKind {
    Get,
    Wait {
        need: usize,
    },
    /// Item `index` of the stream of the task `ids[0]` (scheduler rule 10).
    Next {
        index: u64,
    },
    /// A generator waits for room in its stream `ids[0]` (scheduler rule 10).
    YieldRoom,
    /// The next ready objects of a watch (watches.rs); `ids` is empty.
    Ready {
        watch: Id,
    },
}

pub(super) struct Request {
    pub(super) client: Requester,
    pub(super) ids: Vec<Id>,
    pub(super) kind: RequestKind,
    pub(super) missing: usize,
    /// Its timeout, for the `Timeout` error.
    pub(super) timeout_ms: Option<u64>,
}

/// What happens when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    /// Request `0` times out (if it still waits).
    Request(u64),
    /// The grace period of a cancelled task ends: its worker is killed if the task still runs
    /// there (scheduler rule 9).
    CancelKill { slot: u32, task: Id },
    /// Worker `slot` has had a partial frame since it had received `received` bytes
    /// (io.rs, `on_frame_stall`).
    FrameStall { slot: u32, received: u64 },
    /// A fork failed and its back-off ends: the loop wakes to try again (fork_link.rs).
    ForkRetry,
}

/// Request timeouts and cancel grace periods, soonest first.
#[derive(Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, Deadline)>>,
}

impl Deadlines {
    pub(super) fn push(&mut self, at: Instant, d: Deadline) {
        self.heap.push(Reverse((at, d)));
    }

    /// The soonest deadline, when the loop must wake up at the latest.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.0)
    }

    /// Takes the soonest deadline if it passed by `now`.
    pub(super) fn pop_passed(&mut self, now: Instant) -> Option<Deadline> {
        let &Reverse((at, _)) = self.heap.peek()?;
        (at <= now).then(|| self.heap.pop().map(|Reverse((_, d))| d))?
    }
}

impl Scheduler {
    pub(super) fn request(
        &mut self,
        client: Requester,
        ids: Vec<Id>,
        kind: RequestKind,
        timeout_ms: Option<u64>,
    ) -> Option<u64> {
        let missing = ids.iter().filter(|&&i| !self.is_ready(i)).count();
        let satisfied = match kind {
            // As soon as one fails (as Ray's `get` of a list).
            RequestKind::Get => missing == 0 || ids.iter().any(|&i| self.is_failed(i)),
            RequestKind::Wait { need } => ids.len() - missing >= need,
            RequestKind::Next { index } => missing == 0 || self.has_item(ids[0], index),
            RequestKind::YieldRoom => self.streams.get(&ids[0]).is_none_or(Stream::has_room),
            RequestKind::Ready { watch } => self.has_ready(watch),
        };
        if satisfied {
            // Answered at once: the frame never blocks and keeps its CPUs.
            let answer = self.answer_to(&client, &ids, &kind, None);
            self.reply(&client, answer);
            return None;
        }
        let rid = self.next_request;
        self.next_request += 1;
        let worker = client.slot();
        if matches!(kind, RequestKind::Next { .. } | RequestKind::YieldRoom) {
            if let Some(st) = self.streams.get_mut(&ids[0]) {
                st.waiting.push(rid);
            }
        }
        for id in &ids {
            if let Some(o) = self.objects.get_mut(id) {
                if matches!(o.state, ObjState::Pending) {
                    o.waiters.push(Waiting::Request(rid));
                }
            }
        }
        self.requests.insert(
            rid,
            Request {
                client,
                ids,
                kind,
                missing,
                timeout_ms,
            },
        );
        if let Some(ms) = timeout_ms {
            let at = Instant::now() + Duration::from_millis(ms);
            self.deadlines.push(at, Deadline::Request(rid));
        }
        // Rule 1: a blocked frame gives its CPUs back.
        if let Some(slot) = worker {
            let Some(f) = self
                .pool
                .workers
                .get_mut(&slot)
                .and_then(|w| w.stack.last_mut())
            else {
                self.requests.remove(&rid);
                self.kill_worker(slot, "get outside a task");
                return None;
            };
            if f.blocked.is_some() {
                self.requests.remove(&rid);
                self.kill_worker(slot, "a second request while blocked in one");
                return None;
            }
            f.blocked = Some(rid);
            let cpus = f.cpus;
            self.res.give_cpus(cpus);
            // Rule 11: a blocked frame may wait for a task queued behind it; none of them can
            // have been claimed, the worker's stack is not empty.
            if self.take_back_all(slot) > 0 {
                self.kill_worker(slot, "claimed a queued task while a frame was on its stack");
                return None;
            }
        }
        Some(rid)
    }

    /// Acts on the deadlines that passed.
    pub(super) fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(d) = self.deadlines.pop_passed(now) {
            match d {
                Deadline::Request(rid) => {
                    if let Some(ms) = self.requests.get(&rid).and_then(|r| r.timeout_ms) {
                        self.complete_request(rid, Some(ms));
                    }
                }
                Deadline::CancelKill { slot, task } => self.on_cancel_timer(slot, task),
                Deadline::FrameStall { slot, received } => self.on_frame_stall(slot, received),
                Deadline::ForkRetry => {}
            }
        }
    }

    /// The answer to a request over `ids`; `timed_out` is set when its deadline passed first.
    fn answer(&mut self, ids: &[Id], kind: &RequestKind, timed_out: Option<u64>) -> ToWorker {
        match kind {
            RequestKind::Get if timed_out.is_some() => ToWorker::GetReply(Err(Error::Timeout {
                millis: timed_out.unwrap_or(0),
            })),
            RequestKind::Get => {
                ToWorker::GetReply(Ok(ids.iter().map(|&i| self.resolve(i)).collect()))
            }
            RequestKind::Wait { .. } => {
                ToWorker::WaitReply(ids.iter().map(|&i| self.is_ready(i)).collect())
            }
            RequestKind::Next { index } => {
                ToWorker::NextItemReply(self.stream_item(ids[0], *index))
            }
            RequestKind::YieldRoom => {
                if self.streams.get(&ids[0]).is_some_and(|st| st.abandoned) {
                    ToWorker::YieldStop
                } else {
                    ToWorker::YieldAck
                }
            }
            // Answering takes the indices ready since the last answer (watches.rs).
            RequestKind::Ready { watch } => ToWorker::ReadyReply(match timed_out {
                Some(millis) => {
                    self.take_ready_request(*watch);
                    Err(Error::Timeout { millis })
                }
                None => Ok(self.take_ready(*watch)),
            }),
        }
    }

    /// `answer`, plus what answering a `Next` does: the stream's reference to the item moves
    /// to the asker, and the generator may get room (scheduler rule 10).
    pub(super) fn answer_to(
        &mut self,
        client: &Requester,
        ids: &[Id],
        kind: &RequestKind,
        timed_out: Option<u64>,
    ) -> ToWorker {
        let mut answer = self.answer(ids, kind, timed_out);
        if let ToWorker::GetReply(Ok(values)) = &mut answer {
            // Read-once values go to their first taker only (scheduler rule 12), and only when
            // the caller gets every value: a reply with an error gives the caller none of them.
            let delivered = values.iter().all(|v| matches!(v, Resolved::Value(_)));
            if delivered {
                let taker = self.taker_of(client.slot());
                if let Err(e) = self.take(ids, taker, false) {
                    *values = vec![Resolved::Error(e); ids.len()];
                }
            }
        }
        // The worker may take references to what it is answered (scheduler rule 5).
        match &answer {
            ToWorker::GetReply(Ok(_)) => self.give(client.slot(), ids.iter().copied()),
            ToWorker::NextItemReply(Ok(Some(item))) => self.give(client.slot(), [*item]),
            _ => {}
        }
        if let (RequestKind::Next { index }, ToWorker::NextItemReply(Ok(Some(item)))) =
            (kind, &answer)
        {
            let slot = client.slot();
            // The stream's reference moves to the asker.
            self.own(slot, *item, 1);
            self.item_taken(ids[0], *index);
        }
        answer
    }

    /// Answers a waiting request; `timed_out` is set when its deadline passed first.
    pub(super) fn complete_request(&mut self, rid: u64, timed_out: Option<u64>) {
        let Some(req) = self.requests.remove(&rid) else {
            return;
        };
        let answer = self.answer_to(&req.client, &req.ids, &req.kind, timed_out);
        match req.client {
            Requester::Driver(None) => {}
            Requester::Driver(Some(tx)) => {
                let _ = tx.send(answer);
            }
            Requester::Worker(slot) => {
                // Rule 1: hold the answer until the frame is on top and has its CPUs back.
                let Some(w) = self.pool.workers.get_mut(&slot) else {
                    return;
                };
                let Some(f) = w.stack.iter_mut().find(|f| f.blocked == Some(rid)) else {
                    return;
                };
                f.pending = Some(answer);
                let on_top = w.stack.last().is_some_and(|f| f.blocked == Some(rid));
                if on_top && !self.resume.contains(&slot) {
                    self.resume.push_back(slot);
                }
            }
        }
    }
}
