//! The monitor's worker slots: a pure state machine.
//!
//! A slot is an ordinal 0…N-1 that always wants one worker. The monitor loop
//! reports what happened (started, ready, exited, `WATCHDOG=1`) with the
//! current time and asks what is due (starts, readiness by timer,
//! replacements, kills); the pool decides restarts, backoff, replacements
//! and when the generation has failed. No processes, no clock.
//!
//! A replacement (`--health-timeout`, `--max-rss`, `--max-age`) is
//! surge-first: the slot gets a successor while its worker keeps serving;
//! only once the successor is ready does the old worker retire (the loop
//! sends it the drain signal), so a slot never has fewer ready workers than
//! before. Workers that retire (replaced, or scaled away) stay in the pool
//! until they exit, so it knows when a replacement is over.

use std::time::{Duration, Instant};

use crate::protocol::{self, MAX_UNREADY_EXITS};
use crate::units::ReadyMode;

/// A worker that stayed up this long resets its slot's backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What the monitor is told to check its workers against (all off by
/// default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--health-timeout`: longest silence after a `WATCHDOG=1`.
    pub health_timeout: Option<Duration>,
    /// `--max-age`: how long a worker runs before it is replaced (±10 %).
    pub max_age: Option<Duration>,
    /// `--startup-timeout`, for workers the pool times itself: every one
    /// but the first of each slot before the generation was ready (main
    /// times those, as the generation's start).
    pub startup_timeout: Option<Duration>,
    /// How long a worker told to stop may drain before `SIGKILL`.
    pub graceful: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            health_timeout: None,
            max_age: None,
            startup_timeout: None,
            graceful: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub pid: i32,
    pub started: Instant,
    pub ready: bool,
    /// When it last sent `WATCHDOG=1` (or a descendant did).
    pub last_watchdog: Option<Instant>,
    /// Told to stop (not ready in time): when it gets `SIGKILL`.
    kill_at: Option<Instant>,
    /// Whether the pool times its start (see [`Limits::startup_timeout`]).
    timed: bool,
    /// When `--max-age` is up for it.
    retire_at: Option<Instant>,
}

/// Why a worker is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Silent this long since its last `WATCHDOG=1`.
    Silent(Duration),
    /// Resident memory with its children, in bytes, above `limit`.
    Memory { bytes: u64, limit: u64 },
    /// It has run `age`, `--max-age` being `limit`.
    Age { age: Duration, limit: Duration },
}

impl Reason {
    /// One word for counters: `health`, `rss` or `age`.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Silent(_) => "health",
            Reason::Memory { .. } => "rss",
            Reason::Age { .. } => "age",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::{format_duration, format_size};
        match self {
            Reason::Silent(d) => write!(f, "silent for {} after WATCHDOG=1", format_duration(*d)),
            Reason::Memory { bytes, limit } => {
                write!(
                    f,
                    "uses {} with its children (--max-rss {})",
                    format_size(*bytes),
                    format_size(*limit)
                )
            }
            Reason::Age { age, limit } => {
                write!(f, "has run for {} (--max-age {})", format_duration(*age), format_duration(*limit))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub ordinal: u32,
    /// The worker serving this slot.
    pub worker: Option<Worker>,
    /// A replacement for `worker`, started but not ready yet.
    pub successor: Option<Worker>,
    /// Why `worker` is being replaced, while it is.
    pub replacing: Option<Reason>,
    /// Restarts of this slot since the generation started.
    pub restarts: u32,
    /// Workers of this slot replaced by a ready successor.
    pub replacements: u32,
    /// Consecutive quick exits.
    failures: u32,
    /// When the next worker (or successor) may start.
    start_at: Option<Instant>,
}

/// A worker on its way out: its slot was scaled away, or it was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retiring {
    pub ordinal: u32,
    pub pid: i32,
    /// Its successor, if it was replaced.
    pub replaced_by: Option<i32>,
    started: Instant,
    /// When it gets `SIGKILL`; `None` once it has.
    kill_at: Option<Instant>,
}

/// What the loop should do about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub ordinal: u32,
    pub uptime: Duration,
    /// `None`: the slot is not restarted (draining, scaled away, replaced,
    /// taken over, or failed).
    pub restart_in: Option<Duration>,
    /// The generation has failed: too many exits before ready.
    pub generation_failed: bool,
    pub role: Role,
}

