//! The drain, as a worker process sees it: the drain signal sets a flag
//! (`sys::fork`), and [`draining`], [`wait_draining`] and
//! [`Listener::accept`](super::Listener::accept) read it; [`finished`] is
//! how a copy of `serve` says it is done. Whether `serve` ever asked
//! decides who drains: a worker that never did exits at once on the drain
//! signal, as an exec'd server that does not handle it would.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use crate::sys;

/// Whether this worker has been told to drain (the drain signal arrived).
/// `serve` should then stop accepting, finish what is in flight, and return.
pub fn draining() -> bool {
    watch();
    sys::fork::drain_requested()
}

/// Blocks until this worker is told to drain. For an async runtime:
/// `tokio::task::spawn_blocking(panzer::wait_draining)`.
pub fn wait_draining() {
    watch();
    let (lock, changed) = &DRAIN;
    let mut started = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*started {
        started = changed.wait(started).unwrap_or_else(|e| e.into_inner());
    }
}

/// Set once `serve` has asked about draining: the drain is then its job.
static WATCHED: AtomicBool = AtomicBool::new(false);
/// Whether the drain has started, for [`wait_draining`].
static DRAIN: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
/// Readable once the drain has started (a pipe written once, never read).
static DRAIN_FD: OnceLock<OwnedFd> = OnceLock::new();

/// Where [`finished`] reports to, in a worker process.
static FINISHED: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Says that this copy of `serve` has drained: once every copy has, the
/// worker process exits 0. Until then the calling thread waits. Outside a
/// worker (no `serve` running under [`run`](super::run)) it exits the process at once.
pub fn finished() -> ! {
    match FINISHED.get() {
        Some(report) => report(),
        None => std::process::exit(0),
    }
    loop {
        std::thread::park();
    }
}

/// `serve` asked about the drain (or waits on it in [`Listener::accept`](super::Listener::accept)):
/// the drain is its job from now on.
pub(super) fn watch() {
    WATCHED.store(true, Ordering::SeqCst);
}

/// Readable once the drain has started; `None` before the worker process
/// set it up.
pub(super) fn fd() -> Option<BorrowedFd<'static>> {
    DRAIN_FD.get().map(|fd| fd.as_fd())
}

/// A worker process's side of the drain, set up before `serve` runs.
pub(super) struct Drain {
    /// The write end of the pipe [`fd`] reads.
    announce: OwnedFd,
}

impl Drain {
    /// Opens the pipe [`Listener::accept`](super::Listener::accept) waits
    /// on, and has [`finished`] call `report`.
    pub(super) fn set_up(report: Box<dyn Fn() + Send + Sync>) -> nix::Result<Drain> {
        let (read, announce) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let _ = DRAIN_FD.set(read);
        let _ = FINISHED.set(report);
        Ok(Drain { announce })
    }

    /// The drain signal arrived: whether `serve` ever asked about the
    /// drain. If it did, [`wait_draining`] returns and
    /// [`Listener::accept`](super::Listener::accept) stops waiting.
    pub(super) fn start(&self) -> bool {
        if !WATCHED.load(Ordering::SeqCst) {
            return false;
        }
        let (lock, changed) = &DRAIN;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
        let _ = nix::unistd::write(&self.announce, &[1]);
        true
    }
}
