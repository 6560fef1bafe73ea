//! Role 2, the monitor: one per generation. It keeps N workers alive, learns
//! when they are ready, and reports to main over the status channel.
//!
//! It is started by main as `panzer __monitor …` in a process group of its
//! own, with the status channel at fd 3 and the listening sockets at fds 4…;
//! the workers it forks stay in that group, so the group is the generation.
//! One single-threaded loop polls the signalfd, the status channel and the
//! notify socket, with the next start or readiness timer as its timeout.

mod notify_socket;
pub mod pool;

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::{CliDuration, ReadyMode};
use crate::notify::Notify;
use crate::status::{Channel, Order, Received, Report};
use crate::sys;
use crate::sys::spawn::ExecPlan;
use crate::worker;
use notify_socket::NotifySocket;
use pool::Pool;

/// The fd at which a monitor finds its status channel.
pub const STATUS_FD: RawFd = 3;
/// The fd of the first listening socket in a monitor.
pub const FIRST_SOCKET_FD: RawFd = 4;

/// The hidden `panzer __monitor` command line main builds.
#[derive(Debug, Parser)]
#[command(name = "panzer __monitor", hide = true)]
pub struct MonitorArgs {
    #[arg(long)]
    pub generation: u32,
    #[arg(long)]
    pub count: u32,
    #[arg(long)]
    pub ready: ReadyMode,
    #[arg(long)]
    pub graceful_timeout: CliDuration,
    /// How many listening sockets start at fd 4.
    #[arg(long)]
    pub sockets: usize,
    #[arg(long, default_value = "")]
    pub fd_names: String,
    #[arg(long)]
    pub notify_socket: PathBuf,
    #[arg(long)]
    pub log_level: log::LevelFilter,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<OsString>,
}

impl MonitorArgs {
    /// The argument list main passes after `__monitor`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "__monitor".into(),
            format!("--generation={}", self.generation).into(),
            format!("--count={}", self.count).into(),
            format!("--ready={}", self.ready).into(),
            format!("--graceful-timeout={}ms", self.graceful_timeout.0.as_millis()).into(),
            format!("--sockets={}", self.sockets).into(),
            format!("--fd-names={}", self.fd_names).into(),
        ];
        let mut notify = OsString::from("--notify-socket=");
        notify.push(&self.notify_socket);
        args.push(notify);
        args.push(format!("--log-level={}", self.log_level).into());
        args.push("--".into());
        args.extend(self.argv.iter().cloned());
        args
    }
}

/// Signals the monitor handles through its signalfd.
const SIGNALS: &[Signal] =
    &[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT];

/// A worker whose slot was removed by a scale-down, on its way out.
struct Retired {
    pid: i32,
    ordinal: u32,
    kill_at: Instant,
}

struct Monitor {
    args: MonitorArgs,
    status: Channel,
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
}

/// Runs the monitor role; returns the process exit status.
pub fn run(args: MonitorArgs) -> i32 {
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
        Err((reason, status)) => {
            // Tell main why, so the operator (and panzerctl reload) hears it.
            log::error!("{reason}");
            let _ = status.send(&Report::GenerationFailed { reason });
            1
        }
    }
}

