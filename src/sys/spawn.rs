//! Starting a child process: everything between `fork` and `exec`.
//!
//! [`ExecPlan`] is built in the parent, where allocating is fine: the program
//! path, argv and envp as NUL-terminated byte strings with their pointer
//! arrays, a fixed-width `LISTEN_PID=` slot, and the list of fds to place.
//! [`ExecPlan::spawn`] forks; the child then runs `child`, which only reads
//! that plan, writes into memory that was allocated before the fork, and calls
//! async-signal-safe system calls. It never returns: it `execve`s, or writes
//! its errno to a `CLOEXEC` pipe and `_exit(127)`s.
//!
//! Why not `std::process::Command`: it cannot put the child's own pid in its
//! environment (`LISTEN_PID`), and its fd plumbing only covers stdio.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Width of the `LISTEN_PID` value slot: enough digits for any Linux pid
/// (`pid_max` is at most 2^22).
const PID_DIGITS: usize = 10;

/// Highest signal number whose disposition the child resets.
const MAX_SIGNAL: libc::c_int = 64;

/// The kernel's own `struct sigaction` (x86_64 and aarch64 layout).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// What a freshly forked child must do before it becomes `program`.
pub struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env: Vec<Vec<u8>>,
    env_ptrs: Vec<*const libc::c_char>,
    /// `(index into env, where the digits start)` of each `KEY=` entry
    /// whose value the child fills in with its own pid (`LISTEN_PID`,
    /// `WATCHDOG_PID`).
    own_pid: Vec<(usize, usize)>,
    /// `(source, target)`: the child makes `source` available as `target`,
    /// without `CLOEXEC`. Targets are 3, 4, … in order, then 1 and 2 when
    /// stdout and stderr are replaced.
    fds: Vec<(RawFd, RawFd)>,
    /// Scratch space for the child's first, collision-free copy of each source.
    scratch: Vec<RawFd>,
    new_process_group: bool,
    parent_death_signal: Option<Signal>,
    /// `(uid, gid)` to switch to (supplementary groups: just `gid`).
    credentials: Option<(libc::uid_t, libc::gid_t)>,
    /// The working directory to change to (`--chdir`), as the user switched to sees it.
    chdir: Option<CString>,
}

/// Why a child could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// `fork` itself failed (out of processes or memory), or what it needs
    /// before (out of descriptors).
    Fork(io::Error),
    /// The child could not `execve` the program (errno from the child).
    Exec(io::Error),
}

impl SpawnError {
    /// What went wrong, naming the limit that refused it (`too many open
    /// files (RLIMIT_NOFILE is 24; a worker needs 10)`, `cannot fork:
    /// resource temporarily unavailable (RLIMIT_NPROC is 50)`). `needs`:
    /// the descriptors the start needed, for a worker.
    pub fn explain(&self, needs: Option<u64>) -> String {
        match self {
            SpawnError::Fork(e) => crate::limits::explain(e, true, needs),
            SpawnError::Exec(e) => crate::limits::explain(e, false, needs),
        }
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.explain(None))
    }
}

impl ExecPlan {
    /// A plan to run `path` with `argv` (`argv[0]` included) and `env`
    /// (`KEY=VALUE` entries). Entries with interior NUL bytes are dropped,
    /// since they cannot be passed to `execve` at all.
    pub fn new<A, E>(path: &OsStr, argv: A, env: E) -> io::Result<ExecPlan>
    where
        A: IntoIterator,
        A::Item: AsRef<OsStr>,
        E: IntoIterator,
        E::Item: AsRef<OsStr>,
    {
        let path = CString::new(path.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program path contains a NUL byte"))?;
        let argv: Vec<CString> = argv
            .into_iter()
            .map(|a| CString::new(a.as_ref().as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))?;
        let env = env
            .into_iter()
            .filter_map(|e| CString::new(e.as_ref().as_bytes()).ok())
            .map(CString::into_bytes_with_nul)
            .collect();
        Ok(ExecPlan {
            path,
            argv,
            argv_ptrs: Vec::new(),
            env,
            env_ptrs: Vec::new(),
            own_pid: Vec::new(),
            fds: Vec::new(),
            scratch: Vec::new(),
            new_process_group: false,
            parent_death_signal: None,
            credentials: None,
            chdir: None,
        })
    }

    /// Adds `KEY=<the child's own pid>` to the environment (`LISTEN_PID`,
    /// `WATCHDOG_PID`); may be called for several keys.
    pub fn with_own_pid_in(mut self, key: &str) -> Self {
        let mut entry = key.as_bytes().to_vec();
        entry.push(b'=');
        let digits_at = entry.len();
        entry.resize(entry.len() + PID_DIGITS + 1, 0);
        self.own_pid.push((self.env.len(), digits_at));
        self.env.push(entry);
        self
    }

    /// Passes `fds` to the child as 3, 4, … in order. Every other fd above 2
    /// is closed in the child.
    pub fn with_fds(mut self, fds: &[RawFd]) -> Self {
        self.fds.retain(|&(_, target)| target < 3);
        self.fds.extend(fds.iter().enumerate().map(|(i, &fd)| (fd, 3 + i as RawFd)));
        self.scratch = vec![-1; self.fds.len()];
        self
    }

    /// Gives the child `stdout` as its fd 1 and `stderr` as its fd 2
    /// instead of this process's own.
    pub fn with_stdout_stderr(mut self, stdout: RawFd, stderr: RawFd) -> Self {
        self.fds.retain(|&(_, target)| target > 2);
        self.fds.extend([(stdout, 1), (stderr, 2)]);
        self.scratch = vec![-1; self.fds.len()];
        self
    }

    /// Makes the child the leader of a new process group.
    pub fn with_new_process_group(mut self) -> Self {
        self.new_process_group = true;
        self
    }

    /// Runs the child as `uid`:`gid`, with `gid` as its only group.
    pub fn with_credentials(mut self, uid: libc::uid_t, gid: libc::gid_t) -> Self {
        self.credentials = Some((uid, gid));
        self
    }

    /// Starts the child in `dir` (after it took its credentials, so `dir`
    /// must be reachable by them).
    pub fn with_chdir(mut self, dir: &OsStr) -> io::Result<Self> {
        let dir = CString::new(dir.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "directory contains a NUL byte"))?;
        self.chdir = Some(dir);
        Ok(self)
    }

