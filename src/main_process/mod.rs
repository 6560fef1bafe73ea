//! Role 1, main: owns the listening sockets for its whole life, runs one
//! monitor per generation, and turns signals into generation changes.
//!
//! Single-threaded: one poll over the signalfd and every monitor's status
//! channel, with the nearest deadline (startup timeout, kill backstop, orphan
//! sweep) as its timeout. Idle, it never wakes up. The rules about which
//! generation starts, serves, drains or is killed live in [`generation`].

pub mod generation;
mod orphans;
mod pid_file;
mod systemd;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::config::{CliDuration, Config};
use crate::control::server::{ClientId, Server};
use crate::control::{
    self, Command, GenerationStatus, ReloadStats, Reply, Request, SocketStatus, Status, WorkerStatus,
};
use crate::error::{describe, Error};
use crate::monitor::{describe_exit, format_duration, MonitorArgs};
use crate::runtime_dir::{self, RuntimeDir};
use crate::sockets::{self, Listener};
use crate::status::{Channel, Order, Received, Report};
use crate::sys::{self, spawn::ExecPlan};
use crate::worker;
use generation::{Action, Generations, State};
use orphans::{Left, Orphans};
use pid_file::PidFile;
use systemd::Systemd;

/// Signals main handles; everything else keeps its default.
const SIGNALS: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// How long after its own graceful timeout a draining monitor may take
/// before main kills its whole group.
const DRAIN_BACKSTOP: Duration = Duration::from_secs(5);

/// At most this long for the workers of a failed generation to finish.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// First delay before another replacement generation when the last one
/// failed; doubles per failure up to the cap.
const REPLACEMENT_BACKOFF: Duration = Duration::from_millis(100);
const REPLACEMENT_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// What main knows of one worker, from its monitor's reports.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub pid: i32,
    pub ready: bool,
    pub restarts: u32,
    pub since: Instant,
}

/// One running monitor.
struct Monitor {
    generation: u32,
    pid: Pid,
    channel: Channel,
    /// While starting: when it counts as failed.
    startup_deadline: Option<Instant>,
    /// While draining or failed: when main kills its group.
    kill_deadline: Option<Instant>,
    workers: BTreeMap<u32, WorkerView>,
    notify_socket: PathBuf,
}

struct Main {
    config: Config,
    sockets: Vec<Listener>,
    signals: SignalFd,
    control: Server,
    /// Clients waiting for the reload under way, and for the one queued after it.
    reload_waiters: Vec<ClientId>,
    queued_reload_waiters: Vec<ClientId>,
    /// Replacement generations (not reloads) that failed in a row: their
    /// next start waits, so a monitor that cannot start does not spin.
    replacement_failures: u32,
    /// Generations whose monitor starts when the delay runs out.
    delayed_starts: Vec<(u32, Instant)>,
    reloads: ReloadStats,
    started: Instant,
    systemd: Option<Systemd>,
    generations: Generations,
    monitors: Vec<Monitor>,
    orphans: Orphans,
    runtime_dir: RuntimeDir,
    /// Set on stop: when every remaining group is killed.
    stop_deadline: Option<Instant>,
    interrupts: u32,
    exit: Option<i32>,
    last_failure: Option<String>,
}

