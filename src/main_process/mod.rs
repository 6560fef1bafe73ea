//! Role 1, main: owns the listening sockets for its whole life, runs one
//! monitor per generation, and turns what happens into generation changes.
//!
//! Two halves. [`policy`] decides everything (a pure state machine: events
//! in, effects out). This file is the thin loop around it: one poll over the
//! signalfd, every monitor's status channel, the control socket and the
//! admin endpoint (`--admin-bind`, which only reads), keyed by [`Token`], with the policy's nearest deadline as its timeout. It turns
//! what it reads into [`policy::Event`]s and performs the
//! [`policy::Effect`]s. Idle, it never wakes up.
//!
//! Main replacing its own binary in place (an upgrade: the check of the new
//! binary, the state handed over, the resumed image) has its room in
//! `upgrade/`; this loop only dispatches to it. A reload first re-reads the
//! configuration file (`reconfigure`).

pub(crate) mod balance;
mod connections;
mod hello;
mod leftovers;
mod orphans;
pub(crate) mod pid_file;
pub(crate) mod policy;
mod reconfigure;
mod systemd;
mod upgrade;

pub use upgrade::{check as check_upgrade, resume, CHECK_COMMAND, RESUME_COMMAND, RESUME_ENV};

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::Config;
use crate::control::admin::{self, Answer, Route};
use crate::control::server::{self, ClientId, Server};
use crate::control::{self, Command, GenerationStatus, Reply, Request, SocketStatus, Status, WorkerStatus};
use crate::error::{describe, Error};
use crate::protocol::{Channel, MonitorArgs, Order, Received, Report};
use crate::runtime_dir::{self, RuntimeDir};
use crate::sockets::{self, Listener};
use crate::sys::{self, spawn::ExecPlan, Interest};
use crate::units::{CliDuration, CliSignal, CliSize};
use crate::worker;
use orphans::Orphans;
use pid_file::PidFile;
use policy::{Effect, Ended, Event, Note, Policy, Settings};
use systemd::Systemd;

/// Signals whose default action would end main, which a stray `kill` must
/// not do: main logs them and goes on. (The real-time signals too.)
const STRAY: &[Signal] = &[
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGSTKFLT,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    // Sent with kill(2), not raised by a fault (a real fault still ends main:
    // the kernel forces those through).
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGABRT,
    Signal::SIGFPE,
    Signal::SIGSYS,
    Signal::SIGSEGV,
    Signal::SIGBUS,
];

/// The C library's own two signals below `SIGRTMIN`: nothing in
/// single-threaded main uses them, so a stray one is only logged.
const LIBC_RESERVED: [i32; 2] = [32, 33];

/// What a poll result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Signals,
    Monitor(u32),
    Control(server::Token),
    /// main's own stdout or stderr has room for the lines that wait.
    Log,
    Admin(admin::Token),
    /// `--balance round-robin`: a slot's queue holds a connection.
    Slot(u32),
}

/// One running (or exited, not yet reaped) monitor.
struct Monitor {
    pid: Pid,
    channel: Channel,
    /// Its end of the channel is closed: nothing more to read until it is
    /// reaped (polling a closed channel would wake main at once, forever).
    closed: bool,
    notify_socket: PathBuf,
    /// The main↔monitor protocol version it was started with.
    protocol: u32,
    /// Library mode: main has heard nothing from it yet, and gives up on
    /// it then ([`hello`]).
    hello_by: Option<Instant>,
}

