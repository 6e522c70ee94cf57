//! The fork server: a single-threaded process, exec'd from the driver's own binary, that forks
//! worker processes on request and reports their exits.
//!
//! Owns the process layout of a runtime (see "Processes" in design.md): the role hook that runs
//! before `main`, starting the fork server from the driver, forking workers, fate sharing, and
//! reaping, and the entry point of an external worker program (`worker_program_main`). It must
//! not touch tasks or objects; a forked worker goes straight to `worker_loop::run`.
//!
//! Rules:
//! 1. The driver never forks itself (it may have threads). It exec's a program (its own binary
//!    by default) with `RAYFORK_ROLE=fork-server`; the role hook catches that before `main`.
//! 2. The fork server is single-threaded, so `fork()` from it is sound whatever the driver does.
//! 3. Fate sharing: the fork server gets SIGTERM when the driver thread that started it (the
//!    scheduler thread) ends, workers get SIGKILL when the fork server ends
//!    (PR_SET_PDEATHSIG), and each checks its parent after setting it, to close the race with a
//!    parent that died first. When the driver closes the control socket, or SIGTERM comes, the
//!    fork server kills and reaps every worker, then exits.
//! 6. Each worker leads a process group of its own, which the processes a task starts join:
//!    every kill of a worker (a cancel, a retirement's end, the runtime's end) and every reap
//!    of one (a crash) sends SIGKILL to the whole group, so a task's children die with it. A
//!    child that leaves the group (`setsid`, `setpgid`) is out of reach.
//! 4. Every child is reaped by the fork server (SIGCHLD through a signalfd) and its exit cause is
//!    sent to the driver; the driver reaps the fork server.
//! 5. A worker's stderr is a pipe to the fork server, which forwards every byte to its own
//!    stderr (the driver's) and keeps the worker's last `TAIL_LINES` lines; when it reaps the
//!    worker it drains the pipe and sends those lines (`StderrTail`) just before `Exited`, so
//!    a crash report can say what the worker said last.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getppid};

use crate::protocol::{ExitCause, ForkReply, ForkRequest};
use crate::shared_flags::SharedFlags;
use crate::{Error, Result, ipc, worker_loop};

const ROLE_VAR: &str = "RAYFORK_ROLE";
const CTRL_VAR: &str = "RAYFORK_CTRL_FD";
const ARENA_VAR: &str = "RAYFORK_ARENA_FD";
const FLAGS_VAR: &str = "RAYFORK_FLAGS_FD";
const PARENT_VAR: &str = "RAYFORK_PARENT_PID";
const RUNTIME_VAR: &str = "RAYFORK_RUNTIME";
const ROLE_FORK_SERVER: &str = "fork-server";

/// The role hook: runs before `main` in every binary that links rayfork.
extern "C" fn role_hook() {
    if std::env::var_os(ROLE_VAR).is_some() {
        run_role();
    }
}

/// Registers `role_hook` as an ELF constructor. `Runtime::start` reads this static, which keeps
/// the object file that holds it (and so the hook) in every binary that starts a runtime.
#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()` run once by the loader before
// `main`; `role_hook` has that type and only reads the environment unless the role is set.
#[unsafe(link_section = ".init_array")]
pub(crate) static ROLE_HOOK: extern "C" fn() = role_hook;

/// Runs the role named in the environment, if any; never returns when one is set.
/// `worker_program_main` calls this too, for external worker programs.
pub(crate) fn run_role() {
    let Some(role) = std::env::var_os(ROLE_VAR) else {
        return;
    };
    let code = if role == ROLE_FORK_SERVER {
        match fork_server_from_env() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rayfork fork server: {e}");
                1
            }
        }
    } else {
        eprintln!("rayfork: unknown {ROLE_VAR}={role:?}");
        2
    };
    std::process::exit(code);
}

/// The entry point of an external worker program (see `Config::worker_program`).
///
/// A binary whose `main` calls this can be used as the worker program of a runtime whose
/// driver registers the same `#[remote]` functions: include the same modules in both (for
/// example with `#[path]`); a function is found by its module path, without the crate name,
/// when the full path differs. Run by hand, it explains itself and exits.
///
/// ```no_run
/// // src/main.rs of a worker program:
/// rayfork::worker::main()
/// ```
pub fn worker_program_main() {
    run_role();
    eprintln!(
        "this is a rayfork worker program: a rayfork driver starts it \
         (Config::worker_program); it does nothing on its own"
    );
    std::process::exit(2);
}

