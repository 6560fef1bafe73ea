//! Library mode (`panzer --preload`): a fork *without* exec, and the drain
//! signal as a flag.
//!
//! [`fork_worker`] copies the monitor, the user's app with everything it
//! preloaded, into a worker that goes on running ordinary Rust code. That is
//! sound only in a single-threaded process: `fork` copies the calling thread
//! alone, so a lock another thread held (the allocator's, stdout's, a
//! runtime's) would stay locked forever in the child. [`fork_worker`]
//! therefore counts this process's threads first and refuses when there is
//! more than one.
//!
//! [`on_drain_signal`] installs the one signal handler panzer's library sets
//! in a worker: it records the drain and wakes a pipe, nothing else.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How many threads this process runs now (`/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// The fds from 3 up this process has open now (`/proc/self/fd`): in
/// library mode, taken as `panzer::run` starts, they are the app's own
/// (its preloaded files, say), which its workers keep.
pub fn open_fds() -> io::Result<Vec<RawFd>> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= 3)
        .collect();
    // The directory's own fd was listed too, and is closed by now.
    // SAFETY: F_GETFD only reads the flags of the fd number, open or not.
    Ok(listed.into_iter().filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).collect())
}

/// Which side of [`fork_worker`] this is.
pub enum Forked {
    Parent(Pid),
    /// The new worker: single-threaded, default signal dispositions (but
    /// `SIGPIPE` ignored, as every Rust program starts), an empty mask, the
    /// parent-death signal set, and only fds 0-2 and `keep` open.
    Child,
}

/// What the child of [`fork_worker`] keeps and gets.
pub struct ForkPlan<'a> {
    /// Sent to the child when its parent (the monitor) dies.
    pub parent_death_signal: Signal,
    /// fds the child keeps open besides 0, 1 and 2 (the listening sockets,
    /// and the fds the app opened before `panzer::run`).
    pub keep: &'a [RawFd],
    /// `--tag-output`: the write ends that become the child's stdout and stderr.
    pub stdout_stderr: Option<(&'a OwnedFd, &'a OwnedFd)>,
}

/// Forks this process into a worker that goes on running this program.
/// Refuses (`Err`, nothing forked) when the process runs more than one
/// thread. In the child, see [`Forked::Child`] for the state it starts in.
pub fn fork_worker(plan: &ForkPlan<'_>) -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads > 1 {
        return Err(io::Error::other(format!("{threads} threads run in this process")));
    }
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the process is single-threaded (counted just above, and the
    // caller starts no thread between that count and here), so the child's
    // copy of memory is consistent: no lock is held by a thread that does
    // not exist in the child. The child runs ordinary Rust code afterwards,
    // which is what a single-threaded fork allows.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Forked::Parent(Pid::from_raw(pid)));
    }
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes nothing else.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, plan.parent_death_signal as libc::c_ulong) } != 0 {
        // SAFETY: `_exit` ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(127) }
    }
    // The parent may have died before the prctl took effect.
    if nix::unistd::getppid().as_raw() != parent {
        // SAFETY: as above.
        unsafe { libc::_exit(127) }
    }
    // SAFETY: this is the freshly forked child; the reset only calls
    // sigaction and sigprocmask, and keeps the C library's own signals.
    unsafe { super::spawn::reset_signals(false) };
    // Rust's runtime ignores SIGPIPE in every program before `main`; a
    // worker is that same program, so it starts as `main` did.
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if let Some((out, err)) = plan.stdout_stderr {
        // SAFETY: both sources are open fds owned by the caller; dup2 onto 1
        // and 2 replaces this process's stdout and stderr, which is the point.
        let placed = unsafe { libc::dup2(out.as_raw_fd(), 1) >= 0 && libc::dup2(err.as_raw_fd(), 2) >= 0 };
        if !placed {
            // SAFETY: as above.
            unsafe { libc::_exit(127) }
        }
    }
    close_all_except(plan.keep);
    Ok(Forked::Child)
}

/// Closes every fd from 3 up except those in `keep`. The Rust values that
/// own the closed fds in the parent's data (the monitor's signalfd, status
/// channel, notify socket, other workers' pipes) are never used or dropped
/// in the child: the worker ends with `exit`.
fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= 3).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut low: RawFd = 3;
    for fd in keep.into_iter().chain([RawFd::MAX]) {
        if fd > low {
            close_range(low, fd - 1);
        }
        low = fd.saturating_add(1);
    }
}

fn close_range(low: RawFd, high: RawFd) {
    // SAFETY: close_range only closes fds; none in [low, high] is used again
    // by this process (see `close_all_except`).
    let done = unsafe { libc::syscall(libc::SYS_close_range, low as libc::c_uint, high as libc::c_uint, 0) };
    if done != 0 {
        // Kernels before 5.9: one by one up to a sane bound.
        for fd in low..=high.min(65_535) {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Set by the drain-signal handler.
static DRAINING: AtomicBool = AtomicBool::new(false);
/// The write end of the pipe the handler wakes (-1: none).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_drain(_: libc::c_int) {
    DRAINING.store(true, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the pipe end stays open for
        // the life of the process (leaked by `on_drain_signal`). errno is
        // saved and restored so the interrupted code never sees it change.
        unsafe {
            let saved = *libc::__errno_location();
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// From now on, `signal` sets the drain flag ([`drain_requested`]) and
/// writes one byte to `wake` (a non-blocking pipe end, kept open for the
/// life of the process) instead of its default action.
pub fn on_drain_signal(signal: Signal, wake: OwnedFd) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    WAKE_FD.store(wake.into_raw_fd(), Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is valid; the handler only touches atomics
    // and calls write(2), both async-signal-safe. SA_RESTART keeps the
    // application's blocking calls from failing with EINTR.
    let done = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_drain as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal as libc::c_int, &action, std::ptr::null_mut())
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the drain signal has arrived (see [`on_drain_signal`]).
pub fn drain_requested() -> bool {
    DRAINING.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_counted() {
        assert!(thread_count().unwrap() >= 1);
        let (rss, threads) = super::super::rss_and_threads(nix::unistd::getpid());
        assert!(threads.unwrap() >= 1 && rss.unwrap() > 0);
    }
}
