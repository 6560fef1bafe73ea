//! Generations and their workers, as main sees them: how a generation
//! starts (at once, or after the replacement backoff), what its monitor's
//! reports change, when it serves and the one before it drains, when it
//! has failed and what follows (the reload's answer, another try, or
//! giving up), and what a monitor that exits leaves behind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::clock;
use super::roll::{Phase, Roll};
use super::stop::Stop;
use super::{millis, Effect, Note, Policy, Say};
use crate::control::server::ClientId;
use crate::control::Reply;
use crate::error::Error;
use crate::protocol::{self, Order, Report, FAILED_GRACE, MAX_UNREADY_EXITS};
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
pub(super) enum Cause {
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
    pub(super) cause: Cause,
    /// Workers it was started with (slots 0…count-1).
    pub(super) count: u32,
    #[serde(with = "clock")]
    pub(super) started: Instant,
    #[serde(with = "clock::option")]
    pub(super) startup_deadline: Option<Instant>,
    /// When main kills the whole group: the grace's end plus
    /// [`DRAIN_BACKSTOP`] while the monitor is in charge of its drain; the
    /// grace's end once main has taken it over.
    #[serde(with = "clock::option")]
    pub(super) kill_deadline: Option<Instant>,
    #[serde(with = "clock::option")]
    pub(super) next_progress: Option<Instant>,
    /// Once told to drain: when the grace ends and what is left gets
    /// `SIGKILL` (`kill_in_ms` in `status`).
    #[serde(default, with = "clock::option")]
    pub(super) grace_ends: Option<Instant>,
    /// Told to drain, and its monitor has not said yet that it has
    /// signalled its workers: then main takes the drain over.
    #[serde(default, with = "clock::option")]
    pub(super) act_deadline: Option<Instant>,
    /// Its monitor says when it has acted on a drain
    /// ([`Report::Draining`]): every monitor this image starts does; one
    /// a previous image started may not (protocol 1).
    #[serde(default)]
    pub(super) reports_draining: bool,
    /// Its monitor has said it has signalled its workers.
    #[serde(default)]
    pub(super) drain_signalled: bool,
    /// Set while a staged reload (rolling, canary) is under way.
    pub(super) roll: Option<Roll>,
    pub workers: BTreeMap<u32, WorkerView>,
}

