//! The one place that talks to the kernel below what `std` offers.
//!
//! `unsafe` is allowed here and nowhere else (see `[lints]` in Cargo.toml):
//! [`spawn`] holds the code that runs between `fork` and `execve`. The rest of
//! this module wraps the calls both event loops share: blocking signals and
//! reading them from a signalfd, reaping children, and polling.

#![allow(unsafe_code)]

pub mod fork;
pub mod handover;
pub mod hello;
pub mod resident;
pub mod reuseport;
pub mod sock_diag;
pub mod spawn;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;

/// A non-blocking signalfd (see [`signal_fd`]).
pub struct SignalFd(OwnedFd);

impl std::os::fd::AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Blocks `signals` (numbers from 1 to 64: real-time ones, and the two the C
/// library keeps for itself, included) for this process and returns a
/// non-blocking signalfd that reports them. The mask is set with the raw
/// system calls because the C library's wrappers refuse signals 32 and 33,
/// which a single-threaded process never uses. Children reset their mask
/// before exec (see [`spawn`]).
pub fn signal_fd(signals: &[libc::c_int]) -> io::Result<SignalFd> {
    // The kernel's sigset: bit n-1 for signal n, in the first 64 bits.
    let mut words = [0 as libc::c_ulong; 16];
    for &signal in signals {
        if !(1..=64).contains(&signal) || signal == libc::SIGKILL || signal == libc::SIGSTOP {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let bit = (signal - 1) as usize;
        words[bit / libc::c_ulong::BITS as usize] |= 1 << (bit % libc::c_ulong::BITS as usize);
    }
    // SAFETY: on Linux `sigset_t` is exactly this array of words (1024 bits).
    let set: libc::sigset_t = unsafe { std::mem::transmute::<[libc::c_ulong; 16], libc::sigset_t>(words) };
    // SAFETY: `set` is a valid sigset; the kernel reads 8 bytes of it.
    let done = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &set as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; signalfd(2) returns a new fd or -1.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by signalfd(2) and is owned by nobody else.
    Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The real-time signals a process may be sent (`SIGRTMIN` … `SIGRTMAX`,
/// without the ones the C library keeps for itself).
pub fn realtime_signals() -> std::ops::RangeInclusive<libc::c_int> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

/// `SIGTERM`, or `SIGRTMIN+3` for a real-time signal.
pub fn signal_name(number: libc::c_int) -> String {
    match Signal::try_from(number) {
        Ok(signal) => signal.as_str().to_string(),
        Err(_) if realtime_signals().contains(&number) => format!("SIGRTMIN+{}", number - libc::SIGRTMIN()),
        Err(_) => format!("signal {number}"),
    }
}

/// Every signal waiting on `fd`, by number, in arrival order (one per kind at most).
pub fn pending_signals(fd: &SignalFd) -> Vec<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut signals = Vec::new();
    loop {
        // SAFETY: an all-zero signalfd_siginfo is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable for `size` bytes.
        let n =
            unsafe { libc::read(fd.0.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n != size as isize {
            return signals;
        }
        signals.push(info.ssi_signo as libc::c_int);
    }
}

/// Names this process `name` as `ps -C`, `pgrep -x`, `top` and `ss -p` show
/// it (a process exec'd through `/proc/self/exe` is called `exe` otherwise).
pub fn set_process_name(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// How a child ended, whatever the signal (real-time ones included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Exited(i32),
    Killed { signal: libc::c_int, core: bool },
}

impl std::fmt::Display for ChildExit {
    /// "exited with status 1", "killed by SIGKILL", "killed by SIGRTMIN+6".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ChildExit::Exited(code) => write!(f, "exited with status {code}"),
            ChildExit::Killed { signal, core } => {
                write!(f, "killed by {}{}", signal_name(signal), if core { " (core dumped)" } else { "" })
            }
        }
    }
}

/// Makes orphaned descendants re-parent to this process instead of init.
pub fn become_subreaper() -> io::Result<()> {
    Ok(nix::sys::prctl::set_child_subreaper(true)?)
}

/// The next child that has exited, without reaping it: while it is a zombie
/// its pid (and so its process-group id) cannot be reused, which makes a
/// `killpg` of its group safe until [`reap`] is called. Raw `waitid(2)`, so
/// that any signal, real-time ones included, is reported as it is.
pub fn peek_exited_child() -> Option<(Pid, ChildExit)> {
    // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t.
    if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) } != 0 {
        return None;
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo (or left si_pid 0: none exited).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return None;
    }
    let exit = match info.si_code {
        libc::CLD_EXITED => ChildExit::Exited(status),
        code => ChildExit::Killed { signal: status, core: code == libc::CLD_DUMPED },
    };
    Some((Pid::from_raw(pid), exit))
}

/// Collects the exit status of `pid`, which must have exited.
pub fn reap(pid: Pid) {
    let _ = nix::sys::wait::waitpid(pid, Some(WaitPidFlag::WNOHANG));
}

/// Reaps the next child that has exited, if any (raw `waitpid(2)`, so that
/// any signal, real-time ones included, is reported as it is).
pub fn reap_next_child() -> Option<(Pid, ChildExit)> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if pid <= 0 {
            return None;
        }
        let exit = if libc::WIFEXITED(status) {
            ChildExit::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ChildExit::Killed { signal: libc::WTERMSIG(status), core: libc::WCOREDUMP(status) }
        } else {
            // Stopped or continued: not an exit; waitpid without WUNTRACED
            // does not report those.
            continue;
        };
        return Some((Pid::from_raw(pid), exit));
    }
}

