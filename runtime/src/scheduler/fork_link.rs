//! The link to the fork server: fork and kill requests, and what it reports (a worker forked,
//! a fork failed, a worker exited, its last stderr lines). Must not touch objects.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::ipc::{self, PacketQueue};
use crate::protocol::{ExitCause, ForkReply, ForkRequest};
use crate::{Error, fork_server};

use super::Scheduler;
use super::pool::Link;
use super::requests::Deadline;

/// How long the scheduler does not spin after asking the fork server for a fork or a kill: the
/// fork server needs a CPU to do it (and to reap and report), and on 2 CPUs a spinning
/// scheduler and driver held it back by milliseconds (force cancel 2.2 ms median against
/// 0.66 ms without spinning, microbenchmark faults section).
const FORK_QUIET: Duration = Duration::from_millis(5);

/// The first back-off after a failed fork; it doubles with each failure in a row.
const SPAWN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off between failed forks.
const SPAWN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Failed forks in a row, with no pool worker left, after which the queued tasks fail
/// (`WorkerStartFailed`) instead of waiting for a fork that keeps failing.
const SPAWN_FAILURES_TO_GIVE_UP: u32 = 4;

/// The scheduler's end of the fork server's control socket, and the fork server's process.
pub(super) struct ForkLink {
    fd: OwnedFd,
    child: Child,
    /// The socket is open (it is not polled after it closed).
    alive: bool,
    /// No spinning before this: the fork server was just asked to fork or kill (`FORK_QUIET`).
    quiet_until: Instant,
    /// The last stderr lines of workers that just exited, by pid, until their death is handled.
    stderr_tails: HashMap<i32, Vec<String>>,
    /// Requests the socket has not taken yet: the scheduler never blocks on it.
    out: PacketQueue,
    /// The socket is in the epoll set for writability too (`out` waits for room).
    out_armed: bool,
    /// Forks that failed in a row (the OS refused: too many open files or processes...).
    failures: u32,
    /// No pool worker is asked for before this, after a failure (`spawn_failed`).
    retry_at: Instant,
}

impl ForkLink {
    /// Starts the fork server (rule 3 in fork_server.rs), handing it the arena's and the shared
    /// flags' memfds.
    pub(super) fn start(
        program: &Path,
        arena: RawFd,
        flags: RawFd,
        runtime: u32,
    ) -> crate::Result<ForkLink> {
        let (child, fd) = fork_server::spawn(program, arena, flags, runtime)?;
        Ok(ForkLink {
            fd,
            child,
            alive: true,
            quiet_until: Instant::now(),
            stderr_tails: HashMap::new(),
            out: PacketQueue::default(),
            out_armed: false,
            failures: 0,
            retry_at: Instant::now(),
        })
    }

    /// The control socket, for the epoll set.
    pub(super) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// False once the fork server is gone: no worker can be forked any more.
    pub(super) fn is_alive(&self) -> bool {
        self.alive
    }

    /// True while the fork server was just asked to fork or kill and needs the CPU.
    pub(super) fn is_busy(&self) -> bool {
        Instant::now() < self.quiet_until
    }

    /// True unless forks failed lately and the back-off has not passed: the pool asks for no
    /// worker meanwhile, and a blocked worker runs queued tasks nested instead (scheduler
    /// rule 2).
    pub(super) fn may_spawn(&self) -> bool {
        Instant::now() >= self.retry_at
    }

    /// Forks that failed in a row.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// A fork failed: backs off (doubling from `SPAWN_BACKOFF` to `SPAWN_BACKOFF_MAX`) and
    /// reports the first failure of a series; returns when to try again.
    pub(super) fn spawn_failed(&mut self, message: &str) -> Instant {
        self.failures += 1;
        if self.failures == 1 {
            eprintln!(
                "rayfork: forking a worker failed: {message}; retrying with back-off (further \
                 failures are not reported until a fork succeeds)"
            );
        }
        let backoff = SPAWN_BACKOFF.saturating_mul(1 << (self.failures - 1).min(16));
        self.retry_at = Instant::now() + backoff.min(SPAWN_BACKOFF_MAX);
        self.retry_at
    }

    /// A fork succeeded: the series of failures, if any, is over.
    fn spawn_succeeded(&mut self) {
        if self.failures > 0 {
            eprintln!(
                "rayfork: forking works again after {} failures",
                self.failures
            );
        }
        self.failures = 0;
        self.retry_at = Instant::now();
    }

    /// Asks for a worker in `slot`; false if the fork server is gone.
    pub(super) fn spawn(&mut self, slot: u32) -> bool {
        self.send(&ForkRequest::Spawn { worker: slot })
    }

    /// Asks for `pid` to be killed; its exit is reported as any other.
    pub(super) fn kill(&mut self, pid: i32) {
        self.send(&ForkRequest::Kill { pid });
    }

    /// Queues a request and sends what the socket takes now; false if the fork server is gone.
    fn send(&mut self, msg: &ForkRequest) -> bool {
        if !self.alive || self.out.push(msg, Vec::new()).is_err() {
            return false;
        }
        self.quiet_until = Instant::now() + FORK_QUIET;
        self.flush()
    }

    /// Sends what waits, as far as the socket takes it; false if the fork server is gone.
    pub(super) fn flush(&mut self) -> bool {
        self.out.flush(&self.fd).is_ok()
    }

    /// Requests wait for room in the socket: its writability must be watched (`set_armed`).
    pub(super) fn needs_armed(&self) -> Option<bool> {
        let waiting = !self.out.is_empty();
        (waiting != self.out_armed).then_some(waiting)
    }