impl Generation {
    /// The slots it runs now (0…count-1); a worker on a slot above has been
    /// told to drain.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub(super) fn ready_workers(&self) -> u32 {
        self.workers.values().filter(|w| w.ready && w.pid != 0).count() as u32
    }

    pub(super) fn alive_workers(&self) -> u32 {
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

impl Policy {
    /// A new generation: spawned now, or after the replacement backoff.
    pub(super) fn start(&mut self, now: Instant, cause: Cause, out: &mut Vec<Effect>) {
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
            let delay = protocol::backoff(self.state.replacement_failures);
            out.warn(format!("starting generation {number} in {}", format_duration(delay))).about(number);
            State::Delayed(now + delay)
        } else {
            State::Starting
        };
        if matches!(cause, Cause::Reload(_)) {
            self.reload_started(number);
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

    pub(super) fn spawn(&mut self, now: Instant, number: u32, out: &mut Vec<Effect>) {
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

    /// `SIGUSR1`, `SIGHUP` or a control request. Requests during a reload
    /// coalesce into one more after it.
    pub(super) fn reload(&mut self, now: Instant, from: Option<ClientId>, out: &mut Vec<Effect>) {
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

    /// A new count for every live generation; refused (as `--count` would
    /// be) when it is 0 or past what the limits let a generation run.
    pub(super) fn scale(&mut self, count: u32, out: &mut Vec<Effect>) -> Result<u32, Error> {
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
    pub(super) fn drain(
        &mut self,
        now: Instant,
        number: u32,
        state: State,
        grace: Duration,
        out: &mut Vec<Effect>,
    ) {
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
    pub(super) fn take_over_drains(&mut self, now: Instant, out: &mut Vec<Effect>) {
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
            ))
            .about(g.number);
            out.push(Effect::DrainGroup(g.number));
        }
    }

    pub(super) fn report(&mut self, now: Instant, number: u32, report: Report, out: &mut Vec<Effect>) {
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
                    out.info(format!("generation {number}: {workers}/{workers} workers of this step ready in {elapsed_ms} ms{how}")).about(number);
                } else {
                    out.info(format!(
                        "generation {number} ready: {workers}/{workers} workers in {elapsed_ms} ms{how}"
                    ))
                    .about(number);
                    self.ready(now, number, workers, out);
                }
            }
            Report::GenerationFailed { reason } => self.failed(now, number, &reason, out),
            // main itself listens for it (library mode): nothing to decide.
            Report::Hello => {}
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
    pub(super) fn ready(&mut self, now: Instant, number: u32, workers: u32, out: &mut Vec<Effect>) {
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
            self.reload_outcome(number, true, out);
            out.info(format!("reload done: generation {number} serves")).about(number);
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
        self.start_queued(now, out);
    }

    /// Starts the reload queued behind the one that just had its outcome,
    /// if any (after main re-reads the file for it, when it must); whether
    /// there was one.
    fn start_queued(&mut self, now: Instant, out: &mut Vec<Effect>) -> bool {
        let Some(clients) = self.state.queued_reload.take() else { return false };
        if std::mem::take(&mut self.reread_queued) {
            out.push(Effect::Reread { clients });
        } else {
            self.start(now, Cause::Reload(clients), out);
        }
        true
    }

    /// main has re-read the file for the queued reload of `clients`.
    pub(super) fn reread(
        &mut self,
        now: Instant,
        clients: Vec<ClientId>,
        refused: Option<String>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(reason) = refused {
            self.reload_refused(&reason);
            for to in clients {
                out.push(Effect::Reply { to, reply: Reply::error(reason.clone()) });
            }
            if self.state.stopping.is_none() && !self.any(|s| s != State::Draining && s != State::Failed) {
                self.start(now, Cause::Replacement, out);
            }
            return;
        }
        if self.state.stopping.is_some() {
            for to in clients {
                out.push(Effect::Reply { to, reply: Reply::error("panzer is stopping") });
            }
            return;
        }
        self.start(now, Cause::Reload(clients), out);
    }

    /// `number` cannot become ready (startup timeout, workers crashing, its
    /// monitor could not start): it drains, whatever serves keeps serving.
    pub(super) fn failed(&mut self, now: Instant, number: u32, reason: &str, out: &mut Vec<Effect>) {
        if self.state_of(number) != Some(State::Starting) {
            return;
        }
        out.error(format!("generation {number} failed: {reason}")).about(number);
        self.state.last_failure = Some(reason.to_string());
        self.reload_outcome(number, false, out);
        self.restore_old(number, out);
        let grace = self.settings.graceful_timeout.min(FAILED_GRACE);
        self.drain(now, number, State::Failed, grace, out);
        let started = self.find(number).map(|g| g.started);
        let cause = self.find(number).map(|g| std::mem::replace(&mut g.cause, Cause::Replacement));
        self.after_failure(now, cause, started, reason, out);
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
        if !self.start_queued(now, out)
            && serving.is_none()
            && !self.any(|s| matches!(s, State::Starting | State::Delayed(_)))
        {
            self.start(now, Cause::Replacement, out);
        }
    }

    pub(super) fn monitor_exited(&mut self, now: Instant, number: u32, ended: Ended, out: &mut Vec<Effect>) {
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
                out.error(format!("the monitor of generation {number} {ended} before it was ready"))
                    .about(number);
                self.reload_outcome(number, false, out);
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
                    out.warn(format!("the monitor of generation {number} {ended} while stopping"))
                        .about(number);
                } else {
                    out.error(format!("the monitor of generation {number} {ended}; its workers drain while a new generation starts")).about(number);
                    if !self.any(|s| matches!(s, State::Starting | State::Ready | State::Delayed(_))) {
                        self.start(now, Cause::Replacement, out);
                    }
                }
            }
            State::Draining | State::Failed => {
                if drained {
                    out.info(format!("generation {number} stopped")).about(number);
                } else {
                    out.warn(format!("the monitor of generation {number} {ended} while stopping"))
                        .about(number);
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
                    out.error(format!("generation {} never became ready: {reason}", self.state.last))
                        .about(self.state.last);
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
}

/// `generation 3 starting: 3/4 ready after 10 s; worker 2 not ready`.
pub(super) fn progress(g: &Generation, now: Instant) -> String {
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
