//! Role 2, the monitor: one per generation. It keeps N workers alive, learns
//! when they are ready, and reports to main over the status channel.
//!
//! It is started by main as `panzer __monitor …` in a process group of its
//! own, with the status channel at fd 3 and the listening sockets at fds 4…;
//! the workers it forks stay in that group, so the group is the generation.
//! One single-threaded loop polls the signalfd, the status channel and the
//! notify socket, with the pool's next deadline (a start, a readiness
//! timer, a health or age limit, a kill) or the memory check as its timeout.
//!
//! How a worker starts is the one thing that differs between the modes
//! (`Launch`): exec mode forks and execs the command (`sys::spawn`);
//! library mode (`panzer --preload`, entered through `panzer::run` in the
//! user's own binary) forks this process, and the child calls the user's
//! `serve`. Everything else, this loop included, is shared.
//!
//! Supervision (`--health-timeout`, `--max-rss`, `--max-age`) replaces a
//! worker surge-first (see [`pool`]). main hears of a successor only once it
//! is ready, in one `Report::WorkerReplaced` message, so its view of a slot
//! goes from one ready worker to the next, never through a slot without one.

mod accepting;
mod fork;
pub mod keeper;
mod notifications;
mod notify_socket;
mod output;
pub(crate) mod pool;
mod slots;

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::Error;
use crate::logging::of_worker;
use crate::protocol::{
    Channel, MonitorArgs, Order, Received, Report, FAILED_GRACE, FIRST_SOCKET_FD, MAX_UNREADY_EXITS,
    STATUS_FD,
};
use crate::sys;
use crate::sys::spawn::ExecPlan;
use crate::sys::Interest;
use crate::units::format_duration;
use crate::worker;
use accepting::Readiness;
use notify_socket::NotifySocket;
use pool::{Limits, Pool, Reason, Role};

pub(crate) use fork::{run_library, ForkedWorker};

/// Signals the monitor handles through its signalfd.
const SIGNALS: &[Signal] =
    &[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT];

/// How often workers' memory is measured with `--max-rss`.
const RSS_INTERVAL: Duration = Duration::from_secs(1);

/// How often a message from one pid that no worker owns is logged.
const STRANGER_INTERVAL: Duration = Duration::from_secs(60);

/// What a poll result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Signals,
    Notify,
    /// The status channel to main (readable, or with room for reports that wait).
    Status,
    /// A worker's stdout or stderr pipe (`--tag-output`).
    Output(output::Token),
    /// The monitor's own stdout or stderr has room for the lines that wait.
    Log,
}

/// How the monitor starts a worker.
pub(crate) enum Launch {
    /// Exec mode: fork and exec this program (resolved from `argv[0]`).
    Exec { program: PathBuf },
    /// Library mode: fork this process; the child calls `start`, which
    /// never returns (the worker ends with `exit`; `Infallible` stands for
    /// `!`). `app_fds`: what the app opened before `panzer::run` (its
    /// preloaded state owns them), which the workers keep.
    Fork { start: Box<dyn FnMut(ForkedWorker) -> std::convert::Infallible>, app_fds: Vec<RawFd> },
}

struct Monitor {
    args: MonitorArgs,
    /// `None` once main is gone.
    status: Option<Channel>,
    sockets: Vec<OwnedFd>,
    signals: sys::SignalFd,
    notify: NotifySocket,
    pool: Pool,
    base_env: Vec<OsString>,
    launch: Launch,
    started: Instant,
    /// Set once draining: when the remaining workers get `SIGKILL`.
    kill_at: Option<Instant>,
    /// With `--max-rss`: when memory is measured next.
    rss_at: Option<Instant>,
    /// Drops the code pages the monitor ran once it has been quiet a while.
    shed: sys::resident::Shedder,
    parent: Pid,
    exit_code: Option<i32>,
    /// Warnings a worker can trigger at will: one line per second per slot.
    notify_warnings: crate::log_limit::LogLimit<u32>,
    /// With `--tag-output`: the workers' stdout and stderr pipes.
    output: Option<output::TaggedOutput>,
    /// `--ready accepting`/`auto`: looks at starting workers; why each is ready.
    readiness: Readiness,
    /// Notify messages from pids no worker owns: one line per pid a minute.
    strangers: crate::log_limit::LogLimit<i32>,
    /// The generation's keeper (none in library mode).
    keeper: Option<keeper::Keeper>,
    /// `--balance round-robin`: removed slots' workers, drained once their queue is empty.
    held_drains: slots::HeldDrains,
}

