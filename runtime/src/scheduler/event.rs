//! How driver threads reach the scheduler thread: `Event`s on a channel and a `Doorbell`
//! that wakes the loop. Must not touch scheduler state.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::Sender;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::protocol::{FromWorker, ToWorker};
use crate::stats::RuntimeStats;
use crate::timeline::TaskSummary;
use crate::{Error, timeline};

/// What driver threads ask of the scheduler thread (workers and the fork server speak on
/// their sockets, which the scheduler polls itself).
// Nearly every event is `Driver`; boxing it would cost an allocation per event for nothing.
#[expect(clippy::large_enum_variant)]
pub(crate) enum Event {
    /// A request from the driver; `reply` receives the answer to requests that have one.
    Driver {
        msg: FromWorker,
        reply: Option<Sender<ToWorker>>,
    },
    /// A snapshot of the runtime's counters; with `reset_peaks`, the peaks then start again
    /// from now.
    Stats {
        reply: Sender<RuntimeStats>,
        reset_peaks: bool,
    },
    /// The task runs kept for the timeline (timeline.rs).
    Timeline(Sender<Vec<timeline::Run>>),
    /// Tasks by function and state.
    Summary(Sender<TaskSummary>),
    /// Stop: kill the workers and the fork server and end the thread.
    Shutdown,
    /// Panic on the scheduler thread, to test the panic policy (`__private`, tests only).
    InjectPanic(String),
}

/// What driver threads learn when the scheduler thread is gone: why, if it panicked (set once,
/// by `Scheduler::run`, before anything that waits on it is woken).
#[derive(Debug, Default)]
pub(crate) struct Health {
    panic: OnceLock<String>,
}

impl Health {
    /// Records the panic that ended the scheduler thread.
    pub(super) fn set_panicked(&self, message: String) {
        let _ = self.panic.set(message);
    }

    /// The error for a call that found the scheduler thread gone.
    pub(crate) fn gone(&self) -> Error {
        match self.panic.get() {
            Some(message) => Error::SchedulerPanicked {
                message: message.clone(),
            },
            None => Error::NoRuntime,
        }
    }
}

/// Wakes the scheduler thread when it sleeps in `poll`: an eventfd it polls beside the
/// sockets, rung by senders of `Event`s only while the scheduler says it sleeps.
///
/// The scheduler stores `sleeping = true` and then looks at its channel once more before it
/// polls; a sender puts its event in the channel and then reads `sleeping`. A SeqCst fence
/// on each side between the write and the read orders them, so either the scheduler sees the
/// event or the sender sees `sleeping` and rings: no wake-up is lost.
#[derive(Debug)]
pub(crate) struct Doorbell {
    pub(super) sleeping: AtomicBool,
    pub(super) fd: EventFd,
}

impl Doorbell {
    pub(crate) fn new() -> crate::Result<Doorbell> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::os("eventfd", std::io::Error::from(e)))?;
        Ok(Doorbell {
            sleeping: AtomicBool::new(false),
            fd,
        })
    }

    /// Called after an event was sent: wakes the scheduler if it sleeps.
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }

    pub(super) fn drain(&self) {
        let _ = self.fd.read();
    }
}
