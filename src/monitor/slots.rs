//! A monitor's side of `--balance round-robin`: which sockets a worker
//! gets, and the scale down that waits for a removed slot's queue.
//!
//! main passes every slot's sockets, address-major (address b's slot k at
//! `b * slots + k`); worker k gets its slot's of each address, at fd 3…
//! like any worker. What waits in a slot's accept queue can only be
//! accepted by that slot's worker. main takes the slot out of the rotation
//! before it sends the scale order, so nothing new is queued there; the
//! worker keeps accepting what is, and the monitor sends the drain signal
//! once the queue has stayed empty for [`SETTLE`] (a handshake the kernel
//! began before the slot left the rotation completes within that on any
//! sane network), or at the latest after [`HOLD_MAX`] (a worker that does
//! not accept is not waited for longer).
//!
//! A scale above the slots a monitor started with: main binds the new
//! slot's sockets and sends them over the status channel
//! ([`Order::Slot`](crate::protocol::Order::Slot)) before the scale order;
//! the monitor puts them in its table before it starts that slot's worker.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::Monitor;
use crate::sys;

/// How long the queue must stay empty.
const SETTLE: Duration = Duration::from_millis(50);

/// The longest a drain is held back (never more than half the graceful
/// timeout, which runs from the scale order).
const HOLD_MAX: Duration = Duration::from_secs(2);

/// How often the queues are looked at while a drain is held back.
const LOOK_EVERY: Duration = Duration::from_millis(10);

struct Held {
    ordinal: u32,
    pid: i32,
    until: Instant,
    empty_since: Option<Instant>,
}

/// The drains held back, and when to look at their queues next.
#[derive(Default)]
pub(super) struct HeldDrains {
    held: Vec<Held>,
}

impl HeldDrains {
    /// Holds back the drain of `pid`, the worker of removed slot `ordinal`.
    pub(super) fn hold(&mut self, ordinal: u32, pid: i32, now: Instant, graceful: Duration) {
        let until = now + HOLD_MAX.min(graceful / 2);
        self.held.push(Held { ordinal, pid, until, empty_since: None });
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.until).min().map(|until| until.min(Instant::now() + LOOK_EVERY))
    }

    /// Forgets `pid` (it exited before its drain was due).
    pub(super) fn forget(&mut self, pid: i32) {
        self.held.retain(|h| h.pid != pid);
    }

    /// The pids whose drain is due now: their slot's queue (`queued`) has
    /// stayed empty for [`SETTLE`], or they were held long enough.
    pub(super) fn due(&mut self, now: Instant, mut queued: impl FnMut(u32) -> u32) -> Vec<i32> {
        let mut due = Vec::new();
        self.held.retain_mut(|h| {
            if queued(h.ordinal) > 0 {
                h.empty_since = None;
            } else {
                h.empty_since.get_or_insert(now);
            }
            let settled = h.empty_since.is_some_and(|since| now.duration_since(since) >= SETTLE);
            if settled || h.until <= now {
                due.push(h.pid);
                false
            } else {
                true
            }
        });
        due
    }
}

impl Monitor {
    /// The listening sockets worker `ordinal` gets, in `--bind` order: all
    /// of them, or with `--balance round-robin` its slot's of each address.
    pub(super) fn worker_sockets(&self, ordinal: u32) -> std::io::Result<Vec<&OwnedFd>> {
        let slots = self.args.slots as usize;
        if slots == 0 {
            return Ok(self.sockets.iter().collect());
        }
        if ordinal as usize >= slots {
            return Err(std::io::Error::other(format!(
                "--balance round-robin has sockets for {slots} workers, not for worker {ordinal}"
            )));
        }
        Ok(slot_sockets(&self.sockets, slots, ordinal).collect())
    }

    /// Takes `fds` (one per address, in `--bind` order) as slot `slot`'s
    /// sockets, the next slot after those it has.
    pub(super) fn add_slot(&mut self, slot: u32, fds: Vec<OwnedFd>) {
        let slots = self.args.slots as usize;
        let addresses = self.sockets.len().checked_div(slots).unwrap_or(0);
        if slots == 0 || slot as usize != slots || fds.len() != addresses {
            log::error!(
                "main sent {} socket(s) for round-robin slot {slot}; this monitor has {slots} slot(s) of \
                 {addresses} address(es): ignored",
                fds.len()
            );
            return;
        }
        let mut old = std::mem::take(&mut self.sockets).into_iter();
        for added in fds {
            self.sockets.extend(old.by_ref().take(slots));
            self.sockets.push(added);
        }
        self.args.slots += 1;
        self.readiness.set_inodes(super::accepting::Readiness::socket_inodes(&self.sockets));
        log::debug!("round-robin: slot {slot}'s sockets taken");
    }

    pub(super) fn scale(&mut self, count: u32) {
        if self.pool.is_draining() || count == 0 {
            return;
        }
        let now = Instant::now();
        for (ordinal, pid) in self.pool.scale(count, now) {
            if self.args.slots > 0 {
                self.held_drains.hold(ordinal, pid, now, self.args.graceful_timeout.0);
            } else {
                sys::signal_process(Pid::from_raw(pid), self.drain_signal());
            }
        }
        log::info!("now running {count} worker(s)");
    }

    /// Drain signals held back until a removed slot's queue is empty.
    pub(super) fn release_held_drains(&mut self, now: Instant) {
        let slots = self.args.slots as usize;
        if slots == 0 {
            return;
        }
        let sockets = &self.sockets;
        let queued = |ordinal: u32| {
            let mine = slot_sockets(sockets, slots, ordinal);
            mine.map(|fd| sys::reuseport::accept_queue(fd.as_fd()).unwrap_or(0)).sum()
        };
        for pid in self.held_drains.due(now, queued) {
            sys::signal_process(Pid::from_raw(pid), self.drain_signal());
        }
    }
}

/// Slot `ordinal`'s socket of each address, from `sockets` held
/// address-major for `slots` slots.
fn slot_sockets(sockets: &[OwnedFd], slots: usize, ordinal: u32) -> impl Iterator<Item = &OwnedFd> {
    sockets.chunks(slots).filter_map(move |set| set.get(ordinal as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_waits_until_the_queue_has_stayed_empty_or_the_hold_ends() {
        let graceful = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut held = HeldDrains::default();
        held.hold(3, 103, t0, graceful);
        held.hold(2, 102, t0, graceful);
        // Slot 3 has a connection waiting; slot 2's queue is empty.
        let queue = |slot: u32| if slot == 3 { 1 } else { 0 };
        assert!(held.due(t0, queue).is_empty());
        assert_eq!(held.due(t0 + SETTLE, queue), [102]);
        assert!(held.due(t0 + SETTLE * 3, queue).is_empty());
        assert_eq!(held.due(t0 + SETTLE * 4, |_| 0), Vec::<i32>::new());
        assert_eq!(held.due(t0 + SETTLE * 5, |_| 0), [103]);
        held.hold(1, 101, t0, graceful);
        assert_eq!(held.due(t0 + HOLD_MAX, |_| 5), [101], "not held past HOLD_MAX");
        held.hold(1, 111, t0, Duration::from_secs(1));
        assert_eq!(held.due(t0 + Duration::from_millis(500), |_| 5), [111], "nor past half the grace");
    }
}
