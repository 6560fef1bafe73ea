//! The keeper of a generation's PID namespace (`panzer __keeper`).
//!
//! When main may create PID namespaces, each monitor's children land in a
//! namespace of their own (main's spawn code unshares it before the monitor
//! drops privileges). The first process forked there is its init: that is
//! the keeper, started before any worker. Every worker the monitor forks
//! after it is a member of the namespace and stays the monitor's child.
//!
//! The keeper does nothing while its monitor lives. It holds the read end
//! of a pipe that only the monitor writes to, so it learns of the monitor's
//! death however it comes (`kill -9` included, and before any worker
//! exists). A monitor that drains first writes its grace to the pipe (8
//! bytes: the milliseconds), and has signalled its group itself. When the
//! monitor is gone, the keeper sends the drain signal to every process in
//! the namespace (unless the monitor drained), waits until they are gone or
//! the graceful timeout has passed (counted from the drain), and exits. When
//! the init of a PID namespace exits, the kernel `SIGKILL`s whatever is left
//! in it: a wrapper's background child, a daemon that left the generation's
//! process group.
//!
//! So a monitor's death still lets its workers drain, as without a
//! namespace; a wrapper script's server may still finish its drain after
//! the wrapper (the worker) has exited and its monitor with it, within the
//! same deadline; and nothing of the generation outlives that deadline.
//! (main, while it runs, also `SIGKILL`s the generation's group at its
//! deadline: the keeper is in it.)
//!
//! The keeper is exec'd (`/proc/self/exe __keeper …`) rather than left a
//! fork of the monitor: its code after the fork is then the one spawn code
//! every child goes through, and `ps` tells it from the monitor.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use clap::Parser;
use nix::unistd::Pid;

use crate::error::Error;
use crate::sys;
use crate::sys::spawn::ExecPlan;
use crate::units::{format_duration, CliDuration, CliSignal};

/// The hidden subcommand.
pub const COMMAND: &str = "__keeper";

/// The fd at which the keeper finds the read end of its monitor's pipe.
const MONITOR_FD: RawFd = 3;

/// How often the keeper looks whether its namespace has emptied, once the
/// monitor is gone (processes that are not its children end unseen).
const LOOK_INTERVAL: Duration = Duration::from_millis(50);

/// How long an exiting monitor waits for its keeper to end an empty
/// namespace; past it, what is left drains under main.
const RELEASE_WAIT: Duration = Duration::from_millis(500);

/// The hidden `panzer __keeper` command line a monitor builds.
#[derive(Debug, Parser)]
#[command(name = "panzer __keeper", hide = true)]
pub struct KeeperArgs {
    #[arg(long)]
    pub generation: u32,
    #[arg(long)]
    pub drain_signal: CliSignal,
    #[arg(long)]
    pub graceful_timeout: CliDuration,
    #[arg(long)]
    pub log_level: log::LevelFilter,
}

/// Runs the keeper role; returns the process exit status. Its exit ends
/// every process left in its namespace.
pub fn run(args: KeeperArgs) -> i32 {
    sys::set_process_name(c"panzer");
    let pid = sys::pid_in_proc();
    crate::logging::init_tagged(args.log_level, format!("panzer[{pid} gen {} keeper]", args.generation));
    let monitor = match sys::adopt_inherited_fd(MONITOR_FD) {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("no monitor pipe at fd {MONITOR_FD}: {e} (the keeper is started by a monitor only)");
            return 1;
        }
    };
    let signals = match sys::signal_fd(&[libc::SIGCHLD]) {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot set up signals: {e}");
            return 1;
        }
    };
    let drain = args.drain_signal.0;
    let grace = args.graceful_timeout.0;
    // Set once the monitor has drained, or is gone: when the namespace ends.
    let mut end_at: Option<Instant> = None;
    let mut monitor_gone = false;
    // It sleeps until its monitor drains or dies: no need for the start-up
    // code's pages meanwhile.
    let _ = sys::resident::release_code_pages();
    loop {
        let mut fds = vec![(signals.as_fd(), false)];
        if !monitor_gone {
            fds.push((monitor.as_fd(), false));
        }
        let wake = end_at.filter(|_| monitor_gone).map(|at| at.min(Instant::now() + LOOK_INTERVAL));
        let ready = match sys::poll(&fds, wake) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("poll failed: {e}; ending the namespace");
                return 1;
            }
        };
        // Orphans of the namespace come to its init: reap them.
        sys::pending_signals(&signals);
        while sys::reap_next_child().is_some() {}
        if !monitor_gone && ready.get(1).copied().unwrap_or(false) {
            match read_grace(&monitor) {
                // The monitor drains: the deadline, in case it dies.
                Some(Some(grace)) => {
                    let at = Instant::now() + grace;
                    end_at = Some(end_at.map_or(at, |end| end.min(at)));
                }
                Some(None) => {}
                None => {
                    monitor_gone = true;
                    if end_at.is_none() {
                        log::debug!(
                            "the monitor is gone: {} to every process of the generation, SIGKILL in {}",
                            drain.as_str(),
                            format_duration(grace)
                        );
                        end_at = Some(Instant::now() + grace);
                        sys::signal_namespace(drain);
                    }
                }
            }
        }
        let Some(at) = end_at.filter(|_| monitor_gone) else { continue };
        if !sys::namespace_has_others() {
            return 0;
        }
        if Instant::now() >= at {
            log::warn!("processes still running after the graceful timeout: SIGKILL (the generation's namespace ends)");
            return 0;
        }
    }
}