struct Main {
    config: Config,
    /// The configuration before a re-read file was applied, until the
    /// reload it led to has an outcome ([`Effect::Reconfigured`]).
    config_before: Option<Config>,
    policy: Policy,
    /// By generation.
    monitors: BTreeMap<u32, Monitor>,
    sockets: Vec<Listener>,
    signals: sys::SignalFd,
    control: Server,
    /// `--admin-bind`: `/readyz`, `/livez`, `/metrics` (empty when off).
    admin: admin::Server,
    orphans: Orphans,
    systemd: Option<Systemd>,
    runtime_dir: RuntimeDir,
    started: Instant,
    interrupts: u32,
    exit: Option<i32>,
    /// Drops the code pages main ran once it has been quiet a while.
    shed: sys::resident::Shedder,
    /// The path main was started from: an upgrade runs what is there now.
    exe: PathBuf,
    /// main's command line, which the next image parses again.
    argv: Vec<OsString>,
    /// The new binary's check, while it runs.
    check: Option<upgrade::Check>,
    balance: Option<balance::Balance>,
    _pid_file: Option<pid_file::WrittenPidFile>,
}

/// Blocks the signals main handles and returns the signalfd that reads them.
fn signal_fd() -> Result<sys::SignalFd, Error> {
    // `SIGCHLD`, the commands of the one signal table (`control::signals`), the strays.
    let commands = control::signals::TABLE.iter().map(|&(signal, _)| signal);
    let handled = std::iter::once(Signal::SIGCHLD).chain(commands).chain(STRAY.iter().copied());
    let mut signals: Vec<i32> = handled.map(|s| s as i32).collect();
    signals.extend(sys::realtime_signals());
    signals.extend(LIBC_RESERVED);
    sys::signal_fd(&signals).map_err(|e| Error::os("cannot set up signal handling", e))
}

/// The policy's settings from the configuration, for `sockets` listening sockets (`slots` each).
fn settings(config: &Config, sockets: usize, slots: Option<u32>) -> Settings {
    Settings {
        count: config.count,
        ceiling: balance::ceiling(config, sockets, slots),
        startup_timeout: config.startup_timeout,
        graceful_timeout: config.graceful_timeout,
        strategy: config.reload_strategy,
        canary: config.canary,
        stop_delay: config.stop_delay,
    }
}

/// Runs main until it stops; returns the exit status.
pub fn run(config: Config) -> Result<i32, Error> {
    // Before anything can replace it: an upgrade runs what is at this path then.
    let exe = upgrade::start_path()?;
    // Inherited sockets first: any fd panzer opens could land on their numbers.
    let adopted = sockets::adopt_from_env()?;
    config.check_preload_sockets(adopted.is_some())?;
    // Then signals, so none is lost while sockets are bound.
    let signals = signal_fd()?;
    worker::resolve_command_in(&config.command, config.chdir.as_deref())?;
    sys::become_subreaper().map_err(|e| Error::os("cannot become child subreaper", e))?;
    let pid_file = config.pid_file.as_deref().map(PidFile::check).transpose()?;
    let control_path = match config.control.clone() {
        Some(path) => path,
        None => runtime_dir::control_socket_path(std::process::id())?,
    };
    let round_robin = balance::wanted(&config, adopted.is_some())?;
    let control = Server::bind(&control_path)?;
    let sockets = match adopted {
        Some(adopted) => {
            if !config.binds.is_empty() {
                log::warn!("socket activation: using the {} socket(s) passed in, not --bind", adopted.len());
            }
            adopted
        }
        None => {
            // What a dead panzer left on these addresses, run as the user
            // the workers will run as, may be ended to free them.
            let uid = config.credentials.map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
            sockets::bind_all(&config.binds, config.backlog, config.nodelay, round_robin, |spec| {
                leftovers::end(spec, uid)
            })?
        }
    };
    let balance = balance::Balance::for_config(&config, &sockets)?;
    // Passed-in sockets may be more than `--bind` said: what a monitor
    // holds follows them.
    let ceiling = crate::config::count_ceiling(sockets.len(), config.tag_output, config.preload, round_robin);
    ceiling.check(&format!("--count {}", config.count), config.count.into()).map_err(Error::Usage)?;
    let admin = admin::Server::bind(&config.admin_binds)?;
    for listener in &sockets {
        // Past -q: the real port of `:0` is only ever said here.
        crate::logging::always(
            &[("addr", listener.local.as_str())],
            format_args!("listening on {}", listener.local),
        );
    }
    if sockets.is_empty() {
        log::warn!("no --bind and no socket from systemd: workers get no listening socket");
    }
    for addr in admin.addresses() {
        crate::logging::always(&[("addr", addr)], format_args!("admin endpoint on {addr}"));
    }
    log::info!("control socket at {}", control.path().display());
    let runtime_dir = RuntimeDir::create(config.credentials)?;
    let pid_file = pid_file.map(PidFile::write).transpose()?;
    let orphans = Orphans::new(config.drain_signal);
    let main = Main {
        policy: Policy::new(settings(&config, sockets.len(), balance.as_ref().map(balance::Balance::room))),
        config,
        config_before: None,
        monitors: BTreeMap::new(),
        sockets,
        signals,
        control,
        admin,
        orphans,
        systemd: Systemd::from_env(),
        runtime_dir,
        started: Instant::now(),
        interrupts: 0,
        exit: None,
        shed: sys::resident::Shedder::default(),
        exe,
        argv: std::env::args_os().collect(),
        check: None,
        balance,
        _pid_file: pid_file,
    };
    serve(main, Event::Boot)
}

