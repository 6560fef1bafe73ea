//! main's policy as one pure state machine: [`Event`]s in, [`Effect`]s out.
//!
//! Everything main decides lives here: which generation starts, serves,
//! drains or has failed; the startup, drain and stop deadlines; the backoff
//! before a replacement generation; the reload tickets that carry each
//! reload request to its one answer; stop escalation. The loop in
//! [`super`] turns signals, control requests, monitor reports, monitor exits
//! and the clock into events, and performs the effects (spawn, order, kill a
//! group, reply, notify systemd, exit). No processes, no syscalls, and the
//! time is passed in, so every race is a unit test below.
//!
//! An upgrade of panzer itself goes through here too: it waits for a
//! reload under way, coalesces requests, bounds the new binary's check,
//! and its state ([`Saved`]) is what the next image of main carries on with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::handover::clock;

use crate::control::server::ClientId;
use crate::control::{Command, ReloadStats, Reply};
use crate::error::Error;
use crate::protocol::{Order, Report, BACKOFF_CAP, BACKOFF_START, FAILED_GRACE, MAX_UNREADY_EXITS};
use crate::units::{format_duration, ReloadStrategy};

/// How long after its grace a draining monitor may take before main kills
/// its whole group.
pub const DRAIN_BACKSTOP: Duration = Duration::from_secs(5);
/// How long a monitor may take to act on a drain order (to say it has
/// signalled its workers) before main takes the drain over: it sends the
/// drain signal to the generation's process group itself, and `SIGKILL`
/// when the grace ends.
pub const DRAIN_ACT_TIMEOUT: Duration = Duration::from_secs(1);
/// Monitors of generation 1 (or its replacements) that may be lost in a row
/// before anything served, before main gives up with exit status 1.
pub const MAX_LOST_MONITORS: u32 = 5;
/// While a generation starts, its progress is logged this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the new binary may take to prove it runs before an upgrade fails.
pub const UPGRADE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The target main's log records the policy's lines under: this module's
/// path, as when the policy logged them itself (a `RUST_LOG` filter names it).
pub const LOG_TARGET: &str = module_path!();

/// How the policy says what main logs: a line at a level, queued as an
/// [`Effect::Log`] with the rest of its effects (the loop writes it).
trait Say {
    fn info(&mut self, line: impl Into<String>);
    fn warn(&mut self, line: impl Into<String>);
    fn error(&mut self, line: impl Into<String>);
}

impl Say for Vec<Effect> {
    fn info(&mut self, line: impl Into<String>) {
        self.push(Effect::Log { level: log::Level::Info, line: line.into() });
    }

    fn warn(&mut self, line: impl Into<String>) {
        self.push(Effect::Log { level: log::Level::Warn, line: line.into() });
    }

    fn error(&mut self, line: impl Into<String>) {
        self.push(Effect::Log { level: log::Level::Error, line: line.into() });
    }
}

/// The settings the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub count: u32,
    /// The most workers the limits let a generation run, and why.
    pub ceiling: crate::limits::CountCeiling,
    pub startup_timeout: Duration,
    pub graceful_timeout: Duration,
    /// `--reload-strategy`.
    pub strategy: ReloadStrategy,
    /// `--canary`: how long one new worker serves beside the old generation before the rest.
    pub canary: Option<Duration>,
    /// `--stop-delay`: how long a graceful stop keeps serving, not ready, before it drains.
    pub stop_delay: Duration,
}

/// What a generation is doing, as main sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Waiting for its replacement backoff; no monitor yet.
    Delayed(#[serde(with = "clock")] Instant),
    /// Its workers are starting; the previous generation still serves.
    Starting,
    /// All its workers became ready; it serves.
    Ready,
    /// Told to drain; it exits when its workers are gone.
    Draining,
    /// Failed to become ready; drained with [`FAILED_GRACE`].
    Failed,
}

impl State {
    /// The word `status` shows.
    pub fn name(self) -> &'static str {
        match self {
            State::Delayed(_) | State::Starting => "starting",
            State::Ready => "ready",
            // A failed generation is being stopped: to an operator, it drains.
            State::Draining | State::Failed => "draining",
        }
    }
}

/// Why a generation exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Cause {
    /// Generation 1.
    Boot,
    /// A reload: these clients (none for a signal) wait for its outcome.
    Reload(Vec<ClientId>),
    /// Nothing serves any more (a monitor died): it takes over.
    Replacement,
}

/// How a monitor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it (named, `SIGKILL`).
    Killed(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Killed(signal) => write!(f, "was killed by {signal}"),
        }
    }
}

/// A reload that replaces the serving generation a few workers at a time
/// (`--reload-strategy rolling:K`) or after a canary (`--canary D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Roll {
    /// The generation being replaced (gone if its monitor died meanwhile).
    old: Option<u32>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// One new worker runs; once it is ready, it must stay so until then.
    Canary(#[serde(with = "clock::option")] Option<Instant>),
    /// The new generation runs `count` slots; waiting for all to be ready.
    Surge,
    /// The old generation was scaled down; waiting for its retired
    /// workers to be gone, so no more than K extra are ever alive.
    Retire,
}

/// What main knows of one worker, from its monitor's reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    /// 0 while the slot has no process.
    pub pid: i32,
    pub ready: bool,
    pub restarts: u32,
    #[serde(with = "clock")]
    pub since: Instant,
    pub last_exit: Option<String>,
    /// Times supervision replaced this slot's worker (not crashes).
    pub replaced: u32,
    /// Workers of this slot that exited before they were ready, in a row.
    pub unready_exits: u32,
}

/// One generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub number: u32,
    pub state: State,
    cause: Cause,
    /// Workers it was started with (slots 0…count-1).
    count: u32,
    #[serde(with = "clock")]
    started: Instant,
    #[serde(with = "clock::option")]
    startup_deadline: Option<Instant>,
    /// When main kills the whole group: the grace's end plus
    /// [`DRAIN_BACKSTOP`] while the monitor is in charge of its drain; the
    /// grace's end once main has taken it over.
    #[serde(with = "clock::option")]
    kill_deadline: Option<Instant>,
    #[serde(with = "clock::option")]
    next_progress: Option<Instant>,
    /// Once told to drain: when the grace ends and what is left gets
    /// `SIGKILL` (`kill_in_ms` in `status`).
    #[serde(default, with = "clock::option")]
    grace_ends: Option<Instant>,
    /// Told to drain, and its monitor has not said yet that it has
    /// signalled its workers: then main takes the drain over.
    #[serde(default, with = "clock::option")]
    act_deadline: Option<Instant>,
    /// Its monitor says when it has acted on a drain
    /// ([`Report::Draining`]): every monitor this image starts does; one
    /// a previous image started may not (protocol 1).
    #[serde(default)]
    reports_draining: bool,
    /// Its monitor has said it has signalled its workers.
    #[serde(default)]
    drain_signalled: bool,
    /// Set while a staged reload (rolling, canary) is under way.
    roll: Option<Roll>,
    pub workers: BTreeMap<u32, WorkerView>,
}

impl Generation {
    fn ready_workers(&self) -> u32 {
        self.workers.values().filter(|w| w.ready && w.pid != 0).count() as u32
    }

    fn alive_workers(&self) -> u32 {
        self.workers.values().filter(|w| w.pid != 0).count() as u32
    }

    /// For a generation told to drain, when what is left of it gets
    /// `SIGKILL`: when its grace ends.
    pub fn grace_ends(&self) -> Option<Instant> {
        if !matches!(self.state, State::Draining | State::Failed) {
            return None;
        }
        // A state saved by an image older than `grace_ends` has the backstop only.
        self.grace_ends.or_else(|| self.kill_deadline.and_then(|at| at.checked_sub(DRAIN_BACKSTOP)))
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// main is up: start generation 1.
    Boot,
    /// A command from a signal (`from: None`) or a control client. `Status`
    /// is a query the loop answers itself.
    Command { command: Command, from: Option<ClientId> },
    /// The monitor of `generation` could not be started at all.
    SpawnFailed { generation: u32, reason: String },
    /// A message from the monitor of `generation`.
    Report { generation: u32, report: Report },
    /// The monitor of `generation` is gone (seen before it is reaped).
    MonitorExited { generation: u32, ended: Ended },
    /// Time passed: deadlines may be due.
    Tick,
    /// The new binary's check ended: it exited 0, or why not.
    UpgradeChecked(Result<(), String>),
    /// The upgrade failed after its check (the state could not be handed
    /// over, or `execve` failed): the old image goes on and answers `clients`.
    UpgradeFailed { clients: Vec<ClientId>, reason: String },
    /// This image was started by an upgrade and has taken the state over:
    /// answer `clients`, who asked for it. `stale`: generations whose
    /// monitors speak a protocol this image cannot.
    Resumed { clients: Vec<ClientId>, pid: u32, version: String, stale: Vec<u32> },
}

/// Something the loop must do.
// A reply carries a whole status; effects live for one turn of the loop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write `line` to main's log at `level` (as the policy's own, target
    /// [`LOG_TARGET`]).
    Log { level: log::Level, line: String },
    /// Spawn the monitor of `generation` with `count` workers.
    Spawn { generation: u32, count: u32 },
    /// Send `order` to the monitor of `generation`.
    Order { generation: u32, order: Order },
    /// `SIGKILL` the process group of `generation`.
    KillGroup(u32),
    /// Send the drain signal to the process group of `generation`: its
    /// monitor did not act on the drain order in time.
    DrainGroup(u32),
    /// What the monitor of `generation` left behind is now main's: signal
    /// it with the drain signal unless the monitor already did
    /// (`terminate`), and `SIGKILL` what is left at `kill_at`.
    Orphans { generation: u32, terminate: bool, kill_at: Instant },
    /// `SIGKILL` every orphan now.
    KillOrphans,
    /// Answer a control client.
    Reply { to: ClientId, reply: Reply },
    /// Tell systemd (when main runs under it).
    Systemd(Note),
    /// Stop listening on the sockets main bound itself (not those systemd
    /// passed in): from now on a new connection is refused at once instead
    /// of waiting in a backlog nobody accepts from. The drain of a stop
    /// begins.
    Unlisten,
    /// Exit main with this status once every orphan is gone.
    Exit(i32),
    /// Run the binary at main's path in check mode ([`Event::UpgradeChecked`]
    /// comes back).
    CheckUpgrade,
    /// Kill the check child: its answer no longer matters.
    AbortUpgradeCheck,
    /// Hand the state over and re-execute main; the next image answers
    /// `answer` ([`Event::UpgradeFailed`] comes back if it cannot).
    Exec { answer: Vec<ClientId> },
}

/// What systemd hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Ready(String),
    Reloading,
    Stopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Stop {
    Graceful,
    Now,
}

/// Whether panzer serves, and one line that says so or why not
/// (`generation 1 starting: 0/4 workers ready`, `stopping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub line: String,
}

/// main's whole policy.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    /// Everything it knows and has decided: what an upgrade hands over.
    state: Saved,
    /// An upgrade asked for and not done yet. Never handed over: the
    /// upgrade is over by the time the next image reads the state.
    upgrade: Option<Upgrade>,
}

/// An upgrade of panzer itself under way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upgrade {
    /// Who asked (every request coalesced into this one).
    clients: Vec<ClientId>,
    /// While the new binary's check runs: when it has failed.
    checking_until: Option<Instant>,
}

/// The policy's state: all of it but the settings, which come from the
/// command line again (the count excepted, which `scale` may have changed),
/// and the upgrade under way. It is what the policy hands to the next image
/// of main on an upgrade, as is: an image reads the state of an older one,
/// so a field is only ever added, with a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// Workers per generation now.
    count: u32,
    /// Every generation, oldest first.
    generations: Vec<Generation>,
    /// The number of the newest generation.
    last: u32,
    /// A reload asked for while one was under way, with its waiting clients.
    queued_reload: Option<Vec<ClientId>>,
    stopping: Option<Stop>,
    /// While a graceful stop waits out `--stop-delay` (serving, not ready):
    /// when the drain begins. An upgrade is refused while stopping, so a
    /// state handed over never has it; it is here so that the state is
    /// whole. (Absent from an older image's.)
    #[serde(default, with = "clock::option")]
    stop_delay_until: Option<Instant>,
    /// When a stop kills what is left.
    #[serde(with = "clock::option")]
    stop_deadline: Option<Instant>,
    exit_code: i32,
    exited: bool,
    /// Some generation has served: a failing one is no longer fatal.
    served: bool,
    /// Replacement generations that failed in a row: the next waits.
    replacement_failures: u32,
    /// Why the last generation failed (the exit message when it was the first).
    last_failure: Option<String>,
    reloads: ReloadStats,
}