/// Which of a slot's processes exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The slot's worker; `Some(pid)` when its successor, not ready yet,
    /// takes the slot over instead of a restart.
    Serving { successor: Option<i32> },
    /// A successor that was not ready yet; `restart_in` says when the
    /// replacement is tried again.
    Successor,
    /// A worker that was scaled away (`None`) or replaced by `Some(pid)`.
    Retired { replaced_by: Option<i32> },
}

/// A worker whose successor has become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub old_pid: i32,
    pub reason: Reason,
    /// Replacements of the slot so far, this one included.
    pub replacements: u32,
}

/// A replacement the pool has just decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub ordinal: u32,
    pub pid: i32,
    pub reason: Reason,
}

#[derive(Debug)]
pub struct Pool {
    slots: Vec<Slot>,
    retiring: Vec<Retiring>,
    ready_mode: ReadyMode,
    limits: Limits,
    /// Every slot has had a ready worker at once (reported once).
    generation_ready: bool,
    draining: bool,
}

impl Pool {
    pub fn new(count: u32, ready_mode: ReadyMode, now: Instant) -> Pool {
        let mut pool = Pool {
            slots: Vec::new(),
            retiring: Vec::new(),
            ready_mode,
            limits: Limits::default(),
            generation_ready: false,
            draining: false,
        };
        pool.scale(count, now);
        pool
    }