/// What the monitor wrote: `Some(Some(grace))` when it started a drain
/// (the shortest grace of what was read), `Some(None)` when there was
/// nothing to read after all, `None` once its end has closed.
fn read_grace(monitor: &OwnedFd) -> Option<Option<Duration>> {
    let mut buf = [0u8; 64];
    match nix::unistd::read(monitor, &mut buf) {
        Ok(0) => None,
        // Writes of 8 bytes are atomic on a pipe: whole messages only.
        Ok(n) => Some(
            buf[..n]
                .chunks_exact(8)
                .map(|c| Duration::from_millis(u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))))
                .min(),
        ),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Some(None),
        Err(_) => None,
    }
}

/// A monitor's handle on its keeper.
pub(crate) struct Keeper {
    pid: Pid,
    /// The write end of the keeper's pipe (`CLOEXEC`, non-blocking): it
    /// closes when the monitor dies, however it dies.
    pipe: OwnedFd,
    /// Its error pipe: says why, if it could not exec.
    exec_error: OwnedFd,
    /// Set once the monitor has reaped it.
    reaped: bool,
}

impl Keeper {
    /// Starts the keeper, if this monitor's children land in a PID
    /// namespace of their own. Must come before any other fork: the first
    /// child is the namespace's init, and when it is gone no process can be
    /// forked there any more.
    pub(crate) fn start(args: &crate::protocol::MonitorArgs) -> Result<Option<Keeper>, Error> {
        if !sys::children_in_new_pid_namespace() {
            log::debug!("no PID namespace for this generation's workers");
            return Ok(None);
        }
        let fail = |e: std::io::Error| Error::os("cannot start the keeper of the workers' PID namespace", e);
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (read, write) = nix::unistd::pipe2(flags).map_err(|e| fail(e.into()))?;
        let argv: Vec<String> = vec![
            "panzer".into(),
            COMMAND.into(),
            format!("--generation={}", args.generation),
            format!("--drain-signal={}", args.drain_signal),
            format!("--graceful-timeout={}ms", args.graceful_timeout.0.as_millis()),
            format!("--log-level={}", args.log_level),
        ];
        let env = std::env::vars_os().filter(|(k, _)| k == "RUST_LOG").map(|(k, v)| {
            let mut entry = k;
            entry.push("=");
            entry.push(v);
            entry
        });
        // Not waited for: it only has to exist (be the namespace's init)
        // before the first worker is forked, and its exec then runs beside
        // the workers' starts. Should it fail, the keeper exits, which the
        // monitor hears of as of any keeper's end.
        let (pid, exec_error) = ExecPlan::new("/proc/self/exe".as_ref(), &argv, env)
            .map_err(fail)?
            .with_fds(&[read.as_raw_fd()])
            .spawn_without_waiting()
            .map_err(|e| {
                fail(match e {
                    sys::spawn::SpawnError::Fork(e) | sys::spawn::SpawnError::Exec(e) => e,
                })
            })?;
        log::debug!("the workers run in a PID namespace of their own; its keeper is pid {pid}");
        Ok(Some(Keeper { pid, pipe: write, exec_error, reaped: false }))
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// The monitor reaped it; why it could not start, if that was it.
    pub(crate) fn reaped(&mut self) -> Option<std::io::Error> {
        self.reaped = true;
        sys::spawn::exec_errno(&self.exec_error)
    }

    /// Whether it has exited (and was reaped) while the monitor runs.
    pub(crate) fn is_reaped(&self) -> bool {
        self.reaped
    }

    /// The monitor drains its workers with `grace`: what is left of the
    /// namespace when the monitor is gone ends by then at the latest.
    pub(crate) fn draining(&self, grace: Duration) {
        let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        // 8 bytes into a pipe the keeper empties: never short, never blocks
        // for long; if it fails, the keeper counts from the monitor's exit.
        let _ = nix::unistd::write(&self.pipe, &millis.to_ne_bytes());
    }

    /// The monitor is done with its workers: closes the pipe, which makes
    /// the keeper end the namespace once nothing is left in it (or by the
    /// drain's deadline), and waits a moment for that, reaping, so that a
    /// generation that left nothing behind leaves no keeper either.
    pub(crate) fn release(self, signals: &sys::SignalFd) {
        let Keeper { pid, pipe, reaped, .. } = self;
        drop(pipe);
        if !reaped && !sys::reap_until_gone(pid, signals, Instant::now() + RELEASE_WAIT) {
            log::debug!("the keeper (pid {pid}) waits for what is left of the generation");
        }
    }
}