impl Monitor {
    fn new(args: MonitorArgs, status: Channel) -> Result<Monitor, (String, Channel)> {
        match Monitor::prepare(&args) {
            Ok((sockets, signals, notify, program)) => {
                let now = Instant::now();
                Ok(Monitor {
                    pool: Pool::new(args.count, args.ready, now),
                    base_env: worker::inherited_env(),
                    parent: nix::unistd::getppid(),
                    args,
                    status,
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
            Err(reason) => Err((reason, status)),
        }
    }

    /// Everything the monitor needs that can fail.
    fn prepare(args: &MonitorArgs) -> Result<(Vec<OwnedFd>, SignalFd, NotifySocket, PathBuf), String> {
        let sockets = (0..args.sockets)
            .map(|i| sys::adopt_inherited_fd(FIRST_SOCKET_FD + i as RawFd))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("missing listening socket: {e}"))?;
        let notify = NotifySocket::bind(&args.notify_socket)
            .map_err(|e| format!("cannot bind notify socket {}: {e}", args.notify_socket.display()))?;
        let program = worker::resolve_command(&args.argv[0])
            .map_err(|e| format!("cannot run {}: {e}", args.argv[0].to_string_lossy()))?;
        let signals = sys::signal_fd(SIGNALS).map_err(|e| format!("cannot set up signals: {e}"))?;
        Ok((sockets, signals, notify, program))
    }

    fn run(&mut self) -> i32 {
        log::debug!("monitor started for {} workers", self.args.count);
        loop {
            let now = Instant::now();
            self.start_due(now);
            for pid in self.pool.due_ready(now) {
                self.worker_ready(pid);
            }
            self.check_generation_ready();
            if let Some(code) = self.exit_code {
                if self.pool.workers().next().is_none() && self.retired.is_empty() {
                    return code;
                }
            }
            self.kill_overdue(now);

            let deadline =
                [self.pool.next_deadline(), self.kill_at, self.retired.iter().map(|r| r.kill_at).min()]
                    .into_iter()
                    .flatten()
                    .min();
            let ready = match sys::wait_readable(
                &[self.signals.as_fd(), self.status.fd(), self.notify.fd()],
                deadline,
            ) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("poll failed: {e}");
                    self.main_gone();
                }
            };
            if ready[0] {
                for signal in sys::pending_signals(&self.signals) {
                    self.on_signal(signal);
                }
            }
            if ready[1] {
                self.on_orders();
            }
            if ready[2] {
                self.on_notify();
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

    fn spawn_worker(&self, ordinal: u32) -> Result<Pid, sys::spawn::SpawnError> {
        let env = worker::env(
            &self.base_env,
            self.args.generation,
            ordinal,
            self.sockets.len(),
            &self.args.fd_names,
            self.args.notify_socket.to_str(),
        );
        let fds: Vec<RawFd> = self.sockets.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut plan = ExecPlan::new(self.program.as_os_str(), &self.args.argv, env)
            .map_err(sys::spawn::SpawnError::Exec)?
            .with_fds(&fds);
        if !self.sockets.is_empty() {
            plan = plan.with_listen_pid();
        }
        plan.spawn()
    }

    fn worker_ready(&mut self, pid: i32) {
        if let Some(ordinal) = self.pool.ready(pid) {
            log::debug!("worker {ordinal} (pid {pid}) ready");
            self.report(Report::WorkerReady { ordinal, pid });
        }
    }

    fn check_generation_ready(&mut self) {
        if self.pool.take_generation_ready() {
            let workers = self.pool.slots().len() as u32;
            let elapsed_ms = self.started.elapsed().as_millis() as u64;
            self.report(Report::GenerationReady { workers, elapsed_ms });
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGQUIT => self.main_gone(),
            _ if nix::unistd::getppid() != self.parent => {
                // The parent-death signal: main is gone, take the generation with it.
                self.main_gone();
            }
            _ => self.drain(),
        }
    }

    fn on_orders(&mut self) {
        let (orders, closed) = match self.status.receive::<Order>() {
            Received::Messages(orders) => (orders, false),
            Received::Closed(orders) => (orders, true),
        };
        for order in orders {
            match order {
                Order::Drain => self.drain(),
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
                    // With --ready DURATION, only time alive counts.
                    Notify::Ready if self.args.ready == ReadyMode::Notify => self.worker_ready(pid),
                    Notify::Ready => {}
                    Notify::Status(text) => {
                        log::debug!("worker {ordinal} (pid {pid}) status: {text}");
                        self.report(Report::WorkerStatus { ordinal, text });
                    }
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
            let how = describe_exit(&status);
            let pid = pid.as_raw();
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
            self.pool.drain();
            self.kill_all();
            self.exit_code = Some(1);
        }
    }

    /// Stop the generation: `SIGTERM` to the whole process group (this
    /// monitor included, which ignores it), `SIGKILL` after the graceful timeout.
    fn drain(&mut self) {
        if self.pool.is_draining() {
            return;
        }
        let workers = self.pool.workers().count();
        log::info!(
            "draining {workers} worker(s); SIGKILL in {}",
            format_duration(self.args.graceful_timeout.0)
        );
        self.pool.drain();
        sys::signal_group(nix::unistd::getpgrp(), Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + self.args.graceful_timeout.0);
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

    /// main has died: nothing may outlive it. `SIGKILL` the whole process
    /// group, this monitor included.
    fn main_gone(&mut self) -> ! {
        self.notify.remove_file();
        sys::signal_group(nix::unistd::getpgrp(), Signal::SIGKILL);
        std::process::exit(1)
    }

    fn report(&mut self, report: Report) {
        if let Err(e) = self.status.send(&report) {
            if e.raw_os_error() == Some(libc::EPIPE) || e.raw_os_error() == Some(libc::ECONNRESET) {
                self.main_gone();
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

/// "exited with status 1", "killed by SIGKILL".
pub fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, core) => {
            format!("killed by {}{}", signal.as_str(), if *core { " (core dumped)" } else { "" })
        }
        other => format!("changed state: {other:?}"),
    }
}

/// `250ms`, `1.5s`, `2m`: short, for log lines.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 120_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m", d.as_secs() / 60)
    }
}