impl Policy {
    pub fn new(settings: Settings) -> Policy {
        let state = Saved {
            count: settings.count,
            generations: Vec::new(),
            last: 0,
            queued_reload: None,
            stopping: None,
            stop_delay_until: None,
            stop_deadline: None,
            exit_code: 0,
            exited: false,
            served: false,
            replacement_failures: 0,
            last_failure: None,
            reloads: ReloadStats::default(),
        };
        Policy { settings, state, upgrade: None }
    }

    /// The state the next image of main carries on with.
    pub fn save(&self) -> Saved {
        self.state.clone()
    }

    /// The policy a previous image saved, with this image's settings (its
    /// count is the saved one).
    pub fn restore(settings: Settings, saved: Saved) -> Policy {
        Policy { settings, state: saved, upgrade: None }
    }

    /// Workers per generation now.
    pub fn count(&self) -> u32 {
        self.state.count
    }

    /// Why the last generation failed (the exit message when it was the first).
    pub fn last_failure(&self) -> Option<&str> {
        self.state.last_failure.as_deref()
    }

    /// The outcomes of reloads so far.
    pub fn reloads(&self) -> &ReloadStats {
        &self.state.reloads
    }

    /// Every generation, oldest first.
    pub fn generations(&self) -> &[Generation] {
        &self.state.generations
    }

    /// Whether panzer is stopping: from the moment a graceful or immediate
    /// stop was taken (it then drains every generation, or kills them).
    pub fn stopping(&self) -> bool {
        self.state.stopping.is_some()
    }

    /// A graceful stop is waiting out `--stop-delay`: still serving, not ready.
    pub fn in_stop_delay(&self) -> bool {
        self.state.stop_delay_until.is_some()
    }

    /// Whether panzer serves, as a probe must see it, and the one line that
    /// says why: ready while some generation is ready and panzer is not
    /// stopping. The one rule behind `status.ready`, `panzerctl status
    /// --ready` and the admin endpoint's `/readyz`.
    pub fn readiness(&self) -> Readiness {
        let describe = |g: &Generation| {
            format!(
                "generation {} {}: {}/{} workers ready",
                g.number,
                g.state.name(),
                g.ready_workers(),
                g.count
            )
        };
        if self.stopping() {
            return Readiness { ready: false, line: "stopping".into() };
        }
        if let Some(serving) = self.state.generations.iter().rev().find(|g| g.state == State::Ready) {
            return Readiness { ready: true, line: describe(serving) };
        }
        let line = self
            .state
            .generations
            .iter()
            .max_by_key(|g| g.number)
            .map_or_else(|| "no generation".into(), describe);
        Readiness { ready: false, line }
    }