    /// Has the kernel send `signal` to the child when this process dies.
    pub fn with_parent_death_signal(mut self, signal: Signal) -> Self {
        self.parent_death_signal = Some(signal);
        self
    }

    /// Forks and execs the plan; returns the child's pid once `execve` has
    /// succeeded, or the child's errno if it failed (the child is reaped).
    pub fn spawn(&mut self) -> Result<Pid, SpawnError> {
        let (pid, err_read) = self.fork()?;
        match read_child_errno(&err_read) {
            None => Ok(pid),
            Some(errno) => {
                // The child has exited (or is about to): reap it so it never
                // shows up as a worker exit.
                let _ = nix::sys::wait::waitpid(pid, None);
                Err(SpawnError::Exec(io::Error::from_raw_os_error(errno)))
            }
        }
    }

    /// Forks and returns at once, without waiting for the child's `execve`:
    /// for a child whose start nothing needs to wait on (a generation's
    /// keeper). Also returns the read end of its error pipe (`CLOEXEC`,
    /// non-blocking): end-of-file once the child has exec'd, or its errno if
    /// that failed, when it then exits with status 127 ([`exec_errno`]).
    pub fn spawn_without_waiting(&mut self) -> Result<(Pid, OwnedFd), SpawnError> {
        let (pid, err_read) = self.fork()?;
        nix::fcntl::fcntl(&err_read, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| SpawnError::Fork(e.into()))?;
        Ok((pid, err_read))
    }

    /// Forks; the child runs `child` on this plan.
    fn fork(&mut self) -> Result<(Pid, OwnedFd), SpawnError> {
        // Pointer arrays are rebuilt on every spawn: the byte buffers never
        // move between here and the fork, so the pointers stay valid.
        self.argv_ptrs.clear();
        self.argv_ptrs.extend(self.argv.iter().map(|a| a.as_ptr()));
        self.argv_ptrs.push(std::ptr::null());
        self.env_ptrs.clear();
        self.env_ptrs.extend(self.env.iter().map(|e| e.as_ptr().cast::<libc::c_char>()));
        self.env_ptrs.push(std::ptr::null());

        let (err_read, err_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Fork(e.into()))?;
        let parent = nix::unistd::getpid().as_raw();

        // SAFETY: main and monitor are single-threaded, so no other thread can
        // hold a lock the child would need; the child branch only runs
        // `child`, which performs async-signal-safe calls on memory prepared
        // above and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(SpawnError::Fork(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: we are the freshly forked child; see `child`.
            unsafe { child(self, err_write.as_raw_fd(), parent) }
        }
        drop(err_write);
        Ok((Pid::from_raw(pid), err_read))
    }
}

/// What the error pipe of a child started with
/// [`ExecPlan::spawn_without_waiting`] says once that child has exited:
/// the errno of its failed `execve`, or `None` if it had exec'd.
pub fn exec_errno(pipe: &OwnedFd) -> Option<io::Error> {
    read_child_errno(pipe).map(io::Error::from_raw_os_error)
}

fn read_child_errno(pipe: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(pipe, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| i32::from_ne_bytes(buf))
}