/// Runs main until it stops; returns the exit status.
pub fn run(config: Config) -> Result<i32, Error> {
    // Inherited sockets first: any fd panzer opens could land on their numbers.
    let adopted = sockets::adopt_from_env()?;
    // Then signals, so none is lost while sockets are bound.
    let signals = sys::signal_fd(SIGNALS).map_err(|e| Error::os("cannot set up signal handling", e))?;
    worker::resolve_command(&config.command).map_err(|reason| Error::Command {
        command: config.command.to_string_lossy().into_owned(),
        reason,
    })?;
    sys::become_subreaper().map_err(|e| Error::os("cannot become child subreaper", e))?;
    let pid_file = config.pid_file.as_deref().map(PidFile::check).transpose()?;
    let control_path = match config.control.clone() {
        Some(path) => path,
        None => runtime_dir::control_socket_path(std::process::id())?,
    };
    let control = Server::bind(&control_path)?;
    let sockets = match adopted {
        Some(adopted) => {
            if !config.binds.is_empty() {
                log::warn!("socket activation: using the {} socket(s) passed in, not --bind", adopted.len());
            }
            adopted
        }
        None => sockets::bind_all(&config.binds, config.backlog)?,
    };
    for listener in &sockets {
        log::info!("listening on {}", listener.local);
    }
    log::info!("control socket at {}", control.path().display());
    let runtime_dir = RuntimeDir::create(config.credentials)?;
    let _pid_file = pid_file.map(PidFile::write).transpose()?;
    let mut main = Main {
        config,
        sockets,
        signals,
        control,
        reload_waiters: Vec::new(),
        queued_reload_waiters: Vec::new(),
        replacement_failures: 0,
        delayed_starts: Vec::new(),
        reloads: ReloadStats::default(),
        started: Instant::now(),
        systemd: Systemd::from_env(),
        generations: Generations::new(),
        monitors: Vec::new(),
        orphans: Orphans::default(),
        runtime_dir,
        stop_deadline: None,
        interrupts: 0,
        exit: None,
        last_failure: None,
    };
    let boot = main.generations.boot();
    main.perform(boot);
    let code = main.run();
    main.kill_leftovers();
    if code == crate::error::EXIT_NOT_READY {
        return Err(Error::NotReady { reason: main.last_failure.unwrap_or_else(|| "unknown".into()) });
    }
    log::info!("stopped");
    Ok(code)
}