fn env_fd(var: &str) -> Result<OwnedFd> {
    let raw: RawFd = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Runtime(format!("{var} is missing or not a number")))?;
    // SAFETY: fcntl on any integer is sound; it fails with EBADF if `raw` is not open.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(Error::os(var, std::io::Error::last_os_error()));
    }
    // SAFETY: the driver placed this fd in our table for us alone before exec (`spawn`), and
    // F_SETFD just proved it is open; nothing else in this process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn fork_server_from_env() -> Result<()> {
    let parent: i32 = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if getppid().as_raw() != parent {
        return Err(Error::Runtime(
            "the driver exited before the fork server started".into(),
        ));
    }
    let ctrl = env_fd(CTRL_VAR)?;
    let arena = env_fd(ARENA_VAR)?;
    let flags = env_fd(FLAGS_VAR)?;
    let runtime: u32 = std::env::var(RUNTIME_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Runtime(format!("{RUNTIME_VAR} is missing or not a number")))?;
    for var in [
        ROLE_VAR,
        CTRL_VAR,
        ARENA_VAR,
        FLAGS_VAR,
        PARENT_VAR,
        RUNTIME_VAR,
    ] {
        // SAFETY: we run before `main` (or at the top of `worker_program_main`) in a process
        // that has started no thread, so nothing can read the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    let arena = std::sync::Arc::new(
        rayfork_plasma::ShmArena::from_fd(arena).map_err(|e| Error::os("attach arena", e))?,
    );
    let flags = std::sync::Arc::new(SharedFlags::from_fd(flags)?);
    serve(
        ctrl,
        WorkerKit {
            arena,
            flags,
            runtime,
        },
    )
}

/// What every worker of the runtime starts with, beside its own socket.
struct WorkerKit {
    arena: std::sync::Arc<rayfork_plasma::ShmArena>,
    flags: std::sync::Arc<SharedFlags>,
    /// The runtime's number in the driver's process (the top bits of its ids).
    runtime: u32,
}

