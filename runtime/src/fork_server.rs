//! The fork server: a single-threaded process, exec'd from the driver's own binary, that forks
//! worker processes on request and reports their exits.
//!
//! Owns the process layout of a runtime (see "Processes" in design.md): the role hook that runs
//! before `main`, starting the fork server from the driver, forking workers, fate sharing, and
//! reaping. It must not touch tasks or objects; a forked worker goes straight to `worker::run`.
//!
//! Rules:
//! 1. The driver never forks itself (it may have threads). It exec's a program (its own binary
//!    by default) with `RAYFORK_ROLE=fork-server`; the role hook catches that before `main`.
//! 2. The fork server is single-threaded, so `fork()` from it is sound whatever the driver does.
//! 3. Fate sharing: the fork server gets SIGKILL when the driver thread that started it (the
//!    scheduler thread) ends, workers get SIGKILL when the fork server ends
//!    (PR_SET_PDEATHSIG), and each checks its parent after setting it, to close the race with a
//!    parent that died first. When the driver closes the control socket, the fork server kills
//!    and reaps every worker, then exits.
//! 4. Every child is reaped by the fork server (SIGCHLD through a signalfd) and its exit cause is
//!    sent to the driver; the driver reaps the fork server.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getppid};

use crate::protocol::{ExitCause, ForkReply, ForkRequest};
use crate::{Error, Result, ipc, worker};

const ROLE_VAR: &str = "RAYFORK_ROLE";
const CTRL_VAR: &str = "RAYFORK_CTRL_FD";
const ARENA_VAR: &str = "RAYFORK_ARENA_FD";
const PARENT_VAR: &str = "RAYFORK_PARENT_PID";
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
/// `rayfork::worker::main` calls this too, for external worker programs.
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
    for var in [ROLE_VAR, CTRL_VAR, ARENA_VAR, PARENT_VAR] {
        // SAFETY: we run before `main` (or at the top of `worker::main`) in a process that has
        // started no thread, so nothing can read the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    let arena = std::sync::Arc::new(
        rayfork_plasma::ShmArena::from_fd(arena).map_err(|e| Error::os("attach arena", e))?,
    );
    serve(ctrl, arena)
}

/// The fork server's loop (rule 2: single-threaded).
fn serve(ctrl: OwnedFd, arena: std::sync::Arc<rayfork_plasma::ShmArena>) -> Result<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| Error::os("block SIGCHLD", e))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::os("signalfd", e))?;
    let mut children: HashSet<i32> = HashSet::new();
    loop {
        let (ctrl_ready, sig_ready) = {
            let mut fds = [
                PollFd::new(ctrl.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::os("poll", e)),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap(&ctrl, &mut children);
        }
        if ctrl_ready {
            match ipc::recv_packet::<ForkRequest>(&ctrl) {
                Ok(Some((ForkRequest::Spawn { worker }, _))) => {
                    let reply = match spawn_worker(worker, &ctrl, &sigfd, &mask, &arena) {
                        Ok((pid, driver_end)) => {
                            children.insert(pid);
                            let r = ipc::send_packet(
                                &ctrl,
                                &ForkReply::Spawned { worker, pid },
                                &[driver_end.as_raw_fd()],
                            );
                            drop(driver_end);
                            r
                        }
                        Err(e) => ipc::send_packet(
                            &ctrl,
                            &ForkReply::SpawnFailed {
                                worker,
                                message: e.to_string(),
                            },
                            &[],
                        ),
                    };
                    if reply.is_err() {
                        break;
                    }
                }
                Ok(Some((ForkRequest::Kill { pid }, _))) => {
                    if children.contains(&pid) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                // The driver is gone or spoke nonsense: shut down (rule 3).
                Ok(None) | Err(_) => break,
            }
        }
    }
    for &pid in &children {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for pid in children.drain() {
        let _ = waitpid(Pid::from_raw(pid), None);
    }
    Ok(())
}

/// Reaps every exited child and reports it (rule 4).
fn reap(ctrl: &OwnedFd, children: &mut HashSet<i32>) {
    loop {
        let cause = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitCause::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitCause::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let pid = cause.0.as_raw();
        if children.remove(&pid) {
            let _ = ipc::send_packet(
                ctrl,
                &ForkReply::Exited {
                    pid,
                    cause: cause.1,
                },
                &[],
            );
        }
    }
}

/// Forks one worker. Returns its pid and the driver's end of its socket.
fn spawn_worker(
    worker: u32,
    ctrl: &OwnedFd,
    sigfd: &SignalFd,
    mask: &SigSet,
    arena: &std::sync::Arc<rayfork_plasma::ShmArena>,
) -> Result<(i32, OwnedFd)> {
    let (driver_end, worker_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::os("socketpair", e))?;
    let server = nix::unistd::getpid();
    // SAFETY: the fork server is single-threaded (rule 2), so the child gets a consistent copy
    // of every lock and allocator; it never returns into the fork server's loop.
    match unsafe { fork() }.map_err(|e| Error::os("fork", e))? {
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if getppid() != server {
                // SAFETY: `_exit` ends the process without running anything of the parent's.
                unsafe { libc::_exit(0) };
            }
            let _ = mask.thread_unblock();
            // The child keeps only its own socket and the arena mapping.
            let _ = nix::unistd::close(ctrl.as_raw_fd());
            let _ = nix::unistd::close(sigfd.as_fd().as_raw_fd());
            drop(driver_end);
            let code = worker::run(worker, UnixStream::from(worker_end), arena.clone());
            // SAFETY: as above; the worker flushed what it had to say before returning.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok((child.as_raw(), driver_end)),
    }
}

/// Starts the fork server: exec's `program` with the fork-server role, passing it its end of the
/// control socket and the arena fd. Must run on the thread that outlives the runtime (rule 3).
pub(crate) fn spawn(program: &Path, arena_fd: RawFd) -> Result<(Child, OwnedFd)> {
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
        .env(PARENT_VAR, parent.to_string())
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (fcntl, prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Only this child inherits the two fds: clear CLOEXEC here, never in the driver.
            for fd in [server_fd, arena_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
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