impl Main {
    fn run(&mut self) -> i32 {
        loop {
            self.on_timers(Instant::now());
            if let Some(code) = self.exit {
                if self.monitors.is_empty() && self.delayed_starts.is_empty() && self.orphans.is_empty() {
                    return code;
                }
            }
            let deadline = self.next_deadline();
            let mut fds: Vec<BorrowedFd<'_>> = vec![self.signals.as_fd()];
            fds.extend(self.monitors.iter().map(|m| m.channel.fd()));
            let monitors_end = fds.len();
            fds.extend(self.control.fds());
            let ready = match sys::wait_readable(&fds, deadline) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("poll failed: {e}; stopping everything");
                    self.kill_everything();
                    return crate::error::EXIT_OSERR;
                }
            };
            let channels: Vec<u32> = self
                .monitors
                .iter()
                .zip(&ready[1..monitors_end])
                .filter(|(_, &r)| r)
                .map(|(m, _)| m.generation)
                .collect();
            drop(fds);
            for generation in channels {
                self.on_reports(generation);
            }
            for (client, request) in self.control.on_ready(&ready[monitors_end..]) {
                self.on_request(client, request);
            }
            if ready[0] {
                for signal in sys::pending_signals(&self.signals) {
                    self.on_signal(signal);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let monitors = self.monitors.iter().flat_map(|m| [m.startup_deadline, m.kill_deadline]);
        let delayed = self.delayed_starts.iter().map(|d| Some(d.1));
        monitors
            .chain(delayed)
            .chain([
                self.orphans.next_deadline(),
                self.stop_deadline,
                self.control.next_deadline(),
                self.systemd.as_ref().and_then(Systemd::next_deadline),
            ])
            .flatten()
            .min()
    }

    fn on_timers(&mut self, now: Instant) {
        self.control.expire(now);
        if let Some(systemd) = &mut self.systemd {
            systemd.on_timer(now);
        }
        let overdue: Vec<(u32, usize)> = self
            .monitors
            .iter()
            .filter(|m| m.startup_deadline.is_some_and(|d| d <= now))
            .map(|m| (m.generation, m.workers.values().filter(|w| w.ready).count()))
            .collect();
        for (generation, ready) in overdue {
            let reason = format!(
                "not ready within {} ({ready}/{} workers ready)",
                format_duration(self.config.startup_timeout),
                self.config.count
            );
            self.generation_failed(generation, reason);
        }
        for m in &mut self.monitors {
            if m.kill_deadline.is_some_and(|d| d <= now) {
                log::warn!("generation {} did not stop in time: killing its process group", m.generation);
                sys::signal_group(m.pid, Signal::SIGKILL);
                m.kill_deadline = None;
            }
        }
        if self.stop_deadline.is_some_and(|d| d <= now) {
            self.stop_deadline = None;
            self.kill_everything();
        }
        let monitors = self.monitor_pids();
        self.orphans.on_timer(now, &monitors);
        let due: Vec<u32> = self.delayed_starts.iter().filter(|d| d.1 <= now).map(|d| d.0).collect();
        self.delayed_starts.retain(|d| d.1 > now);
        for generation in due {
            self.spawn_generation(generation);
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        if signal == Signal::SIGCHLD {
            return self.reap();
        }
        let Some(command) = control::signals::command(signal, self.interrupts) else {
            return;
        };
        if signal == Signal::SIGINT {
            self.interrupts += 1;
        }
        log::info!("received {}", signal.as_str());
        self.execute(command, None);
    }

    fn on_request(&mut self, client: ClientId, request: Request) {
        let command = request.command();
        if command != Command::Status {
            log::info!("control request: {request:?}");
        }
        self.execute(command, Some(client));
    }

    /// Carries out `command`; `client` (if any) gets the reply.
    fn execute(&mut self, command: Command, client: Option<ClientId>) {
        let reply = |main: &mut Main, reply: Reply| {
            if let Some(client) = client {
                main.control.reply(client, &reply);
            }
        };
        match command {
            Command::Status => {
                let status = self.status();
                reply(self, Reply { status: Some(status), ..Reply::ok() });
            }
            Command::Reload => {
                let actions = self.generations.reload();
                if actions.is_empty() {
                    log::info!("reload queued behind the one under way");
                }
                if let Some(client) = client {
                    self.control.hold(client);
                    if actions.is_empty() {
                        self.queued_reload_waiters.push(client);
                    } else {
                        self.reload_waiters.push(client);
                    }
                }
                self.perform(actions);
            }
            Command::Stop => {
                reply(self, Reply::ok());
                self.graceful_stop();
            }
            Command::StopNow => {
                reply(self, Reply::ok());
                self.immediate_stop();
            }
            Command::Scale(count) => {
                self.scale(count);
                reply(self, Reply { count: Some(self.config.count), ..Reply::ok() });
            }
            Command::ScaleBy(delta) => {
                let count = self.config.count.saturating_add_signed(delta).max(1);
                self.scale(count);
            }
        }
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let generations = self
            .generations
            .iter()
            .map(|(number, state)| {
                // A generation whose start is delayed has no monitor yet.
                let Some(monitor) = self.monitors.iter().find(|m| m.generation == number) else {
                    return GenerationStatus {
                        generation: number,
                        monitor_pid: 0,
                        state: state.name().to_string(),
                        workers: Vec::new(),
                    };
                };
                let workers = monitor
                    .workers
                    .iter()
                    .filter(|(_, w)| w.pid != 0)
                    .map(|(&ordinal, w)| WorkerStatus {
                        ordinal,
                        pid: w.pid,
                        ready: w.ready,
                        restarts: w.restarts,
                        uptime_s: now.duration_since(w.since).as_secs(),
                        rss_kib: sys::rss_kib(Pid::from_raw(w.pid)).unwrap_or(0),
                    })
                    .collect();
                GenerationStatus {
                    generation: number,
                    monitor_pid: monitor.pid.as_raw(),
                    state: state.name().to_string(),
                    workers,
                }
            })
            .collect();
        Status {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            count: self.config.count,
            sockets: self
                .sockets
                .iter()
                .map(|l| SocketStatus { name: l.spec.fd_name().to_string(), addr: l.local.clone() })
                .collect(),
            generations,
            reloads: self.reloads.clone(),
        }
    }

    fn graceful_stop(&mut self) {
        if self.generations.is_stopping() {
            return;
        }
        log::info!(
            "stopping gracefully (workers have {} to finish)",
            format_duration(self.config.graceful_timeout)
        );
        self.stop_deadline = Some(Instant::now() + self.config.graceful_timeout + DRAIN_BACKSTOP);
        if let Some(systemd) = &self.systemd {
            systemd.stopping();
        }
        let actions = self.generations.stop();
        self.perform(actions);
        let monitors = self.monitor_pids();
        self.orphans.release(self.config.graceful_timeout, &monitors);
        self.refuse_queued_reloads();
    }

    /// No reload will run any more: clients waiting for a queued one hear why.
    fn refuse_queued_reloads(&mut self) {
        for client in std::mem::take(&mut self.queued_reload_waiters) {
            self.control.reply(client, &Reply::error("panzer is stopping"));
        }
    }

    fn immediate_stop(&mut self) {
        log::warn!("stopping now, killing every worker");
        if let Some(systemd) = &self.systemd {
            systemd.stopping();
        }
        let actions = self.generations.stop();
        self.perform(actions);
        self.refuse_queued_reloads();
        self.kill_everything();
    }

    fn kill_everything(&mut self) {
        for m in &self.monitors {
            sys::signal_group(m.pid, Signal::SIGKILL);
        }
        let monitors = self.monitor_pids();
        self.orphans.kill_all(&monitors);
        self.exit.get_or_insert(0);
    }

    fn scale(&mut self, count: u32) {
        if self.generations.is_stopping() || count == self.config.count {
            return;
        }
        log::info!("scaling from {} to {count} worker(s)", self.config.count);
        self.config.count = count;
        let current: Vec<u32> = self
            .generations
            .iter()
            .filter(|(_, s)| matches!(s, State::Starting | State::Ready))
            .map(|(n, _)| n)
            .collect();
        for generation in current {
            self.order(generation, Order::Scale { count });
        }
    }

    /// Reaps every exited child. A monitor is examined while it is still a
    /// zombie, so its process-group id cannot have been reused when its
    /// group is signalled.
    fn reap(&mut self) {
        while let Some(status) = sys::peek_exited_child() {
            let Some(pid) = status.pid() else { break };
            if let Some(index) = self.monitors.iter().position(|m| m.pid == pid) {
                let monitor = self.monitors.remove(index);
                self.monitor_exited(monitor, &status);
            } else {
                log::debug!("reaped pid {pid}: {}", describe_exit(&status));
            }
            sys::reap(pid);
        }
    }

    fn monitor_exited(&mut self, monitor: Monitor, status: &WaitStatus) {
        let generation = monitor.generation;
        let how = describe_exit(status);
        let others = self.monitor_pids();
        let grace = self.config.graceful_timeout;
        let left = match self.generations.state(generation) {
            Some(State::Starting) => {
                log::error!(
                    "monitor of generation {generation} (pid {}) {how} before it was ready",
                    monitor.pid
                );
                self.last_failure = Some(format!("its monitor {how}"));
                if generation > 1 && !self.generations.is_reload(generation) {
                    self.replacement_failures += 1;
                }
                Left::Terminate(grace)
            }
            Some(State::Ready) => {
                log::error!("monitor of generation {generation} (pid {}) {how} unexpectedly", monitor.pid);
                // Its workers keep serving until a new generation is ready.
                if self.generations.is_stopping() {
                    Left::Terminate(grace)
                } else {
                    Left::Serving
                }
            }
            _ if matches!(status, WaitStatus::Exited(..)) => {
                // Drained (or failed): it sent SIGTERM; processes its workers
                // started may still be finishing requests until the deadline.
                log::info!("generation {generation} stopped");
                let deadline = monitor.kill_deadline.map(|d| d.checked_sub(DRAIN_BACKSTOP).unwrap_or(d));
                Left::Terminated(deadline.unwrap_or_else(Instant::now))
            }
            _ => {
                // Killed while draining: it may never have told its workers.
                log::error!("monitor of generation {generation} (pid {}) {how} while stopping", monitor.pid);
                Left::Terminate(grace)
            }
        };
        self.orphans.adopt(monitor.pid, left, &others);
        let _ = std::fs::remove_file(&monitor.notify_socket);
        let actions = self.generations.exited(generation);
        self.perform(actions);
    }

    fn monitor_pids(&self) -> Vec<Pid> {
        self.monitors.iter().map(|m| m.pid).collect()
    }

    fn on_reports(&mut self, generation: u32) {
        let Some(monitor) = self.monitors.iter_mut().find(|m| m.generation == generation) else {
            return;
        };
        let reports = match monitor.channel.receive::<Report>() {
            Received::Messages(reports) | Received::Closed(reports) => reports,
        };
        for report in reports {
            self.on_report(generation, report);
        }
    }

    fn on_report(&mut self, generation: u32, report: Report) {
        let Some(monitor) = self.monitors.iter_mut().find(|m| m.generation == generation) else {
            return;
        };
        match report {
            Report::WorkerStarted { ordinal, pid } => {
                let restarts = monitor.workers.get(&ordinal).map_or(0, |w| w.restarts + 1);
                monitor
                    .workers
                    .insert(ordinal, WorkerView { pid, ready: false, restarts, since: Instant::now() });
            }
            Report::WorkerReady { ordinal, pid } => {
                if let Some(w) = monitor.workers.get_mut(&ordinal).filter(|w| w.pid == pid) {
                    w.ready = true;
                }
            }
            Report::WorkerExited { ordinal, pid, .. } => {
                if let Some(w) = monitor.workers.get_mut(&ordinal).filter(|w| w.pid == pid) {
                    w.ready = false;
                    w.pid = 0;
                }
            }
            Report::WorkerStatus { .. } => {}
            Report::GenerationReady { workers, elapsed_ms } => {
                monitor.startup_deadline = None;
                log::info!("generation {generation} ready: {workers}/{workers} workers in {elapsed_ms} ms");
                // Too late if it already failed (say, at the startup timeout).
                let takes_over = self.generations.state(generation) == Some(State::Starting);
                let actions = self.generations.ready(generation);
                self.perform(actions);
                if takes_over {
                    self.replacement_failures = 0;
                    // What a dead monitor left serving can stop now.
                    let monitors = self.monitor_pids();
                    self.orphans.release(self.config.graceful_timeout, &monitors);
                    if let Some(systemd) = &mut self.systemd {
                        systemd.ready(format!("generation {generation} serving with {workers} worker(s)"));
                    }
                }
            }
            Report::GenerationFailed { reason } => self.generation_failed(generation, reason),
        }
    }

    fn generation_failed(&mut self, generation: u32, reason: String) {
        if let Some(m) = self.monitors.iter_mut().find(|m| m.generation == generation) {
            m.startup_deadline = None;
        }
        if self.generations.state(generation) == Some(State::Starting) {
            log::error!("generation {generation} failed: {reason}");
            self.last_failure = Some(reason.clone());
            if generation > 1 && !self.generations.is_reload(generation) {
                self.replacement_failures += 1;
            }
        }
        let actions = self.generations.failed(generation, &reason);
        self.perform(actions);
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(generation) => self.start_generation(generation),
                Action::Drain(generation) => self.stop_generation(generation, self.config.graceful_timeout),
                // Stopped like a drain, only sooner: workers of a failed
                // generation that already accept may be mid-request.
                Action::Kill(generation) => {
                    self.stop_generation(generation, self.config.graceful_timeout.min(FAILED_GRACE))
                }
                Action::Reloaded(outcome) => self.reloaded(outcome),
                Action::Exit(code) => {
                    self.exit.get_or_insert(code);
                    self.refuse_queued_reloads();
                }
            }
        }
    }

