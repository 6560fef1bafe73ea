//! A generation's keeper (`panzer __keeper`).
//!
//! A monitor and its workers share a process group, the generation's, and
//! so do the processes the workers start (a non-interactive `sh` keeps its
//! background jobs in its own group): a wrapper's background child
//! (`sh -c 'sidecar & exec ./server'`) that inherited the listening socket
//! is in it too, though it has no parent-death signal. When main and the
//! monitor die together, nobody else is left to signal that group. The
//! keeper is: the monitor's first child, exec'd, in the same group.
//!
//! It does nothing while its monitor lives. It holds the read end of a pipe
//! that only the monitor writes to, so it learns of the monitor's death
//! however it comes (`kill -9` included, and before any worker exists). A
//! monitor that drains first writes its grace to the pipe (8 bytes: the
//! milliseconds), and has signalled its group itself. When the monitor is
//! gone, the keeper sends the drain signal to the group (unless the monitor
//! drained), waits until it is the group's last process or the graceful
//! timeout has passed (counted from the drain), and then `SIGKILL`s the
//! group, itself included.
//!
//! Being a member, it pins the group's id: no later process can be given
//! it while the keeper lives, so it may signal the group at any time (see
//! "Never signalling a recycled pid" in `lib.rs`). It ignores every signal
//! sent to the group but `SIGKILL`, which main or the monitor sends only
//! when the rest of the group is overdue too.
//!
//! So a monitor's death still lets its workers drain; a wrapper script's
//! server may still finish its drain after the wrapper (the worker) has
//! exited and its monitor with it, within the same deadline; and nothing
//! that stayed in the generation's group outlives that deadline. A process
//! that left the group (`setsid`, a daemonizing sidecar) escapes it: a later
//! panzer on the same address ends it (`main_process`'s `leftovers`).
//!
//! The keeper is exec'd (`/proc/self/exe __keeper …`) rather than left a
//! fork of the monitor: it then maps none of the monitor's heap, its code
//! after the fork is the one spawn code every child goes through, and `ps`
//! tells it from the monitor.

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

/// How often the keeper looks whether it is the last of its group, once
/// the monitor is gone (the others are not its children: their exits come
/// unannounced): every [`LOOK_FIRST`] for [`LOOK_FAST`], then twice as
/// long each time up to [`LOOK_MAX`], so that a long drain costs a read of
/// `/proc` a second, not twenty.
const LOOK_FIRST: Duration = Duration::from_millis(50);
const LOOK_FAST: Duration = Duration::from_secs(2);
const LOOK_MAX: Duration = Duration::from_secs(1);

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
    #[arg(long, value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
}

/// Runs the keeper role; returns the process exit status (once the rest
/// of its group is gone; else it ends with the group, by `SIGKILL`).
pub fn run(args: KeeperArgs) -> i32 {
    let code = keep(args);
    crate::logging::finish();
    code
}

/// Ends the group `group`, this keeper included, after writing what log
/// lines it can without waiting.
fn end_group(group: Pid) {
    crate::logging::flush();
    sys::signal_group(group, nix::sys::signal::Signal::SIGKILL);
}

