//! The monitor's worker slots: a pure state machine.
//!
//! A slot is an ordinal 0…N-1 that always wants one worker. The monitor loop
//! reports what happened (started, ready, exited) with the current time and
//! asks what is due (starts, readiness by timer); the pool decides restarts,
//! backoff and when the generation has failed. No processes, no clock.

use std::time::{Duration, Instant};

use crate::units::ReadyMode;

/// First restart delay after a quick exit; doubles per consecutive one.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A worker that stayed up this long resets its slot's backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Exits before ready, in a row in one slot, after which a generation that
/// has never been ready gives up.
pub const MAX_START_FAILURES: u32 = 5;

#[derive(Debug, Clone)]
pub struct Worker {
    pub pid: i32,
    pub started: Instant,
    pub ready: bool,
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub ordinal: u32,
    pub worker: Option<Worker>,
    /// Restarts of this slot since the generation started.
    pub restarts: u32,
    /// Consecutive quick exits.
    failures: u32,
    /// When the next worker may start (set while `worker` is None).
    start_at: Option<Instant>,
}

/// What the loop should do about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub ordinal: u32,
    pub uptime: Duration,
    /// `None`: the slot is not restarted (draining, scaled away, or failed).
    pub restart_in: Option<Duration>,
    /// The generation has failed: too many exits before ready.
    pub generation_failed: bool,
}

#[derive(Debug)]
pub struct Pool {
    slots: Vec<Slot>,
    ready_mode: ReadyMode,
    /// Every slot has had a ready worker at once (reported once).
    generation_ready: bool,
    draining: bool,
}

impl Pool {
    pub fn new(count: u32, ready_mode: ReadyMode, now: Instant) -> Pool {
        let mut pool = Pool { slots: Vec::new(), ready_mode, generation_ready: false, draining: false };
        pool.scale(count, now);
        pool
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Slots whose next worker is due now.
    pub fn due_starts(&self, now: Instant) -> Vec<u32> {
        if self.draining {
            return Vec::new();
        }
        self.slots
            .iter()
            .filter(|s| s.worker.is_none() && s.start_at.is_some_and(|at| at <= now))
            .map(|s| s.ordinal)
            .collect()
    }

    pub fn started(&mut self, ordinal: u32, pid: i32, now: Instant) {
        if let Some(slot) = self.slot_mut(ordinal) {
            slot.worker = Some(Worker { pid, started: now, ready: false });
            slot.start_at = None;
        }
    }

    /// A start attempt failed before the worker ran (exec error): same as an
    /// immediate exit.
    pub fn start_failed(&mut self, ordinal: u32, now: Instant) -> Option<Exit> {
        self.started(ordinal, 0, now);
        self.exited(0, now)
    }

    /// Marks the worker `pid` ready. Returns its ordinal if it was not already.
    pub fn ready(&mut self, pid: i32) -> Option<u32> {
        let slot = self.slots.iter_mut().find(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))?;
        let worker = slot.worker.as_mut()?;
        if worker.ready {
            return None;
        }
        worker.ready = true;
        Some(slot.ordinal)
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

    /// The worker `pid` exited. `None` if it is not one of ours.
    pub fn exited(&mut self, pid: i32, now: Instant) -> Option<Exit> {
        let draining = self.draining;
        let generation_ready = self.generation_ready;
        let index = self.slots.iter().position(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))?;
        let slot = &mut self.slots[index];
        let worker = slot.worker.take()?;
        let uptime = now.saturating_duration_since(worker.started);
        let mut exit = Exit { ordinal: slot.ordinal, uptime, restart_in: None, generation_failed: false };
        if draining {
            return Some(exit);
        }
        let delay = if uptime >= HEALTHY_AFTER {
            slot.failures = 0;
            Duration::ZERO
        } else {
            slot.failures += 1;
            BACKOFF_START
                .checked_mul(1 << (slot.failures - 1).min(16))
                .unwrap_or(BACKOFF_CAP)
                .min(BACKOFF_CAP)
        };
        if !generation_ready && !worker.ready && slot.failures >= MAX_START_FAILURES {
            exit.generation_failed = true;
            return Some(exit);
        }
        slot.restarts += 1;
        slot.start_at = Some(now + delay);
        exit.restart_in = Some(delay);
        Some(exit)
    }

    /// Sets the number of slots. Returns `(ordinal, pid)` of the workers in
    /// removed slots (highest ordinals first), which the loop should stop.
    pub fn scale(&mut self, count: u32, now: Instant) -> Vec<(u32, i32)> {
        let mut removed = Vec::new();
        while self.slots.len() as u32 > count {
            if let Some(Slot { ordinal, worker: Some(w), .. }) = self.slots.pop() {
                removed.push((ordinal, w.pid));
            }
        }
        while (self.slots.len() as u32) < count {
            let ordinal = self.slots.len() as u32;
            self.slots.push(Slot { ordinal, worker: None, restarts: 0, failures: 0, start_at: Some(now) });
        }
        removed
    }

    /// Stops all restarts; pending starts are dropped.
    pub fn drain(&mut self) {
        self.draining = true;
        for slot in &mut self.slots {
            slot.start_at = None;
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.slots.iter().filter_map(|s| s.worker.as_ref())
    }

    pub fn ordinal_of(&self, pid: i32) -> Option<u32> {
        self.slots.iter().find(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid)).map(|s| s.ordinal)
    }

    /// The earliest moment something is due: a start or a readiness timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        let starts = self.slots.iter().filter_map(|s| s.start_at).filter(|_| !self.draining);
        let readies = match self.ready_mode {
            ReadyMode::After(after) => {
                Some(self.workers().filter(|w| !w.ready).map(move |w| w.started + after))
            }
            // The other modes wait for a message or a look (accepting.rs).
            _ => None,
        };
        starts.chain(readies.into_iter().flatten()).min()
    }

    fn slot_mut(&mut self, ordinal: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.ordinal == ordinal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(p.ready(10), Some(0));
        assert!(!p.take_generation_ready());
        assert_eq!(p.ready(11), Some(1));
        assert!(p.take_generation_ready());
        assert!(!p.take_generation_ready(), "reported once");
    }

    #[test]
    fn quick_exits_back_off_exponentially_up_to_the_cap() {
        let (mut p, mut now) = pool(1);
        p.ready_mode = ReadyMode::Notify;
        p.started(0, 1, now);
        p.ready(1);
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
        for pid in 1..=MAX_START_FAILURES as i32 {
            p.started(0, pid, now);
            let exit = p.exited(pid, now).unwrap();
            if pid < MAX_START_FAILURES as i32 {
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
    }
}