    /// Tells `generation`'s monitor to drain; its group is killed if it is
    /// not gone `grace` (plus a backstop) from now.
    fn stop_generation(&mut self, generation: u32, grace: Duration) {
        if let Some(index) = self.delayed_starts.iter().position(|d| d.0 == generation) {
            // Never started: nothing to stop.
            self.delayed_starts.remove(index);
            let actions = self.generations.exited(generation);
            return self.perform(actions);
        }
        self.order(generation, Order::Drain);
        if let Some(m) = self.monitors.iter_mut().find(|m| m.generation == generation) {
            m.startup_deadline = None;
            m.kill_deadline = Some(Instant::now() + grace + DRAIN_BACKSTOP);
        }
    }

    /// A reload has an outcome: log it, count it, answer whoever asked.
    fn reloaded(&mut self, outcome: Result<u32, String>) {
        let reply = match &outcome {
            Ok(generation) => {
                log::info!("reload done: generation {generation} serves");
                self.reloads.ok += 1;
                Reply { generation: Some(*generation), ..Reply::ok() }
            }
            Err(reason) => {
                let serving =
                    self.generations.iter().filter(|(_, s)| *s == State::Ready).map(|(n, _)| n).last();
                let message = match serving {
                    Some(n) => format!("{reason}; generation {n} keeps serving"),
                    None => reason.clone(),
                };
                log::error!("reload failed: {message}");
                self.reloads.failed += 1;
                self.reloads.last_error = Some(message.clone());
                if let Some(systemd) = self.systemd.as_mut().filter(|_| !self.generations.is_stopping()) {
                    systemd.ready(format!("reload failed: {message}"));
                }
                Reply::error(message)
            }
        };
        for client in std::mem::take(&mut self.reload_waiters) {
            self.control.reply(client, &reply);
        }
    }