/// Runs main from `first` (boot, or a resumed upgrade) until it stops.
fn serve(mut main: Main, first: Event) -> Result<i32, Error> {
    main.limit_clients();
    main.dispatch(first);
    let code = main.run();
    main.kill_leftovers();
    if code == crate::error::EXIT_NOT_READY {
        let reason = main.policy.last_failure().unwrap_or("unknown").to_string();
        return Err(Error::NotReady { reason });
    }
    log::info!("stopped");
    Ok(code)
}

impl Main {
    /// Holds the control and admin clients to what `RLIMIT_NOFILE` leaves once main
    /// has what it needs: the descriptors it holds now and those it needs
    /// to start monitors (see [`server::client_cap`]).
    fn limit_clients(&mut self) {
        let Some(limit) = crate::limits::nofile() else { return };
        let Ok(open) = sys::fork::open_fds() else { return };
        // 0, 1 and 2, and what else below the limit is open but the clients.
        let held = 3 + open.iter().filter(|&&fd| (fd as u64) < limit).count() as u64;
        let held = held.saturating_sub((self.control.clients() + self.admin.clients()) as u64);
        let room = server::client_room(limit, held, self.monitor_sockets().len());
        // The admin endpoint, when there is one, takes at most half.
        let admin = if self.admin.is_empty() { 0 } else { (room / 2).clamp(1, admin::MAX_CLIENTS as u64) };
        let cap = server::client_cap(limit, held + admin, self.monitor_sockets().len());
        self.control.set_max_clients(cap, limit);
        if cap < server::MAX_CLIENTS {
            let clients = if cap == 1 { "client" } else { "clients" };
            log::info!("control: at most {cap} {clients} at once (RLIMIT_NOFILE is {limit})");
        }
        if !self.admin.is_empty() {
            self.admin.set_max_clients(admin as usize, limit);
            if (admin as usize) < admin::MAX_CLIENTS {
                let clients = if admin == 1 { "client" } else { "clients" };
                log::info!("admin endpoint: at most {admin} {clients} at once (RLIMIT_NOFILE is {limit})");
            }
        }
    }