fn keep(args: KeeperArgs) -> i32 {
    sys::set_process_name(c"panzer");
    sys::ignore_signals();
    let me = nix::unistd::getpid();
    crate::logging::init_keeper(args.log_level, args.log_format, args.generation);
    let monitor = match sys::adopt_inherited_fd(MONITOR_FD) {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("no monitor pipe at fd {MONITOR_FD}: {e} (the keeper is started by a monitor only)");
            return 1;
        }
    };
    let group = nix::unistd::getpgrp();
    // The monitor leads the group (its pid is the group's id): it is not
    // waited for, it closes the pipe when it is done.
    let except = [me, group];
    let drain = args.drain_signal.0;
    let grace = args.graceful_timeout.0;
    // Set once the monitor has drained, or is gone: when the group ends.
    let mut end_at: Option<Instant> = None;
    let mut monitor_gone: Option<Instant> = None;
    let mut look = LOOK_FIRST;
    loop {
        // It sleeps until its monitor drains or dies: no need for the
        // code it has just run meanwhile.
        if monitor_gone.is_none() {
            let _ = sys::resident::release_code_pages();
        }
        let wake = end_at.filter(|_| monitor_gone.is_some()).map(|at| at.min(Instant::now() + look));
        let fds: Vec<_> = if monitor_gone.is_some() { Vec::new() } else { vec![(monitor.as_fd(), false)] };
        if let Err(e) = sys::poll(&fds, wake) {
            // Never the group of a live monitor: that is the monitor's.
            if monitor_gone.is_some() {
                log::error!("poll failed: {e}; SIGKILL to group {group}");
                end_group(group);
            } else {
                log::error!("poll failed: {e}");
            }
            return 1;
        }
        if let Some(since) = monitor_gone {
            if since.elapsed() >= LOOK_FAST {
                look = (look * 2).min(LOOK_MAX);
            }
        } else {
            match read_grace(&monitor) {
                // The monitor drains: the deadline, in case it dies.
                Some(Some(grace)) => {
                    let at = Instant::now() + grace;
                    end_at = Some(end_at.map_or(at, |end| end.min(at)));
                }
                Some(None) => {}
                None => {
                    monitor_gone = Some(Instant::now());
                    if end_at.is_none() {
                        log::debug!(
                            "the monitor is gone: {} to the generation's group {group}, SIGKILL in {}",
                            drain.as_str(),
                            format_duration(grace)
                        );
                        end_at = Some(Instant::now() + grace);
                        sys::signal_group(group, drain);
                    }
                }
            }
        }
        let Some(at) = end_at.filter(|_| monitor_gone.is_some()) else { continue };
        if !sys::group_has_others(group, &except) {
            return 0;
        }
        if Instant::now() >= at {
            log::warn!("processes of group {group} still running after the graceful timeout: SIGKILL");
            end_group(group);
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
    /// Starts the keeper: before any worker, so that it is there whenever
    /// one is.
    pub(crate) fn start(args: &crate::protocol::MonitorArgs) -> Result<Keeper, Error> {
        let fail = |e: std::io::Error| Error::os("cannot start the generation's keeper", e);
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (read, write) = nix::unistd::pipe2(flags).map_err(|e| fail(e.into()))?;
        let argv: Vec<String> = vec![
            "panzer".into(),
            COMMAND.into(),
            format!("--generation={}", args.generation),
            format!("--drain-signal={}", args.drain_signal),
            format!("--graceful-timeout={}ms", args.graceful_timeout.0.as_millis()),
            format!("--log-level={}", args.log_level),
            format!("--log-format={}", args.log_format),
        ];
        let env = std::env::vars_os().filter(|(k, _)| k == "RUST_LOG").map(|(k, v)| {
            let mut entry = k;
            entry.push("=");
            entry.push(v);
            entry
        });
        // Its exec is not waited for: it runs beside the workers' starts,
        // and costs a reload nothing. Should it fail, the keeper exits,
        // which the monitor hears of as of any keeper's end.
        let (pid, exec_error) = ExecPlan::new("/proc/self/exe".as_ref(), &argv, env)
            .map_err(fail)?
            .with_fds(&[read.as_raw_fd()])
            .spawn_without_waiting()
            .map_err(|e| {
                fail(match e {
                    sys::spawn::SpawnError::Fork(e) | sys::spawn::SpawnError::Exec(e) => e,
                })
            })?;
        log::debug!("the generation's keeper is pid {pid}");
        Ok(Keeper { pid, pipe: write, exec_error, reaped: false })
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// The monitor reaped it; why it could not start, if that was it.
    pub(crate) fn reaped(&mut self) -> Option<std::io::Error> {
        self.reaped = true;
        sys::spawn::exec_errno(&self.exec_error)
    }

    /// The monitor drains its workers with `grace`: what is left of the
    /// group when the monitor is gone ends by then at the latest.
    pub(crate) fn draining(&self, grace: Duration) {
        let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        // 8 bytes into a pipe the keeper empties: never short, never blocks
        // for long; if it fails, the keeper counts from the monitor's exit.
        let _ = nix::unistd::write(&self.pipe, &millis.to_ne_bytes());
    }

    /// The monitor is done with its workers: closes the pipe, which makes
    /// the keeper exit once nothing but the monitor is left in the group
    /// (or end the group by the drain's deadline). The monitor does not
    /// wait for that: it exits at once, so the old generation is gone for
    /// main as soon as its workers are, and main (the subreaper) reaps the
    /// keeper a moment later.
    pub(crate) fn release(self) {
        drop(self.pipe);
    }
}