    fn order(&mut self, generation: u32, order: Order) {
        if let Some(m) = self.monitors.iter().find(|m| m.generation == generation) {
            match m.channel.send(&order) {
                // The monitor has just exited; its SIGCHLD is on its way.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
                Err(e) => log::warn!("cannot reach the monitor of generation {generation}: {}", describe(&e)),
                Ok(()) => {}
            }
        }
    }

    /// Starts `generation`: at once, or after a delay when replacements
    /// keep failing. A reload's waiting clients now wait for this one.
    fn start_generation(&mut self, generation: u32) {
        if self.generations.is_reload(generation) {
            let queued = std::mem::take(&mut self.queued_reload_waiters);
            self.reload_waiters.extend(queued);
            if let Some(systemd) = &self.systemd {
                systemd.reloading();
            }
        } else if self.replacement_failures > 0 {
            let delay = REPLACEMENT_BACKOFF
                .saturating_mul(1 << (self.replacement_failures - 1).min(10))
                .min(REPLACEMENT_BACKOFF_CAP);
            log::warn!("starting generation {generation} in {}", format_duration(delay));
            self.delayed_starts.push((generation, Instant::now() + delay));
            return;
        }
        self.spawn_generation(generation);
    }

    fn spawn_generation(&mut self, generation: u32) {
        let notify_socket = self.runtime_dir.path().join(format!("gen-{generation}.notify"));
        let args = MonitorArgs {
            generation,
            count: self.config.count,
            ready: self.config.ready,
            graceful_timeout: CliDuration(self.config.graceful_timeout),
            sockets: self.sockets.len(),
            fd_names: sockets::fd_names(self.sockets.iter().map(|l| &l.spec)),
            notify_socket: notify_socket.clone(),
            log_level: log::max_level(),
            argv: std::iter::once(self.config.command.clone())
                .chain(self.config.args.iter().cloned())
                .collect(),
        };
        match self.spawn_monitor(&args) {
            Ok((pid, channel)) => {
                log::info!("starting generation {generation}: {} worker(s), monitor pid {pid}", args.count);
                let now = Instant::now();
                self.monitors.push(Monitor {
                    generation,
                    pid,
                    channel,
                    startup_deadline: Some(now + self.config.startup_timeout),
                    kill_deadline: None,
                    workers: BTreeMap::new(),
                    notify_socket,
                });
            }
            Err(e) => {
                let user = match self.config.credentials {
                    Some((uid, gid)) => format!(" as uid {uid} gid {gid}"),
                    None => String::new(),
                };
                let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
                let reason = format!("cannot start its monitor ({}{user}): {e}", exe.display());
                self.generation_failed(generation, reason);
                // Nothing to wait for: no process was created.
                let actions = self.generations.exited(generation);
                self.perform(actions);
            }
        }
    }

