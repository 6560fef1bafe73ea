//! main's policy as one pure state machine: [`Event`]s in, [`Effect`]s out.
//!
//! Everything main decides lives here: which generation starts, serves,
//! drains or has failed; the startup, drain and stop deadlines; the backoff
//! before a replacement generation; the reload tickets that carry each
//! reload request to its one answer; stop escalation. The loop in
//! [`super`] turns signals, control requests, monitor reports, monitor exits
//! and the clock into events, and performs the effects (spawn, order, kill a
//! group, reply, notify systemd, exit, and write a log line: the policy
//! logs nothing itself). No processes, no syscalls, and the time is passed
//! in, so every race is a unit test (in `tests/`, by area).
//!
//! An upgrade of panzer itself goes through here too: it waits for a
//! reload under way, coalesces requests, bounds the new binary's check,
//! and its state ([`Saved`]) is what the next image of main carries on with.
//!
//! This file holds what goes in and out, the policy's state and the turn
//! ([`Policy::handle`]) that routes an event to the room it concerns:
//! - `generations`: generations and their workers, from start to failure,
//!   drain or loss, and what follows each;
//! - `roll`: the staged reload (`rolling:K`, `--canary`);
//! - `upgrade`: the upgrade of panzer itself;
//! - `stop`: graceful and immediate stops, `--stop-delay`;
//! - [`clock`]: how the state's `Instant`s cross an upgrade.

pub(crate) mod clock;
mod generations;
mod roll;
mod stop;
mod upgrade;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::control::server::ClientId;
use crate::control::{Command, ReloadStats, Reply};
use crate::protocol::{Order, Report};
use crate::units::{format_duration, ReloadStrategy};
use generations::{progress, Cause, DRAIN_BACKSTOP, PROGRESS_EVERY};
pub use generations::{Ended, Generation, State, WorkerView};
use roll::{Phase, Roll};
use stop::Stop;
use upgrade::Upgrade;
pub use upgrade::UPGRADE_CHECK_TIMEOUT;

/// The target main's log records the policy's lines under: this module's
/// path, as when the policy logged them itself (a `RUST_LOG` filter names it).
pub const LOG_TARGET: &str = module_path!();

/// How the policy says what main logs: a line at a level, queued as an
/// [`Effect::Log`] with the rest of its effects (the loop writes it).
/// `.about(number)` names the generation the line is about (a field of its
/// own in JSON logs).
trait Say {
    fn info(&mut self, line: impl Into<String>) -> About<'_>;
    fn warn(&mut self, line: impl Into<String>) -> About<'_>;
    fn error(&mut self, line: impl Into<String>) -> About<'_>;
}

/// The line just said, to name its generation.
struct About<'a>(&'a mut Effect);

impl About<'_> {
    fn about(self, number: u32) {
        if let Effect::Log { generation, .. } = self.0 {
            *generation = Some(number);
        }
    }
}

fn say(out: &mut Vec<Effect>, level: log::Level, line: String) -> About<'_> {
    out.push(Effect::Log { level, line, generation: None });
    About(out.last_mut().expect("just pushed"))
}

impl Say for Vec<Effect> {
    fn info(&mut self, line: impl Into<String>) -> About<'_> {
        say(self, log::Level::Info, line.into())
    }

    fn warn(&mut self, line: impl Into<String>) -> About<'_> {
        say(self, log::Level::Warn, line.into())
    }

    fn error(&mut self, line: impl Into<String>) -> About<'_> {
        say(self, log::Level::Error, line.into())
    }
}

/// The settings the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Workers per generation at start (`--count`); then the state's, which
    /// `scale` changes ([`Policy::count`]).
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
    /// main re-read the configuration file for the reload queued for
    /// `clients` ([`Effect::Reread`]): start it, or, when the file did not
    /// read (`refused`), answer them why.
    Reread { clients: Vec<ClientId>, refused: Option<String> },
}

/// Something the loop must do.
// A reply carries a whole status; effects live for one turn of the loop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write `line` to main's log at `level` (as the policy's own, target
    /// [`LOG_TARGET`]); `generation`: the one it is about, if one.
    Log { level: log::Level, line: String, generation: Option<u32> },
    /// Spawn the monitor of `generation` with `count` workers.
    Spawn { generation: u32, count: u32 },
    /// The reload queued for `clients` may start: re-read the
    /// configuration file first, then say [`Event::Reread`].
    Reread { clients: Vec<ClientId> },
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
    /// The reload that followed a re-read configuration file has its
    /// outcome: its settings stay (`kept`), or, as its generation failed,
    /// the ones before it are in force again and main's configuration goes
    /// back to what it was too.
    Reconfigured { kept: bool },
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
    /// What was in force before a re-read configuration file, until the
    /// reload it led to has an outcome. Not handed over: an upgrade waits
    /// for a reload in progress.
    rollback: Option<Rollback>,
    /// The queued reload re-reads the configuration file when it starts
    /// ([`Policy::reread_when_queued_starts`]). Not handed over either.
    reread_queued: bool,
}

