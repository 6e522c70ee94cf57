//! Moving protocol messages between processes: length-prefixed frames on stream sockets (driver
//! <-> worker) and packets carrying file descriptors (fork server -> driver).
//!
//! Owns framing, size limits, fd passing and the spin-then-sleep policy of waiting threads. It
//! knows nothing of what the messages mean.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, recv, recvmsg, send, sendmsg,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;

/// Frames larger than this are refused as corrupt (values this big go through the store).
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// The largest frame the scheduler takes from a worker. A worker's messages carry ids and
/// small inline values (larger ones go through the store), so this is far more than any of
/// them needs; a larger header is a corrupt or hostile worker, refused before any byte of it
/// is buffered.
pub(crate) const MAX_WORKER_FRAME: usize = 256 << 20;

/// Largest fork-server packet.
const MAX_PACKET: usize = 64 * 1024;

/// Appends `msg` as one frame (u32 little-endian length, then bincode) to `buf`.
fn frame<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    if let Err(e) = codec::encode_into(msg, buf) {
        buf.truncate(at);
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    let len = buf.len() - at - 4;
    if len > MAX_FRAME {
        buf.truncate(at);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the frame limit"),
        ));
    }
    buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Bytes a reader asks the kernel for at least, per read.
const READ_CHUNK: usize = 64 * 1024;

/// A reader keeps a buffer this large after a big frame; a larger one is given back.
const KEEP_BUFFER: usize = 1 << 20;

/// Incoming bytes of a stream socket, cut into frames.
///
/// The buffer is always initialized (`buf.len()` is its capacity); `buf[start..end]` holds
/// bytes received but not yet decoded.
///
/// Its buffer grows with the bytes that arrive (at most twice what is buffered, plus a read
/// chunk), never with what a header announces: a header announcing a large frame costs
/// nothing until its bytes come.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Frames announcing more bytes than this are refused as corrupt.
    limit: usize,
    /// Bytes received so far, for telling a stalled frame from a slow one.
    received: u64,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::with_limit(MAX_FRAME)
    }
}

impl FrameReader {
    /// A reader that refuses frames of more than `limit` bytes.
    pub(crate) fn with_limit(limit: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            limit,
            received: 0,
        }
    }

    /// True while part of a frame is buffered and the rest has not come.
    pub(crate) fn in_frame(&self) -> bool {
        self.start < self.end
    }

    /// Bytes received since the reader was made.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The next complete frame, if one is buffered. A frame that fails to decode is an error:
    /// the stream is corrupt and must be dropped.
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let avail = &self.buf[self.start..self.end];
        let Some(len) = frame_len(avail, self.limit)? else {
            return Ok(None);
        };
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let msg = codec::decode(&avail[4..4 + len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.start += 4 + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
        }
        Ok(Some(msg))
    }

    /// Reads what the socket gives in one `recv` (with `flags`, e.g. `MSG_DONTWAIT`).
    /// `Ok(0)` means the peer closed; `WouldBlock` means nothing is there yet.
    pub(crate) fn fill(&mut self, sock: &impl AsFd, flags: MsgFlags) -> io::Result<usize> {
        self.make_room()?;
        loop {
            match recv(sock.as_fd().as_raw_fd(), &mut self.buf[self.end..], flags) {
                Ok(n) => {
                    self.end += n;
                    self.received += n as u64;
                    return Ok(n);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes room for at least one read chunk, and for more of the frame being received: up to
    /// the whole frame, but never more than twice what is buffered (plus a chunk), so that
    /// the buffer grows with the bytes that arrive, not with what the header announces.
    fn make_room(&mut self) -> io::Result<()> {
        let pending = self.end - self.start;
        let need = match frame_len(&self.buf[self.start..self.end], self.limit)? {
            Some(len) => (4 + len)
                .min(2 * pending + READ_CHUNK)
                .max(pending + READ_CHUNK),
            None => pending + READ_CHUNK,
        };
        if self.buf.len() - self.end < READ_CHUNK.min(need - pending) && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        if self.buf.len() - self.start < need {
            self.buf.resize(self.start + need, 0);
        }
        Ok(())
    }
}

/// The length announced by the frame header at the start of `bytes`, once it is complete.
fn frame_len(bytes: &[u8], limit: usize) -> io::Result<Option<usize>> {
    let Some(head) = bytes.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*head) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit"),
        ));
    }
    Ok(Some(len))
}

/// Outgoing frames of a stream socket that the kernel has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
    sent: usize,
}