    fn run(&mut self) -> i32 {
        loop {
            let now = Instant::now();
            self.on_timers(now);
            if let Some(code) = self.exit {
                if self.monitors.is_empty() && self.orphans.is_empty() {
                    return code;
                }
            }
            let ready = match self.wait() {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("poll failed: {}; stopping everything", describe(&e));
                    self.dispatch(Event::Command { command: Command::StopNow, from: None });
                    return crate::error::EXIT_OSERR;
                }
            };
            self.shed.on_wake(Instant::now());
            let (mut control, mut admin) = (Vec::new(), Vec::new());
            for token in ready {
                match token {
                    Token::Monitor(generation) => self.on_channel(generation),
                    Token::Control(token) => control.push(token),
                    Token::Admin(token) => admin.push(token),
                    Token::Signals => {}
                    Token::Log => crate::logging::flush(),
                    Token::Slot(slot) => self.on_slot_readable(slot, Instant::now()),
                }
            }
            for (client, request) in self.control.on_ready(&control) {
                self.on_request(client, request);
            }
            if !admin.is_empty() {
                self.on_admin(&admin);
            }
            for signal in sys::pending_signals(&self.signals) {
                self.on_signal(signal);
            }
        }
    }

    /// Sleeps until something is ready or the nearest deadline passes.
    fn wait(&self) -> std::io::Result<Vec<Token>> {
        let deadline = [
            self.policy.next_deadline(),
            self.orphans.next_deadline(),
            self.control.next_deadline(),
            self.admin.next_deadline(),
            self.systemd.as_ref().and_then(Systemd::next_deadline),
            self.shed.deadline(),
            self.hello_deadline(),
            self.rotation_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut tokens = vec![Token::Signals];
        let mut fds: Vec<(BorrowedFd<'_>, Interest)> = vec![(self.signals.as_fd(), Interest::Read)];
        for (&generation, monitor) in self.monitors.iter().filter(|(_, m)| !m.closed) {
            tokens.push(Token::Monitor(generation));
            fds.push((monitor.channel.fd(), monitor.channel.wants_write().into()));
        }
        for (token, fd) in self.control.fds() {
            tokens.push(Token::Control(token));
            fds.push((fd, Interest::Read));
        }
        for (token, fd, interest) in self.admin.fds() {
            tokens.push(Token::Admin(token));
            fds.push((fd, interest));
        }
        for fd in crate::logging::waiting_fds() {
            tokens.push(Token::Log);
            fds.push((fd, Interest::Write));
        }
        self.rotation_fds(&mut tokens, &mut fds);
        let ready = sys::poll(&fds, deadline)?;
        Ok(tokens.into_iter().zip(ready).filter(|(_, r)| *r).map(|(t, _)| t).collect())
    }

    fn on_timers(&mut self, now: Instant) {
        self.control.expire(now);
        self.admin.expire(now);
        if let Some(systemd) = &mut self.systemd {
            systemd.on_timer(now);
        }
        if self.orphans.next_deadline().is_some_and(|at| at <= now) {
            let monitors = self.monitor_pids();
            self.orphans.on_deadline(now, &monitors);
        }
        if self.policy.next_deadline().is_some_and(|at| at <= now) {
            self.dispatch(Event::Tick);
        }
        if self.hello_deadline().is_some_and(|at| at <= now) {
            self.on_hello_deadline(now);
        }
        self.on_rotation_timer(now);
    }

    /// Feeds `event` to the policy and performs what it says, including
    /// what performing that leads to (a monitor that cannot be spawned).
    fn dispatch(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            // The policy's lines first, in the order it said them: they tell
            // what it decided, before whatever doing it logs.
            let (lines, effects): (Vec<Effect>, Vec<Effect>) = self
                .policy
                .handle(Instant::now(), event)
                .into_iter()
                .partition(|effect| matches!(effect, Effect::Log { .. }));
            self.sync_rotation();
            for effect in lines.into_iter().chain(effects) {
                if let Some(next) = self.perform(effect) {
                    events.push_back(next);
                }
            }
        }
    }

    fn perform(&mut self, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Log { level, line, generation: Some(generation) } => {
                log::log!(target: policy::LOG_TARGET, level, generation = generation; "{line}")
            }
            Effect::Log { level, line, generation: None } => {
                log::log!(target: policy::LOG_TARGET, level, "{line}")
            }
            Effect::Spawn { generation, count } => return self.spawn_generation(generation, count),
            Effect::Order { generation, order } => self.order(generation, &order),
            Effect::KillGroup(generation) => {
                if let Some(m) = self.monitors.get(&generation) {
                    // Alive or a zombie not yet reaped: its group id is still ours.
                    sys::signal_group(m.pid, Signal::SIGKILL);
                }
            }
            Effect::DrainGroup(generation) => {
                if let Some(m) = self.monitors.get(&generation) {
                    // Pinned as above. The monitor is in the group too: once it
                    // runs again, it takes this as the drain it was ordered.
                    sys::signal_group(m.pid, self.config.drain_signal);
                }
            }
            Effect::Orphans { generation, terminate, kill_at } => {
                if let Some(pid) = self.monitors.get(&generation).map(|m| m.pid) {
                    let others: Vec<Pid> = self.monitor_pids().into_iter().filter(|p| *p != pid).collect();
                    self.orphans.adopt(pid, terminate, kill_at, &others);
                }
            }
            Effect::KillOrphans => {
                let monitors = self.monitor_pids();
                self.orphans.kill_all(&monitors);
            }
            Effect::Reply { to, reply } => self.control.reply(to, &reply),
            Effect::Unlisten => self.unlisten(),
            Effect::Reread { clients } => return Some(self.reread_for_queued(clients)),
            Effect::Reconfigured { kept } => {
                if let Some(before) = self.config_before.take().filter(|_| !kept) {
                    self.config = before;
                }
            }
            Effect::Systemd(note) => {
                if let Some(systemd) = &mut self.systemd {
                    match note {
                        Note::Ready(status) => systemd.ready(status),
                        Note::Reloading => systemd.reloading(),
                        Note::Stopping => systemd.stopping(),
                    }
                }
            }
            Effect::Exit(code) => {
                self.exit.get_or_insert(code);
            }
            Effect::CheckUpgrade => return self.start_check(),
            Effect::AbortUpgradeCheck => self.abort_check(),
            Effect::Exec { answer } => return self.exec(answer),
        }
        None
    }

    fn on_signal(&mut self, number: i32) {
        let Ok(signal) = Signal::try_from(number) else {
            return match sys::signal_name(number) {
                name if name.starts_with("signal") => log::warn!("ignoring {name}"),
                name => log::warn!("ignoring {name} (signal {number})"),
            };
        };
        if signal == Signal::SIGCHLD {
            return self.reap();
        }
        let in_stop_delay = self.policy.in_stop_delay();
        let Some(command) = control::signals::command(signal, self.interrupts, in_stop_delay) else {
            return log::warn!("ignoring {}", signal.as_str());
        };
        if signal == Signal::SIGINT {
            self.interrupts += 1;
        }
        log::info!("received {}", signal.as_str());
        if command == Command::Reload && !self.reread_config(None) {
            return;
        }
        if let Command::ScaleBy(delta) = command {
            let count = self.policy.count_by(delta);
            if let Err(e) = self.make_room(&format!("scale {count}"), count) {
                return log::warn!("{}", e.report());
            }
        }
        self.dispatch(Event::Command { command, from: None });
    }

    /// The drain of a stop begins: a new connection is refused from now
    /// on, on every socket main bound. One that systemd passed in stays
    /// listening, so that systemd queues connections for the next start.
    fn unlisten(&mut self) {
        for listener in &self.sockets {
            if listener.activated() {
                log::info!(
                    "{} stays listening: systemd passed it in, and queues connections for the next start",
                    listener.local
                );
                continue;
            }
            match listener.stop_listening() {
                Ok(()) => log::info!("stopped listening on {}: new connections are refused", listener.local),
                Err(e) => log::warn!("cannot stop listening on {}: {}", listener.local, describe(&e)),
            }
        }
        // With round-robin, every slot's socket of each address too.
        if let Some(balance) = &self.balance {
            balance.stop_listening();
        }
    }

    fn on_request(&mut self, client: ClientId, request: Request) {
        let command = request.command();
        if command == Command::Status {
            let status = self.status();
            return self.control.reply(client, &Reply { status: Some(status), ..Reply::ok() });
        }
        // As `panzerctl` spells it.
        let said = match request {
            Request::Status => "status".to_string(),
            Request::Reload => "reload".to_string(),
            Request::Stop => "stop".to_string(),
            Request::Scale { count } => format!("scale {count}"),
            Request::Upgrade => "upgrade".to_string(),
        };
        log::info!("control request: {said}");
        if command == Command::Reload && !self.reread_config(Some(client)) {
            return;
        }
        if let Command::Scale(count) = command {
            if let Err(e) = self.make_room(&said, count) {
                log::warn!("{}", e.report());
                return self.control.reply(client, &Reply::error(e.report()));
            }
        }
        if matches!(command, Command::Reload | Command::Upgrade) {
            // Answered when it has an outcome.
            self.control.hold(client);
        }
        self.dispatch(Event::Command { command, from: Some(client) });
    }

    /// The admin endpoint's fds that polled ready: requests are answered
    /// from what main knows now, and nothing else happens.
    fn on_admin(&mut self, ready: &[admin::Token]) {
        let mut endpoint = std::mem::take(&mut self.admin);
        endpoint.on_ready(ready, Instant::now(), &mut |route| self.answer(route));
        self.admin = endpoint;
    }

    fn answer(&self, route: Route) -> Answer {
        match route {
            Route::Ready => {
                let readiness = self.policy.readiness();
                Answer { ok: readiness.ready, body: format!("{}\n", readiness.line) }
            }
            Route::Live => Answer { ok: true, body: "ok\n".into() },
            Route::Metrics => Answer { ok: true, body: control::metrics::render(&self.status()) },
        }
    }

    fn on_channel(&mut self, generation: u32) {
        let Some(monitor) = self.monitors.get_mut(&generation) else { return };
        if let Err(e) = monitor.channel.flush() {
            log::debug!("cannot reach the monitor of generation {generation}: {}", describe(&e));
        }
        let reports = match monitor.channel.receive::<Report>() {
            Received::Messages(reports) => reports,
            Received::Closed(reports) => {
                monitor.closed = true;
                reports
            }
        };
        if !reports.is_empty() {
            monitor.hello_by = None;
        }
        for report in reports {
            self.dispatch(Event::Report { generation, report });
        }
    }

    fn order(&mut self, generation: u32, order: &Order) {
        let Some(monitor) = self.monitors.get_mut(&generation) else { return };
        match monitor.channel.send_order(order) {
            // The monitor has just exited; its SIGCHLD is on its way.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
            Err(e) => log::warn!("cannot reach the monitor of generation {generation}: {}", describe(&e)),
            Ok(()) => {}
        }
    }

    /// Reaps every exited child. A monitor is examined while it is still a
    /// zombie, so its process-group id cannot have been reused when its
    /// group is signalled.
    fn reap(&mut self) {
        while let Some((pid, exit)) = sys::peek_exited_child() {
            let generation = self.monitors.iter().find(|(_, m)| m.pid == pid).map(|(&g, _)| g);
            match generation {
                Some(generation) => {
                    // What it said before it exited comes first (say, why
                    // it failed), even when SIGCHLD is read before the
                    // channel in this turn of the loop.
                    self.on_channel(generation);
                    self.on_exit_unheard(generation, &exit);
                    let ended = match exit {
                        sys::ChildExit::Killed { signal, .. } => Ended::Killed(sys::signal_name(signal)),
                        sys::ChildExit::Exited(code) => Ended::Exited(code),
                    };
                    self.dispatch(Event::MonitorExited { generation, ended });
                    if let Some(monitor) = self.monitors.remove(&generation) {
                        let _ = std::fs::remove_file(&monitor.notify_socket);
                    }
                }
                // Reaped by on_check_exit itself.
                None if self.on_check_exit(pid, exit) => continue,
                None => log::debug!("reaped pid {pid}: {exit}"),
            }
            sys::reap(pid);
        }
        let monitors = self.monitor_pids();
        self.orphans.forget_empty(&monitors);
    }

    fn monitor_pids(&self) -> Vec<Pid> {
        self.monitors.values().map(|m| m.pid).collect()
    }

    fn spawn_generation(&mut self, generation: u32, count: u32) -> Option<Event> {
        let notify_socket = self.runtime_dir.path().join(format!("gen-{generation}.notify"));
        let args = MonitorArgs {
            generation,
            count,
            ready: self.config.ready,
            graceful_timeout: CliDuration(self.config.graceful_timeout),
            sockets: self.monitor_sockets().len(),
            slots: self.slots().unwrap_or(0),
            fd_names: sockets::fd_names(self.sockets.iter().map(|l| &l.spec)),
            notify_socket: notify_socket.clone(),
            log_level: log::max_level(),
            log_format: self.config.log_format,
            argv: std::iter::once(self.config.command.clone())
                .chain(self.config.args.iter().cloned())
                .collect(),
            addresses: self.sockets.iter().map(sockets::Listener::address).collect(),
            tag_output: self.config.tag_output,
            drain_signal: CliSignal(self.config.drain_signal),
            health_timeout: self.config.health_timeout.map(CliDuration),
            max_rss: self.config.max_rss.map(CliSize),
            max_age: self.config.max_age.map(CliDuration),
            startup_timeout: Some(CliDuration(self.config.startup_timeout)),
            protocol: crate::protocol::needed(self.balance.is_some()),
        };
        match self.spawn_monitor(&args) {
            Ok((pid, channel)) => {
                log::info!(
                    generation = generation, monitor_pid = pid.as_raw();
                    "starting generation {generation}: {count} worker(s), monitor pid {pid}"
                );
                let hello = self.config.preload && crate::protocol::says_hello(args.protocol);
                let hello_by = hello.then(|| Instant::now() + hello::HELLO_WITHIN);
                let monitor =
                    Monitor { pid, channel, closed: false, notify_socket, protocol: args.protocol, hello_by };
                self.monitors.insert(generation, monitor);
                None
            }
            Err(e) => {
                let user = match self.config.credentials {
                    Some((uid, gid)) => format!(" as uid {uid} gid {gid}"),
                    None => String::new(),
                };
                let reason = format!("cannot start its monitor{user}: {e}");
                Some(Event::SpawnFailed { generation, reason })
            }
        }
    }

    fn spawn_monitor(&self, args: &MonitorArgs) -> Result<(Pid, Channel), sys::spawn::SpawnError> {
        let (ours, theirs) = Channel::pair().map_err(sys::spawn::SpawnError::Fork)?;
        let mut fds: Vec<RawFd> = vec![theirs.fd().as_raw_fd()];
        fds.extend(self.monitor_sockets());
        let (program, argv, env) = if self.config.preload {
            // Library mode: the app itself is the monitor. Resolved again for
            // every generation, so a reload runs the binary now at that path.
            let program = worker::resolve_command_in(&self.config.command, self.config.chdir.as_deref())
                .map_err(|e| {
                    // Said after "cannot start its monitor": why, without the command again.
                    let reason = match e {
                        Error::Command { reason, .. } => reason,
                        other => other.report(),
                    };
                    sys::spawn::SpawnError::Exec(std::io::Error::other(reason))
                })?;
            let words = args.to_env().ok_or_else(|| {
                sys::spawn::SpawnError::Exec(std::io::Error::other("an argument is not UTF-8"))
            })?;
            let mut env = self.monitor_env();
            env.push(format!("{}={words}", crate::protocol::MONITOR_ARGS_ENV).into());
            (program, args.argv.clone(), env)
        } else {
            let mut argv: Vec<OsString> = vec!["panzer".into()];
            argv.extend(args.to_args());
            (PathBuf::from("/proc/self/exe"), argv, self.monitor_env())
        };
        let mut plan = ExecPlan::new(program.as_os_str(), &argv, env)
            .map_err(sys::spawn::SpawnError::Exec)?
            .with_fds(&fds)
            .with_new_process_group()
            .with_parent_death_signal(Signal::SIGTERM);
        if let Some((uid, gid)) = self.config.credentials {
            plan = plan.with_credentials(uid, gid);
        }
        if let Some(dir) = &self.config.chdir {
            plan = plan.with_chdir(dir.as_os_str()).map_err(sys::spawn::SpawnError::Exec)?;
        }
        let pid = plan.spawn()?;
        Ok((pid, ours))
    }

    /// A monitor's environment: main's own as workers may inherit it, the
    /// instance marker, and `--env`. A monitor's workers inherit it (in
    /// library mode, by the fork), and it starts in `--chdir`, where they
    /// start too: so both reach every worker in both modes, and panzer's
    /// own variables, set for each worker afterwards, stay panzer's.
    fn monitor_env(&self) -> Vec<OsString> {
        worker::with_vars(leftovers::with_marker(worker::inherited_env()), &self.config.env)
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        fn live(g: &policy::Generation) -> impl Iterator<Item = (&u32, &policy::WorkerView)> {
            g.workers.iter().filter(|(_, w)| w.pid != 0)
        }
        // Read for every worker at once: each network namespace's tables once.
        let pids: Vec<i32> =
            self.policy.generations().iter().flat_map(|g| live(g).map(|(_, w)| w.pid)).collect();
        let listening: std::collections::HashSet<u64> = self
            .sockets
            .iter()
            .filter_map(|l| nix::sys::stat::fstat(l.fd()).ok().map(|st| st.st_ino))
            .collect();
        let mut connections = connections::count(&pids, &listening).into_iter();
        let generations = self
            .policy
            .generations()
            .iter()
            .map(|g| {
                // A generation whose start is delayed has no monitor yet.
                let monitor_pid = self.monitors.get(&g.number).map_or(0, |m| m.pid.as_raw());
                let workers = live(g)
                    .map(|(&ordinal, w)| {
                        let (rss_kib, threads) = sys::rss_and_threads(Pid::from_raw(w.pid));
                        WorkerStatus {
                            ordinal,
                            pid: w.pid,
                            ready: w.ready,
                            restarts: w.restarts,
                            replaced: w.replaced,
                            uptime_s: now.duration_since(w.since).as_secs(),
                            rss_kib: rss_kib.unwrap_or(0),
                            threads: threads.unwrap_or(0),
                            connections: connections.next().flatten(),
                            last_exit: w.last_exit.clone(),
                        }
                    })
                    .collect();
                let kill_in = g.grace_ends().map(|at| at.saturating_duration_since(now));
                GenerationStatus {
                    generation: g.number,
                    monitor_pid,
                    state: g.state.name().to_string(),
                    kill_in_ms: kill_in.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
                    workers,
                }
            })
            .collect();
        let readiness = self.policy.readiness();
        Status {
            pid: std::process::id(),
            version: crate::control::version().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            count: self.policy.count(),
            ready: readiness.ready,
            stopping: self.policy.stopping(),
            readiness: Some(readiness.line),
            sockets: self
                .sockets
                .iter()
                .map(|l| SocketStatus { name: l.spec.fd_name().to_string(), addr: l.local.clone() })
                .collect(),
            generations,
            orphans: self.orphans.pids(&self.monitor_pids()).iter().map(|p| p.as_raw()).collect(),
            reloads: self.policy.reloads().clone(),
        }
    }

    /// Before main exits: nothing it started may outlive it.
    fn kill_leftovers(&mut self) {
        for m in self.monitors.values() {
            sys::signal_group(m.pid, Signal::SIGKILL);
        }
        // Not reaped: main exits next, and init collects them.
        for (pid, _) in sys::own_children() {
            sys::signal_process(pid, Signal::SIGKILL);
        }
    }
}
