//! The scheduler's I/O: the epoll set over every socket it reads, reading whole messages
//! from workers and flushing what waits for them. Decides nothing about tasks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::MsgFlags;
use nix::sys::time::TimeSpec;

use crate::Error;
use crate::protocol::{FromWorker, ToWorker};

use super::Scheduler;
use super::messages::Requester;
use super::pool::Link;
use super::requests::Deadline;

/// The epoll tokens of the fork server's socket and the doorbell; a worker's is its slot.
const FORK_TOKEN: u64 = u64::MAX;
const BELL_TOKEN: u64 = u64::MAX - 1;

/// Events taken from epoll per call.
const EPOLL_EVENTS: usize = 64;

/// How long a partial frame from a worker may go without a byte before the worker is killed.
/// A worker writes each frame whole, in one blocking send, so only a stopped or hostile one
/// leaves a frame half sent.
const FRAME_STALL: Duration = Duration::from_secs(10);

/// Whether `poll_sockets` may sleep first.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sleep {
    /// Take what is there and return.
    No,
    /// Sleep until a socket has something, or until the deadline passes (`None`: no deadline).
    Until(Option<Duration>),
}

/// Every socket the scheduler reads (workers by slot, the fork server, the doorbell) in one
/// epoll set: a loop turn costs the sockets that have something, not one poll entry per worker.
pub(super) struct Io {
    epoll: Epoll,
    /// The buffer `epoll` fills.
    events: Vec<EpollEvent>,
    /// Workers with queued output, flushed once per turn of the loop.
    unflushed: Vec<u32>,
}

impl Io {
    pub(super) fn new(fork: &OwnedFd, bell: BorrowedFd<'_>) -> crate::Result<Io> {
        let os = |what: &'static str| move |e: nix::Error| Error::os(what, std::io::Error::from(e));
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(os("epoll_create1"))?;
        epoll
            .add(fork, EpollEvent::new(EpollFlags::EPOLLIN, FORK_TOKEN))
            .map_err(os("epoll_ctl"))?;
        epoll
            .add(bell, EpollEvent::new(EpollFlags::EPOLLIN, BELL_TOKEN))
            .map_err(os("epoll_ctl"))?;
        Ok(Io {
            epoll,
            events: vec![EpollEvent::empty(); EPOLL_EVENTS],
            unflushed: Vec::new(),
        })
    }

    /// Adds worker `slot`'s socket to the set, for reading; false if epoll refused it.
    pub(super) fn watch(&self, stream: &UnixStream, slot: u32) -> bool {
        let interest = EpollEvent::new(EpollFlags::EPOLLIN, u64::from(slot));
        self.epoll.add(stream, interest).is_ok()
    }

    /// Takes a socket out of the set, before it closes: a copy of the fd (a fork in the
    /// driver) would otherwise keep a registration no one can remove.
    pub(super) fn forget(&self, fd: impl AsFd) {
        let _ = self.epoll.delete(fd);
    }

    /// Notes that worker `slot` has output waiting, to flush this turn.
    pub(super) fn mark_unflushed(&mut self, slot: u32) {
        self.unflushed.push(slot);
    }
}

impl Scheduler {
    /// Handles what arrived on the sockets (and marks the workers whose socket has room for
    /// their waiting output), after sleeping first if `sleep` says so. True if anything
    /// happened.
    pub(super) fn poll_sockets(&mut self, sleep: Sleep) -> bool {
        if let Sleep::Until(timeout) = sleep {
            // To the microsecond: ppoll on the epoll fd, readable when any of its fds is.
            let mut fds = [PollFd::new(self.io.epoll.0.as_fd(), PollFlags::POLLIN)];
            let _ = ppoll(&mut fds, timeout.map(TimeSpec::from_duration), None);
        }
        let mut ready = std::mem::take(&mut self.io.events);
        let n = self.io.epoll.wait(&mut ready, 0u8).unwrap_or(0);
        let mut worked = false;
        for ev in &ready[..n] {
            let flags = ev.events();
            match ev.data() {
                BELL_TOKEN => self.bell.drain(),
                FORK_TOKEN => {
                    worked = true;
                    if flags.contains(EpollFlags::EPOLLOUT) && !self.fork.flush() {
                        self.on_fork_server_gone();
                        continue;
                    }
                    let readable =
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                    if flags.intersects(readable) && self.fork.is_alive() {
                        self.read_fork_server();
                    }
                }
                slot => {
                    let slot = slot as u32;
                    if !self.pool.workers.contains_key(&slot) {
                        continue;
                    }
                    worked = true;
                    if flags.contains(EpollFlags::EPOLLOUT) {
                        self.io.unflushed.push(slot);
                    }
                    let readable =
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                    if flags.intersects(readable) {
                        self.read_worker(slot);
                    }
                }
            }
        }
        self.io.events = ready;
        worked
    }