/// The child between `fork` and `execve`.
///
/// # Safety
///
/// Must be called only in the child of a `fork` from a single-threaded
/// process. It allocates nothing, takes no lock, logs nothing, and calls only
/// async-signal-safe functions (`getpid`, `getppid`, `setpgid`, `setgroups`,
/// `setgid`, `setuid`, `chdir`, `prctl`,
/// `sigaction`, `sigprocmask`, `fcntl`, `dup2`, `close`, `close_range`,
/// `execve`, `write`, `_exit`).
unsafe fn child(plan: &mut ExecPlan, err_fd: RawFd, parent: libc::pid_t) -> ! {
    // The error pipe may sit on a target number: move it above them first.
    let first_free = plan.fds.iter().fold(3, |top, &(_, target)| top.max(target + 1));
    let err_fd = match libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, first_free) {
        moved if moved >= 0 => moved,
        _ => report_and_exit(err_fd),
    };
    macro_rules! fail {
        () => {
            report_and_exit(err_fd)
        };
    }

    if plan.new_process_group && libc::setpgid(0, 0) != 0 {
        fail!();
    }
    // Credentials before the parent-death signal: changing them clears it.
    if let Some((uid, gid)) = plan.credentials {
        if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            fail!();
        }
    }
    // Allocated before the fork; `chdir` is async-signal-safe.
    if let Some(dir) = &plan.chdir {
        if libc::chdir(dir.as_ptr()) != 0 {
            fail!();
        }
    }
    if let Some(signal) = plan.parent_death_signal {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
            fail!();
        }
        // The parent may have died before the prctl took effect.
        if libc::getppid() != parent {
            libc::_exit(127);
        }
    }

    // Ignored signals stay ignored across execve (Rust ignores SIGPIPE, for
    // one): give the program default dispositions, then an empty mask.
    reset_signals(true);

    // Place the fds: first copy every source above all targets (so no source
    // is overwritten by an earlier move), then dup2 each copy into place.
    // dup2 onto a different number always yields an fd without CLOEXEC, and
    // every copy is at `first_free` or above, so never on its target.
    for (i, &(source, _)) in plan.fds.iter().enumerate() {
        let copy = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, first_free);
        if copy < 0 {
            fail!();
        }
        plan.scratch[i] = copy;
    }
    for (i, &(_, target)) in plan.fds.iter().enumerate() {
        if libc::dup2(plan.scratch[i], target) < 0 {
            fail!();
        }
    }
    // Close everything above the passed fds except the error pipe, which is
    // CLOEXEC and closes itself on a successful execve.
    close_from(first_free, err_fd);

    // Reads the slot list built before the fork; writes only into entries
    // allocated then.
    let pid = libc::getpid() as u32;
    for &(index, digits_at) in &plan.own_pid {
        write_decimal(&mut plan.env[index][digits_at..], pid);
    }

    libc::execve(plan.path.as_ptr(), plan.argv_ptrs.as_ptr(), plan.env_ptrs.as_ptr());
    fail!()
}

/// Every signal's disposition back to the default, and an empty mask.
/// `before_exec`: also the C library's two internal real-time signals, which
/// a process that goes on running the same C library (a fork without exec)
/// must keep, as glibc's threads rely on their handlers.
///
/// # Safety
///
/// Async-signal-safe (`sigaction`, `rt_sigaction`, `sigprocmask`); meant for a
/// freshly forked child, where nothing else runs.
pub(super) unsafe fn reset_signals(before_exec: bool) {
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    for signal in 1..=MAX_SIGNAL {
        if signal != libc::SIGKILL
            && signal != libc::SIGSTOP
            && libc::sigaction(signal, &default, std::ptr::null_mut()) != 0
            && before_exec
        {
            // glibc refuses its two internal real-time signals (32, 33);
            // the kernel does not, and an inherited "ignore" must not stick.
            let kernel = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &kernel,
                std::ptr::null_mut::<KernelSigaction>(),
                8,
            );
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
}

/// Sends errno to the parent through `err_fd` and exits the child.
///
/// # Safety
///
/// Async-signal-safe; only for the child after fork.
unsafe fn report_and_exit(err_fd: RawFd) -> ! {
    let bytes = (*libc::__errno_location()).to_ne_bytes();
    libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

/// Closes every fd from `first` upwards except `keep`.
///
/// # Safety
///
/// Async-signal-safe; only for the child after fork.
unsafe fn close_from(first: RawFd, keep: RawFd) {
    let ranges: [(RawFd, RawFd); 2] = if keep >= first {
        [(first, keep - 1), (keep + 1, RawFd::MAX)]
    } else {
        [(first, RawFd::MAX), (0, -1)]
    };
    for (low, high) in ranges {
        if low > high {
            continue;
        }
        let done = libc::syscall(libc::SYS_close_range, low as libc::c_uint, high as libc::c_uint, 0);
        if done != 0 {
            // Kernels before 5.9: close one by one up to a sane bound.
            let top = high.min(65_535);
            let mut fd = low;
            while fd <= top {
                libc::close(fd);
                fd += 1;
            }
        }
    }
}

/// Writes `value` as decimal digits followed by NUL into `slot`, which holds
/// at least `PID_DIGITS + 1` bytes. No allocation.
fn write_decimal(slot: &mut [u8], mut value: u32) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 || n == PID_DIGITS {
            break;
        }
    }
    for i in 0..n {
        slot[i] = digits[n - 1 - i];
    }
    slot[n] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_written_with_terminator() {
        let mut slot = [b'x'; PID_DIGITS + 1];
        write_decimal(&mut slot, 4194304);
        assert_eq!(&slot[..8], b"4194304\0");
        write_decimal(&mut slot, 0);
        assert_eq!(&slot[..2], b"0\0");
    }
}