/// The fork server's loop (rule 2: single-threaded).
fn serve(ctrl: OwnedFd, kit: WorkerKit) -> Result<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    // The driver's death (PR_SET_PDEATHSIG, rule 3): end as when it closes the socket.
    mask.add(Signal::SIGTERM);
    mask.thread_block()
        .map_err(|e| Error::os("block SIGCHLD and SIGTERM", e))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::os("signalfd", e))?;
    let mut children: HashSet<i32> = HashSet::new();
    let mut tails: HashMap<i32, StderrTail> = HashMap::new();
    // Replies the driver's socket has not taken yet: never block writing to it (the driver's
    // scheduler may be writing to us at the same time).
    let mut out = ipc::PacketQueue::default();
    loop {
        let (ctrl_ready, sig_ready, talking) = {
            // Pipes at EOF are left out: they would report POLLHUP for ever.
            let open: Vec<i32> = tails
                .iter()
                .filter(|(_, t)| !t.eof)
                .map(|(&p, _)| p)
                .collect();
            let ctrl_events = if out.is_empty() {
                PollFlags::POLLIN
            } else {
                PollFlags::POLLIN | PollFlags::POLLOUT
            };
            let mut fds = vec![
                PollFd::new(ctrl.as_fd(), ctrl_events),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                open.iter()
                    .map(|p| PollFd::new(tails[p].fd.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::os("poll", e)),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let talking: Vec<i32> = open
                .iter()
                .zip(&fds[2..])
                .filter(|(_, f)| ready(f))
                .map(|(&p, _)| p)
                .collect();
            // Readable, or closed: a request (or the driver's end) waits. Writable alone only
            // lets `out` go on, below.
            let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
            let ctrl_readable = fds[0].revents().is_some_and(|r| r.intersects(readable));
            (ctrl_readable, ready(&fds[1]), talking)
        };
        for pid in talking {
            if let Some(t) = tails.get_mut(&pid) {
                t.drain();
            }
        }
        if sig_ready {
            let mut driver_gone = false;
            while let Ok(Some(info)) = sigfd.read_signal() {
                driver_gone |= info.ssi_signo == Signal::SIGTERM as u32;
            }
            reap(&mut out, &mut children, &mut tails);
            if driver_gone {
                break;
            }
        }
        if ctrl_ready {
            match ipc::recv_packet::<ForkRequest>(&ctrl) {
                Ok(Some((ForkRequest::Spawn { worker }, _))) => {
                    let inherited: Vec<RawFd> = tails.values().map(|t| t.fd.as_raw_fd()).collect();
                    let spawned = spawn_worker(worker, &ctrl, &sigfd, &inherited, &mask, &kit);
                    let queued = match spawned {
                        Ok((pid, driver_end, stderr)) => {
                            children.insert(pid);
                            tails.insert(pid, StderrTail::new(stderr));
                            out.push(&ForkReply::Spawned { worker, pid }, vec![driver_end])
                        }
                        Err(e) => {
                            let message = e.to_string();
                            out.push(&ForkReply::SpawnFailed { worker, message }, Vec::new())
                        }
                    };
                    if queued.is_err() {
                        break;
                    }
                }
                Ok(Some((ForkRequest::Kill { pid }, _))) => {
                    if children.contains(&pid) {
                        kill_group(pid);
                    }
                }
                // The driver is gone or spoke nonsense: shut down (rule 3).
                Ok(None) | Err(_) => break,
            }
        }
        // The driver is gone if its socket refuses what waits for it (rule 3).
        if out.flush(&ctrl).is_err() {
            break;
        }
    }
    for &pid in &children {
        kill_group(pid);
    }
    for pid in children.drain() {
        let _ = waitpid(Pid::from_raw(pid), None);
    }
    Ok(())
}

/// SIGKILLs worker `pid` and its process group (rule 6): the processes its tasks started.
fn kill_group(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Reaps every exited child and reports it (rules 4 and 5).
fn reap(
    out: &mut ipc::PacketQueue,
    children: &mut HashSet<i32>,
    tails: &mut HashMap<i32, StderrTail>,
) {
    loop {
        let cause = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitCause::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitCause::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let pid = cause.0.as_raw();
        if let Some(mut tail) = tails.remove(&pid) {
            tail.drain();
            if !tail.lines.is_empty() && children.contains(&pid) {
                let lines = tail.lines.into_iter().collect();
                let _ = out.push(&ForkReply::StderrTail { pid, lines }, Vec::new());
            }
        }
        // Rule 6: what its task started dies with it.
        kill_group(pid);
        if children.remove(&pid) {
            let exited = ForkReply::Exited {
                pid,
                cause: cause.1,
            };
            let _ = out.push(&exited, Vec::new());
        }
    }
}

/// Forks one worker. Returns its pid, the driver's end of its socket and the read end of its
/// stderr pipe (non-blocking). `inherited` are fds of the fork server the child must close.
fn spawn_worker(
    worker: u32,
    ctrl: &OwnedFd,
    sigfd: &SignalFd,
    inherited: &[RawFd],
    mask: &SigSet,
    kit: &WorkerKit,
) -> Result<(i32, OwnedFd, OwnedFd)> {
    let (driver_end, worker_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::os("socketpair", e))?;
    let (err_read, err_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::os("pipe2", e))?;
    // Only our end is non-blocking: the worker's writes to stderr block as usual.
    nix::fcntl::fcntl(&err_read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| Error::os("fcntl", e))?;
    let server = nix::unistd::getpid();
    // SAFETY: the fork server is single-threaded (rule 2), so the child gets a consistent copy
    // of every lock and allocator; it never returns into the fork server's loop.
    match unsafe { fork() }.map_err(|e| Error::os("fork", e))? {
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            // Rule 6: a group of its own, which its task's children join.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            if getppid() != server {
                // SAFETY: `_exit` ends the process without running anything of the parent's.
                unsafe { libc::_exit(0) };
            }
            let _ = mask.thread_unblock();
            // As std does before `main`: a write to a closed pipe is an error, not a death.
            // SAFETY: setting a signal to SIG_IGN installs no handler code; the process is
            // single-threaded here (just forked from the single-threaded fork server).
            let _ = unsafe {
                nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn)
            };
            // The child keeps only its own socket, its stderr pipe and the two mappings.
            let _ = nix::unistd::close(ctrl.as_raw_fd());
            let _ = nix::unistd::close(sigfd.as_fd().as_raw_fd());
            for &fd in inherited {
                let _ = nix::unistd::close(fd);
            }
            drop(driver_end);
            drop(err_read);
            // Rule 5: stderr goes to the fork server (dup2 clears CLOEXEC on the new fd 2).
            let _ = nix::unistd::dup2_stderr(&err_write);
            drop(err_write);
            let code = worker_loop::run(
                kit.runtime,
                worker,
                UnixStream::from(worker_end),
                kit.arena.clone(),
                kit.flags.clone(),
            );
            // As a program ends: stdout flushed, `atexit` handlers run (coverage data, C
            // libraries' cleanup).
            std::process::exit(code)
        }
        ForkResult::Parent { child } => Ok((child.as_raw(), driver_end, err_read)),
    }
}