    fn spawn_monitor(&self, args: &MonitorArgs) -> Result<(Pid, Channel), String> {
        let (ours, theirs) = Channel::pair().map_err(|e| e.to_string())?;
        let mut fds: Vec<RawFd> = vec![theirs.fd().as_raw_fd()];
        fds.extend(self.sockets.iter().map(|l| l.fd().as_raw_fd()));
        let mut argv: Vec<OsString> = vec!["panzer".into()];
        argv.extend(args.to_args());
        let mut plan = ExecPlan::new("/proc/self/exe".as_ref(), &argv, worker::inherited_env())
            .map_err(|e| e.to_string())?
            .with_fds(&fds)
            .with_new_process_group()
            .with_parent_death_signal(Signal::SIGTERM);
        if let Some((uid, gid)) = self.config.credentials {
            plan = plan.with_credentials(uid, gid);
        }
        let pid = plan.spawn().map_err(|e| e.to_string())?;
        Ok((pid, ours))
    }

    /// Before main exits: nothing it started may outlive it.
    fn kill_leftovers(&mut self) {
        for m in &self.monitors {
            sys::signal_group(m.pid, Signal::SIGKILL);
        }
        // Not reaped: main exits next, and init collects them.
        for (pid, _) in sys::own_children() {
            sys::signal_process(pid, Signal::SIGKILL);
        }
    }
}
