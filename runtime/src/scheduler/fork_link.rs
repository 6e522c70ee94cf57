//! The link to the fork server: fork and kill requests, and what it reports (a worker forked,
//! a fork failed, a worker exited, its last stderr lines). Must not touch objects.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::epoll::{EpollEvent, EpollFlags};

use crate::protocol::{ExitCause, ForkReply, Id};
use crate::{Error, ipc};

use super::Scheduler;

/// How long the scheduler does not spin after asking the fork server for a fork or a kill: the
/// fork server needs a CPU to do it (and to reap and report), and on 2 CPUs a spinning
/// scheduler and driver held it back by milliseconds (force cancel 2.2 ms median against
/// 0.66 ms without spinning, microbenchmark faults section).
pub(super) const FORK_QUIET: Duration = Duration::from_millis(5);

impl Scheduler {
    pub(super) fn read_fork_server(&mut self) {
        match ipc::recv_packet::<ForkReply>(&self.fork) {
            Ok(Some((msg, fds))) => self.on_fork(msg, fds),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => self.on_fork_server_gone(),
        }
    }

    pub(super) fn on_fork(&mut self, msg: ForkReply, mut fds: Vec<OwnedFd>) {
        match msg {
            ForkReply::Spawned { worker, pid } => {
                let Some(fd) = fds.pop() else { return };
                let stream = UnixStream::from(fd);
                let Some(w) = self.workers.get_mut(&worker) else {
                    return;
                };
                w.pid = pid;
                self.pids.insert(pid, worker);
                let interest = EpollEvent::new(EpollFlags::EPOLLIN, u64::from(worker));
                if stream.set_nonblocking(true).is_ok() && self.epoll.add(&stream, interest).is_ok()
                {
                    w.stream = Some(stream);
                } else {
                    // Unreachable for the scheduler: end it now (its exit is reported as usual).
                    w.hung_up = true;
                }
                if let Some(a) = w.actor {
                    self.mark_actor(a);
                }
                let Some(w) = self.workers.get(&worker) else {
                    return;
                };
                // Killed, or its actor gone, before it existed: end it now that it does.
                let unwanted = w.hung_up
                    || w.actor
                        .is_some_and(|a| self.actors.get(&a).is_none_or(|a| a.dead.is_some()));
                if unwanted {
                    self.on_hangup(worker);
                }
            }
            ForkReply::SpawnFailed { worker, message } => {
                eprintln!("rayfork: forking worker {worker} failed: {message}");
                let gone = self.workers.remove(&worker);
                self.pool.remove(&worker);
                if let Some(lane) = gone.as_ref().and_then(|w| w.lane) {
                    self.free_lanes.push(lane);
                }
                match gone.and_then(|w| w.actor) {
                    Some(a) => {
                        if let Some(actor) = self.actors.get_mut(&a) {
                            actor.slot = None;
                        }
                        self.actor_gone(a, format!("its process could not start: {message}"))
                    }
                    None => self.spawning = self.spawning.saturating_sub(1),
                }
            }
            ForkReply::StderrTail { pid, lines } => self.on_stderr_tail(pid, lines),
            ForkReply::Exited { pid, cause } => {
                if let Some(slot) = self.pids.remove(&pid) {
                    // What it sent before it died counts: a `Done` still unread would charge
                    // its crash to the task that finished (and spare the one that crashed).
                    while self.read_worker(slot) {}
                    self.on_worker_death(slot, cause);
                }
            }
        }
    }

    pub(super) fn on_fork_server_gone(&mut self) {
        self.fork_alive = false;
        // A closed socket is always readable: out of the set.
        let _ = self.epoll.delete(&self.fork);
        let slots: Vec<u32> = self.workers.keys().copied().collect();
        for slot in slots {
            self.on_worker_death(slot, ExitCause::Signal(libc::SIGKILL));
        }
        // Nothing can run any more: fail what is queued.
        let queued: Vec<Id> = self.queue.drain(..).collect();
        for t in queued {
            self.finish_task(t, Err(Error::Runtime("the fork server died".into())));
        }
    }

    pub(super) fn on_stderr_tail(&mut self, pid: i32, lines: Vec<String>) {
        if self.pids.contains_key(&pid) {
            self.stderr_tails.insert(pid, lines);
        }
    }

    /// A crash's cause: how the worker ended, and the last lines it wrote to stderr.
    pub(super) fn crash_cause(&mut self, pid: i32, cause: ExitCause) -> String {
        let mut text = cause.to_string();
        if let Some(lines) = self.stderr_tails.remove(&pid) {
            text.push_str("; its last stderr lines:");
            for l in lines {
                text.push_str("\n  | ");
                text.push_str(&l);
            }
        }
        text
    }
}
