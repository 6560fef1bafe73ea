//! Role 2, the monitor: one per generation. It keeps N workers alive, learns
//! when they are ready, and reports to main over the status channel.
//!
//! It is started by main as `panzer __monitor …` in a process group of its
//! own, with the status channel at fd 3 and the listening sockets at fds 4…;
//! the workers it forks stay in that group, so the group is the generation.
//! One single-threaded loop polls the signalfd, the status channel and the
//! notify socket, with the next start or readiness timer as its timeout.

mod accepting;
mod notify_socket;
mod output;
pub(crate) mod pool;

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::Error;
use crate::notify::Notify;
use crate::protocol::{Channel, MonitorArgs, Order, Received, Report, FIRST_SOCKET_FD, STATUS_FD};
use crate::sys;
use crate::sys::spawn::ExecPlan;
use crate::units::format_duration;
use crate::worker;
use accepting::{Readiness, Reason};
use notify_socket::NotifySocket;
use pool::Pool;

/// Signals the monitor handles through its signalfd.
const SIGNALS: &[Signal] =
    &[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT];

/// At most this long for the workers of a generation that failed.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// A worker whose slot was removed by a scale-down, on its way out.
struct Retired {
    pid: i32,
    ordinal: u32,
    kill_at: Instant,
}

struct Monitor {
    args: MonitorArgs,
    /// `None` once main is gone.
    status: Option<Channel>,
    sockets: Vec<OwnedFd>,
    signals: SignalFd,
    notify: NotifySocket,
    pool: Pool,
    base_env: Vec<OsString>,
    program: PathBuf,
    started: Instant,
    /// Set once draining: when the remaining workers get `SIGKILL`.
    kill_at: Option<Instant>,
    /// Workers of slots removed by a scale-down, with their `SIGKILL` time.
    retired: Vec<Retired>,
    parent: Pid,
    exit_code: Option<i32>,
    /// Warnings a worker can trigger at will: one line per second per slot.
    notify_warnings: crate::log_limit::LogLimit<u32>,
    /// With `--tag-output`: the workers' stdout and stderr pipes.
    output: Option<output::TaggedOutput>,
    /// `--ready accepting`/`auto`: looks at starting workers; why each is ready.
    readiness: Readiness,
}