/// Starts the fork server: exec's `program` with the fork-server role, passing it its end of the
/// control socket, the arena fd and the cancel flags' fd. Must run on the thread that outlives
/// the runtime (rule 3).
pub(crate) fn spawn(
    program: &Path,
    arena_fd: RawFd,
    flags_fd: RawFd,
    runtime: u32,
) -> Result<(Child, OwnedFd)> {
    // Keep the role hook linked (see ROLE_HOOK).
    std::hint::black_box(&ROLE_HOOK);
    let (driver_end, server_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::os("socketpair", e))?;
    let server_fd = server_end.as_raw_fd();
    let parent = std::process::id() as i32;
    let mut cmd = Command::new(program);
    cmd.env(ROLE_VAR, ROLE_FORK_SERVER)
        .env(CTRL_VAR, server_fd.to_string())
        .env(ARENA_VAR, arena_fd.to_string())
        .env(FLAGS_VAR, flags_fd.to_string())
        .env(PARENT_VAR, parent.to_string())
        .env(RUNTIME_VAR, runtime.to_string())
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (fcntl, prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Only this child inherits the three fds: clear CLOEXEC here, never in the driver.
            for fd in [server_fd, arena_fd, flags_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd
        .spawn()
        .map_err(|e| Error::os(&format!("start fork server {}", program.display()), e))?;
    drop(server_end);
    Ok((child, driver_end))
}

/// Lines of a worker's stderr kept for its crash report (rule 5).
const TAIL_LINES: usize = 10;
/// Longer lines are cut to this many bytes in the report (never in the forwarded output).
const TAIL_LINE_MAX: usize = 300;

/// The read end of one worker's stderr pipe and the last lines it carried (rule 5).
struct StderrTail {
    fd: OwnedFd,
    /// The line being written (no newline yet).
    partial: Vec<u8>,
    lines: VecDeque<String>,
    eof: bool,
}

impl StderrTail {
    fn new(fd: OwnedFd) -> Self {
        StderrTail {
            fd,
            partial: Vec::new(),
            lines: VecDeque::new(),
            eof: false,
        }
    }

    /// Reads what the pipe holds (it is non-blocking), forwards it to our stderr and keeps the
    /// last lines; at EOF the unfinished line counts as a line.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while !self.eof {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.eof = true;
                    if !self.partial.is_empty() {
                        let rest = std::mem::take(&mut self.partial);
                        self.keep(&rest);
                    }
                }
                Ok(n) => {
                    // Keep the user's output visible: forwarded unchanged.
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    self.take_lines(&buf[..n]);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => self.eof = true,
            }
        }
    }

    fn take_lines(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&bytes[..i]);
            self.keep(&line);
            bytes = &bytes[i + 1..];
        }
        // Bound the memory of a line that never ends.
        let room = (4 * TAIL_LINE_MAX).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn keep(&mut self, line: &[u8]) {
        let mut s = String::from_utf8_lossy(line).into_owned();
        if s.len() > TAIL_LINE_MAX {
            let mut cut = TAIL_LINE_MAX;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_whole() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut t = StderrTail::new(r);
        let mut w = std::fs::File::from(w);
        for i in 0..15 {
            writeln!(w, "line {i}").unwrap();
        }
        write!(w, "half").unwrap();
        t.drain();
        write!(w, " a line\n{}", "x".repeat(1000)).unwrap();
        drop(w);
        t.drain();
        assert!(t.eof);
        let lines: Vec<_> = t.lines.iter().map(String::as_str).collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 7");
        assert_eq!(lines[8], "half a line");
        assert_eq!(lines[9].len(), TAIL_LINE_MAX + 3);
    }
}