    pub fn with_limits(mut self, limits: Limits) -> Pool {
        self.limits = limits;
        self
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Slots whose next worker, or successor, is due now.
    pub fn due_starts(&self, now: Instant) -> Vec<u32> {
        if self.draining {
            return Vec::new();
        }
        self.slots
            .iter()
            .filter(|s| s.wants_start() && s.start_at.is_some_and(|at| at <= now))
            .map(|s| s.ordinal)
            .collect()
    }

    /// A process was started for slot `ordinal`: its worker, or the
    /// successor of a worker being replaced.
    pub fn started(&mut self, ordinal: u32, pid: i32, now: Instant) {
        let generation_ready = self.generation_ready;
        let limits = self.limits;
        let Some(slot) = self.slot_mut(ordinal) else { return };
        let timed = generation_ready || slot.restarts > 0 || slot.worker.is_some();
        let retire_at = limits.max_age.map(|age| now + jittered(age, pid));
        let worker =
            Worker { pid, started: now, ready: false, last_watchdog: None, kill_at: None, timed, retire_at };
        if slot.worker.is_some() && slot.replacing.is_some() {
            slot.successor = Some(worker);
        } else {
            slot.worker = Some(worker);
        }
        slot.start_at = None;
    }

    /// Whether `pid` is a successor, not ready yet.
    pub fn is_successor(&self, pid: i32) -> bool {
        self.slots.iter().any(|s| s.successor.as_ref().is_some_and(|w| w.pid == pid))
    }

    /// A start attempt failed before the worker ran (exec error): same as an
    /// immediate exit.
    pub fn start_failed(&mut self, ordinal: u32, now: Instant) -> Option<Exit> {
        self.started(ordinal, 0, now);
        self.exited(0, now)
    }

    /// Marks the worker `pid` ready. Returns its ordinal if it was not
    /// already, and, for a successor, the worker it replaces: that one is
    /// retiring from now on, and the loop sends it the drain signal.
    pub fn ready(&mut self, pid: i32, now: Instant) -> Option<(u32, Option<Replaced>)> {
        let graceful = self.limits.graceful;
        let slot = self.slots.iter_mut().find(|s| s.has(pid))?;
        let ordinal = slot.ordinal;
        if slot.successor.as_ref().is_some_and(|w| w.pid == pid) {
            let mut successor = slot.successor.take()?;
            successor.ready = true;
            let old = slot.worker.replace(successor)?;
            slot.replacements += 1;
            let reason = slot.replacing.take()?;
            self.retiring.push(Retiring {
                ordinal,
                pid: old.pid,
                replaced_by: Some(pid),
                started: old.started,
                kill_at: Some(now + graceful),
            });
            return Some((
                ordinal,
                Some(Replaced { old_pid: old.pid, reason, replacements: slot.replacements }),
            ));
        }
        let worker = slot.worker.as_mut()?;
        if worker.ready {
            return None;
        }
        worker.ready = true;
        Some((ordinal, None))
    }

    /// `pid`, or one of its descendants, sent `WATCHDOG=1`.
    pub fn watchdog(&mut self, pid: i32, now: Instant) {
        if let Some(w) = self.process_mut(pid) {
            w.last_watchdog = Some(now);
        }
    }

    /// Replacements due now: workers silent past `--health-timeout`, and
    /// one worker past `--max-age` when no replacement is under way (so
    /// that age never replaces two slots at once). The successors start
    /// through [`Pool::due_starts`].
    pub fn check(&mut self, now: Instant) -> Vec<Replacement> {
        let mut decided = Vec::new();
        if self.draining {
            return decided;
        }
        if let Some(timeout) = self.limits.health_timeout {
            for slot in &mut self.slots {
                let Some(w) = slot.worker.as_ref().filter(|w| w.ready && slot.replacing.is_none()) else {
                    continue;
                };
                let Some(silent) = w.last_watchdog.map(|at| now.saturating_duration_since(at)) else {
                    continue;
                };
                if silent > timeout {
                    let reason = Reason::Silent(silent);
                    decided.push(Replacement { ordinal: slot.ordinal, pid: w.pid, reason: reason.clone() });
                    slot.replace(reason, now);
                }
            }
        }
        if let (Some(limit), false) = (self.limits.max_age, self.replacing()) {
            let oldest = self
                .slots
                .iter_mut()
                .filter_map(|s| {
                    let w = s.worker.as_ref().filter(|w| w.ready)?;
                    let at = w.retire_at.filter(|at| *at <= now)?;
                    Some((at, s))
                })
                .min_by_key(|(at, _)| *at);
            if let Some((_, slot)) = oldest {
                let Some(w) = slot.worker.as_ref() else { return decided };
                let reason = Reason::Age { age: now.saturating_duration_since(w.started), limit };
                decided.push(Replacement { ordinal: slot.ordinal, pid: w.pid, reason: reason.clone() });
                slot.replace(reason, now);
            }
        }
        decided
    }

    /// Asks for the ready worker `pid` to be replaced (its memory, say,
    /// which the loop measures). False if it is not a ready worker, or is
    /// already being replaced.
    pub fn replace(&mut self, pid: i32, reason: Reason, now: Instant) -> bool {
        if self.draining {
            return false;
        }
        let Some(slot) = self.slots.iter_mut().find(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))
        else {
            return false;
        };
        if slot.replacing.is_some() || !slot.worker.as_ref().is_some_and(|w| w.ready) {
            return false;
        }
        slot.replace(reason, now);
        true
    }

    /// Whether a replacement is under way: a successor wanted or starting,
    /// or a replaced worker not gone yet.
    pub fn replacing(&self) -> bool {
        self.slots.iter().any(|s| s.replacing.is_some())
            || self.retiring.iter().any(|r| r.replaced_by.is_some())
    }

    /// Workers the pool times that are not ready within `--startup-timeout`:
    /// from now on they are stopping, and get `SIGKILL` after the graceful
    /// timeout. Returns `(ordinal, pid)`; the loop sends the drain signal.
    pub fn stalled(&mut self, now: Instant) -> Vec<(u32, i32)> {
        let (Some(timeout), false) = (self.limits.startup_timeout, self.draining) else { return Vec::new() };
        let graceful = self.limits.graceful;
        let mut stalled = Vec::new();
        for slot in &mut self.slots {
            let ordinal = slot.ordinal;
            for w in [slot.worker.as_mut(), slot.successor.as_mut()].into_iter().flatten() {
                if w.timed && !w.ready && w.kill_at.is_none() && w.started + timeout <= now {
                    w.kill_at = Some(now + graceful);
                    stalled.push((ordinal, w.pid));
                }
            }
        }
        stalled
    }