/// Runs the monitor role; returns the process exit status.
pub fn run(args: MonitorArgs) -> i32 {
    sys::set_process_name(c"panzer");
    crate::logging::init(args.log_level, args.log_format, Some(args.generation));
    let status = match sys::adopt_inherited_fd(STATUS_FD).and_then(Channel::from_fd) {
        Ok(status) => status,
        Err(e) => {
            log::error!("no status channel at fd {STATUS_FD}: {e} (the monitor is started by panzer only)");
            return 1;
        }
    };
    let program = match worker::resolve_command(&args.argv[0]) {
        Ok(program) => program,
        Err(e) => return fail(e.report(), status),
    };
    serve(args, status, Launch::Exec { program })
}

/// Tells main why the generation cannot start, so the operator (and
/// `panzerctl reload`) hears it.
fn fail(reason: String, mut status: Channel) -> i32 {
    log::error!("{reason}");
    // Exit 0: main has the reason, and no worker was started.
    match status.send(&Report::GenerationFailed { reason }) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn serve(args: MonitorArgs, status: Channel, launch: Launch) -> i32 {
    if !crate::protocol::speaks(args.protocol) {
        let reason = format!(
            "main speaks panzer protocol {}, this monitor (panzer {}) speaks {}..={}: build the app \
             against the panzer version that main runs",
            args.protocol,
            env!("CARGO_PKG_VERSION"),
            crate::protocol::OLDEST_SPOKEN,
            crate::protocol::VERSION
        );
        return fail(reason, status);
    }
    let code = match Monitor::new(args, status, launch) {
        Ok(mut monitor) => monitor.run(),
        // Tell main why, so the operator (and panzerctl reload) hears it.
        Err((error, status)) => fail(error.report(), status),
    };
    crate::logging::finish();
    code
}

impl Monitor {
    fn new(args: MonitorArgs, status: Channel, launch: Launch) -> Result<Monitor, (Error, Channel)> {
        match Monitor::prepare(&args) {
            Ok((sockets, signals, notify)) => {
                // The first child, before any worker. Library mode's app is
                // not panzer's binary: it has no keeper to exec. Without one
                // the generation still runs, as before keepers.
                let keeper = match launch {
                    Launch::Exec { .. } => keeper::Keeper::start(&args)
                        .map_err(|e| {
                            log::warn!("{}: a worker's background child may outlive panzer", e.report())
                        })
                        .ok(),
                    Launch::Fork { .. } => None,
                };
                let now = Instant::now();
                let limits = Limits {
                    health_timeout: args.health_timeout.map(|d| d.0),
                    max_age: args.max_age.map(|d| d.0),
                    startup_timeout: args.startup_timeout.map(|d| d.0),
                    graceful: args.graceful_timeout.0,
                };
                Ok(Monitor {
                    readiness: Readiness::new(args.ready, Readiness::socket_inodes(&sockets)),
                    pool: Pool::new(args.count, args.ready, now).with_limits(limits),
                    rss_at: args.max_rss.map(|_| now + RSS_INTERVAL),
                    shed: sys::resident::Shedder::default(),
                    base_env: worker::inherited_env(),
                    parent: nix::unistd::getppid(),
                    output: args
                        .tag_output
                        .then(|| output::TaggedOutput::new(args.generation, args.log_format)),
                    args,
                    status: Some(status),
                    sockets,
                    signals,
                    notify,
                    launch,
                    started: now,
                    kill_at: None,
                    exit_code: None,
                    notify_warnings: crate::log_limit::LogLimit::new(Duration::from_secs(1)),
                    strangers: crate::log_limit::LogLimit::new(STRANGER_INTERVAL),
                    keeper,
                    held_drains: slots::HeldDrains::default(),
                })
            }
            Err(error) => Err((error, status)),
        }
    }

    /// Everything the monitor needs that can fail.
    fn prepare(args: &MonitorArgs) -> Result<(Vec<OwnedFd>, sys::SignalFd, NotifySocket), Error> {
        let sockets = (0..args.sockets)
            .map(|i| sys::adopt_inherited_fd(FIRST_SOCKET_FD + i as RawFd))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::os("missing listening socket", e))?;
        let notify = NotifySocket::bind(&args.notify_socket).map_err(|e| {
            Error::os(format!("cannot bind notify socket {}", args.notify_socket.display()), e)
        })?;
        // The drain signal too: the monitor sends it to its own group, and
        // must never die of it (`USR2`'s default action ends a process).
        let signals: Vec<i32> = SIGNALS.iter().chain([&args.drain_signal.0]).map(|&s| s as i32).collect();
        let signals = sys::signal_fd(&signals).map_err(|e| Error::os("cannot set up signals", e))?;
        Ok((sockets, signals, notify))
    }

    fn run(&mut self) -> i32 {
        log::debug!("monitor started for {} workers", self.args.count);
        loop {
            let now = Instant::now();
            self.supervise(now);
            self.start_due(now);
            for pid in self.pool.due_ready(now) {
                self.worker_ready(pid, accepting::Reason::Alive(self.args.ready_after()));
            }
            self.look_at_starting(now);
            self.release_held_drains(now);
            self.check_generation_ready();
            if let Some(code) = self.exit_code {
                if self.pool.is_empty() {
                    if let Some(output) = &mut self.output {
                        output.finish();
                    }
                    return code;
                }
            }
            self.kill_overdue(now);

            let ready = match self.wait() {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("poll failed: {e}");
                    return 1;
                }
            };
            self.shed.on_wake(Instant::now());
            // Notify messages before the exits: what a worker said just
            // before it exited (STOPPING=1 as it drains) is read while it
            // is still known as one of this generation's.
            if ready.contains(&Token::Notify) {
                self.on_notify();
            }
            if ready.contains(&Token::Signals) {
                for signal in sys::pending_signals(&self.signals) {
                    self.on_signal(signal);
                }
            }
            if ready.contains(&Token::Status) {
                self.on_status();
            }
            if ready.contains(&Token::Log) {
                crate::logging::flush();
            }
            if let Some(output) = &mut self.output {
                let ready: Vec<output::Token> = ready
                    .iter()
                    .filter_map(|token| match token {
                        Token::Output(token) => Some(*token),
                        _ => None,
                    })
                    .collect();
                output.on_ready(&ready);
            }
        }
    }

    /// Sleeps until something is ready or the nearest deadline passes;
    /// returns what is ready.
    fn wait(&self) -> std::io::Result<Vec<Token>> {
        let deadline = [
            self.pool.next_deadline(),
            self.kill_at,
            self.rss_at,
            self.readiness.next_deadline(),
            self.shed.deadline(),
            self.held_drains.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut tokens = vec![Token::Signals, Token::Notify];
        let mut fds: Vec<(BorrowedFd<'_>, Interest)> =
            vec![(self.signals.as_fd(), Interest::Read), (self.notify.fd(), Interest::Read)];
        if let Some(status) = &self.status {
            tokens.push(Token::Status);
            fds.push((status.fd(), status.wants_write().into()));
        }
        for (token, fd) in self.output.as_ref().map(|o| o.fds()).unwrap_or_default() {
            tokens.push(Token::Output(token));
            fds.push((fd, Interest::Read));
        }
        // Last: its own stdout and stderr, while lines wait for room.
        for fd in crate::logging::waiting_fds() {
            tokens.push(Token::Log);
            fds.push((fd, Interest::Write));
        }
        let ready = sys::poll(&fds, deadline)?;
        Ok(tokens.into_iter().zip(ready).filter(|(_, r)| *r).map(|(t, _)| t).collect())
    }

    /// Replacements, stalled starts and overdue kills the pool finds due,
    /// and the memory check when its time has come.
    fn supervise(&mut self, now: Instant) {
        if self.rss_at.is_some_and(|at| at <= now) {
            self.check_memory(now);
        }
        for replacement in self.pool.check(now) {
            let pool::Replacement { ordinal, pid, reason } = replacement;
            // A recycle after --max-age is planned, not a fault.
            let level =
                if matches!(reason, Reason::Age { .. }) { log::Level::Info } else { log::Level::Warn };
            let line = format!("worker {ordinal} (pid {pid}) {reason}: replacing it");
            log::log!(level, worker = ordinal, worker_pid = pid, reason = reason.kind(); "{line}");
        }
        for (ordinal, pid) in self.pool.stalled(now) {
            let timeout = self.args.startup_timeout.map_or(Duration::ZERO, |d| d.0);
            of_worker!(
                warn, ordinal, pid;
                "worker {ordinal} (pid {pid}) not ready {} after it started (--startup-timeout): \
                 stopping it with {}",
                format_duration(timeout),
                self.drain_signal().as_str()
            );
            sys::signal_process(Pid::from_raw(pid), self.drain_signal());
        }
        for pid in self.pool.due_kills(now) {
            log::warn!(worker_pid = pid; "pid {pid} still running after the graceful timeout: SIGKILL");
            sys::signal_process(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// `--max-rss`: each serving worker's memory, with its descendants'.
    fn check_memory(&mut self, now: Instant) {
        self.rss_at = Some(now + RSS_INTERVAL);
        let Some(limit) = self.args.max_rss.map(|size| size.0) else { return };
        let serving: Vec<i32> = self
            .pool
            .slots()
            .iter()
            .filter(|s| s.replacing.is_none())
            .filter_map(|s| s.worker.as_ref().filter(|w| w.ready).map(|w| w.pid))
            .collect();
        for pid in serving {
            let Some(kib) = sys::tree_rss_kib(Pid::from_raw(pid)) else { continue };
            let bytes = kib.saturating_mul(1024);
            if bytes <= limit {
                continue;
            }
            let reason = Reason::Memory { bytes, limit };
            let ordinal = self.pool.ordinal_of(pid).unwrap_or_default();
            let line = format!("worker {ordinal} (pid {pid}) {reason}: replacing it");
            if self.pool.replace(pid, reason, now) {
                of_worker!(warn, ordinal, pid; "{line}");
            }
        }
    }

    fn drain_signal(&self) -> Signal {
        self.args.drain_signal.0
    }

    fn start_due(&mut self, now: Instant) {
        for ordinal in self.pool.due_starts(now) {
            // main may die while a batch starts (its parent-death signal
            // waits in the signalfd meanwhile): not one worker more then.
            if self.status.is_some() && nix::unistd::getppid() != self.parent {
                self.main_gone();
            }
            if self.pool.is_draining() {
                break;
            }
            match self.spawn_worker(ordinal) {
                Ok(pid) => {
                    let pid = pid.as_raw();
                    self.pool.started(ordinal, pid, now);
                    if self.pool.is_successor(pid) {
                        // main hears of it once it is ready and takes over.
                        of_worker!(info, ordinal, pid; "worker {ordinal} replacement started: pid {pid}");
                    } else {
                        of_worker!(info, ordinal, pid; "worker {ordinal} started: pid {pid}");
                        self.report(Report::WorkerStarted { ordinal, pid });
                    }
                }
                Err(e) => {
                    let why = e.explain(Some(self.fds().worker_start()));
                    let how = match &self.launch {
                        Launch::Exec { program } => format!("could not run {}: {why}", program.display()),
                        Launch::Fork { .. } => format!("could not start: {why}"),
                    };
                    if let Some(exit) = self.pool.start_failed(ordinal, now) {
                        self.after_exit(exit, 0, &how);
                    }
                }
            }
        }
    }

    /// What this monitor holds in descriptors and needs to start a worker.
    fn fds(&self) -> crate::limits::MonitorFds {
        // With --balance round-robin it holds a set of sockets per slot.
        let sets = self.args.slots.max(1);
        crate::limits::MonitorFds {
            sockets: self.sockets.len() as u32 / sets,
            tag_output: self.output.is_some(),
            library: matches!(self.launch, Launch::Fork { .. }),
            round_robin: self.args.slots > 0,
        }
    }

    fn spawn_worker(&mut self, ordinal: u32) -> Result<Pid, sys::spawn::SpawnError> {
        let program = match &self.launch {
            Launch::Exec { program } => program.clone(),
            Launch::Fork { .. } => return self.fork_worker(ordinal).map_err(sys::spawn::SpawnError::Fork),
        };
        let fds: Vec<RawFd> = self
            .worker_sockets(ordinal)
            .map_err(sys::spawn::SpawnError::Fork)?
            .into_iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let mut env = worker::env(
            &self.base_env,
            self.args.generation,
            ordinal,
            fds.len(),
            &self.args.fd_names,
            self.args.notify_socket.to_str(),
            &self.args.addresses,
        );
        if let Some(timeout) = self.args.health_timeout {
            env.push(format!("{}={}", worker::WATCHDOG_USEC, timeout.0.as_micros()).into());
        }
        // The parent-death signal: if this monitor dies, its workers drain
        // while main starts a replacement, instead of serving unsupervised.
        let mut plan = ExecPlan::new(program.as_os_str(), &self.args.argv, env)
            .map_err(sys::spawn::SpawnError::Exec)?
            .with_fds(&fds)
            .with_parent_death_signal(self.drain_signal());
        if !self.sockets.is_empty() {
            plan = plan.with_own_pid_in(worker::LISTEN_PID);
        }
        if self.args.health_timeout.is_some() {
            plan = plan.with_own_pid_in(worker::WATCHDOG_PID);
        }
        let Some(output) = &mut self.output else { return plan.spawn() };
        let ends = output::TaggedOutput::pipes().map_err(sys::spawn::SpawnError::Fork)?;
        let pid = plan.with_stdout_stderr(ends.stdout.as_raw_fd(), ends.stderr.as_raw_fd()).spawn()?;
        // The write ends close here: the worker has its own copies.
        output.started(pid.as_raw(), ordinal, ends);
        Ok(pid)
    }

    fn worker_ready(&mut self, pid: i32, reason: accepting::Reason) {
        match self.pool.ready(pid, Instant::now()) {
            None => {}
            Some((ordinal, None)) => {
                of_worker!(debug, ordinal, pid; "worker {ordinal} (pid {pid}) ready ({reason})");
                self.readiness.ready(ordinal, reason);
                self.report(Report::WorkerReady { ordinal, pid });
            }
            Some((ordinal, Some(replaced))) => {
                let old = replaced.old_pid;
                let signal = self.drain_signal();
                log::info!(
                    worker = ordinal, worker_pid = pid, replaced_pid = old;
                    "worker {ordinal}: pid {pid} ready, replacing pid {old} ({})",
                    signal.as_str()
                );
                sys::signal_process(Pid::from_raw(old), signal);
                // One message, so that main never sees the slot without a
                // ready worker: it stands for `WorkerStarted` and
                // `WorkerReady` of the successor.
                let reason = replaced.reason.kind().to_string();
                let replacements = replaced.replacements;
                self.report(Report::WorkerReplaced {
                    ordinal,
                    old_pid: old,
                    new_pid: pid,
                    reason,
                    replacements,
                });
            }
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
            // What decided: main's `generation K ready: …` line says it.
            let how = self.readiness.summary(self.pool.slots().iter().map(|s| s.ordinal));
            self.report(Report::GenerationReady { workers, elapsed_ms, how });
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
            s if s == self.drain_signal() && self.pool.is_draining() => {}
            // Blocked only so that the group's drain cannot end the monitor.
            s if !SIGNALS.contains(&s) => log::debug!("ignoring {}", s.as_str()),
            _ => self.drain(self.args.graceful_timeout.0),
        }
    }

    fn on_status(&mut self) {
        let Some(status) = &mut self.status else { return };
        if let Err(e) = status.flush() {
            log::debug!("cannot reach main: {e}");
        }
        let (orders, closed) = match status.receive_with_fds::<Order>() {
            Received::Messages(orders) => (orders, false),
            Received::Closed(orders) => (orders, true),
        };
        for (order, fds) in orders {
            match order {
                Order::Drain { grace_ms } => self.drain(Duration::from_millis(grace_ms)),
                Order::Scale { count } => self.scale(count),
                Order::Slot { slot } => self.add_slot(slot, fds),
            }
        }
        if closed {
            self.main_gone();
        }
    }

    /// Reaps every exited child; one `SIGCHLD` may stand for many.
    fn reap(&mut self) {
        while let Some((pid, exit)) = sys::reap_next_child() {
            let how = exit.to_string();
            if let Some(keeper) = self.keeper.as_mut().filter(|k| k.pid() == pid) {
                let how = match keeper.reaped() {
                    Some(e) => format!("could not start: {}", crate::error::describe(&e)),
                    None => how,
                };
                log::error!(
                    "the generation's keeper (pid {pid}) {how}: a worker's background child may outlive \
                     panzer"
                );
                self.keeper = None;
                continue;
            }
            let pid = pid.as_raw();
            if let Some(output) = &mut self.output {
                output.worker_exited(pid);
            }
            self.held_drains.forget(pid);
            if let Some(exit) = self.pool.exited(pid, Instant::now()) {
                self.after_exit(exit, pid, &how);
            }
        }
    }

    fn after_exit(&mut self, exit: pool::Exit, pid: i32, how: &str) {
        let ordinal = exit.ordinal;
        match exit.role {
            Role::Retired { replaced_by: None } => {
                let line = format!("worker {ordinal} (pid {pid}) {how}; its slot was removed");
                of_worker!(info, ordinal, pid, how; "{line}");
                return self.report(Report::WorkerExited { ordinal, pid, how: how.to_string() });
            }
            Role::Retired { replaced_by: Some(successor) } => {
                let line = format!("worker {ordinal} (pid {pid}) {how}; replaced by pid {successor}");
                of_worker!(info, ordinal, pid, how; "{line}");
                // main already knows the slot as the successor's: it ignores this.
                return self.report(Report::WorkerExited { ordinal, pid, how: how.to_string() });
            }
            Role::Successor => {
                let again = match exit.restart_in {
                    Some(delay) => format!("; trying again in {}", format_duration(delay)),
                    None => String::new(),
                };
                // main never heard of it: nothing to report.
                return of_worker!(
                    warn, ordinal, pid, how;
                    "worker {ordinal} replacement (pid {pid}) {how} before it was ready{again}"
                );
            }
            Role::Serving { successor: Some(successor) } => {
                of_worker!(
                    warn, ordinal, pid, how;
                    "worker {ordinal} (pid {pid}) {how}; its replacement, pid {successor}, takes over"
                );
                self.report(Report::WorkerExited { ordinal, pid, how: how.to_string() });
                return self.report(Report::WorkerStarted { ordinal, pid: successor });
            }
            Role::Serving { successor: None } => {}
        }
        // pid 0: the worker never ran (exec failed).
        let what = match pid {
            0 => format!("worker {ordinal} {how}"),
            _ => format!("worker {ordinal} (pid {pid}) {how} after {}", format_duration(exit.uptime)),
        };
        match exit.restart_in {
            Some(delay) => {
                of_worker!(warn, ordinal, pid, how; "{what}; restarting in {}", format_duration(delay))
            }
            None if self.pool.is_draining() => {
                of_worker!(info, ordinal, pid, how; "worker {ordinal} (pid {pid}) {how}")
            }
            None => of_worker!(warn, ordinal, pid, how; "{what}"),
        }
        self.report(Report::WorkerExited { ordinal, pid, how: how.to_string() });
        if exit.generation_failed {
            let reason = format!(
                "worker {ordinal} exited {} times before it was ready (last: {how})",
                MAX_UNREADY_EXITS
            );
            log::error!("generation {} failed: {reason}", self.args.generation);
            self.report(Report::GenerationFailed { reason });
            // Drained like any other: its ready workers may be serving.
            self.drain(self.args.graceful_timeout.0.min(FAILED_GRACE));
        }
    }

    /// Stop the generation: the drain signal to the whole process group
    /// (this monitor included, which ignores it), `SIGKILL` after `grace`.
    /// main hears that it is done ([`Report::Draining`]): without that
    /// within a second, it signals the group itself.
    fn drain(&mut self, grace: Duration) {
        if self.pool.is_draining() {
            // A shorter grace (a failed generation) still applies.
            let sooner = Instant::now() + grace;
            if self.kill_at.is_some_and(|at| sooner < at) {
                self.kill_at = Some(sooner);
                if let Some(keeper) = &self.keeper {
                    keeper.draining(grace);
                }
            }
        } else {
            let workers = self.pool.workers().count();
            self.pool.drain();
            // The whole group gets the drain signal now: a held one is sent.
            self.held_drains = slots::HeldDrains::default();
            if grace.is_zero() {
                // A stop now (SIGQUIT): no drain to promise.
                log::info!("killing {workers} worker(s) now");
                self.kill_all();
            } else {
                log::info!("draining {workers} worker(s); SIGKILL in {}", format_duration(grace));
                sys::signal_group(nix::unistd::getpgrp(), self.drain_signal());
                self.kill_at = Some(Instant::now() + grace);
            }
            if let Some(keeper) = &self.keeper {
                keeper.draining(grace);
            }
            self.exit_code.get_or_insert(0);
        }
        if crate::protocol::reports_draining(self.args.protocol) {
            self.report(Report::Draining);
        }
    }

    fn kill_overdue(&mut self, now: Instant) {
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            for w in self.pool.workers() {
                let line =
                    format!("worker (pid {}) still running after the graceful timeout: SIGKILL", w.pid);
                log::warn!(worker_pid = w.pid; "{line}");
            }
            self.kill_all();
        }
    }

    fn kill_all(&self) {
        let retiring = self.pool.retiring().iter().map(|r| r.pid);
        for pid in self.pool.workers().map(|w| w.pid).chain(retiring) {
            sys::signal_process(Pid::from_raw(pid), Signal::SIGKILL);
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
        if let Some(keeper) = self.keeper.take() {
            keeper.release();
        }
    }
}