/// Sends `signal` to every process in group `pgid`; a group that no longer
/// exists is not an error.
pub fn signal_group(pgid: Pid, signal: Signal) {
    let _ = nix::sys::signal::killpg(pgid, signal);
}

/// Sends `signal` to one process; one that is gone is not an error.
pub fn signal_process(pid: Pid, signal: Signal) {
    let _ = nix::sys::signal::kill(pid, signal);
}

/// What [`poll`] waits for on one fd. A plain `bool` stands for
/// `ReadWrite` (true) or `Read` (false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    ReadWrite,
    /// Room to write only: an fd opened for writing whose read side may
    /// still report input (a terminal does), which nobody here reads.
    Write,
}

impl From<bool> for Interest {
    fn from(write: bool) -> Interest {
        if write {
            Interest::ReadWrite
        } else {
            Interest::Read
        }
    }
}

/// Waits until one of `fds` is ready for what its [`Interest`] says, or
/// `deadline` passes. Returns, for each fd, whether it is ready (or hung up).
pub fn poll<I: Copy + Into<Interest>>(
    fds: &[(BorrowedFd<'_>, I)],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&(fd, interest)| {
            let flags = match interest.into() {
                Interest::Read => PollFlags::POLLIN,
                Interest::ReadWrite => PollFlags::POLLIN | PollFlags::POLLOUT,
                Interest::Write => PollFlags::POLLOUT,
            };
            PollFd::new(fd, flags)
        })
        .collect();
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(at) => {
            // Round up so we never wake a millisecond early and spin.
            let left = at.saturating_duration_since(Instant::now()) + Duration::from_micros(999);
            PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    };
    match nix::poll::poll(&mut polled, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(polled.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect())
}

/// Takes ownership of an fd this process inherited at a known number and
/// marks it `CLOEXEC`, so it reaches a child only through an [`spawn::ExecPlan`].
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    nix::fcntl::fcntl(
        // SAFETY: `fd` is open (fcntl below fails otherwise, before any use
        // as an OwnedFd) and borrowed only for this call.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: the fd is open (checked above) and nothing else in this process
    // owns it: it was inherited across exec at a number only we know of.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of an fd that arrived in an `SCM_RIGHTS` message.
pub fn own_received_fd(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed `fd` in this process as it delivered the
    // message (`MSG_CMSG_CLOEXEC`); its number reached only the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The current value of `CLOCK_MONOTONIC` in microseconds, as systemd's
/// `MONOTONIC_USEC=` wants it.
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

/// Resident set size of `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size (KiB) and thread count of `pid`, from one read of
/// `/proc/PID/status`; `None` where it is gone or the line is missing.
pub fn rss_and_threads(pid: Pid) -> (Option<u64>, Option<u32>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (None, None) };
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    (
        field("VmRSS:").and_then(|v| v.trim_end_matches("kB").trim().parse().ok()),
        field("Threads:").and_then(|n| n.parse().ok()),
    )
}

/// Most processes [`tree_rss_kib`] visits: a worker that forks without end
/// cannot make the monitor's timer walk without end.
const MAX_TREE: usize = 4096;

/// Resident set size of `pid` and every process below it, in KiB, found
/// through the kernel's children lists (`/proc/PID/task/*/children`), never
/// a walk of all of `/proc`. `None` if `pid` itself is gone.
pub fn tree_rss_kib(pid: Pid) -> Option<u64> {
    let mut total = rss_kib(pid)?;
    let mut frontier = children_of(pid);
    let mut seen = 1;
    while let Some(child) = frontier.pop() {
        seen += 1;
        if seen > MAX_TREE {
            break;
        }
        total += rss_kib(child).unwrap_or(0);
        frontier.extend(children_of(child));
    }
    Some(total)
}

/// The kernel's list of `pid`'s children (all its threads').
pub(crate) fn children_of(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else { continue };
        children.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).map(Pid::from_raw));
    }
    children
}