impl FrameWriter {
    /// Queues one message.
    pub(crate) fn push<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        frame(msg, &mut self.buf)
    }

    /// Nothing is waiting to be sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    /// Sends what is queued. With `MSG_DONTWAIT` it stops when the socket is full and returns
    /// `Ok(false)`; `Ok(true)` once everything went out.
    pub(crate) fn flush(&mut self, sock: &impl AsFd, flags: MsgFlags) -> io::Result<bool> {
        while self.sent < self.buf.len() {
            match send(
                sock.as_fd().as_raw_fd(),
                &self.buf[self.sent..],
                flags | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => self.sent += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        self.sent = 0;
        self.buf.clear();
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        Ok(true)
    }
}

/// How long a thread waiting for a message polls for it before it sleeps in the kernel.
///
/// Waking a sleeping thread on another CPU costs tens of microseconds on a virtual machine; a
/// short spin hides it for the back-and-forth of small tasks. `RAYFORK_SPIN_US` overrides it
/// (`0` turns spinning off), read once per process.
pub(crate) fn spin_budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let us = std::env::var("RAYFORK_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SPIN_US);
        Duration::from_micros(us)
    })
}

/// The default of [`spin_budget`], in microseconds.
const DEFAULT_SPIN_US: u64 = 50;

/// Calls `poll` until it gives a value or the spin budget is spent, yielding the CPU between
/// calls so that a peer on the same CPU can run.
pub(crate) fn spin<T>(mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let budget = spin_budget();
    if budget.is_zero() {
        return poll();
    }
    let start = Instant::now();
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        if start.elapsed() >= budget {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Outgoing packets of a `SOCK_SEQPACKET` socket (the fork server's control socket), with the
/// fds each carries, sent without ever blocking: what the kernel does not take waits here
/// until the socket has room (the owner polls it for writability while `!is_empty()`). So
/// the scheduler and the fork server never block writing to each other.
#[derive(Debug, Default)]
pub(crate) struct PacketQueue {
    packets: std::collections::VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
}

impl PacketQueue {
    /// Queues `msg` with `fds` (closed here once sent).
    pub(crate) fn push<T: Serialize>(&mut self, msg: &T, fds: Vec<OwnedFd>) -> io::Result<()> {
        let bytes =
            codec::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if bytes.len() > MAX_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("packet of {} bytes exceeds {MAX_PACKET}", bytes.len()),
            ));
        }
        self.packets.push_back((bytes, fds));
        Ok(())
    }

    /// Nothing waits to be sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Sends what the socket takes now. `Ok(true)` once the queue is empty, `Ok(false)` when
    /// the socket is full; an error when the peer is gone.
    pub(crate) fn flush(&mut self, sock: &impl AsFd) -> io::Result<bool> {
        while let Some((bytes, fds)) = self.packets.front() {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let iov = [io::IoSlice::new(bytes)];
            let cmsgs = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
            match sendmsg::<()>(
                sock.as_fd().as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(_) => {
                    self.packets.pop_front();
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

/// Receives one packet and the fds attached to it. `Ok(None)` when the peer is gone.
pub(crate) fn recv_packet<T: DeserializeOwned>(
    sock: &impl AsFd,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: SCM_RIGHTS just installed `fd` in this process's fd table;
                            // nothing else knows it, so this OwnedFd is its only owner.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let msg =
        codec::decode(&buf[..len]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fds)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn the_buffer_grows_with_the_bytes_that_arrive_not_with_the_header() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let mut r = FrameReader::with_limit(MAX_WORKER_FRAME);
        let mut bytes = (200u32 << 20).to_le_bytes().to_vec();
        bytes.resize(4 + 1024, 7);
        tx.write_all(&bytes).unwrap();
        while r.received() < bytes.len() as u64 {
            r.fill(&rx, MsgFlags::empty()).unwrap();
        }
        assert!(r.in_frame());
        assert!(r.next::<u32>().unwrap().is_none());
        assert!(r.buf.len() < 1 << 20, "buffer of {} bytes", r.buf.len());
        // The rest of the frame makes it grow, in steps, to the whole frame.
        let rest = vec![0u8; (200 << 20) - 1024];
        std::thread::scope(|s| {
            s.spawn(|| tx.write_all(&rest).unwrap());
            while r.received() < 4 + (200 << 20) {
                r.fill(&rx, MsgFlags::empty()).unwrap();
            }
        });
        assert!(r.buf.len() >= 4 + (200 << 20));
    }

    #[test]
    fn a_header_over_the_limit_is_refused_before_its_bytes() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let mut r = FrameReader::with_limit(MAX_WORKER_FRAME);
        tx.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
        r.fill(&rx, MsgFlags::empty()).unwrap();
        let e = r.fill(&rx, MsgFlags::MSG_DONTWAIT).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(r.buf.len() < 1 << 20);
    }
}