    /// Processes told to stop whose graceful timeout is over: the loop
    /// sends them `SIGKILL` (each is returned once).
    pub fn due_kills(&mut self, now: Instant) -> Vec<i32> {
        let mut due = Vec::new();
        let mut take = |pid: i32, kill_at: &mut Option<Instant>| {
            if kill_at.is_some_and(|at| at <= now) {
                // Killed: only its exit is left to wait for.
                *kill_at = Some(now + Duration::from_secs(3600));
                due.push(pid);
            }
        };
        for slot in &mut self.slots {
            for w in [slot.worker.as_mut(), slot.successor.as_mut()].into_iter().flatten() {
                take(w.pid, &mut w.kill_at);
            }
        }
        for r in &mut self.retiring {
            take(r.pid, &mut r.kill_at);
        }
        due
    }

    /// Workers whose readiness timer (`--ready DURATION`) has run out.
    pub fn due_ready(&self, now: Instant) -> Vec<i32> {
        let ReadyMode::After(after) = self.ready_mode else {
            return Vec::new();
        };
        self.workers().filter(|w| !w.ready && w.started + after <= now).map(|w| w.pid).collect()
    }

    /// True once, the first time every slot has a ready worker.
    pub fn take_generation_ready(&mut self) -> bool {
        if self.generation_ready || self.draining {
            return false;
        }
        let all =
            !self.slots.is_empty() && self.slots.iter().all(|s| s.worker.as_ref().is_some_and(|w| w.ready));
        self.generation_ready = all;
        all
    }

    /// The process `pid` exited. `None` if it is not one of ours.
    pub fn exited(&mut self, pid: i32, now: Instant) -> Option<Exit> {
        if let Some(index) = self.retiring.iter().position(|r| r.pid == pid) {
            let r = self.retiring.swap_remove(index);
            return Some(Exit {
                ordinal: r.ordinal,
                uptime: now.saturating_duration_since(r.started),
                restart_in: None,
                generation_failed: false,
                role: Role::Retired { replaced_by: r.replaced_by },
            });
        }
        let draining = self.draining;
        let generation_ready = self.generation_ready;
        let slot = self.slots.iter_mut().find(|s| s.has(pid))?;
        if slot.successor.as_ref().is_some_and(|w| w.pid == pid) {
            let successor = slot.successor.take()?;
            let uptime = now.saturating_duration_since(successor.started);
            let mut exit = Exit {
                ordinal: slot.ordinal,
                uptime,
                restart_in: None,
                generation_failed: false,
                role: Role::Successor,
            };
            if !draining && slot.replacing.is_some() {
                let delay = slot.backoff(uptime);
                slot.start_at = Some(now + delay);
                exit.restart_in = Some(delay);
            }
            return Some(exit);
        }
        let worker = slot.worker.take()?;
        let uptime = now.saturating_duration_since(worker.started);
        slot.replacing = None;
        let successor = slot.successor.take();
        let mut exit = Exit {
            ordinal: slot.ordinal,
            uptime,
            restart_in: None,
            generation_failed: false,
            role: Role::Serving { successor: successor.as_ref().map(|w| w.pid) },
        };
        if draining {
            slot.worker = successor;
            return Some(exit);
        }
        let delay = slot.backoff(uptime);
        if let Some(successor) = successor {
            // The replacement takes the slot over: nothing to restart.
            slot.worker = Some(successor);
            slot.restarts += 1;
            return Some(exit);
        }
        if !generation_ready && !worker.ready && slot.failures >= MAX_UNREADY_EXITS {
            exit.generation_failed = true;
            return Some(exit);
        }
        slot.restarts += 1;
        slot.start_at = Some(now + delay);
        exit.restart_in = Some(delay);
        Some(exit)
    }