/// `(parent pid, process group)` of `pid`, from `/proc/PID/stat`; `None`
/// for a zombie or a process that is gone.
pub fn parent_and_group(pid: Pid) -> Option<(Pid, Pid)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if fields.next()? == "Z" {
        return None;
    }
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((Pid::from_raw(ppid), Pid::from_raw(pgrp)))
}

/// Every live child of this process, with its process group: from the
/// kernel's list of this process's children, not a walk of all of `/proc`.
pub fn own_children() -> Vec<(Pid, Pid)> {
    let me = nix::unistd::getpid();
    // A child that exits between the two reads hands its own children to
    // this process first: read again to see them.
    for _ in 0..2 {
        let mut exited = false;
        let mut found = Vec::new();
        for pid in children_list() {
            match parent_and_group(pid) {
                Some((parent, group)) if parent == me => found.push((pid, group)),
                _ => exited = true,
            }
        }
        if !exited {
            return found;
        }
    }
    children_list()
        .into_iter()
        .filter_map(|pid| parent_and_group(pid).map(|(_, group)| (pid, group)))
        .collect()
}

/// The kernel's list of this process's children (all threads).
fn children_list() -> Vec<Pid> {
    children_of(nix::unistd::getpid())
}

/// `(columns, rows)` of the terminal on `fd`, if it is one.
pub fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, writable
    // struct passed; `fd` is borrowed, so it is open for the call.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (done == 0 && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Whether any process but `except` is in process group `pgid`, zombies
/// left out (they hold no file any more). Reads `/proc/*/stat`: for a
/// generation's keeper, whose group is the generation's, and which is a
/// member of it (so the group id cannot be reused meanwhile). Says yes when
/// `/proc` cannot be read: the caller then waits for its deadline.
pub fn group_has_others(pgid: Pid, except: &[Pid]) -> bool {
    let Ok(proc) = std::fs::read_dir("/proc") else { return true };
    proc.flatten().any(|entry| {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()).map(Pid::from_raw) else {
            return false;
        };
        if except.contains(&pid) {
            return false;
        }
        // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return false };
        let mut fields = after.split(' ');
        let zombie = fields.next() == Some("Z");
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        !zombie && group == Some(pgid.as_raw())
    })
}

/// Ignores every signal a process can ignore but `SIGCHLD` and those a
/// fault raises (`SIGSEGV`, `SIGBUS`, …): for a generation's keeper, which
/// shares the workers' process group and so gets whatever is sent to it (the
/// drain signal, `SIGHUP` of an orphaned group). Only `SIGKILL` ends it.
pub fn ignore_signals() {
    const KEEP: [libc::c_int; 9] = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
        libc::SIGSYS,
    ];
    for signal in (1..=libc::SIGRTMAX()).filter(|s| !KEEP.contains(s)) {
        // SAFETY: SIG_IGN is a valid disposition for any signal; a signal
        // the C library reserves for itself fails with EINVAL, left as is.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// When process `pid` started (clock ticks after boot, field 22 of
/// `/proc/PID/stat`), and whether it has exited (a zombie); `None` when
/// there is no such process. With the pid, it names a process for good:
/// a later process given the same pid starts later.
pub fn process_start(pid: Pid) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    let zombie = fields.next()? == "Z";
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, zombie))
}

/// A process that is not this one's child, held through a pidfd: signals
/// sent through it never reach a later process given the same pid. (Only
/// for the leftovers of a dead panzer: panzer's own children are pinned
/// by not being reaped, see `lib.rs`.)
pub struct Pidfd(OwnedFd);

impl std::os::fd::AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Pidfd {
    /// Opens a pidfd for `pid` (`CLOEXEC`); fails on kernels before 5.3.
    pub fn open(pid: Pid) -> io::Result<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by pidfd_open(2) and is owned by nobody else.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Sends `signal` to the process; one that has exited is not an error.
    pub fn signal(&self, signal: Signal) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) with no siginfo (NULL) and no flags
        // reads nothing from this process's memory.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Every live child of this process whose group is `pgid`.
pub fn own_children_in_group(pgid: Pid) -> Vec<Pid> {
    own_children().into_iter().filter(|&(_, group)| group == pgid).map(|(pid, _)| pid).collect()
}