    /// Notes that the epoll set now watches (or not) the socket's writability.
    pub(super) fn set_armed(&mut self, armed: bool) {
        self.out_armed = armed;
    }

    /// Closes the control socket, which makes the fork server kill and reap every worker
    /// (rule 3 in fork_server.rs), and reaps the fork server.
    pub(super) fn shutdown(&mut self) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = self.child.wait();
    }
}

impl Scheduler {
    pub(super) fn read_fork_server(&mut self) {
        match ipc::recv_packet::<ForkReply>(&self.fork.fd) {
            Ok(Some((msg, fds))) => self.on_fork(msg, fds),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => self.on_fork_server_gone(),
        }
    }

    pub(super) fn on_fork(&mut self, msg: ForkReply, mut fds: Vec<OwnedFd>) {
        match msg {
            ForkReply::Spawned { worker, pid } => {
                let Some(w) = self.pool.workers.get_mut(&worker) else {
                    return;
                };
                w.pid = pid;
                self.pool.pids.insert(pid, worker);
                let Some(fd) = fds.pop() else {
                    // The driver could not take the worker's socket (out of descriptors):
                    // a failed fork; the worker is ended and its exit reported as usual.
                    self.fork_failed(
                        "the driver could not receive its socket (too many open files?)",
                    );
                    return self.on_hangup(worker);
                };
                self.fork.spawn_succeeded();
                let Some(w) = self.pool.workers.get_mut(&worker) else {
                    return;
                };
                let stream = UnixStream::from(fd);
                // Killed before it existed (`Closed`), or unreachable: ended below, now that
                // it has a pid (its exit is reported as usual).
                let reachable = matches!(w.link, Link::Forking)
                    && stream.set_nonblocking(true).is_ok()
                    && self.io.watch(&stream, worker);
                w.link = if reachable {
                    Link::Open(stream)
                } else {
                    Link::Closed
                };
                if let Some(a) = w.actor {
                    self.mark_actor(a);
                }
                let Some(w) = self.pool.workers.get(&worker) else {
                    return;
                };
                // Killed, or its actor gone, before it existed: end it now that it does.
                let unwanted = !w.is_open()
                    || w.actor.is_some_and(|a| {
                        self.actors.by_id.get(&a).is_none_or(|a| a.dead().is_some())
                    });
                if unwanted {
                    self.on_hangup(worker);
                }
            }
            ForkReply::SpawnFailed { worker, message } => {
                let gone = self.pool.remove(worker);
                if let Some(lane) = gone.as_ref().and_then(|w| w.lane) {
                    self.lanes.give_back(lane);
                }
                if let Some(a) = gone.and_then(|w| w.actor) {
                    if let Some(actor) = self.actors.by_id.get_mut(&a) {
                        actor.slot = None;
                    }
                    self.actor_gone(a, format!("its process could not start: {message}"));
                }
                self.fork_failed(&message);
            }
            ForkReply::StderrTail { pid, lines } => self.on_stderr_tail(pid, lines),
            ForkReply::Exited { pid, cause } => {
                if let Some(slot) = self.pool.pids.remove(&pid) {
                    // What it sent before it died counts: a `Done` still unread would charge
                    // its crash to the task that finished (and spare the one that crashed).
                    while self.read_worker(slot) {}
                    self.on_worker_death(slot, cause);
                }
            }
        }
    }

    pub(super) fn on_fork_server_gone(&mut self) {
        self.fork.alive = false;
        // A closed socket is always readable: out of the set.
        self.io.forget(&self.fork.fd);
        let slots: Vec<u32> = self.pool.workers.keys().copied().collect();
        for slot in slots {
            self.on_worker_death(slot, ExitCause::Signal(libc::SIGKILL));
        }
        self.fail_queue_no_fork_server();
    }

    /// Nothing can run any more: fails what is queued.
    pub(super) fn fail_queue_no_fork_server(&mut self) {
        for t in std::mem::take(&mut self.queue) {
            let reason = "its fork server died, so no worker can be started".to_string();
            self.finish_task(t, Err(Error::RuntimeStopped { reason }));
        }
    }

    pub(super) fn on_stderr_tail(&mut self, pid: i32, lines: Vec<String>) {
        if self.pool.pids.contains_key(&pid) {
            self.fork.stderr_tails.insert(pid, lines);
        }
    }

    /// A crash's cause: how the worker ended, and the last lines it wrote to stderr.
    pub(super) fn crash_cause(&mut self, pid: i32, cause: ExitCause) -> String {
        let mut text = cause.to_string();
        if let Some(lines) = self.fork.stderr_tails.remove(&pid) {
            text.push_str("; its last stderr lines:");
            for l in lines {
                text.push_str("\n  | ");
                text.push_str(&l);
            }
        }
        text
    }

    /// A fork failed: back off (the loop wakes for the retry), and if no pool worker is left to
    /// run anything, fail what is queued with the OS's reason instead of waiting for ever.
    fn fork_failed(&mut self, message: &str) {
        let retry = self.fork.spawn_failed(message);
        self.deadlines.push(retry, Deadline::ForkRetry);
        if self.pool.size() == 0 && self.fork.failures() >= SPAWN_FAILURES_TO_GIVE_UP {
            for t in std::mem::take(&mut self.queue) {
                let Some(task) = self.tasks.get(&t) else {
                    continue;
                };
                let err = Error::WorkerStartFailed {
                    task: task.name.clone(),
                    message: message.to_string(),
                };
                self.finish_task(t, Err(err));
            }
        }
    }
}