    /// Reads what worker `slot` sent (one buffer's worth) and handles each whole message. True
    /// if it read something and the socket is still open.
    pub(super) fn read_worker(&mut self, slot: u32) -> bool {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return false;
        };
        let Link::Open(stream) = &w.link else {
            return false;
        };
        let (read, closed) = match w.reader.fill(stream, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => (false, true),
            Ok(_) => (true, false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (false, false),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.kill_worker(slot, &format!("unreadable message: {e}"));
                return false;
            }
            Err(_) => (false, true),
        };
        loop {
            let Some(w) = self.pool.workers.get_mut(&slot) else {
                return false;
            };
            if !w.is_open() {
                return false;
            }
            match w.reader.next::<FromWorker>() {
                Ok(Some(msg)) => self.on_message(Requester::Worker(slot), msg),
                Ok(None) => break,
                Err(e) => {
                    self.kill_worker(slot, &format!("unreadable message: {e}"));
                    return false;
                }
            }
        }
        if closed {
            self.on_hangup(slot);
        } else {
            self.watch_partial_frame(slot);
        }
        read
    }

    /// Arms a check of worker `slot`'s partial frame, if it has one and none is armed: a frame
    /// whose bytes stop coming for `FRAME_STALL` would swallow the worker's next messages, so
    /// its worker is killed instead (`on_frame_stall`).
    fn watch_partial_frame(&mut self, slot: u32) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        if w.reader.in_frame() && !w.stall_watched {
            w.stall_watched = true;
            let received = w.reader.received();
            let check = Deadline::FrameStall { slot, received };
            self.deadlines.push(Instant::now() + FRAME_STALL, check);
        }
    }

    /// A partial frame's check is due: kill its worker if no byte came since it was armed,
    /// look again later if some did.
    pub(super) fn on_frame_stall(&mut self, slot: u32, received: u64) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        w.stall_watched = false;
        if !w.reader.in_frame() {
            return;
        }
        if w.reader.received() == received {
            let why = format!("a partial frame got no byte for {FRAME_STALL:?}");
            return self.kill_worker(slot, &why);
        }
        self.watch_partial_frame(slot);
    }

    /// Sends what every worker and the fork server have queued, as far as each socket takes it
    /// without blocking; a socket left with output is watched for room.
    pub(super) fn flush(&mut self) {
        self.flush_fork_server();
        self.flush_workers();
    }

    fn flush_fork_server(&mut self) {
        if !self.fork.is_alive() {
            return;
        }
        if !self.fork.flush() {
            return self.on_fork_server_gone();
        }
        if let Some(armed) = self.fork.needs_armed() {
            let mut interest = EpollFlags::EPOLLIN;
            if armed {
                interest |= EpollFlags::EPOLLOUT;
            }
            let mut ev = EpollEvent::new(interest, FORK_TOKEN);
            if self.io.epoll.modify(self.fork.fd(), &mut ev).is_ok() {
                self.fork.set_armed(armed);
            }
        }
    }

    fn flush_workers(&mut self) {
        let mut slots = std::mem::take(&mut self.io.unflushed);
        slots.sort_unstable();
        slots.dedup();
        for &slot in &slots {
            let Some(w) = self.pool.workers.get_mut(&slot) else {
                continue;
            };
            let Link::Open(stream) = &w.link else {
                continue;
            };
            // A full socket keeps the rest until epoll says it has room (see `poll_sockets`).
            if w.out.flush(stream, MsgFlags::MSG_DONTWAIT).is_err() {
                self.on_hangup(slot);
                continue;
            }
            let waiting = !w.out.is_empty();
            if waiting != w.out_armed {
                let mut interest = EpollFlags::EPOLLIN;
                if waiting {
                    interest |= EpollFlags::EPOLLOUT;
                }
                let mut ev = EpollEvent::new(interest, u64::from(slot));
                if self.io.epoll.modify(stream, &mut ev).is_ok() {
                    w.out_armed = waiting;
                }
            }
        }
        slots.clear();
        self.io.unflushed = slots;
    }

    pub(super) fn send_to(&mut self, slot: u32, msg: &ToWorker) {
        let Some(w) = self.pool.workers.get_mut(&slot) else {
            return;
        };
        if !w.is_open() {
            return;
        }
        if w.out.push(msg).is_err() {
            return self.kill_worker(slot, "a message to it could not be encoded");
        }
        self.io.mark_unflushed(slot);
    }

    pub(super) fn reply(&mut self, client: &Requester, msg: ToWorker) {
        match client {
            Requester::Driver(None) => {}
            Requester::Driver(Some(tx)) => {
                let _ = tx.send(msg);
            }
            Requester::Worker(slot) => self.send_to(*slot, &msg),
        }
    }
}
