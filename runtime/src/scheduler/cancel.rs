//! Cancellation (scheduler rule 9): cooperative flags, grace timers, kills. Must not own the
//! shared flags (`Scheduler::flags`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::protocol::{Id, ReturnValue};
use crate::{CancelOutcome, Error};

use super::Scheduler;
use super::requests::Deadline;
use super::tasks::{Task, TaskState};

/// What the scheduler keeps for cancellation (scheduler rule 9). The flags a task polls live in
/// `Scheduler::flags`.
#[derive(Default)]
pub(super) struct Cancels {
    /// Queued tasks cancelled after their worker claimed them: (force, grace), applied when
    /// they start (scheduler rule 11).
    pub(super) on_start: HashMap<Id, (bool, Duration)>,
    /// Workers killed to stop a cancelled task, until their death is handled.
    pub(super) killed: HashSet<u32>,
}

impl Scheduler {
    /// Cancels the task that produces `id` and, if `recursive`, every task it submitted,
    /// transitively. Says `AlreadyFinished` (and does nothing) when `id` is not an unfinished
    /// task.
    pub(super) fn cancel(
        &mut self,
        id: Id,
        force: bool,
        recursive: bool,
        grace_ms: Option<u64>,
    ) -> Result<CancelOutcome, Error> {
        if !self.tasks.contains_key(&id) {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        // The whole tree first: cancelling a task can remove it from the table.
        let mut tree = vec![id];
        if recursive {
            let mut seen: HashSet<Id> = HashSet::from([id]);
            let mut i = 0;
            while i < tree.len() {
                let p = tree[i];
                let kids: Vec<Id> = self
                    .tasks
                    .iter()
                    .filter(|(c, t)| t.parent == Some(p) && !seen.contains(c))
                    .map(|(&c, _)| c)
                    .collect();
                seen.extend(kids.iter().copied());
                tree.extend(kids);
                i += 1;
            }
        }
        let grace = grace_ms.map_or(self.cfg.cancel_grace, Duration::from_millis);
        for t in tree {
            self.cancel_one(t, force, grace);
        }
        Ok(CancelOutcome::Cancelled)
    }

    pub(super) fn cancel_one(&mut self, id: Id, force: bool, grace: Duration) {
        let Some(t) = self.tasks.get(&id) else {
            return;
        };
        let err = t.cancelled_error();
        let slot = match t.state {
            TaskState::WaitingArgs { .. } | TaskState::Ready => {
                // Not started (waiting for its arguments, in the queue, or waiting for a
                // retry): it never runs, and whoever waits for it learns at once.
                self.queue.retain(|&q| q != id);
                return self.finish_task(id, Err(err));
            }
            TaskState::QueuedOn { .. } => {
                // Queued on a busy worker (scheduler rule 11): taken back, it never runs; claimed,
                // it is cancelled when it starts.
                if self.take_back_task(id) {
                    return self.finish_task(id, Err(err));
                }
                self.cancel.on_start.insert(id, (force, grace));
                return;
            }
            TaskState::Running { slot, .. } => slot,
        };
        if let Some(t) = self.tasks.get_mut(&id) {
            t.state = TaskState::Running {
                slot,
                cancel_requested: true,
            };
        }
        // The cooperative request: raise the flag of the task's own frame.
        if let Some(depth) = self
            .pool
            .workers
            .get(&slot)
            .and_then(|w| w.stack.iter().position(|f| f.task == id))
        {
            self.flags.raise(slot, depth, id);
        }
        // An actor call is only asked to stop: killing the process would end the actor.
        if self
            .pool
            .workers
            .get(&slot)
            .is_some_and(|w| w.actor.is_some())
        {
            return;
        }
        if force || grace.is_zero() {
            return self.kill_for_cancel(slot);
        }
        let kill = Deadline::CancelKill { slot, task: id };
        self.deadlines.push(Instant::now() + grace, kill);
    }

    /// A grace period ended: kill the worker if the cancelled task still runs on it.
    pub(super) fn on_cancel_timer(&mut self, slot: u32, task: Id) {
        let still_running = self.tasks.get(&task).is_some_and(|t| {
            t.state
                == TaskState::Running {
                    slot,
                    cancel_requested: true,
                }
        });
        if still_running {
            self.kill_for_cancel(slot);
        }
    }

    pub(super) fn kill_for_cancel(&mut self, slot: u32) {
        if !self.pool.workers.contains_key(&slot) || !self.cancel.killed.insert(slot) {
            return;
        }
        // No more work goes to it; the fork server kills it and reports its exit (scheduler rule
        // 4).
        self.on_hangup(slot);
    }

    /// The result of a task that returned: `TaskCancelled` if it was cancelled meanwhile,
    /// whatever it returned (dropping the references its value held).
    pub(super) fn cancelled_result(
        &mut self,
        task: Id,
        result: Result<Vec<ReturnValue>, Error>,
    ) -> Result<Vec<ReturnValue>, Error> {
        let Some(err) = self
            .tasks
            .get(&task)
            .filter(|t| t.state.is_cancel_requested())
            .map(Task::cancelled_error)
        else {
            return result;
        };
        if let Ok(values) = result {
            for value in values {
                for c in value.contained {
                    self.add_ref(c, -1);
                }
            }
        }
        Err(err)
    }
}