    /// Sets the number of slots. Returns `(ordinal, pid)` of the processes
    /// of removed slots (highest ordinals first), which the loop should stop;
    /// they are retiring from now on.
    pub fn scale(&mut self, count: u32, now: Instant) -> Vec<(u32, i32)> {
        let mut removed = Vec::new();
        while self.slots.len() as u32 > count {
            let Some(slot) = self.slots.pop() else { break };
            for w in [slot.worker, slot.successor].into_iter().flatten() {
                removed.push((slot.ordinal, w.pid));
                self.retiring.push(Retiring {
                    ordinal: slot.ordinal,
                    pid: w.pid,
                    replaced_by: None,
                    started: w.started,
                    kill_at: Some(now + self.limits.graceful),
                });
            }
        }
        while (self.slots.len() as u32) < count {
            let ordinal = self.slots.len() as u32;
            self.slots.push(Slot {
                ordinal,
                worker: None,
                successor: None,
                replacing: None,
                restarts: 0,
                replacements: 0,
                failures: 0,
                start_at: Some(now),
            });
        }
        removed
    }

    /// Stops all restarts and replacements; pending starts are dropped.
    pub fn drain(&mut self) {
        self.draining = true;
        for slot in &mut self.slots {
            slot.start_at = None;
            slot.replacing = None;
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Every process of the slots: workers and successors.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.slots.iter().flat_map(|s| s.worker.iter().chain(s.successor.iter()))
    }

    /// Workers on their way out (scaled away or replaced).
    pub fn retiring(&self) -> &[Retiring] {
        &self.retiring
    }

    /// No process left at all.
    pub fn is_empty(&self) -> bool {
        self.workers().next().is_none() && self.retiring.is_empty()
    }

    /// The slot of `pid`: a worker, a successor, or retiring.
    pub fn ordinal_of(&self, pid: i32) -> Option<u32> {
        let slot = self.slots.iter().find(|s| s.has(pid)).map(|s| s.ordinal);
        slot.or_else(|| self.retiring.iter().find(|r| r.pid == pid).map(|r| r.ordinal))
    }

    /// The earliest moment something is due: a start, a readiness timer,
    /// a silence or age limit, a startup timeout, a `SIGKILL`.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut at: Vec<Instant> = Vec::new();
        let kills =
            self.workers().filter_map(|w| w.kill_at).chain(self.retiring.iter().filter_map(|r| r.kill_at));
        at.extend(kills);
        if let ReadyMode::After(after) = self.ready_mode {
            at.extend(self.workers().filter(|w| !w.ready).map(|w| w.started + after));
        }
        if !self.draining {
            at.extend(self.slots.iter().filter(|s| s.wants_start()).filter_map(|s| s.start_at));
            let serving =
                || self.slots.iter().filter(|s| s.replacing.is_none()).filter_map(|s| s.worker.as_ref());
            if let Some(timeout) = self.limits.health_timeout {
                at.extend(serving().filter(|w| w.ready).filter_map(|w| w.last_watchdog).map(|t| t + timeout));
            }
            if !self.replacing() {
                at.extend(serving().filter(|w| w.ready).filter_map(|w| w.retire_at));
            }
            if let Some(timeout) = self.limits.startup_timeout {
                let timed = self.workers().filter(|w| w.timed && !w.ready && w.kill_at.is_none());
                at.extend(timed.map(|w| w.started + timeout));
            }
        }
        at.into_iter().min()
    }

    fn slot_mut(&mut self, ordinal: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.ordinal == ordinal)
    }

    fn process_mut(&mut self, pid: i32) -> Option<&mut Worker> {
        self.slots
            .iter_mut()
            .flat_map(|s| s.worker.iter_mut().chain(s.successor.iter_mut()))
            .find(|w| w.pid == pid)
    }
}

impl Slot {
    fn has(&self, pid: i32) -> bool {
        self.worker.iter().chain(self.successor.iter()).any(|w| w.pid == pid)
    }

    /// Needs a process started: it has no worker, or a successor is wanted.
    fn wants_start(&self) -> bool {
        self.worker.is_none() || (self.replacing.is_some() && self.successor.is_none())
    }