    /// The earliest deadline: when the loop must send [`Event::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        let generations = self.state.generations.iter().flat_map(|g| {
            let delayed = match g.state {
                State::Delayed(at) => Some(at),
                _ => None,
            };
            let soak = match g.roll {
                Some(Roll { phase: Phase::Canary(until), .. }) => until,
                _ => None,
            };
            [delayed, g.startup_deadline, g.kill_deadline, g.next_progress, soak, g.act_deadline]
        });
        let upgrade = self.upgrade.as_ref().and_then(|u| u.checking_until);
        generations.chain([self.state.stop_delay_until, self.state.stop_deadline, upgrade]).flatten().min()
    }

    /// Takes one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::Boot => self.start(now, Cause::Boot, &mut out),
            Event::Command { command, from } => self.command(now, command, from, &mut out),
            Event::SpawnFailed { generation, reason } => {
                self.failed(now, generation, &reason, &mut out);
                // No process was created: nothing to wait for.
                out.retain(|e| !matches!(e, Effect::Order { generation: g, .. } if *g == generation));
                self.remove(generation);
            }
            Event::Report { generation, report } => self.report(now, generation, report, &mut out),
            Event::MonitorExited { generation, ended } => {
                self.monitor_exited(now, generation, ended, &mut out)
            }
            Event::Tick => self.tick(now, &mut out),
            Event::UpgradeChecked(result) => self.upgrade_checked(result, &mut out),
            Event::UpgradeFailed { clients, reason } => self.upgrade_failed(clients, &reason, &mut out),
            Event::Resumed { clients, pid, version, stale } => {
                self.resumed(now, clients, pid, version, stale, &mut out)
            }
        }
        let rolling: Vec<u32> =
            self.state.generations.iter().filter(|g| g.roll.is_some()).map(|g| g.number).collect();
        for number in rolling {
            self.advance(now, number, &mut out);
        }
        self.start_upgrade_check(now, &mut out);
        if self.in_stop_delay() && !self.any(|s| s == State::Ready) {
            // Nothing serves any more (its monitor died): nothing to wait for.
            self.begin_drain(now, &mut out);
        }
        if self.state.stopping.is_some() && self.state.generations.is_empty() && !self.state.exited {
            self.state.exited = true;
            out.push(Effect::Exit(self.state.exit_code));
        }
        out
    }

    fn find(&mut self, number: u32) -> Option<&mut Generation> {
        self.state.generations.iter_mut().find(|g| g.number == number)
    }

    fn state_of(&self, number: u32) -> Option<State> {
        self.state.generations.iter().find(|g| g.number == number).map(|g| g.state)
    }

    fn any(&self, f: impl Fn(State) -> bool) -> bool {
        self.state.generations.iter().any(|g| f(g.state))
    }

    /// A new generation: spawned now, or after the replacement backoff.
    fn start(&mut self, now: Instant, cause: Cause, out: &mut Vec<Effect>) {
        self.state.last += 1;
        let number = self.state.last;
        let mut count = self.state.count;
        let serving =
            self.state.generations.iter().filter(|g| g.state == State::Ready).map(|g| g.number).next_back();
        let staged = matches!(cause, Cause::Reload(_))
            && serving.is_some()
            && (self.settings.canary.is_some()
                || matches!(self.settings.strategy, ReloadStrategy::Rolling(_)));
        let roll = staged.then(|| {
            let phase = match (self.settings.canary, self.settings.strategy) {
                (Some(_), _) => {
                    count = 1;
                    Phase::Canary(None)
                }
                (None, ReloadStrategy::Rolling(k)) => {
                    count = count.min(k);
                    Phase::Surge
                }
                (None, ReloadStrategy::All) => Phase::Surge,
            };
            Roll { old: serving, phase }
        });
        let state = if cause == Cause::Replacement && self.state.replacement_failures > 0 {
            let delay = BACKOFF_START
                .saturating_mul(1 << (self.state.replacement_failures - 1).min(10))
                .min(BACKOFF_CAP);
            out.warn(format!("starting generation {number} in {}", format_duration(delay)));
            State::Delayed(now + delay)
        } else {
            State::Starting
        };
        if matches!(cause, Cause::Reload(_)) {
            out.push(Effect::Systemd(Note::Reloading));
        }
        self.state.generations.push(Generation {
            number,
            state,
            cause,
            count,
            started: now,
            startup_deadline: None,
            kill_deadline: None,
            next_progress: None,
            grace_ends: None,
            act_deadline: None,
            reports_draining: false,
            drain_signalled: false,
            roll,
            workers: BTreeMap::new(),
        });
        if state == State::Starting {
            self.spawn(now, number, out);
        }
    }

    fn spawn(&mut self, now: Instant, number: u32, out: &mut Vec<Effect>) {
        let timeout = self.settings.startup_timeout;
        let Some(g) = self.find(number) else { return };
        g.state = State::Starting;
        g.started = now;
        g.startup_deadline = Some(now + timeout);
        // Its monitor speaks this image's protocol.
        g.reports_draining = crate::protocol::reports_draining(crate::protocol::VERSION);
        g.next_progress = Some(now + PROGRESS_EVERY);
        let count = g.count;
        out.push(Effect::Spawn { generation: number, count });
    }

    fn command(&mut self, now: Instant, command: Command, from: Option<ClientId>, out: &mut Vec<Effect>) {
        let reply = |out: &mut Vec<Effect>, reply: Reply| {
            if let Some(to) = from {
                out.push(Effect::Reply { to, reply });
            }
        };
        match command {
            Command::Status => {}
            Command::Reload => self.reload(now, from, out),
            Command::Stop => {
                reply(out, Reply::ok());
                self.stop(now, Stop::Graceful, out);
            }
            Command::StopNow => {
                reply(out, Reply::ok());
                self.stop(now, Stop::Now, out);
            }
            Command::Scale(count) => match self.scale(count, out) {
                Ok(count) => reply(out, Reply { count: Some(count), ..Reply::ok() }),
                Err(e) => reply(out, Reply::error(e.to_string())),
            },
            Command::Upgrade => self.upgrade(from, out),
            Command::ScaleBy(delta) => {
                let count = self.state.count.saturating_add_signed(delta).max(1);
                if let Err(e) = self.scale(count, out) {
                    out.warn(e.to_string());
                }
            }
        }
    }

    /// `SIGUSR1`, `SIGHUP` or a control request. Requests during a reload
    /// coalesce into one more after it.
    fn reload(&mut self, now: Instant, from: Option<ClientId>, out: &mut Vec<Effect>) {
        if self.state.stopping.is_some() {
            out.info("reload refused: panzer is stopping");
            if let Some(to) = from {
                out.push(Effect::Reply { to, reply: Reply::error("panzer is stopping") });
            }
            return;
        }
        if self.any(|s| matches!(s, State::Starting | State::Delayed(_))) {
            out.info("reload queued behind the one under way");
            self.state.queued_reload.get_or_insert_with(Vec::new).extend(from);
            return;
        }
        self.start(now, Cause::Reload(from.into_iter().collect()), out);
    }

    /// `SIGUSR2` or a control `upgrade`. A request during an upgrade joins
    /// it and gets the same answer; an upgrade asked for during a reload
    /// waits for the reload's outcome (see [`Policy::start_upgrade_check`]).
    fn upgrade(&mut self, from: Option<ClientId>, out: &mut Vec<Effect>) {
        if self.state.stopping.is_some() {
            out.info("upgrade refused: panzer is stopping");
            if let Some(to) = from {
                out.push(Effect::Reply { to, reply: Reply::error("panzer is stopping") });
            }
            return;
        }
        match &mut self.upgrade {
            Some(upgrade) => {
                out.info("upgrade request joins the upgrade under way");
                upgrade.clients.extend(from);
            }
            None => {
                if self.reload_under_way() {
                    out.info("upgrade waits for the reload under way");
                }
                self.upgrade = Some(Upgrade { clients: from.into_iter().collect(), checking_until: None });
            }
        }
    }

    /// A generation is starting (a reload, or a replacement): an upgrade waits.
    fn reload_under_way(&self) -> bool {
        self.any(|s| matches!(s, State::Starting | State::Delayed(_)))
    }

    /// Starts the check of the new binary for a waiting upgrade, once no
    /// reload is under way. systemd hears `RELOADING=1` now, `READY=1` from
    /// the next image (or when the upgrade fails).
    fn start_upgrade_check(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.state.stopping.is_some() || self.reload_under_way() {
            return;
        }
        let Some(upgrade) = self.upgrade.as_mut().filter(|u| u.checking_until.is_none()) else { return };
        upgrade.checking_until = Some(now + UPGRADE_CHECK_TIMEOUT);
        out.push(Effect::Systemd(Note::Reloading));
        out.push(Effect::CheckUpgrade);
    }

    fn upgrade_checked(&mut self, result: Result<(), String>, out: &mut Vec<Effect>) {
        if !self.upgrade.as_ref().is_some_and(|u| u.checking_until.is_some()) {
            // Cancelled meanwhile (a stop): the answer no longer matters.
            return;
        }
        let clients = self.upgrade.take().map(|u| u.clients).unwrap_or_default();
        match result {
            Ok(()) => out.push(Effect::Exec { answer: clients }),
            Err(reason) => self.upgrade_failed(clients, &reason, out),
        }
    }

    /// The old image goes on serving; whoever asked hears why.
    fn upgrade_failed(&mut self, clients: Vec<ClientId>, reason: &str, out: &mut Vec<Effect>) {
        out.error(format!("upgrade failed: {reason}; this panzer goes on running"));
        if self.state.stopping.is_none() && !self.reload_under_way() {
            out.push(Effect::Systemd(Note::Ready(format!("upgrade failed: {reason}"))));
        }
        for to in clients {
            out.push(Effect::Reply { to, reply: Reply::error(reason) });
        }
    }

    /// This image took the state over: the upgrade is done. Generations
    /// whose monitors this image cannot talk to are replaced by a reload.
    fn resumed(
        &mut self,
        now: Instant,
        clients: Vec<ClientId>,
        pid: u32,
        version: String,
        stale: Vec<u32>,
        out: &mut Vec<Effect>,
    ) {
        for to in clients {
            let reply = Reply { pid: Some(pid), version: Some(version.clone()), ..Reply::ok() };
            out.push(Effect::Reply { to, reply });
        }
        if self.state.stopping.is_some() {
            return;
        }
        if !self.reload_under_way() {
            out.push(Effect::Systemd(Note::Ready(format!("upgraded to panzer {version}"))));
        }
        if !stale.is_empty() {
            out.warn(format!(
                "generation(s) {stale:?} speak a protocol this panzer cannot: a hot restart replaces them"
            ));
            self.reload(now, None, out);
        }
    }

    /// A new count for every live generation; refused (as `--count` would
    /// be) when it is 0 or past what the limits let a generation run.
    fn scale(&mut self, count: u32, out: &mut Vec<Effect>) -> Result<u32, Error> {
        if count == 0 {
            return Err(Error::Usage("scale 0: the count must be at least 1".into()));
        }
        let count =
            self.settings.ceiling.check(&format!("scale {count}"), count.into()).map_err(Error::Usage)?;
        if self.state.stopping.is_some() || count == self.state.count {
            return Ok(self.state.count);
        }
        out.info(format!("scaling from {} to {count} worker(s)", self.state.count));
        self.state.count = count;
        // A staged reload's two generations: the new one and the one it replaces.
        let in_roll: Vec<u32> = self
            .state
            .generations
            .iter()
            .filter_map(|g| g.roll.map(|roll| [Some(g.number), roll.old]))
            .flatten()
            .flatten()
            .collect();
        for g in &mut self.state.generations {
            if in_roll.contains(&g.number) {
                // The roll under way takes the new count at its next step.
                continue;
            }
            match g.state {
                State::Starting | State::Ready => {
                    g.count = count;
                    out.push(Effect::Order { generation: g.number, order: Order::Scale { count } });
                }
                State::Delayed(_) => g.count = count,
                State::Draining | State::Failed => {}
            }
        }
        Ok(count)
    }

    /// Tells `number` to drain within `grace`; its group is killed if it is
    /// not gone a backstop later. A monitor that does not say within
    /// [`DRAIN_ACT_TIMEOUT`] that it has signalled its workers is not
    /// waited for (see [`Policy::take_over_drains`]).
    fn drain(&mut self, now: Instant, number: u32, state: State, grace: Duration, out: &mut Vec<Effect>) {
        let Some(g) = self.find(number) else { return };
        g.state = state;
        g.startup_deadline = None;
        g.next_progress = None;
        g.grace_ends = Some(now + grace);
        g.kill_deadline = Some(now + grace + DRAIN_BACKSTOP);
        if g.reports_draining && !g.drain_signalled {
            g.act_deadline = Some(now + DRAIN_ACT_TIMEOUT);
        }
        out.push(Effect::Order { generation: number, order: Order::drain(grace) });
    }

    /// Drains whose monitor has not acted in time (stopped, stuck in the
    /// kernel): main sends the drain signal to the group itself, and
    /// `SIGKILL` when the grace ends instead of a backstop later.
    fn take_over_drains(&mut self, now: Instant, out: &mut Vec<Effect>) {
        for g in &mut self.state.generations {
            if !g.act_deadline.is_some_and(|at| at <= now) {
                continue;
            }
            g.act_deadline = None;
            let ends = g.grace_ends.unwrap_or(now).max(now);
            g.kill_deadline = Some(ends);
            out.warn(format!(
                "generation {}: its monitor has not acted on the drain order within {}: signalling its \
                 workers from main; SIGKILL in {}",
                g.number,
                format_duration(DRAIN_ACT_TIMEOUT),
                format_duration(ends.saturating_duration_since(now))
            ));
            out.push(Effect::DrainGroup(g.number));
        }
    }

    fn report(&mut self, now: Instant, number: u32, report: Report, out: &mut Vec<Effect>) {
        let Some(g) = self.find(number) else { return };
        match report {
            Report::Draining => {
                g.drain_signalled = true;
                g.act_deadline = None;
            }
            Report::WorkerStarted { ordinal, pid } => {
                let (restarts, last_exit, replaced, unready_exits) =
                    g.workers.get(&ordinal).map_or((0, None, 0, 0), |w| {
                        (w.restarts + 1, w.last_exit.clone(), w.replaced, w.unready_exits)
                    });
                let view = WorkerView {
                    pid,
                    ready: false,
                    restarts,
                    since: now,
                    last_exit,
                    replaced,
                    unready_exits,
                };
                g.workers.insert(ordinal, view);
            }
            Report::WorkerReady { ordinal, pid } => {
                if let Some(w) = g.workers.get_mut(&ordinal).filter(|w| w.pid == pid) {
                    w.ready = true;
                    w.unready_exits = 0;
                }
            }
            Report::WorkerExited { ordinal, pid, how } => {
                let Some(w) = g.workers.get_mut(&ordinal).filter(|w| w.pid == pid) else { return };
                if !w.ready {
                    w.unready_exits += 1;
                }
                w.ready = false;
                w.pid = 0;
                w.last_exit = Some(how.clone());
                let unready_exits = w.unready_exits;
                if matches!(g.roll, Some(Roll { phase: Phase::Canary(Some(_)), .. })) {
                    let reason = format!("the canary (worker {ordinal}, pid {pid}) {how} during its soak");
                    self.failed(now, number, &reason, out);
                } else if g.roll.is_some() && unready_exits >= MAX_UNREADY_EXITS {
                    // The monitor judges crash loops only until its first
                    // step was ready; a later step's are judged here.
                    let reason = format!(
                        "worker {ordinal} exited {unready_exits} times before it was ready (last: {how})"
                    );
                    self.failed(now, number, &reason, out);
                }
            }
            Report::GenerationReady { workers, elapsed_ms, how } => {
                let how = if how.is_empty() { String::new() } else { format!(" ({how})") };
                // A staged reload goes on from its worker counts (below).
                if g.roll.is_some() {
                    out.info(format!("generation {number}: {workers}/{workers} workers of this step ready in {elapsed_ms} ms{how}"));
                } else {
                    out.info(format!(
                        "generation {number} ready: {workers}/{workers} workers in {elapsed_ms} ms{how}"
                    ));
                    self.ready(now, number, workers, out);
                }
            }
            Report::GenerationFailed { reason } => self.failed(now, number, &reason, out),
            Report::WorkerReplaced { ordinal, old_pid, reason, .. }
                if matches!(g.roll, Some(Roll { phase: Phase::Canary(Some(_)), .. })) =>
            {
                let why = match reason.as_str() {
                    "health" => "went silent after WATCHDOG=1",
                    "rss" => "outgrew --max-rss",
                    _ => "had to be replaced",
                };
                let reason = format!("the canary (worker {ordinal}, pid {old_pid}) {why} during its soak");
                self.failed(now, number, &reason, out);
            }
            Report::WorkerReplaced { ordinal, new_pid, replacements, .. } => {
                // The successor takes the slot over, ready: never a moment
                // without a ready worker, and no restart (nothing crashed).
                let w = g.workers.entry(ordinal).or_insert_with(|| WorkerView {
                    pid: 0,
                    ready: false,
                    restarts: 0,
                    since: now,
                    last_exit: None,
                    replaced: 0,
                    unready_exits: 0,
                });
                w.pid = new_pid;
                w.ready = true;
                w.since = now;
                w.replaced = replacements;
            }
        }
    }

    /// Every worker of `number` is ready: it takes over, older ones drain.
    fn ready(&mut self, now: Instant, number: u32, workers: u32, out: &mut Vec<Effect>) {
        // Too late if it already failed (at the startup timeout, say).
        if self.state_of(number) != Some(State::Starting) {
            return;
        }
        let grace = self.settings.graceful_timeout;
        let count = self.state.count;
        if let Some(g) = self.find(number) {
            g.state = State::Ready;
            g.startup_deadline = None;
            g.next_progress = None;
            g.roll = None;
            if g.count != count {
                // Scaled while it started.
                g.count = count;
                out.push(Effect::Order { generation: number, order: Order::Scale { count } });
            }
        }
        self.state.served = true;
        self.state.replacement_failures = 0;
        let older: Vec<u32> = self
            .state
            .generations
            .iter()
            .filter(|g| g.number < number && matches!(g.state, State::Ready | State::Starting))
            .map(|g| g.number)
            .collect();
        for old in older {
            self.drain(now, old, State::Draining, grace, out);
        }
        // An older one still waiting for its backoff will never be needed.
        let delayed: Vec<u32> = self
            .state
            .generations
            .iter()
            .filter(|g| g.number < number && matches!(g.state, State::Delayed(_)))
            .map(|g| g.number)
            .collect();
        for old in delayed {
            self.remove(old);
        }
        let started = self.find(number).map(|g| g.started);
        let cause = self.find(number).map(|g| std::mem::replace(&mut g.cause, Cause::Replacement));
        if let Some(Cause::Reload(clients)) = cause {
            out.info(format!("reload done: generation {number} serves"));
            self.state.reloads.ok += 1;
            self.state.reloads.last_duration_ms = started.map(|at| millis(now.saturating_duration_since(at)));
            for to in clients {
                out.push(Effect::Reply { to, reply: Reply { generation: Some(number), ..Reply::ok() } });
            }
        }
        if self.state.stopping.is_some() {
            self.drain(now, number, State::Draining, grace, out);
            return;
        }
        out.push(Effect::Systemd(Note::Ready(format!(
            "generation {number} serving with {workers} worker(s)"
        ))));
        if let Some(clients) = self.state.queued_reload.take() {
            self.start(now, Cause::Reload(clients), out);
        }
    }

    /// Moves a staged reload on as far as its workers allow: a canary that
    /// stayed ready for its soak, a batch of new workers all ready (then
    /// as many old ones retire), retired workers gone (then the next batch
    /// starts). Never more than K workers above the count are alive.
    fn advance(&mut self, now: Instant, number: u32, out: &mut Vec<Effect>) {
        let n = self.state.count;
        loop {
            let Some(g) = self.state.generations.iter().find(|g| g.number == number) else { return };
            let Some(roll) = g.roll.filter(|_| g.state == State::Starting) else { return };
            let (ready, count) = (g.ready_workers(), g.count);
            let old = roll.old.and_then(|o| {
                self.state.generations.iter().find(|g| g.number == o && g.state == State::Ready)
            });
            let old = old.map(|o| (o.number, o.count, o.alive_workers()));
            let (phase, grow_to) = match roll.phase {
                Phase::Canary(None) if ready >= 1 => {
                    let soak = self.settings.canary.unwrap_or_default();
                    out.info(format!("generation {number}: the canary is ready; it serves beside the old generation for {}",
                        format_duration(soak)));
                    (Phase::Canary(Some(now + soak)), None)
                }
                Phase::Canary(Some(until)) if until <= now && ready >= 1 => {
                    out.info(format!("generation {number}: the canary stayed ready; the reload goes on"));
                    self.after_batch(number, count, old.map(|o| o.0), out)
                }
                Phase::Surge if ready >= count && count >= n => {
                    let took = now.saturating_duration_since(g.started);
                    out.info(format!("generation {number} ready: {n}/{n} workers in {} ms", millis(took)));
                    return self.ready(now, number, n, out);
                }
                Phase::Surge if ready >= count => self.after_batch(number, count, old.map(|o| o.0), out),
                Phase::Retire if old.map_or(true, |(_, target, alive)| alive <= target) => {
                    let k = match self.settings.strategy {
                        ReloadStrategy::Rolling(k) => k,
                        ReloadStrategy::All => n,
                    };
                    (Phase::Surge, Some(n.min(count + k)))
                }
                _ => return,
            };
            let timeout = self.settings.startup_timeout;
            let Some(g) = self.find(number) else { return };
            g.roll = Some(Roll { phase, ..roll });
            if let Some(target) = grow_to.filter(|&t| t > g.count) {
                out.info(format!("generation {number}: starting {} more worker(s)", target - g.count));
                g.count = target;
                // Each step gets the whole startup timeout.
                g.startup_deadline = Some(now + timeout);
                out.push(Effect::Order { generation: number, order: Order::Scale { count: target } });
            }
        }
    }

    /// A batch of new workers (or the canary) is ready: with a rolling
    /// strategy as many old workers retire; otherwise the new generation
    /// grows to the full count. Returns the next phase, and the count the
    /// new generation grows to now, if it does.
    fn after_batch(
        &mut self,
        number: u32,
        count: u32,
        old: Option<u32>,
        out: &mut Vec<Effect>,
    ) -> (Phase, Option<u32>) {
        let n = self.state.count;
        let target = n.saturating_sub(count);
        match (self.settings.strategy, old) {
            (ReloadStrategy::Rolling(_), Some(old)) if target > 0 => {
                // Only ever fewer: a scale-up meanwhile waits for the takeover.
                if let Some(g) = self.find(old).filter(|g| g.count > target) {
                    out.info(format!(
                        "generation {old}: retiring {} worker(s) for the new ones",
                        g.count.saturating_sub(target)
                    ));
                    g.count = target;
                    out.push(Effect::Order { generation: old, order: Order::Scale { count: target } });
                }
                (Phase::Retire, None)
            }
            _ => {
                let _ = number;
                (Phase::Surge, Some(n))
            }
        }
    }

    /// `number` cannot become ready (startup timeout, workers crashing, its
    /// monitor could not start): it drains, whatever serves keeps serving.
    fn failed(&mut self, now: Instant, number: u32, reason: &str, out: &mut Vec<Effect>) {
        if self.state_of(number) != Some(State::Starting) {
            return;
        }
        out.error(format!("generation {number} failed: {reason}"));
        self.state.last_failure = Some(reason.to_string());
        self.restore_old(number, out);
        let grace = self.settings.graceful_timeout.min(FAILED_GRACE);
        self.drain(now, number, State::Failed, grace, out);
        let started = self.find(number).map(|g| g.started);
        let cause = self.find(number).map(|g| std::mem::replace(&mut g.cause, Cause::Replacement));
        self.after_failure(now, cause, started, reason, out);
    }

    /// A staged reload that stops gives the old generation back its full
    /// count (the retired slots start again from COMMAND as it is now).
    fn restore_old(&mut self, number: u32, out: &mut Vec<Effect>) {
        let count = self.state.count;
        let old = self.find(number).and_then(|g| g.roll.take()).and_then(|r| r.old);
        if let Some(old) =
            old.and_then(|o| self.find(o)).filter(|o| o.state == State::Ready && o.count != count)
        {
            old.count = count;
            let order = Order::Scale { count };
            out.info(format!("generation {} goes back to {count} worker(s)", old.number));
            out.push(Effect::Order { generation: old.number, order });
        }
    }

    /// What follows a generation that did not come up: the reload's answer,
    /// then another try if something asked for one or nothing serves.
    /// `started`: when that generation started, for the reload's duration.
    fn after_failure(
        &mut self,
        now: Instant,
        cause: Option<Cause>,
        started: Option<Instant>,
        reason: &str,
        out: &mut Vec<Effect>,
    ) {
        if self.state.stopping.is_some() {
            return;
        }
        if !self.state.served {
            // Nothing ever served, and the application itself failed: give up.
            self.state.exit_code = crate::error::EXIT_NOT_READY;
            self.stop(now, Stop::Graceful, out);
            return;
        }
        let serving =
            self.state.generations.iter().filter(|g| g.state == State::Ready).map(|g| g.number).next_back();
        if let Some(Cause::Reload(clients)) = cause {
            let message = match serving {
                Some(n) => format!("{reason}; generation {n} keeps serving"),
                None => reason.to_string(),
            };
            out.error(format!("reload failed: {message}"));
            self.state.reloads.failed += 1;
            self.state.reloads.last_error = Some(message.clone());
            self.state.reloads.last_duration_ms = started.map(|at| millis(now.saturating_duration_since(at)));
            out.push(Effect::Systemd(Note::Ready(format!("reload failed: {message}"))));
            for to in clients {
                out.push(Effect::Reply { to, reply: Reply::error(message.clone()) });
            }
        } else if cause == Some(Cause::Replacement) {
            self.state.replacement_failures += 1;
        }
        if let Some(clients) = self.state.queued_reload.take() {
            self.start(now, Cause::Reload(clients), out);
        } else if serving.is_none() && !self.any(|s| matches!(s, State::Starting | State::Delayed(_))) {
            self.start(now, Cause::Replacement, out);
        }
    }

    fn monitor_exited(&mut self, now: Instant, number: u32, ended: Ended, out: &mut Vec<Effect>) {
        let Some(state) = self.state_of(number) else { return };
        let grace = self.settings.graceful_timeout;
        // A monitor that drained exited 0 after signalling its workers; any
        // other end left them (or their children) to main.
        let drained = matches!(state, State::Draining | State::Failed) && ended == Ended::Exited(0);
        let kill_at =
            match self.state.generations.iter().find(|g| g.number == number).and_then(Generation::grace_ends)
            {
                Some(ends) if drained => ends,
                _ => now + grace,
            };
        out.push(Effect::Orphans { generation: number, terminate: !drained, kill_at });
        match state {
            State::Starting => {
                out.error(format!("the monitor of generation {number} {ended} before it was ready"));
                self.restore_old(number, out);
                let started = self.find(number).map(|g| g.started);
                let cause = self.find(number).map(|g| std::mem::replace(&mut g.cause, Cause::Replacement));
                self.remove(number);
                // A monitor that gives up on its workers says so first
                // (GenerationFailed: the state is Failed then). One that
                // just went away (killed, stopped by a stray SIGTERM) is not
                // the application failing: it is started again.
                self.killed_while_starting(now, cause, started, &ended, out);
            }
            State::Ready => {
                self.remove(number);
                if self.state.stopping.is_some() {
                    out.warn(format!("the monitor of generation {number} {ended} while stopping"));
                } else {
                    out.error(format!("the monitor of generation {number} {ended}; its workers drain while a new generation starts"));
                    if !self.any(|s| matches!(s, State::Starting | State::Ready | State::Delayed(_))) {
                        self.start(now, Cause::Replacement, out);
                    }
                }
            }
            State::Draining | State::Failed => {
                if drained {
                    out.info(format!("generation {number} stopped"));
                } else {
                    out.warn(format!("the monitor of generation {number} {ended} while stopping"));
                }
                self.remove(number);
            }
            State::Delayed(_) => self.remove(number),
        }
    }

    /// A starting monitor was killed by a signal: a reload fails with that
    /// reason; generation 1 (or a replacement) is started again.
    fn killed_while_starting(
        &mut self,
        now: Instant,
        cause: Option<Cause>,
        started: Option<Instant>,
        ended: &Ended,
        out: &mut Vec<Effect>,
    ) {
        if self.state.stopping.is_some() {
            return;
        }
        match cause {
            Some(Cause::Reload(_)) => {
                let reason = format!("its monitor {ended} before it was ready");
                self.after_failure(now, cause, started, &reason, out);
            }
            _ => {
                self.state.replacement_failures += 1;
                if !self.state.served && self.state.replacement_failures >= MAX_LOST_MONITORS {
                    // Something keeps ending the monitor itself: say so and
                    // stop, rather than retry forever with nothing serving.
                    let reason = format!(
                        "its monitor {ended} before it was ready, {MAX_LOST_MONITORS} times in a row"
                    );
                    out.error(format!("generation {} never became ready: {reason}", self.state.last));
                    self.state.last_failure = Some(reason);
                    self.state.exit_code = crate::error::EXIT_NOT_READY;
                    return self.stop(now, Stop::Graceful, out);
                }
                if !self.any(|s| matches!(s, State::Starting | State::Ready | State::Delayed(_))) {
                    self.start(now, Cause::Replacement, out);
                }
            }
        }
    }

    fn remove(&mut self, number: u32) {
        self.state.generations.retain(|g| g.number != number);
    }

    /// `SIGTERM`, `SIGINT`, a control `stop` (graceful), or `SIGQUIT`, a
    /// second `SIGINT` (now). A graceful stop first waits out
    /// `--stop-delay` while a generation serves (not ready: systemd hears
    /// `STOPPING=1` at once); a second graceful stop skips the rest of it.
    fn stop(&mut self, now: Instant, how: Stop, out: &mut Vec<Effect>) {
        let already = self.state.stopping;
        if already == Some(Stop::Now) {
            return;
        }
        if already == Some(Stop::Graceful) && how == Stop::Graceful {
            if self.in_stop_delay() {
                out.info("asked again: the rest of the stop delay is skipped");
                self.begin_drain(now, out);
            }
            return;
        }
        let drain_began = already.is_some() && !self.in_stop_delay();
        self.state.stopping = Some(how);
        if already.is_none() {
            out.push(Effect::Systemd(Note::Stopping));
            let delay = self.settings.stop_delay;
            let lame_duck = how == Stop::Graceful && !delay.is_zero() && self.any(|s| s == State::Ready);
            // What was asked for and not done yet is cancelled; a reload
            // under way stops at once, the generation it would replace
            // serves through the delay.
            let mut cancelled: Vec<ClientId> = self.state.queued_reload.take().unwrap_or_default();
            let numbers: Vec<(u32, State)> =
                self.state.generations.iter().map(|g| (g.number, g.state)).collect();
            for (number, state) in numbers {
                match state {
                    State::Delayed(_) => self.remove(number),
                    State::Starting => {
                        if let Some(Cause::Reload(clients)) =
                            self.find(number).map(|g| std::mem::replace(&mut g.cause, Cause::Replacement))
                        {
                            cancelled.extend(clients);
                        }
                        if lame_duck {
                            self.restore_old(number, out);
                            let grace = self.settings.graceful_timeout;
                            self.drain(now, number, State::Draining, grace, out);
                        }
                    }
                    State::Ready | State::Draining | State::Failed => {}
                }
            }
            if !cancelled.is_empty() {
                out.info("a reload waiting to run was cancelled: panzer is stopping");
            }
            if let Some(upgrade) = self.upgrade.take() {
                out.info("the upgrade under way was cancelled: panzer is stopping");
                if upgrade.checking_until.is_some() {
                    out.push(Effect::AbortUpgradeCheck);
                }
                for to in upgrade.clients {
                    out.push(Effect::Reply {
                        to,
                        reply: Reply::error("upgrade cancelled: panzer is stopping"),
                    });
                }
            }
            for to in cancelled {
                out.push(Effect::Reply { to, reply: Reply::error("reload cancelled: panzer is stopping") });
            }
            match how {
                Stop::Graceful if lame_duck => {
                    out.info(format!(
                        "stopping in {} (--stop-delay); serving until then",
                        format_duration(delay)
                    ));
                    self.state.stop_delay_until = Some(now + delay);
                }
                Stop::Graceful => self.begin_drain(now, out),
                Stop::Now => {}
            }
        }
        if how == Stop::Now {
            out.warn("stopping now, killing every worker");
            if !drain_began {
                self.begin_drain(now, out);
            }
            self.kill_everything(out);
        }
    }

    /// A graceful stop drains: nothing new is accepted (the sockets stop
    /// listening), every generation finishes what it has within the
    /// graceful timeout, and what is left then is killed.
    fn begin_drain(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.state.stop_delay_until = None;
        let grace = self.settings.graceful_timeout;
        if self.state.stopping == Some(Stop::Graceful) && self.state.exit_code == 0 {
            out.info(format!("stopping gracefully (workers have {} to finish)", format_duration(grace)));
        }
        self.state.stop_deadline = Some(now + grace + DRAIN_BACKSTOP);
        // Before the workers hear of the drain, while they still accept:
        // the backlog is at its shortest, and what it holds is all that is
        // lost (a TCP socket resets it as it stops listening).
        out.push(Effect::Unlisten);
        let numbers: Vec<(u32, State)> = self.state.generations.iter().map(|g| (g.number, g.state)).collect();
        for (number, state) in numbers {
            match state {
                State::Delayed(_) => self.remove(number),
                State::Starting | State::Ready => self.drain(now, number, State::Draining, grace, out),
                State::Draining | State::Failed => {}
            }
        }
    }

    fn kill_everything(&mut self, out: &mut Vec<Effect>) {
        for g in &mut self.state.generations {
            g.kill_deadline = None;
            g.act_deadline = None;
            out.push(Effect::KillGroup(g.number));
        }
        out.push(Effect::KillOrphans);
        self.state.stop_deadline = None;
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.take_over_drains(now, out);
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        let snapshot: Vec<(u32, State, bool, bool, bool)> = self
            .state
            .generations
            .iter()
            .map(|g| (g.number, g.state, due(g.kill_deadline), due(g.startup_deadline), due(g.next_progress)))
            .collect();
        for (number, state, kill, startup, report_progress) in snapshot {
            if let State::Delayed(at) = state {
                if at <= now {
                    self.spawn(now, number, out);
                }
                continue;
            }
            if kill {
                if let Some(g) = self.find(number) {
                    g.kill_deadline = None;
                }
                out.warn(format!("generation {number} did not stop in time: killing its process group"));
                out.push(Effect::KillGroup(number));
            }
            if startup {
                let (ready, count) = self
                    .find(number)
                    .map(|g| (g.workers.values().filter(|w| w.ready).count(), g.count))
                    .unwrap_or_default();
                let reason = format!(
                    "not ready within {} ({ready}/{count} workers ready)",
                    format_duration(self.settings.startup_timeout)
                );
                self.failed(now, number, &reason, out);
            } else if report_progress {
                if let Some(g) = self.find(number) {
                    g.next_progress = Some(now + PROGRESS_EVERY);
                    out.info(progress(g, now));
                }
            }
        }
        if due(self.upgrade.as_ref().and_then(|u| u.checking_until)) {
            out.push(Effect::AbortUpgradeCheck);
            let reason = format!(
                "the new binary did not finish its check within {}",
                format_duration(UPGRADE_CHECK_TIMEOUT)
            );
            self.upgrade_checked(Err(reason), out);
        }
        if due(self.state.stop_delay_until) {
            self.begin_drain(now, out);
        }
        if due(self.state.stop_deadline) {
            out.warn("workers still running after the graceful timeout: killing them");
            self.kill_everything(out);
        }
    }
}

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// `generation 3 starting: 3/4 ready after 10 s; worker 2 not ready`.
fn progress(g: &Generation, now: Instant) -> String {
    let ready: Vec<u32> = g.workers.iter().filter(|(_, w)| w.ready).map(|(o, _)| *o).collect();
    let waiting: Vec<String> = (0..g.count).filter(|o| !ready.contains(o)).map(|o| o.to_string()).collect();
    let after = now.saturating_duration_since(g.started).as_secs();
    let mut line =
        format!("generation {} starting: {}/{} ready after {after} s", g.number, ready.len(), g.count);
    match waiting.len() {
        0 => {}
        1 => line.push_str(&format!("; worker {} not ready", waiting[0])),
        _ if waiting.len() <= 8 => line.push_str(&format!("; workers {} not ready", waiting.join(", "))),
        n => line.push_str(&format!("; {n} workers not ready")),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::{Exit, KillGroup, KillOrphans, Orphans, Spawn, Systemd};

    const GRACE: Duration = Duration::from_secs(30);

    fn settings() -> Settings {
        Settings {
            count: 2,
            ceiling: crate::limits::CountCeiling { max: 64, bound: crate::limits::Bound::Ceiling },
            startup_timeout: Duration::from_secs(60),
            graceful_timeout: GRACE,
            strategy: ReloadStrategy::All,
            canary: None,
            stop_delay: Duration::ZERO,
        }
    }

    struct World {
        policy: Policy,
        now: Instant,
    }

    impl World {
        fn new() -> World {
            World::with(settings())
        }

        fn with(settings: Settings) -> World {
            World { policy: Policy::new(settings), now: Instant::now() }
        }

        /// Generation 1 serving with `count` workers, pids 100….
        fn serving_with(settings: Settings) -> World {
            let mut w = World::with(settings);
            w.on(Event::Boot);
            for ordinal in 0..settings.count {
                w.worker_ready(1, ordinal, 100 + ordinal as i32);
            }
            w.ready(1);
            w
        }

        fn worker_ready(&mut self, generation: u32, ordinal: u32, pid: i32) -> Vec<Effect> {
            self.on(Event::Report { generation, report: Report::WorkerStarted { ordinal, pid } });
            self.on(Event::Report { generation, report: Report::WorkerReady { ordinal, pid } })
        }

        fn worker_exited(&mut self, generation: u32, ordinal: u32, pid: i32) -> Vec<Effect> {
            let how = "exited with status 0".to_string();
            self.on(Event::Report { generation, report: Report::WorkerExited { ordinal, pid, how } })
        }

        fn alive(&self) -> u32 {
            self.policy.generations().iter().map(Generation::alive_workers).sum()
        }

        fn serving() -> World {
            let mut w = World::new();
            assert_eq!(w.on(Event::Boot), vec![Spawn { generation: 1, count: 2 }]);
            w.ready(1);
            w
        }

        /// What the policy does on `event`, but for the lines it logs.
        fn on(&mut self, event: Event) -> Vec<Effect> {
            let effects = self.policy.handle(self.now, event);
            effects.into_iter().filter(|e| !matches!(e, Effect::Log { .. })).collect()
        }

        fn later(&mut self, by: Duration) -> Vec<Effect> {
            self.now += by;
            self.on(Event::Tick)
        }

        fn ready(&mut self, generation: u32) -> Vec<Effect> {
            self.on(Event::Report {
                generation,
                report: Report::GenerationReady { workers: 2, elapsed_ms: 1, how: String::new() },
            })
        }

        fn failed(&mut self, generation: u32, reason: &str) -> Vec<Effect> {
            self.on(Event::Report { generation, report: Report::GenerationFailed { reason: reason.into() } })
        }

        fn exited(&mut self, generation: u32, ended: Ended) -> Vec<Effect> {
            self.on(Event::MonitorExited { generation, ended })
        }

        /// The monitor of `generation` says it has signalled its workers.
        fn acted(&mut self, generation: u32) -> Vec<Effect> {
            self.on(Event::Report { generation, report: Report::Draining })
        }

        fn reload(&mut self, client: u64) -> Vec<Effect> {
            self.on(Event::Command { command: Command::Reload, from: Some(ClientId(client)) })
        }

        fn states(&self) -> Vec<(u32, State)> {
            self.policy.generations().iter().map(|g| (g.number, g.state)).collect()
        }
    }

    fn drain(generation: u32, grace: Duration) -> Effect {
        Effect::Order { generation, order: crate::protocol::Order::drain(grace) }
    }

    fn ok(client: u64, generation: u32) -> Effect {
        Effect::Reply { to: ClientId(client), reply: Reply { generation: Some(generation), ..Reply::ok() } }
    }

    fn spawns(effects: &[Effect]) -> Vec<u32> {
        effects
            .iter()
            .filter_map(|e| match e {
                Spawn { generation, .. } => Some(*generation),
                _ => None,
            })
            .collect()
    }

    fn replies(effects: &[Effect]) -> Vec<(u64, bool, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Reply { to, reply } => {
                    Some((to.0, reply.ok, reply.error.clone().unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    }

    fn killed() -> Ended {
        Ended::Killed("SIGKILL".into())
    }

    #[test]
    fn a_reload_starts_the_next_generation_then_drains_the_previous_when_it_is_ready() {
        let mut w = World::serving();
        assert_eq!(w.reload(7), vec![Systemd(Note::Reloading), Spawn { generation: 2, count: 2 }]);
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Starting)]);
        let effects = w.ready(2);
        assert_eq!(
            effects,
            vec![
                drain(1, GRACE),
                ok(7, 2),
                Systemd(Note::Ready("generation 2 serving with 2 worker(s)".into()))
            ]
        );
        assert_eq!(w.exited(1, Ended::Exited(0)).len(), 1, "only the orphans of a drained monitor");
        assert_eq!(w.states(), vec![(2, State::Ready)]);
        assert_eq!(w.policy.reloads().ok, 1);
    }

    #[test]
    fn reloads_during_a_reload_coalesce_into_one_more_that_answers_every_waiting_client() {
        let mut w = World::serving();
        w.reload(1);
        for client in 2..20 {
            assert_eq!(w.reload(client), vec![]);
        }
        let effects = w.ready(2);
        assert_eq!(spawns(&effects), vec![3]);
        assert_eq!(replies(&effects), vec![(1, true, String::new())]);
        let effects = w.ready(3);
        assert_eq!(replies(&effects).len(), 18, "every queued client hears about generation 3");
        assert!(replies(&effects).iter().all(|r| r.1));
    }

    #[test]
    fn a_failed_reload_drains_the_new_generation_within_five_seconds_and_keeps_the_old_one() {
        let mut w = World::serving();
        w.reload(1);
        let effects = w.failed(2, "worker 1 exited 5 times before it was ready");
        assert_eq!(effects[0], drain(2, FAILED_GRACE), "drained, never SIGKILLed at once");
        assert_eq!(
            replies(&effects),
            vec![(
                1,
                false,
                "worker 1 exited 5 times before it was ready; generation 1 keeps serving".into()
            )]
        );
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
        assert!(!effects.iter().any(|e| matches!(e, KillGroup(_))));
        // Its workers get FAILED_GRACE; the group is killed a backstop later.
        assert_eq!(w.acted(2), vec![]);
        assert_eq!(w.later(FAILED_GRACE), vec![]);
        assert_eq!(w.later(DRAIN_BACKSTOP), vec![KillGroup(2)]);
    }

    #[test]
    fn the_startup_timeout_fails_a_reload_and_a_late_ready_changes_nothing() {
        let mut w = World::serving();
        w.reload(1);
        let effects = w.later(Duration::from_secs(60));
        assert_eq!(
            replies(&effects)[0].2,
            "not ready within 60.0s (0/2 workers ready); generation 1 keeps serving"
        );
        assert_eq!(w.ready(2), vec![], "a late READY after the failure");
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
    }

    #[test]
    fn a_starting_generation_logs_progress_every_five_seconds_until_the_timeout() {
        let mut w = World::serving();
        w.reload(1);
        w.on(Event::Report { generation: 2, report: Report::WorkerStarted { ordinal: 0, pid: 10 } });
        w.on(Event::Report { generation: 2, report: Report::WorkerReady { ordinal: 0, pid: 10 } });
        let g = &w.policy.generations()[1];
        assert_eq!(
            progress(g, w.now + Duration::from_secs(10)),
            "generation 2 starting: 1/2 ready after 10 s; worker 1 not ready"
        );
        let deadline = w.policy.next_deadline().unwrap();
        assert_eq!(deadline, w.now + PROGRESS_EVERY);
    }

    #[test]
    fn generation_one_failing_ends_main_with_status_one() {
        let mut w = World::new();
        w.on(Event::Boot);
        let effects = w.failed(1, "workers keep crashing");
        assert_eq!(effects[0], drain(1, FAILED_GRACE));
        assert!(w.policy.stopping());
        assert_eq!(w.exited(1, Ended::Exited(1)).last(), Some(&Exit(1)));
        assert_eq!(w.policy.last_failure(), Some("workers keep crashing"));
    }

    #[test]
    fn a_monitor_killed_while_generation_one_starts_is_replaced_with_backoff_not_fatal() {
        let mut w = World::new();
        w.on(Event::Boot);
        let effects = w.exited(1, killed());
        assert!(!w.policy.stopping());
        assert!(effects.contains(&Orphans { generation: 1, terminate: true, kill_at: w.now + GRACE }));
        assert!(spawns(&effects).is_empty(), "the replacement waits for its backoff");
        assert_eq!(w.later(BACKOFF_START), vec![Spawn { generation: 2, count: 2 }]);
        w.ready(2);
        assert_eq!(w.states(), vec![(2, State::Ready)]);
        // Its replacement crashing for real is the application failing: exit 1.
        let mut w = World::new();
        w.on(Event::Boot);
        w.exited(1, killed());
        w.later(BACKOFF_START);
        w.failed(2, "worker 0 exited 5 times before it was ready");
        assert_eq!(w.exited(2, Ended::Exited(1)).last(), Some(&Exit(1)));
    }

    #[test]
    fn a_serving_monitor_that_dies_has_its_workers_drained_while_a_replacement_starts_at_once() {
        let mut w = World::serving();
        let effects = w.exited(1, killed());
        assert_eq!(
            effects,
            vec![
                Orphans { generation: 1, terminate: true, kill_at: w.now + GRACE },
                Spawn { generation: 2, count: 2 }
            ]
        );
        assert_eq!(w.ready(2)[0], Systemd(Note::Ready("generation 2 serving with 2 worker(s)".into())));
    }

    #[test]
    fn replacements_that_keep_failing_back_off_up_to_the_cap() {
        let mut w = World::serving();
        w.exited(1, killed());
        let mut delays = Vec::new();
        for generation in 2..12 {
            let effects = w.failed(generation, "crash");
            assert!(spawns(&effects).is_empty());
            let State::Delayed(at) = w.states().last().unwrap().1 else { panic!("{:?}", w.states()) };
            delays.push(at - w.now);
            w.exited(generation, Ended::Exited(1));
            w.now = at;
            assert_eq!(spawns(&w.on(Event::Tick)), vec![generation + 1]);
        }
        assert_eq!(delays[0], BACKOFF_START);
        assert_eq!(delays[1], BACKOFF_START * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_CAP);
    }

    #[test]
    fn a_reload_during_a_delayed_replacement_waits_for_it() {
        let mut w = World::serving();
        w.exited(1, killed());
        w.failed(2, "crash");
        w.exited(2, Ended::Exited(1));
        assert!(matches!(w.states()[0].1, State::Delayed(_)));
        assert_eq!(w.reload(5), vec![], "queued behind the delayed replacement");
        let effects = w.later(BACKOFF_START);
        assert_eq!(spawns(&effects), vec![3]);
        let effects = w.ready(3);
        assert_eq!(spawns(&effects), vec![4], "then the reload runs");
        assert_eq!(replies(&w.ready(4)), vec![(5, true, String::new())]);
    }

    #[test]
    fn a_stop_during_backoff_exits_without_starting_anything() {
        let mut w = World::serving();
        w.exited(1, killed());
        w.failed(2, "crash");
        w.exited(2, Ended::Exited(1));
        let effects = w.on(Event::Command { command: Command::Stop, from: Some(ClientId(1)) });
        assert_eq!(effects.last(), Some(&Exit(0)));
        assert!(spawns(&effects).is_empty());
        assert_eq!(w.later(BACKOFF_CAP), vec![]);
    }

    #[test]
    fn a_monitor_killed_mid_drain_leaves_its_workers_to_be_terminated_by_main() {
        let mut w = World::serving();
        w.reload(1);
        w.ready(2);
        let effects = w.exited(1, killed());
        assert_eq!(effects, vec![Orphans { generation: 1, terminate: true, kill_at: w.now + GRACE }]);
        // A monitor that drained and exited 0 had signalled them itself.
        let mut w = World::serving();
        w.reload(1);
        w.ready(2);
        w.now += Duration::from_secs(1);
        let effects = w.exited(1, Ended::Exited(0));
        let kill_at = w.now - Duration::from_secs(1) + GRACE;
        assert_eq!(effects, vec![Orphans { generation: 1, terminate: false, kill_at }]);
    }

    #[test]
    fn a_monitor_that_does_not_act_on_a_drain_order_within_a_second_is_taken_over_by_main() {
        let mut w = World::serving();
        w.reload(1);
        assert_eq!(w.ready(2)[0], drain(1, GRACE));
        let grace_ends = w.now + GRACE;
        assert_eq!(w.policy.next_deadline(), Some(w.now + DRAIN_ACT_TIMEOUT));
        // Stopped, or stuck in the kernel: main sends the drain signal itself…
        assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(1)]);
        // …and SIGKILL when the grace ends, not a backstop later.
        assert_eq!(w.policy.next_deadline(), Some(grace_ends));
        assert_eq!(w.later(GRACE - DRAIN_ACT_TIMEOUT - Duration::from_millis(1)), vec![]);
        assert_eq!(w.later(Duration::from_millis(1)), vec![KillGroup(1)]);
        // Saying so late changes nothing.
        assert_eq!(w.acted(1), vec![]);
        assert_eq!(w.later(DRAIN_BACKSTOP), vec![]);
    }

    #[test]
    fn a_failed_generation_whose_monitor_does_not_act_is_killed_five_seconds_after_the_failure() {
        let mut w = World::serving();
        w.reload(1);
        // Not ready by the startup timeout: its monitor is stopped.
        let effects = w.later(Duration::from_secs(60));
        assert!(effects.contains(&drain(2, FAILED_GRACE)), "{effects:?}");
        assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(2)]);
        assert_eq!(w.later(FAILED_GRACE - DRAIN_ACT_TIMEOUT), vec![KillGroup(2)]);
    }

    #[test]
    fn a_monitor_that_acts_in_time_keeps_its_drain_and_main_kills_only_a_backstop_later() {
        let mut w = World::serving();
        w.reload(1);
        w.ready(2);
        w.now += DRAIN_ACT_TIMEOUT - Duration::from_millis(1);
        assert_eq!(w.acted(1), vec![]);
        assert_eq!(w.later(Duration::from_millis(1)), vec![], "the monitor is in charge");
        assert_eq!(w.later(GRACE - DRAIN_ACT_TIMEOUT), vec![]);
        assert_eq!(w.later(DRAIN_BACKSTOP), vec![KillGroup(1)]);
        // One that had drained on its own (a stray SIGTERM) has acted already.
        let mut w = World::serving();
        w.acted(1);
        w.reload(1);
        w.ready(2);
        assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![]);
    }

    #[test]
    fn a_grace_shorter_than_the_wait_for_the_monitor_ends_in_sigkill_as_main_takes_over() {
        let grace = Duration::from_millis(300);
        let mut w = World::serving_with(Settings { graceful_timeout: grace, ..settings() });
        w.reload(1);
        w.ready(2);
        assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(1), KillGroup(1)]);
    }

    #[test]
    fn the_monitors_of_an_older_image_are_not_expected_to_say_they_acted() {
        let mut w = World::serving();
        // The state an image of protocol 1 saved has none of the drain fields.
        let anchor = w.now;
        let text = clock::with_anchor(anchor, || serde_json::to_string(&w.policy.save())).unwrap();
        let mut saved: serde_json::Value = serde_json::from_str(&text).unwrap();
        for g in saved["generations"].as_array_mut().unwrap() {
            let g = g.as_object_mut().unwrap();
            for field in ["grace_ends", "act_deadline", "reports_draining", "drain_signalled"] {
                assert!(g.remove(field).is_some(), "no {field} saved");
            }
        }
        let saved: Saved = clock::with_anchor(anchor, || serde_json::from_value(saved)).unwrap();
        w.policy = Policy::restore(settings(), saved);
        w.reload(1);
        w.ready(2);
        let draining = &w.policy.generations()[0];
        assert_eq!(draining.grace_ends(), Some(w.now + GRACE), "kill_in_ms is shown all the same");
        assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![], "a monitor of protocol 1 never says it acted");
        assert_eq!(w.later(GRACE - DRAIN_ACT_TIMEOUT), vec![]);
        assert_eq!(w.later(DRAIN_BACKSTOP), vec![KillGroup(1)]);
        // The generation this image started is expected to.
        w.reload(2);
        w.ready(3);
        assert_eq!(w.later(DRAIN_ACT_TIMEOUT), vec![Effect::DrainGroup(2)]);
    }

    #[test]
    fn only_a_draining_generation_has_a_time_when_it_is_killed() {
        let mut w = World::serving();
        assert_eq!(w.policy.generations()[0].grace_ends(), None);
        w.reload(1);
        w.ready(2);
        let ends: Vec<Option<Instant>> = w.policy.generations().iter().map(Generation::grace_ends).collect();
        assert_eq!(ends, vec![Some(w.now + GRACE), None]);
        w.later(Duration::from_secs(60));
        w.reload(2);
        w.later(Duration::from_secs(60));
        let ends: Vec<Option<Instant>> = w.policy.generations().iter().map(Generation::grace_ends).collect();
        assert_eq!(ends[2], Some(w.now + FAILED_GRACE), "a failed generation drains too");
    }

    #[test]
    fn a_killed_reload_monitor_fails_the_reload_and_the_old_generation_serves() {
        let mut w = World::serving();
        w.reload(3);
        let effects = w.exited(2, killed());
        assert_eq!(
            replies(&effects),
            vec![(
                3,
                false,
                "its monitor was killed by SIGKILL before it was ready; generation 1 keeps serving".into()
            )]
        );
        assert_eq!(w.states(), vec![(1, State::Ready)]);
    }

    #[test]
    fn stop_drains_everything_answers_waiting_reloads_and_exits_zero_when_all_are_gone() {
        let mut w = World::serving();
        w.reload(1);
        w.reload(2);
        let effects = w.on(Event::Command { command: Command::Stop, from: None });
        assert!(effects.contains(&drain(1, GRACE)) && effects.contains(&drain(2, GRACE)));
        let answers = replies(&effects);
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|(_, ok, e)| !ok && e.contains("stopping")));
        assert_eq!(replies(&w.reload(3)), vec![(3, false, "panzer is stopping".into())]);
        w.exited(1, Ended::Exited(0));
        assert_eq!(w.exited(2, Ended::Exited(0)).last(), Some(&Exit(0)));
    }

    #[test]
    fn a_stop_escalates_to_sigkill_after_the_graceful_timeout_and_a_backstop() {
        let mut w = World::serving();
        w.on(Event::Command { command: Command::Stop, from: None });
        w.acted(1);
        assert_eq!(w.later(GRACE), vec![]);
        let effects = w.later(DRAIN_BACKSTOP);
        assert!(effects.contains(&KillGroup(1)) && effects.contains(&KillOrphans));
    }

    #[test]
    fn stop_now_kills_every_group_at_once() {
        let mut w = World::serving();
        w.reload(1);
        let effects = w.on(Event::Command { command: Command::StopNow, from: None });
        assert!(
            effects.contains(&KillGroup(1))
                && effects.contains(&KillGroup(2))
                && effects.contains(&KillOrphans)
        );
    }

    fn readiness(w: &World) -> (bool, String) {
        let r = w.policy.readiness();
        (r.ready, r.line)
    }

    #[test]
    fn readiness_says_which_generation_starts_and_how_many_of_its_workers_are_ready() {
        let mut w = World::new();
        assert_eq!(readiness(&w), (false, "no generation".into()));
        w.on(Event::Boot);
        assert_eq!(readiness(&w), (false, "generation 1 starting: 0/2 workers ready".into()));
        w.worker_ready(1, 0, 100);
        assert_eq!(readiness(&w), (false, "generation 1 starting: 1/2 workers ready".into()));
        w.worker_ready(1, 1, 101);
        w.ready(1);
        assert_eq!(readiness(&w), (true, "generation 1 ready: 2/2 workers ready".into()));
    }

    #[test]
    fn a_reload_keeps_panzer_ready_on_the_generation_that_serves() {
        let mut w = World::serving_with(settings());
        w.reload(1);
        assert_eq!(readiness(&w), (true, "generation 1 ready: 2/2 workers ready".into()));
        w.worker_ready(2, 0, 200);
        w.worker_ready(2, 1, 201);
        w.ready(2);
        assert_eq!(readiness(&w), (true, "generation 2 ready: 2/2 workers ready".into()));
    }

    #[test]
    fn a_lost_serving_monitor_makes_panzer_not_ready_until_its_replacement_is() {
        let mut w = World::serving_with(settings());
        w.exited(1, killed());
        assert_eq!(readiness(&w), (false, "generation 2 starting: 0/2 workers ready".into()));
    }

    #[test]
    fn a_graceful_or_immediate_stop_makes_panzer_not_ready_at_once() {
        for command in [Command::Stop, Command::StopNow] {
            let mut w = World::serving_with(settings());
            assert!(!w.policy.stopping());
            w.on(Event::Command { command, from: None });
            assert!(w.policy.stopping());
            assert_eq!(readiness(&w), (false, "stopping".into()), "{command:?}");
        }
    }

    #[test]
    fn scale_has_a_ceiling_and_reaches_every_live_generation() {
        let mut w = World::serving();
        let effects = w.on(Event::Command { command: Command::Scale(100), from: Some(ClientId(1)) });
        assert_eq!(replies(&effects), vec![(1, false, "scale 100: at most 64 workers".into())]);
        w.reload(2);
        let effects = w.on(Event::Command { command: Command::Scale(5), from: None });
        assert_eq!(
            effects,
            vec![
                Effect::Order { generation: 1, order: Order::Scale { count: 5 } },
                Effect::Order { generation: 2, order: Order::Scale { count: 5 } }
            ]
        );
        assert_eq!(w.on(Event::Command { command: Command::ScaleBy(-9), from: None }).len(), 2);
        assert_eq!(w.policy.count(), 1);
    }

    #[test]
    fn a_scale_or_sigttin_past_what_the_descriptor_limit_allows_is_refused_with_the_reason() {
        use crate::limits::{CountCeiling, MonitorFds};
        let fds = MonitorFds { sockets: 1, tag_output: true, library: false };
        let ceiling = CountCeiling::of(None, Some((26, fds)));
        let mut w = World::serving_with(Settings { ceiling, ..settings() });
        let effects = w.on(Event::Command { command: Command::Scale(4), from: Some(ClientId(1)) });
        let (_, ok, message) = replies(&effects).remove(0);
        assert!(!ok && message.starts_with("scale 4: at most 3 workers (RLIMIT_NOFILE is 26"), "{message}");
        assert_eq!(effects.len(), 1, "nothing but the answer: {effects:?}");
        let effects = w.on(Event::Command { command: Command::Scale(3), from: None });
        assert_eq!(effects, vec![Effect::Order { generation: 1, order: Order::Scale { count: 3 } }]);
        let effects = w.on(Event::Command { command: Command::ScaleBy(1), from: None });
        assert!(effects.is_empty(), "{effects:?}");
        assert_eq!(w.policy.count(), 3);
    }

    #[test]
    fn each_reload_outcome_records_how_long_it_took_from_its_start() {
        let mut w = World::serving();
        assert_eq!(w.policy.reloads().last_duration_ms, None, "generation 1 is no reload");
        w.reload(1);
        w.now += Duration::from_millis(250);
        w.ready(2);
        assert_eq!(w.policy.reloads().last_duration_ms, Some(250));
        // A failed one: the startup timeout, counted from its own start.
        w.now += Duration::from_secs(3);
        w.reload(2);
        w.later(Duration::from_secs(60));
        assert_eq!((w.policy.reloads().failed, w.policy.reloads().last_duration_ms), (1, Some(60_000)));
        // A queued reload starts when the one before it is done, not when it was asked for.
        w.reload(3);
        w.now += Duration::from_millis(10);
        w.reload(4);
        w.now += Duration::from_millis(90);
        w.ready(4);
        assert_eq!(w.policy.reloads().last_duration_ms, Some(100));
        w.now += Duration::from_millis(40);
        w.ready(5);
        assert_eq!(w.policy.reloads().last_duration_ms, Some(40));
        // A reload whose monitor is killed while it starts fails, with its time.
        w.reload(5);
        w.now += Duration::from_millis(7);
        w.exited(6, killed());
        assert_eq!((w.policy.reloads().failed, w.policy.reloads().last_duration_ms), (2, Some(7)));
    }

    #[test]
    fn a_monitor_that_cannot_be_spawned_fails_its_reload_without_waiting() {
        let mut w = World::serving();
        w.reload(4);
        let effects = w
            .on(Event::SpawnFailed { generation: 2, reason: "cannot start its monitor: cannot fork".into() });
        assert_eq!(replies(&effects)[0].0, 4);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Order { .. })));
        assert_eq!(w.states(), vec![(1, State::Ready)]);
    }

    fn scale(generation: u32, count: u32) -> Effect {
        Effect::Order { generation, order: Order::Scale { count } }
    }

    #[test]
    fn a_rolling_reload_replaces_k_workers_at_a_time_and_never_has_more_than_k_extra_alive() {
        let mut w =
            World::serving_with(Settings { count: 4, strategy: ReloadStrategy::Rolling(1), ..settings() });
        assert_eq!(spawns(&w.reload(1)), vec![2]);
        assert_eq!(w.policy.generations()[1].count, 1, "one new worker first");
        let mut old_alive: Vec<(u32, i32)> = (0..4).map(|o| (o, 100 + o as i32)).collect();
        for step in 0..4u32 {
            let effects = w.worker_ready(2, step, 200 + step as i32);
            assert!(w.alive() <= 5, "step {step}: {} alive", w.alive());
            if step == 3 {
                assert!(effects.contains(&drain(1, GRACE)), "the last old worker goes with the takeover");
                assert_eq!(replies(&effects), vec![(1, true, String::new())]);
                break;
            }
            assert_eq!(effects, vec![scale(1, 3 - step)], "step {step}: one old worker retires");
            // Nothing new starts until the retired one is gone.
            let (ordinal, pid) = old_alive.pop().unwrap();
            let effects = w.worker_exited(1, ordinal, pid);
            assert_eq!(effects, vec![scale(2, step + 2)], "step {step}: then one more new worker");
            assert!(w.alive() <= 5);
        }
        assert_eq!(w.states(), vec![(1, State::Draining), (2, State::Ready)]);
    }

    #[test]
    fn a_rolling_reload_that_fails_gives_the_old_generation_its_full_count_back() {
        let mut w =
            World::serving_with(Settings { count: 4, strategy: ReloadStrategy::Rolling(2), ..settings() });
        w.reload(1);
        w.worker_ready(2, 0, 200);
        assert_eq!(w.worker_ready(2, 1, 201), vec![scale(1, 2)]);
        w.worker_exited(1, 3, 103);
        assert_eq!(w.worker_exited(1, 2, 102), vec![scale(2, 4)]);
        // Workers 2 and 3 of the new build never get ready.
        let effects = w.later(Duration::from_secs(60));
        assert!(effects.contains(&scale(1, 4)), "{effects:?}");
        assert!(effects.contains(&drain(2, FAILED_GRACE)), "{effects:?}");
        assert!(!replies(&effects)[0].1);
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
        assert_eq!(w.policy.generations()[0].count, 4);
    }

    #[test]
    fn a_canary_that_exits_during_its_soak_rolls_the_reload_back() {
        let soak = Duration::from_secs(3);
        let mut w = World::serving_with(Settings { canary: Some(soak), ..settings() });
        w.reload(1);
        assert_eq!(w.policy.generations()[1].count, 1, "the canary alone");
        w.worker_ready(2, 0, 200);
        assert_eq!(w.policy.next_deadline(), Some(w.now + soak));
        w.now += Duration::from_secs(1);
        let effects = w.worker_exited(2, 0, 200);
        assert!(effects.contains(&drain(2, FAILED_GRACE)));
        let answer = &replies(&effects)[0];
        assert!(!answer.1 && answer.2.contains("the canary (worker 0, pid 200) exited"), "{answer:?}");
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
    }

    #[test]
    fn a_canary_that_stays_ready_for_its_soak_lets_the_reload_go_on() {
        let soak = Duration::from_secs(3);
        let mut w = World::serving_with(Settings { canary: Some(soak), ..settings() });
        w.reload(1);
        w.worker_ready(2, 0, 200);
        assert_eq!(w.later(Duration::from_secs(1)), vec![]);
        assert_eq!(w.later(Duration::from_secs(2)), vec![scale(2, 2)]);
        let effects = w.worker_ready(2, 1, 201);
        assert_eq!(effects[0], drain(1, GRACE));
        assert_eq!(replies(&effects), vec![(1, true, String::new())]);
    }

    #[test]
    fn a_canary_with_a_rolling_strategy_retires_one_old_worker_after_its_soak() {
        let mut w = World::serving_with(Settings {
            count: 3,
            canary: Some(Duration::from_secs(1)),
            strategy: ReloadStrategy::Rolling(2),
            ..settings()
        });
        w.reload(1);
        w.worker_ready(2, 0, 200);
        assert_eq!(w.later(Duration::from_secs(1)), vec![scale(1, 2)]);
        assert_eq!(w.worker_exited(1, 2, 102), vec![scale(2, 3)]);
        assert!(w.alive() <= 5);
    }

    #[test]
    fn a_scale_during_a_roll_applies_when_the_new_generation_takes_over() {
        let mut w =
            World::serving_with(Settings { count: 2, strategy: ReloadStrategy::Rolling(1), ..settings() });
        w.reload(1);
        let effects = w.on(Event::Command { command: Command::Scale(3), from: None });
        assert_eq!(effects, vec![], "the roll's generations are left to it");
        // Three wanted now: the old two stay while a second new one starts.
        assert_eq!(w.worker_ready(2, 0, 200), vec![scale(2, 2)]);
        assert_eq!(w.worker_ready(2, 1, 201), vec![scale(1, 1)]);
        assert_eq!(w.worker_exited(1, 1, 101), vec![scale(2, 3)]);
        let effects = w.worker_ready(2, 2, 202);
        assert_eq!(effects[0], drain(1, GRACE));
    }

    #[test]
    fn a_worker_replaced_by_supervision_keeps_its_slot_ready_and_counts_no_restart() {
        let mut w = World::serving_with(settings());
        let report = Report::WorkerReplaced {
            ordinal: 1,
            old_pid: 101,
            new_pid: 201,
            reason: "age".into(),
            replacements: 1,
        };
        assert_eq!(w.on(Event::Report { generation: 1, report }), vec![]);
        let slot = &w.policy.generations()[0].workers[&1];
        assert_eq!((slot.pid, slot.ready, slot.restarts, slot.replaced), (201, true, 0, 1));
        // The old worker's exit, later, no longer matches the slot.
        w.worker_exited(1, 1, 101);
        assert_eq!(w.policy.generations()[0].workers[&1].pid, 201);
    }

    #[test]
    fn a_canary_replaced_as_unhealthy_during_its_soak_rolls_the_reload_back() {
        let mut w = World::serving_with(Settings { canary: Some(Duration::from_secs(3)), ..settings() });
        w.reload(1);
        w.worker_ready(2, 0, 200);
        let report = Report::WorkerReplaced {
            ordinal: 0,
            old_pid: 200,
            new_pid: 201,
            reason: "health".into(),
            replacements: 1,
        };
        let effects = w.on(Event::Report { generation: 2, report });
        let answer = &replies(&effects)[0];
        assert!(!answer.1 && answer.2.contains("went silent after WATCHDOG=1 during its soak"), "{answer:?}");
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Failed)]);
    }

    #[test]
    fn a_monitor_that_exits_on_its_own_while_generation_one_starts_is_replaced_too() {
        let mut w = World::new();
        w.on(Event::Boot);
        // A stray SIGTERM made it drain and exit 0, without GenerationFailed.
        w.exited(1, Ended::Exited(0));
        assert!(!w.policy.stopping());
        assert_eq!(w.later(BACKOFF_START), vec![Spawn { generation: 2, count: 2 }]);
    }

    #[test]
    fn monitors_lost_five_times_in_a_row_before_anything_served_end_main_with_status_one() {
        let mut w = World::new();
        w.on(Event::Boot);
        for generation in 1..MAX_LOST_MONITORS {
            w.exited(generation, killed());
            w.later(BACKOFF_CAP);
            assert!(!w.policy.stopping(), "gave up after {generation}");
        }
        let effects = w.exited(MAX_LOST_MONITORS, killed());
        assert_eq!(effects.last(), Some(&Exit(1)));
        assert!(w.policy.last_failure().unwrap().contains("5 times in a row"));
    }

    #[test]
    fn a_rolling_reload_whose_new_monitor_dies_midway_gives_the_old_generation_its_count_back() {
        let mut w =
            World::serving_with(Settings { count: 4, strategy: ReloadStrategy::Rolling(1), ..settings() });
        w.reload(1);
        assert_eq!(w.worker_ready(2, 0, 200), vec![scale(1, 3)]);
        let effects = w.exited(2, killed());
        assert!(effects.contains(&scale(1, 4)), "{effects:?}");
        assert!(!replies(&effects)[0].1);
        assert_eq!(w.policy.generations()[0].count, 4);
    }

    #[test]
    fn a_crash_loop_in_a_later_step_of_a_roll_fails_it_without_waiting_for_the_timeout() {
        let mut w =
            World::serving_with(Settings { count: 3, strategy: ReloadStrategy::Rolling(1), ..settings() });
        w.reload(1);
        w.worker_ready(2, 0, 200);
        w.worker_exited(1, 2, 102);
        // Step 2: slot 1 of the new build keeps crashing before it is ready.
        for attempt in 0..MAX_UNREADY_EXITS as i32 {
            let pid = 300 + attempt;
            w.on(Event::Report { generation: 2, report: Report::WorkerStarted { ordinal: 1, pid } });
            let effects = w.worker_exited(2, 1, pid);
            if attempt + 1 < MAX_UNREADY_EXITS as i32 {
                assert!(replies(&effects).is_empty(), "attempt {attempt}: {effects:?}");
            } else {
                assert!(effects.contains(&scale(1, 3)), "{effects:?}");
                let answer = &replies(&effects)[0];
                assert!(
                    !answer.1 && answer.2.contains("worker 1 exited 5 times before it was ready"),
                    "{answer:?}"
                );
            }
        }
    }

    #[test]
    fn a_scale_up_during_a_roll_never_grows_the_old_generation() {
        let mut w =
            World::serving_with(Settings { count: 3, strategy: ReloadStrategy::Rolling(1), ..settings() });
        w.reload(1);
        w.on(Event::Command { command: Command::Scale(5), from: None });
        // After the first new worker, 5 - 1 = 4 would be more than the old 3.
        let effects = w.worker_ready(2, 0, 200);
        assert!(!effects.contains(&scale(1, 4)), "{effects:?}");
        assert_eq!(w.policy.generations()[0].count, 3);
    }

    fn upgrade(w: &mut World, client: u64) -> Vec<Effect> {
        w.on(Event::Command { command: Command::Upgrade, from: Some(ClientId(client)) })
    }

    #[test]
    fn an_upgrade_checks_the_new_binary_then_execs_answering_every_request_that_joined_it() {
        let mut w = World::serving();
        assert_eq!(upgrade(&mut w, 1), vec![Systemd(Note::Reloading), Effect::CheckUpgrade]);
        assert_eq!(upgrade(&mut w, 2), vec![], "joins the upgrade under way");
        assert_eq!(w.policy.next_deadline(), Some(w.now + UPGRADE_CHECK_TIMEOUT));
        let effects = w.on(Event::UpgradeChecked(Ok(())));
        assert_eq!(effects, vec![Effect::Exec { answer: vec![ClientId(1), ClientId(2)] }]);
        assert_eq!(w.policy.next_deadline(), None);
    }

    #[test]
    fn an_upgrade_during_a_reload_waits_for_the_reload_s_outcome() {
        let mut w = World::serving();
        w.reload(1);
        assert_eq!(upgrade(&mut w, 2), vec![]);
        let effects = w.ready(2);
        assert_eq!(replies(&effects), vec![(1, true, String::new())]);
        assert!(effects.ends_with(&[Systemd(Note::Reloading), Effect::CheckUpgrade]), "{effects:?}");
        // A failed reload is an outcome too.
        let mut w = World::serving();
        w.reload(1);
        upgrade(&mut w, 2);
        let effects = w.failed(2, "crash");
        assert!(effects.ends_with(&[Effect::CheckUpgrade]), "{effects:?}");
    }

    #[test]
    fn a_failed_check_answers_every_requester_with_the_reason_and_tells_systemd_ready_again() {
        let mut w = World::serving();
        upgrade(&mut w, 1);
        upgrade(&mut w, 2);
        let effects = w.on(Event::UpgradeChecked(Err("it exited with status 1".into())));
        assert_eq!(
            replies(&effects),
            vec![(1, false, "it exited with status 1".into()), (2, false, "it exited with status 1".into())]
        );
        assert_eq!(effects[0], Systemd(Note::Ready("upgrade failed: it exited with status 1".into())));
        // The next request starts a new upgrade.
        assert_eq!(upgrade(&mut w, 3), vec![Systemd(Note::Reloading), Effect::CheckUpgrade]);
    }

    #[test]
    fn a_check_that_does_not_finish_in_time_is_killed_and_fails_the_upgrade() {
        let mut w = World::serving();
        upgrade(&mut w, 1);
        let effects = w.later(UPGRADE_CHECK_TIMEOUT);
        assert_eq!(effects[0], Effect::AbortUpgradeCheck);
        let answer = &replies(&effects)[0];
        assert!(!answer.1 && answer.2.contains("did not finish its check within 5.0s"), "{answer:?}");
        assert_eq!(w.on(Event::UpgradeChecked(Ok(()))), vec![], "a late answer changes nothing");
    }

    #[test]
    fn a_stop_cancels_an_upgrade_and_an_upgrade_while_stopping_is_refused() {
        let mut w = World::serving();
        upgrade(&mut w, 1);
        let effects = w.on(Event::Command { command: Command::Stop, from: None });
        assert!(effects.contains(&Effect::AbortUpgradeCheck));
        assert_eq!(replies(&effects), vec![(1, false, "upgrade cancelled: panzer is stopping".into())]);
        assert_eq!(replies(&upgrade(&mut w, 2)), vec![(2, false, "panzer is stopping".into())]);
        assert_eq!(w.on(Event::UpgradeChecked(Ok(()))), vec![]);
    }

    #[test]
    fn an_exec_that_fails_answers_its_requesters_and_the_old_image_goes_on() {
        let mut w = World::serving();
        upgrade(&mut w, 1);
        w.on(Event::UpgradeChecked(Ok(())));
        let reason = "cannot execute /x: permission denied".to_string();
        let effects = w.on(Event::UpgradeFailed { clients: vec![ClientId(1)], reason: reason.clone() });
        assert_eq!(replies(&effects), vec![(1, false, reason)]);
        assert_eq!(w.states(), vec![(1, State::Ready)]);
    }

    #[test]
    fn the_saved_policy_restores_generations_counts_tickets_and_deadlines_in_the_next_image() {
        let mut w = World::serving();
        w.on(Event::Command { command: Command::Scale(5), from: None });
        w.reload(7);
        w.reload(8);
        let saved = w.policy.save();
        let anchor = w.now;
        let text = clock::with_anchor(anchor, || serde_json::to_string(&saved)).unwrap();
        // The next image reads it a second later, by its own clock.
        let later = anchor + Duration::from_secs(1);
        let saved: Saved = clock::with_anchor(later, || serde_json::from_str(&text)).unwrap();
        let mut next = World { policy: Policy::restore(settings(), saved), now: later };
        assert_eq!(next.policy.count(), 5);
        assert_eq!(next.states(), vec![(1, State::Ready), (2, State::Starting)]);
        assert_eq!(next.policy.next_deadline(), Some(later + PROGRESS_EVERY));
        let effects = next.ready(2);
        assert_eq!(replies(&effects), vec![(7, true, String::new())], "the held ticket is answered");
        assert_eq!(spawns(&effects), vec![3], "the queued reload runs");
    }

    #[test]
    fn a_resumed_image_answers_the_requesters_with_its_pid_and_version_and_reloads_stale_monitors() {
        let mut w = World::serving();
        let resumed =
            |stale| Event::Resumed { clients: vec![ClientId(4)], pid: 42, version: "0.2.0".into(), stale };
        let effects = w.on(resumed(vec![]));
        let reply = Reply { pid: Some(42), version: Some("0.2.0".into()), ..Reply::ok() };
        assert_eq!(
            effects,
            vec![
                Effect::Reply { to: ClientId(4), reply },
                Systemd(Note::Ready("upgraded to panzer 0.2.0".into()))
            ]
        );
        let effects = w.on(resumed(vec![1]));
        assert_eq!(spawns(&effects), vec![2], "generation 1 speaks another protocol: a hot restart");
    }

    fn lame_duck() -> World {
        World::serving_with(Settings { stop_delay: Duration::from_secs(2), ..settings() })
    }

    fn stop(w: &mut World) -> Vec<Effect> {
        w.on(Event::Command { command: Command::Stop, from: None })
    }

    #[test]
    fn a_stop_delay_says_stopping_at_once_serves_through_it_then_stops_listening_before_it_drains() {
        let mut w = lame_duck();
        assert_eq!(stop(&mut w), vec![Systemd(Note::Stopping)]);
        assert!(w.policy.stopping() && w.policy.in_stop_delay());
        let readiness = w.policy.readiness();
        assert_eq!((readiness.ready, readiness.line.as_str()), (false, "stopping"), "probes see it at once");
        assert_eq!(w.states(), vec![(1, State::Ready)], "it serves through the delay");
        assert_eq!(w.policy.next_deadline(), Some(w.now + Duration::from_secs(2)));
        assert_eq!(w.later(Duration::from_millis(1999)), vec![]);
        let effects = w.later(Duration::from_millis(1));
        assert_eq!(effects, vec![Effect::Unlisten, drain(1, GRACE)], "the backlog shut before the drain");
        assert!(!w.policy.in_stop_delay());
        assert_eq!(w.acted(1), vec![]);
        assert_eq!(
            w.policy.next_deadline(),
            Some(w.now + GRACE + DRAIN_BACKSTOP),
            "the grace counts from here"
        );
        assert_eq!(w.exited(1, Ended::Exited(0)).last(), Some(&Exit(0)));
    }

    #[test]
    fn a_second_stop_during_the_delay_skips_it_and_a_stop_now_kills_at_once() {
        let mut w = lame_duck();
        stop(&mut w);
        w.later(Duration::from_millis(500));
        assert_eq!(stop(&mut w), vec![Effect::Unlisten, drain(1, GRACE)]);
        assert_eq!(stop(&mut w), vec![], "draining already");
        let mut w = lame_duck();
        stop(&mut w);
        let effects = w.on(Event::Command { command: Command::StopNow, from: None });
        assert_eq!(effects[0], Effect::Unlisten);
        assert!(effects.contains(&KillGroup(1)) && effects.contains(&KillOrphans));
        assert!(!w.policy.in_stop_delay());
        let effects = w.on(Event::Command { command: Command::StopNow, from: None });
        assert!(!effects.contains(&Effect::Unlisten), "once is enough");
    }

    #[test]
    fn a_reload_an_upgrade_or_a_scale_during_the_stop_delay_is_refused_as_stopping() {
        let mut w = lame_duck();
        stop(&mut w);
        assert_eq!(replies(&w.reload(3)), vec![(3, false, "panzer is stopping".into())]);
        assert_eq!(replies(&upgrade(&mut w, 4)), vec![(4, false, "panzer is stopping".into())]);
        let effects = w.on(Event::Command { command: Command::Scale(5), from: Some(ClientId(5)) });
        assert_eq!(effects.len(), 1, "nothing but the answer: {effects:?}");
        assert_eq!(w.policy.count(), 2);
        assert_eq!(w.states(), vec![(1, State::Ready)]);
    }

    #[test]
    fn a_reload_under_way_when_the_delay_starts_is_cancelled_and_the_old_generation_serves_through_it() {
        let mut w = lame_duck();
        w.reload(1);
        w.reload(2);
        let effects = stop(&mut w);
        assert!(effects.contains(&drain(2, GRACE)) && !effects.contains(&drain(1, GRACE)));
        assert_eq!(w.acted(2), vec![]);
        let answers = replies(&effects);
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|(_, ok, e)| !ok && e == "reload cancelled: panzer is stopping"));
        assert_eq!(w.states(), vec![(1, State::Ready), (2, State::Draining)]);
        assert_eq!(w.ready(2), vec![], "too late to take over");
        assert_eq!(w.later(Duration::from_secs(2)), vec![Effect::Unlisten, drain(1, GRACE)]);
    }

    #[test]
    fn the_delay_ends_as_soon_as_nothing_serves_and_is_not_taken_when_nothing_did() {
        let mut w = lame_duck();
        stop(&mut w);
        let effects = w.exited(1, killed());
        assert!(effects.contains(&Effect::Unlisten), "{effects:?}");
        assert_eq!(effects.last(), Some(&Exit(0)));
        let mut w = World::with(Settings { stop_delay: Duration::from_secs(2), ..settings() });
        w.on(Event::Boot);
        let effects = stop(&mut w);
        assert_eq!(effects, vec![Systemd(Note::Stopping), Effect::Unlisten, drain(1, GRACE)]);
    }

    #[test]
    fn without_a_stop_delay_a_stop_stops_listening_then_drains_at_once_and_a_reload_never_stops_listening() {
        let mut w = World::serving();
        let effects = w.reload(1);
        let effects: Vec<Effect> = effects.into_iter().chain(w.ready(2)).collect();
        assert!(!effects.contains(&Effect::Unlisten));
        assert_eq!(stop(&mut w), vec![Systemd(Note::Stopping), Effect::Unlisten, drain(2, GRACE)]);
    }
}