/// The settings and count a failed reload puts back.
#[derive(Debug, Clone, Copy)]
struct Rollback {
    settings: Settings,
    count: u32,
    /// The generation the reload started, once it started.
    generation: Option<u32>,
}

/// The policy's state: all of it but the settings, which come from the
/// command line again (the count excepted, which `scale` may have changed),
/// and the upgrade under way. It is what the policy hands to the next image
/// of main on an upgrade, as is. An image reads the state an older one
/// wrote (see the hand-over's `FORMAT`): a field added takes a default.
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
        Policy { settings, state, upgrade: None, rollback: None, reread_queued: false }
    }

    /// The state the next image of main carries on with.
    pub fn save(&self) -> Saved {
        self.state.clone()
    }

    /// The policy a previous image saved, with this image's settings (its
    /// count is the saved one).
    pub fn restore(settings: Settings, saved: Saved) -> Policy {
        Policy { settings, state: saved, upgrade: None, rollback: None, reread_queued: false }
    }

    /// Settings from a re-read configuration file, for what starts from
    /// now on; `count`, when the file changed it, becomes the count the next
    /// generation starts with (the live ones keep theirs until replaced).
    /// Until that reload has an outcome, what was in force before is kept:
    /// a generation that fails puts it back ([`Effect::Reconfigured`]).
    pub fn reconfigure(&mut self, settings: Settings, count: Option<u32>) {
        // A second re-read before the first reload's outcome: the settings
        // to go back to are still the last good ones.
        if self.rollback.is_none() {
            self.rollback =
                Some(Rollback { settings: self.settings, count: self.state.count, generation: None });
        }
        if let Some(count) = count {
            self.state.count = count;
        }
        self.settings = settings;
    }

    /// A reload is asked for while one is under way: it is queued, and the
    /// configuration file is read for it only when it starts
    /// ([`Effect::Reread`]), so that nothing of it reaches the reload under
    /// way, and a failure of either puts back what was in force before it.
    pub fn reread_when_queued_starts(&mut self) {
        self.reread_queued = true;
    }

    /// The reload generation `number` starts: the one a pending rollback
    /// waits on, if it waits on none yet.
    pub(super) fn reload_started(&mut self, number: u32) {
        if let Some(rollback) = self.rollback.as_mut().filter(|r| r.generation.is_none()) {
            rollback.generation = Some(number);
        }
    }

    /// Generation `number` is ready, or failed: the outcome of the reload
    /// a rollback waits on, if it is that generation's.
    pub(super) fn reload_outcome(&mut self, number: u32, ready: bool, out: &mut Vec<Effect>) {
        let Some(rollback) = self.rollback.filter(|r| r.generation == Some(number)) else { return };
        self.rollback = None;
        if !ready {
            self.settings = rollback.settings;
            self.state.count = rollback.count;
            out.warn(
                "the configuration file's changes are undone: the settings before them are in force again",
            )
            .about(number);
        }
        out.push(Effect::Reconfigured { kept: ready });
    }

    /// A reload refused before it started (its configuration file does not
    /// read): counted as a failed reload.
    pub fn reload_refused(&mut self, reason: &str) {
        self.state.reloads.failed += 1;
        self.state.reloads.last_error = Some(reason.to_string());
    }

    /// Workers per generation now.
    pub fn count(&self) -> u32 {
        self.state.count
    }

    /// The count one `SIGTTIN` (`delta` 1) or `SIGTTOU` (-1) asks for: never
    /// below 1 (the ceiling is [`Policy::scale`]'s to check).
    pub fn count_by(&self, delta: i32) -> u32 {
        self.state.count.saturating_add_signed(delta).max(1)
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
            Event::Reread { clients, refused } => self.reread(now, clients, refused, &mut out),
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

    /// A signal's or a control client's command, to the room that carries it out.
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
                if let Err(e) = self.scale(self.count_by(delta), out) {
                    out.warn(e.to_string());
                }
            }
        }
    }

    /// Every deadline that is due: drains to take over, kills, replacement
    /// backoffs and startup timeouts that end, progress lines, the upgrade
    /// check's bound, the stop delay's end and the stop's escalation.
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
                out.warn(format!("generation {number} did not stop in time: killing its process group"))
                    .about(number);
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

    fn find(&mut self, number: u32) -> Option<&mut Generation> {
        self.state.generations.iter_mut().find(|g| g.number == number)
    }

    fn state_of(&self, number: u32) -> Option<State> {
        self.state.generations.iter().find(|g| g.number == number).map(|g| g.state)
    }

    fn any(&self, f: impl Fn(State) -> bool) -> bool {
        self.state.generations.iter().any(|g| f(g.state))
    }

    fn remove(&mut self, number: u32) {
        self.state.generations.retain(|g| g.number != number);
    }
}

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests;