    fn replace(&mut self, reason: Reason, now: Instant) {
        self.replacing = Some(reason);
        self.start_at = Some(now);
    }

    /// The delay before the next start after a process that ran `uptime`.
    fn backoff(&mut self, uptime: Duration) -> Duration {
        if uptime >= HEALTHY_AFTER {
            self.failures = 0;
            return Duration::ZERO;
        }
        self.failures += 1;
        protocol::backoff(self.failures)
    }
}

/// `age` ±10 %, the same every time for the same pid: workers started
/// together do not all retire at once.
fn jittered(age: Duration, pid: i32) -> Duration {
    let spread = (pid as u64).wrapping_mul(2_654_435_761) % 1001;
    age.mul_f64(0.9 + 0.2 * spread as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BACKOFF_CAP, BACKOFF_START};

    const MS: Duration = Duration::from_millis(1);

    fn pool(count: u32) -> (Pool, Instant) {
        let now = Instant::now();
        (Pool::new(count, ReadyMode::After(100 * MS), now), now)
    }

    #[test]
    fn every_slot_starts_at_once_and_becomes_ready_by_timer() {
        let (mut p, t0) = pool(2);
        assert_eq!(p.due_starts(t0), vec![0, 1]);
        p.started(0, 10, t0);
        p.started(1, 11, t0);
        assert_eq!(p.next_deadline(), Some(t0 + 100 * MS));
        assert!(p.due_ready(t0 + 99 * MS).is_empty());
        assert_eq!(p.due_ready(t0 + 100 * MS), vec![10, 11]);
        assert_eq!(p.ready(10, t0), Some((0, None)));
        assert!(!p.take_generation_ready());
        assert_eq!(p.ready(11, t0), Some((1, None)));
        assert!(p.take_generation_ready());
        assert!(!p.take_generation_ready(), "reported once");
    }

    #[test]
    fn quick_exits_back_off_exponentially_up_to_the_cap() {
        let (mut p, mut now) = pool(1);
        p.ready_mode = ReadyMode::Notify;
        p.started(0, 1, now);
        p.ready(1, now);
        p.take_generation_ready();
        let mut delays = Vec::new();
        for pid in 2..12 {
            let exit = p.exited(pid - 1, now).unwrap();
            delays.push(exit.restart_in.unwrap());
            now += exit.restart_in.unwrap();
            assert_eq!(p.due_starts(now), vec![0]);
            p.started(0, pid, now);
        }
        assert_eq!(delays[..4], [100 * MS, 200 * MS, 400 * MS, 800 * MS]);
        assert_eq!(*delays.last().unwrap(), BACKOFF_CAP);
        // A worker that stays up resets the backoff.
        let exit = p.exited(11, now + HEALTHY_AFTER).unwrap();
        assert_eq!(exit.restart_in, Some(Duration::ZERO));
        assert_eq!(p.slots()[0].restarts, 11);
    }

    #[test]
    fn a_generation_that_never_got_ready_fails_after_repeated_crashes() {
        let (mut p, mut now) = pool(1);
        for pid in 1..=MAX_UNREADY_EXITS as i32 {
            p.started(0, pid, now);
            let exit = p.exited(pid, now).unwrap();
            if pid < MAX_UNREADY_EXITS as i32 {
                assert!(!exit.generation_failed);
                now += exit.restart_in.unwrap();
            } else {
                assert!(exit.generation_failed);
                assert_eq!(exit.restart_in, None);
            }
        }
    }

    #[test]
    fn draining_stops_restarts() {
        let (mut p, now) = pool(2);
        p.started(0, 1, now);
        p.started(1, 2, now);
        p.drain();
        assert_eq!(p.exited(1, now).unwrap().restart_in, None);
        assert!(p.due_starts(now + BACKOFF_CAP).is_empty());
        assert_eq!(p.workers().count(), 1);
    }

    #[test]
    fn scaling_down_returns_the_highest_slots() {
        let (mut p, now) = pool(3);
        for (o, pid) in [(0, 1), (1, 2), (2, 3)] {
            p.started(o, pid, now);
        }
        assert_eq!(p.scale(1, now), vec![(2, 3), (1, 2)]);
        assert_eq!(p.scale(2, now), vec![]);
        assert_eq!(p.due_starts(now), vec![1]);
        let exit = p.exited(3, now).unwrap();
        assert_eq!((exit.ordinal, exit.role), (2, Role::Retired { replaced_by: None }));
        assert_eq!(p.retiring().len(), 1);
    }

    const S: Duration = Duration::from_secs(1);

    /// A pool of `count` ready workers (pids 1…count) with `limits`.
    fn serving(count: u32, limits: Limits) -> (Pool, Instant) {
        let now = Instant::now();
        let mut p = Pool::new(count, ReadyMode::Notify, now).with_limits(limits);
        for ordinal in 0..count {
            p.started(ordinal, ordinal as i32 + 1, now);
            p.ready(ordinal as i32 + 1, now);
        }
        assert!(p.take_generation_ready());
        (p, now)
    }

    #[test]
    fn a_worker_silent_past_the_health_timeout_is_replaced_only_once_its_successor_is_ready() {
        let limits = Limits { health_timeout: Some(3 * S), graceful: 5 * S, ..Limits::default() };
        let (mut p, t0) = serving(2, limits);
        assert!(p.check(t0 + 10 * S).is_empty(), "no WATCHDOG=1 yet: no watchdog to miss");
        p.watchdog(2, t0);
        p.watchdog(1, t0 + 2 * S);
        assert_eq!(p.next_deadline(), Some(t0 + 3 * S));
        assert!(p.check(t0 + 3 * S).is_empty(), "exactly the timeout is not past it");
        let decided = p.check(t0 + 4 * S);
        assert_eq!(decided, vec![Replacement { ordinal: 1, pid: 2, reason: Reason::Silent(4 * S) }]);
        assert_eq!(decided[0].reason.to_string(), "silent for 4.0s after WATCHDOG=1");
        assert!(p.check(t0 + 4 * S).is_empty(), "decided once");

        // Surge first: the successor starts while the old worker serves on.
        assert_eq!(p.due_starts(t0 + 4 * S), vec![1]);
        p.started(1, 20, t0 + 4 * S);
        assert!(p.is_successor(20));
        assert!(p.due_starts(t0 + 4 * S).is_empty());
        assert_eq!(p.slots()[1].worker.as_ref().map(|w| (w.pid, w.ready)), Some((2, true)));

        let (ordinal, replaced) = p.ready(20, t0 + 5 * S).unwrap();
        let replaced = replaced.unwrap();
        assert_eq!((ordinal, replaced.old_pid, replaced.replacements), (1, 2, 1));
        assert_eq!(replaced.reason.kind(), "health");
        assert_eq!(p.slots()[1].worker.as_ref().map(|w| (w.pid, w.ready)), Some((20, true)));
        assert!(p.replacing(), "until the old worker is gone");
        assert_eq!(p.due_kills(t0 + 10 * S), vec![2], "SIGKILL after the graceful timeout");
        assert!(p.due_kills(t0 + 10 * S).is_empty(), "once");
        let exit = p.exited(2, t0 + 11 * S).unwrap();
        assert_eq!((exit.role, exit.restart_in), (Role::Retired { replaced_by: Some(20) }, None));
        assert!(!p.replacing());
    }

    #[test]
    fn max_age_replaces_one_slot_at_a_time_with_some_jitter() {
        let limits = Limits { max_age: Some(10 * S), ..Limits::default() };
        let (mut p, t0) = serving(3, limits);
        let first = p.next_deadline().unwrap();
        assert!(first >= t0 + 9 * S && first <= t0 + 11 * S, "{:?}", first - t0);
        let decided = p.check(t0 + 11 * S);
        assert_eq!(decided.len(), 1, "one slot at a time: {decided:?}");
        assert_eq!(decided[0].reason.kind(), "age");
        let slot = decided[0].ordinal;
        assert!(p.check(t0 + 12 * S).is_empty(), "the others wait for this replacement");
        p.started(slot, 40, t0 + 12 * S);
        let (_, replaced) = p.ready(40, t0 + 12 * S).unwrap();
        let old = replaced.unwrap().old_pid;
        assert!(p.check(t0 + 13 * S).is_empty(), "still waiting: the old worker has not exited");
        p.exited(old, t0 + 13 * S);
        let next = p.check(t0 + 13 * S);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].ordinal, slot);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_is_the_same_for_a_pid() {
        for pid in 1..5000 {
            let d = jittered(100 * S, pid);
            assert!(d >= 90 * S && d <= 110 * S, "{d:?}");
            assert_eq!(d, jittered(100 * S, pid));
        }
        assert_ne!(jittered(100 * S, 1), jittered(100 * S, 2));
    }

    #[test]
    fn a_successor_that_dies_is_tried_again_with_backoff_while_the_old_worker_serves() {
        let (mut p, t0) = serving(1, Limits::default());
        assert!(p.replace(1, Reason::Memory { bytes: 2048, limit: 1024 }, t0));
        assert!(!p.replace(1, Reason::Memory { bytes: 4096, limit: 1024 }, t0), "already replacing");
        p.started(0, 30, t0);
        let exit = p.exited(30, t0).unwrap();
        assert_eq!((exit.role, exit.restart_in), (Role::Successor, Some(BACKOFF_START)));
        assert!(p.due_starts(t0).is_empty());
        assert_eq!(p.due_starts(t0 + BACKOFF_START), vec![0]);
        assert_eq!(p.slots()[0].worker.as_ref().map(|w| w.pid), Some(1));
    }

    #[test]
    fn a_worker_that_exits_while_its_successor_starts_hands_the_slot_over() {
        let (mut p, t0) = serving(1, Limits::default());
        p.replace(1, Reason::Memory { bytes: 2048, limit: 1024 }, t0);
        p.started(0, 30, t0);
        let exit = p.exited(1, t0 + S).unwrap();
        assert_eq!((exit.role, exit.restart_in), (Role::Serving { successor: Some(30) }, None));
        assert_eq!(p.ready(30, t0 + S), Some((0, None)), "an ordinary worker now");
    }

    #[test]
    fn a_restarted_worker_not_ready_within_the_startup_timeout_is_stopped_then_killed() {
        let limits = Limits { startup_timeout: Some(5 * S), graceful: 2 * S, ..Limits::default() };
        let (mut p, t0) = serving(1, limits);
        let exit = p.exited(1, t0 + 20 * S).unwrap();
        assert_eq!(exit.restart_in, Some(Duration::ZERO));
        p.started(0, 2, t0 + 20 * S);
        assert_eq!(p.next_deadline(), Some(t0 + 25 * S));
        assert!(p.stalled(t0 + 24 * S).is_empty());
        assert_eq!(p.stalled(t0 + 25 * S), vec![(0, 2)]);
        assert!(p.stalled(t0 + 26 * S).is_empty(), "once");
        assert_eq!(p.due_kills(t0 + 27 * S), vec![2]);
        let exit = p.exited(2, t0 + 27 * S).unwrap();
        assert_eq!(exit.restart_in, Some(BACKOFF_START), "restarted with backoff");
    }

    #[test]
    fn the_first_workers_of_a_generation_are_left_to_mains_startup_timeout() {
        let now = Instant::now();
        let limits = Limits { startup_timeout: Some(S), ..Limits::default() };
        let mut p = Pool::new(1, ReadyMode::Notify, now).with_limits(limits);
        p.started(0, 1, now);
        assert!(p.stalled(now + 10 * S).is_empty());
    }

    #[test]
    fn draining_stops_replacements() {
        let limits = Limits { health_timeout: Some(S), ..Limits::default() };
        let (mut p, t0) = serving(1, limits);
        p.watchdog(1, t0);
        p.drain();
        assert!(p.check(t0 + 10 * S).is_empty());
        assert!(!p.replace(1, Reason::Memory { bytes: 2, limit: 1 }, t0));
        assert_eq!(p.next_deadline(), None);
    }
}
