//! The scheduler's I/O: the epoll set over every socket it reads, reading whole messages
//! from workers and flushing what waits for them. Decides nothing about tasks.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::MsgFlags;
use nix::sys::time::TimeSpec;

use crate::protocol::{FromWorker, ToWorker};

use super::Scheduler;
use super::messages::{Client, ClientKey};

/// The epoll tokens of the fork server's socket and the doorbell; a worker's is its slot.
pub(super) const FORK_TOKEN: u64 = u64::MAX;

pub(super) const BELL_TOKEN: u64 = u64::MAX - 1;

/// Events taken from epoll per call.
pub(super) const READY_EVENTS: usize = 64;

impl Scheduler {
    /// Handles what arrived on the sockets (and marks the workers whose socket has room for
    /// their waiting output). With `sleep`, first sleeps until something arrives or the timeout
    /// (`None`: none) passes. True if anything happened.
    pub(super) fn poll_sockets(&mut self, sleep: Option<Option<Duration>>) -> bool {
        if let Some(timeout) = sleep {
            // To the microsecond: ppoll on the epoll fd, readable when any of its fds is.
            let mut fds = [PollFd::new(self.epoll.0.as_fd(), PollFlags::POLLIN)];
            let _ = ppoll(&mut fds, timeout.map(TimeSpec::from_duration), None);
        }
        let mut ready = std::mem::take(&mut self.ready);
        let n = self.epoll.wait(&mut ready, 0u8).unwrap_or(0);
        let mut worked = false;
        for ev in &ready[..n] {
            let flags = ev.events();
            match ev.data() {
                BELL_TOKEN => self.bell.drain(),
                FORK_TOKEN => {
                    worked = true;
                    self.read_fork_server();
                }
                slot => {
                    let slot = slot as u32;
                    if !self.workers.contains_key(&slot) {
                        continue;
                    }
                    worked = true;
                    if flags.contains(EpollFlags::EPOLLOUT) {
                        self.unflushed.push(slot);
                    }
                    let readable =
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                    if flags.intersects(readable) {
                        self.read_worker(slot);
                    }
                }
            }
        }
        self.ready = ready;
        worked
    }

    /// Reads what worker `slot` sent (one buffer's worth) and handles each whole message. True
    /// if it read something and the socket is still open.
    pub(super) fn read_worker(&mut self, slot: u32) -> bool {
        let Some(w) = self.workers.get_mut(&slot) else {
            return false;
        };
        let Some(stream) = &w.stream else {
            return false;
        };
        let (read, closed) = match w.reader.fill(stream, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => (false, true),
            Ok(_) => (true, false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (false, false),
            Err(_) => (false, true),
        };
        loop {
            let Some(w) = self.workers.get_mut(&slot) else {
                return false;
            };
            if w.stream.is_none() {
                return false;
            }
            match w.reader.next::<FromWorker>() {
                Ok(Some(msg)) => self.on_message(Client::Worker(slot), msg),
                Ok(None) => break,
                Err(e) => {
                    self.kill_worker(slot, &format!("unreadable message: {e}"));
                    return false;
                }
            }
        }
        if closed {
            self.on_hangup(slot);
        }
        read
    }

    /// Sends what every worker has queued, as far as its socket takes it without blocking.
    pub(super) fn flush(&mut self) {
        let mut slots = std::mem::take(&mut self.unflushed);
        slots.sort_unstable();
        slots.dedup();
        for &slot in &slots {
            let Some(w) = self.workers.get_mut(&slot) else {
                continue;
            };
            let Some(stream) = &w.stream else { continue };
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
                if self.epoll.modify(stream, &mut ev).is_ok() {
                    w.out_armed = waiting;
                }
            }
        }
        slots.clear();
        self.unflushed = slots;
    }

    pub(super) fn send_to(&mut self, slot: u32, msg: &ToWorker) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        if w.stream.is_none() {
            return;
        }
        if w.out.push(msg).is_err() {
            return self.kill_worker(slot, "a message to it could not be encoded");
        }
        self.unflushed.push(slot);
    }

    pub(super) fn reply(&mut self, client: &ClientKey, msg: ToWorker) {
        match client {
            ClientKey::Driver(tx) => {
                let _ = tx.send(msg);
            }
            ClientKey::Worker(slot) => self.send_to(*slot, &msg),
        }
    }
}