/// Runs the monitor role; returns the process exit status.
pub fn run(args: MonitorArgs) -> i32 {
    sys::set_process_name(c"panzer");
    crate::logging::init(args.log_level, Some(args.generation));
    let status = match sys::adopt_inherited_fd(STATUS_FD).and_then(Channel::from_fd) {
        Ok(status) => status,
        Err(e) => {
            log::error!("no status channel at fd {STATUS_FD}: {e} (the monitor is started by panzer only)");
            return 1;
        }
    };
    match Monitor::new(args, status) {
        Ok(mut monitor) => monitor.run(),
        Err((reason, mut status)) => {
            // Tell main why, so the operator (and panzerctl reload) hears it.
            log::error!("{reason}");
            // Exit 0: main has the reason, and no worker was started.
            match status.send(&Report::GenerationFailed { reason }) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
    }
}

impl Monitor {
    fn new(args: MonitorArgs, status: Channel) -> Result<Monitor, (String, Channel)> {
        match Monitor::prepare(&args) {
            Ok((sockets, signals, notify, program)) => {
                let now = Instant::now();
                Ok(Monitor {
                    readiness: Readiness::new(args.ready, Readiness::socket_inodes(&sockets)),
                    pool: Pool::new(args.count, args.ready, now),
                    base_env: worker::inherited_env(),
                    parent: nix::unistd::getppid(),
                    output: args.tag_output.then(|| output::TaggedOutput::new(args.generation)),
                    args,
                    status: Some(status),
                    sockets,
                    signals,
                    notify,
                    program,
                    started: now,
                    kill_at: None,
                    retired: Vec::new(),
                    exit_code: None,
                    notify_warnings: crate::log_limit::LogLimit::new(Duration::from_secs(1)),
                })
            }
            Err(error) => Err((error.report(), status)),
        }
    }

    /// Everything the monitor needs that can fail.
    fn prepare(args: &MonitorArgs) -> Result<(Vec<OwnedFd>, SignalFd, NotifySocket, PathBuf), Error> {
        let sockets = (0..args.sockets)
            .map(|i| sys::adopt_inherited_fd(FIRST_SOCKET_FD + i as RawFd))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::os("missing listening socket", e))?;
        let notify = NotifySocket::bind(&args.notify_socket).map_err(|e| {
            Error::os(format!("cannot bind notify socket {}", args.notify_socket.display()), e)
        })?;
        let program = worker::resolve_command(&args.argv[0]).map_err(|reason| Error::Command {
            command: args.argv[0].to_string_lossy().into_owned(),
            reason,
        })?;
        let signals: Vec<i32> = SIGNALS.iter().map(|&s| s as i32).collect();
        let signals = sys::signal_fd(&signals).map_err(|e| Error::os("cannot set up signals", e))?;
        Ok((sockets, signals, notify, program))
    }

    fn run(&mut self) -> i32 {
        log::debug!("monitor started for {} workers", self.args.count);
        loop {
            let now = Instant::now();
            self.start_due(now);
            for pid in self.pool.due_ready(now) {
                self.worker_ready(pid, Reason::Alive(self.args.ready_after()));
            }
            self.look_at_starting(now);
            self.check_generation_ready();
            if let Some(code) = self.exit_code {
                if self.pool.workers().next().is_none() && self.retired.is_empty() {
                    if let Some(output) = &mut self.output {
                        output.finish();
                    }
                    return code;
                }
            }
            self.kill_overdue(now);

            let deadline = [
                self.pool.next_deadline(),
                self.kill_at,
                self.retired.iter().map(|r| r.kill_at).min(),
                self.readiness.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut fds: Vec<(BorrowedFd<'_>, bool)> =
                vec![(self.signals.as_fd(), false), (self.notify.fd(), false)];
            let has_status = self.status.is_some();
            if let Some(status) = &self.status {
                fds.push((status.fd(), status.wants_write()));
            }
            let first_output = fds.len();
            let outputs = self.output.as_ref().map(|o| o.fds()).unwrap_or_default();
            let output_tokens: Vec<output::Token> = outputs.iter().map(|&(token, _, _)| token).collect();
            fds.extend(outputs.into_iter().map(|(_, fd, write)| (fd, write)));
            let ready = match sys::poll(&fds, deadline) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("poll failed: {e}");
                    return 1;
                }
            };
            drop(fds);
            if ready[0] {
                for signal in sys::pending_signals(&self.signals) {
                    self.on_signal(signal);
                }
            }
            if ready[1] {
                self.on_notify();
            }
            if has_status && ready[2] {
                self.on_status();
            }
            if let Some(output) = &mut self.output {
                let ready: Vec<output::Token> = output_tokens
                    .into_iter()
                    .zip(&ready[first_output..])
                    .filter(|(_, r)| **r)
                    .map(|(t, _)| t)
                    .collect();
                output.on_ready(&ready);
            }
        }
    }

    fn start_due(&mut self, now: Instant) {
        for ordinal in self.pool.due_starts(now) {
            match self.spawn_worker(ordinal) {
                Ok(pid) => {
                    log::info!("worker {ordinal} started: pid {pid}");
                    self.pool.started(ordinal, pid.as_raw(), now);
                    self.report(Report::WorkerStarted { ordinal, pid: pid.as_raw() });
                }
                Err(e) => {
                    let how = format!("could not run {}: {e}", self.program.display());
                    if let Some(exit) = self.pool.start_failed(ordinal, now) {
                        self.after_exit(exit, 0, &how);
                    }
                }
            }
        }
    }

    fn spawn_worker(&mut self, ordinal: u32) -> Result<Pid, sys::spawn::SpawnError> {
        let env = worker::env(
            &self.base_env,
            self.args.generation,
            ordinal,
            self.sockets.len(),
            &self.args.fd_names,
            self.args.notify_socket.to_str(),
            &self.args.addresses,
        );
        let fds: Vec<RawFd> = self.sockets.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        // The parent-death signal: if this monitor dies, its workers drain
        // while main starts a replacement, instead of serving unsupervised.
        let mut plan = ExecPlan::new(self.program.as_os_str(), &self.args.argv, env)
            .map_err(sys::spawn::SpawnError::Exec)?
            .with_fds(&fds)
            .with_parent_death_signal(Signal::SIGTERM);
        if !self.sockets.is_empty() {
            plan = plan.with_own_pid_in(worker::LISTEN_PID);
        }
        let Some(output) = &mut self.output else { return plan.spawn() };
        let ends = output::TaggedOutput::pipes().map_err(sys::spawn::SpawnError::Fork)?;
        let pid = plan.with_stdout_stderr(ends.stdout.as_raw_fd(), ends.stderr.as_raw_fd()).spawn()?;
        // The write ends close here: the worker has its own copies.
        output.started(pid.as_raw(), ordinal, ends);
        Ok(pid)
    }

    fn worker_ready(&mut self, pid: i32, reason: Reason) {
        if let Some(ordinal) = self.pool.ready(pid) {
            log::debug!("worker {ordinal} (pid {pid}) ready ({reason})");
            self.readiness.ready(ordinal, reason);
            self.report(Report::WorkerReady { ordinal, pid });
        }
    }

    /// `--ready accepting`/`auto`: looks at the starting workers that are due.
    fn look_at_starting(&mut self, now: Instant) {
        if self.pool.is_draining() {
            return;
        }
        let starting: Vec<(i32, Instant)> =
            self.pool.workers().filter(|w| !w.ready && w.pid != 0).map(|w| (w.pid, w.started)).collect();
        for pid in self.readiness.due(&starting, now) {
            let seen = accepting::look(pid, self.readiness.inodes());
            if let accepting::Seen::Hidden(why) = &seen {
                if self.readiness.first_hidden() {
                    log::warn!(
                        "cannot see whether workers accept ({why}); a worker hidden so is ready \
                         after {} alive",
                        format_duration(accepting::ALIVE_FALLBACK)
                    );
                }
            }
            let started = starting.iter().find(|(p, _)| *p == pid).map_or(now, |(_, s)| *s);
            if let Some(reason) = self.readiness.seen(pid, started, now, &seen) {
                self.worker_ready(pid, reason);
            }
        }
    }

    fn check_generation_ready(&mut self) {
        if self.pool.take_generation_ready() {
            let workers = self.pool.slots().len() as u32;
            let elapsed_ms = self.started.elapsed().as_millis() as u64;
            // What decided; main's `generation K ready: …` line follows.
            let why = self.readiness.summary(self.pool.slots().iter().map(|s| s.ordinal));
            log::info!("{workers}/{workers} workers ready in {elapsed_ms} ms ({why})");
            self.report(Report::GenerationReady { workers, elapsed_ms });
        }
    }

    fn on_signal(&mut self, number: i32) {
        let Ok(signal) = Signal::try_from(number) else { return };
        match signal {
            Signal::SIGCHLD => self.reap(),
            _ if nix::unistd::getppid() != self.parent => {
                // The parent-death signal: main is gone.
                self.main_gone();
            }
            // Its own drain signal comes back to it through the group.
            Signal::SIGTERM if self.pool.is_draining() => {}
            _ => self.drain(self.args.graceful_timeout.0),
        }
    }

    fn on_status(&mut self) {
        let Some(status) = &mut self.status else { return };
        if let Err(e) = status.flush() {
            log::debug!("cannot reach main: {e}");
        }
        let (orders, closed) = match status.receive::<Order>() {
            Received::Messages(orders) => (orders, false),
            Received::Closed(orders) => (orders, true),
        };
        for order in orders {
            match order {
                Order::Drain { grace_ms } => self.drain(Duration::from_millis(grace_ms)),
                Order::Scale { count } => self.scale(count),
            }
        }
        if closed {
            self.main_gone();
        }
    }

    fn on_notify(&mut self) {
        for (pid, result) in self.notify.receive() {
            let Some(ordinal) = self.pool.ordinal_of(pid) else {
                log::debug!("ignoring notify message from pid {pid}, not a worker of this generation");
                continue;
            };
            let messages = match result {
                Ok(messages) => messages,
                Err(_) => {
                    if let Some(n) = self.notify_warnings.check(&ordinal, Instant::now()) {
                        let more = crate::log_limit::suppressed(n);
                        log::warn!("worker {ordinal} (pid {pid}) sent a notify message that is not text; dropped{more}");
                    }
                    continue;
                }
            };
            for message in messages {
                match message {
                    // With --ready DURATION or accepting, READY=1 does not count.
                    Notify::Ready if self.readiness.counts_notify() => self.worker_ready(pid, Reason::Notify),
                    Notify::Ready => {}
                    // Worker text stays here: it never travels to main.
                    Notify::Status(text) => log::debug!("worker {ordinal} (pid {pid}) status: {text}"),
                    Notify::Stopping => log::debug!("worker {ordinal} (pid {pid}) is stopping"),
                    Notify::Watchdog | Notify::MainPid(_) | Notify::Reloading { .. } => {}
                }
            }
        }
    }

    /// Reaps every exited child; one `SIGCHLD` may stand for many.
    fn reap(&mut self) {
        loop {
            let status = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let Some(pid) = status.pid() else { continue };
            let how = sys::describe_exit(&status);
            let pid = pid.as_raw();
            if let Some(output) = &mut self.output {
                output.worker_exited(pid);
            }
            if let Some(index) = self.retired.iter().position(|r| r.pid == pid) {
                let ordinal = self.retired.swap_remove(index).ordinal;
                log::info!("worker {ordinal} (pid {pid}) {how}; its slot was removed");
                self.report(Report::WorkerExited { ordinal, pid, how });
                continue;
            }
            if let Some(exit) = self.pool.exited(pid, Instant::now()) {
                self.after_exit(exit, pid, &how);
            }
        }
    }

    fn after_exit(&mut self, exit: pool::Exit, pid: i32, how: &str) {
        let ordinal = exit.ordinal;
        // pid 0: the worker never ran (exec failed).
        let what = match pid {
            0 => format!("worker {ordinal} {how}"),
            _ => format!("worker {ordinal} (pid {pid}) {how} after {}", format_duration(exit.uptime)),
        };
        match exit.restart_in {
            Some(delay) => log::warn!("{what}; restarting in {}", format_duration(delay)),
            None if self.pool.is_draining() => log::info!("worker {ordinal} (pid {pid}) {how}"),
            None => log::warn!("{what}"),
        }
        self.report(Report::WorkerExited { ordinal, pid, how: how.to_string() });
        if exit.generation_failed {
            let reason = format!(
                "worker {ordinal} exited {} times before it was ready (last: {how})",
                pool::MAX_START_FAILURES
            );
            log::error!("generation {} failed: {reason}", self.args.generation);
            self.report(Report::GenerationFailed { reason });
            // Drained like any other: its ready workers may be serving.
            self.drain(self.args.graceful_timeout.0.min(FAILED_GRACE));
        }
    }

    /// Stop the generation: `SIGTERM` to the whole process group (this
    /// monitor included, which ignores it), `SIGKILL` after `grace`.
    fn drain(&mut self, grace: Duration) {
        if self.pool.is_draining() {
            // A shorter grace (a failed generation) still applies.
            let sooner = Instant::now() + grace;
            if self.kill_at.is_some_and(|at| sooner < at) {
                self.kill_at = Some(sooner);
            }
            return;
        }
        let workers = self.pool.workers().count();
        log::info!("draining {workers} worker(s); SIGKILL in {}", format_duration(grace));
        self.pool.drain();
        sys::signal_group(nix::unistd::getpgrp(), Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + grace);
        self.exit_code.get_or_insert(0);
    }

    fn scale(&mut self, count: u32) {
        if self.pool.is_draining() || count == 0 {
            return;
        }
        let kill_at = Instant::now() + self.args.graceful_timeout.0;
        for (ordinal, pid) in self.pool.scale(count, Instant::now()) {
            sys::signal_process(Pid::from_raw(pid), Signal::SIGTERM);
            self.retired.push(Retired { pid, ordinal, kill_at });
        }
        log::info!("now running {count} worker(s)");
    }

    fn kill_overdue(&mut self, now: Instant) {
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            for w in self.pool.workers() {
                log::warn!("worker (pid {}) still running after the graceful timeout: SIGKILL", w.pid);
            }
            self.kill_all();
        }
        for retired in &mut self.retired {
            if retired.kill_at <= now {
                sys::signal_process(Pid::from_raw(retired.pid), Signal::SIGKILL);
                // Killed: only its exit is left to wait for.
                retired.kill_at = now + Duration::from_secs(3600);
            }
        }
    }

    fn kill_all(&self) {
        for w in self.pool.workers() {
            sys::signal_process(Pid::from_raw(w.pid), Signal::SIGKILL);
        }
    }

    /// main has died: nothing may outlive it. The workers drain (within the
    /// graceful timeout) and this monitor exits after them; its copies of
    /// the listening sockets close at once, so the port is free as soon as
    /// the workers have closed theirs.
    fn main_gone(&mut self) {
        if self.status.take().is_some() {
            log::warn!("main is gone: draining this generation");
        }
        self.sockets.clear();
        self.notify.remove_file();
        self.drain(self.args.graceful_timeout.0);
    }

    fn report(&mut self, report: Report) {
        let Some(status) = &mut self.status else { return };
        if let Err(e) = status.send(&report) {
            if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) {
                return self.main_gone();
            }
            log::warn!("cannot report to main: {e}");
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.notify.remove_file();
    }
}
