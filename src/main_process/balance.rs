//! `--balance round-robin` in main: one listening socket per worker slot
//! and address, and the rotation the kernel hands new connections along.
//!
//! With `--balance shared` (the default) every worker accepts from the one
//! socket of each `--bind`, and the kernel gives a connection to whichever
//! worker it wakes: a few long-lived connections can all land on one. In
//! round-robin, main binds, for each address, one `SO_REUSEPORT` socket per
//! slot (slot 0's is the one `sockets` holds, the others are here), once,
//! for its whole life. Every monitor gets them all; worker k gets slot k's
//! at fd 3 (and `LISTEN_FDS` counts the addresses, as before). A replacement
//! of worker k, or the next generation's worker k, accepts from the same
//! socket, so what waits in its queue is served by whoever comes next.
//!
//! Which slots are in rotation follows the policy: after every event, a
//! slot is in it when a generation that is starting or ready (not draining)
//! has a ready worker on it, and the slot is below the count. So a slot
//! leaves the rotation before its last worker is told to drain (a scale
//! down, the drain of a generation nothing replaces), and joins it once a
//! worker on it is ready. While no slot is ready (every worker crashed, or
//! none is ready yet), the rotation holds every slot below the count, so
//! new connections wait for the workers that will come, never on a slot a
//! scale down left. The kernel program itself is `sys::reuseport`.
//!
//! A slot whose worker stops accepting (stopped, stuck in a loop) would
//! still get its share of new connections, which would wait in its queue.
//! So main polls the sockets of the slots in rotation (a listening socket
//! is readable while its accept queue holds a connection: idle, this never
//! wakes main), and when one wakes it, looks at the queues again every
//! [`STUCK_AFTER`] until that slot's is empty: a slot whose queue has grown
//! (to 2 or more) since main first saw it, while another slot's is empty,
//! leaves the rotation until its queue is empty again ([`Watch`]). Under
//! load main looks at most once per slot per [`STUCK_AFTER`].
//!
//! The slots are bound at start for `--count` workers. A scale above the
//! slots bound so far (`scale N`, `SIGTTIN`, a re-read `count`) first binds
//! the slots it needs, joining each address's reuseport group, and puts
//! their sockets in the rotation's socket array, not yet in rotation
//! ([`Main::make_room`]); then it hands them to every running monitor over
//! its status channel (`Order::Slot`, the sockets attached), before the
//! scale order that starts their workers. The program and its maps are
//! sized at start for the count ceiling, so the rotation never has to be
//! set up again (which would leave the choice to the kernel's hash for a
//! moment). Once bound, slots stay for panzer's life, like the first ones:
//! a later generation gets them all, and an upgrade hands them over.
//!
//! Across a self-upgrade the slot sockets and each rotation's program and
//! maps are handed over like main's own sockets ([`Balance::save`],
//! [`Balance::resume`]): the program stays attached, so connections keep
//! being handed in turn while main execs, and the next image reads back
//! which slots are in rotation.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::policy::{Generation, State};
use super::{Main, Token};
use crate::config::Config;
use crate::error::Error;
use crate::limits::{Bound, CountCeiling};
use crate::sockets::{self, BindAddr, Listener};
use crate::sys::reuseport::{accept_queue, Rotation};
use crate::sys::Interest;

/// How often main looks at a queue that holds connections.
pub(super) const STUCK_AFTER: Duration = Duration::from_millis(500);

/// The slot sockets and their rotations, one per address.
pub(super) struct Balance {
    slots: u32,
    /// Per address, the sockets of slots 1… (slot 0's is main's own).
    more: Vec<Vec<Listener>>,
    rotations: Vec<Rotation>,
    /// The slots the policy's generations have ready (what is in rotation
    /// now, the stuck ones left out, each [`Rotation`] knows).
    ready: Vec<u32>,
    /// The slots below the count: those that will have a worker.
    count: u32,
    /// Slots at or above the count whose queue was moved once their last
    /// worker was gone ([`Balance::flush_left`]); forgotten when a worker
    /// runs on one again.
    flushed: BTreeSet<u32>,
    rotation: InRotation,
    watch: Watch,
}

/// Whether `config` asks for round-robin, or why it cannot have it
/// (`adopted`: systemd passed the sockets in), before anything is bound.
pub(super) fn wanted(config: &Config, adopted: bool) -> Result<bool, Error> {
    let wanted = config.balance == crate::units::Balance::RoundRobin;
    if wanted {
        refuse(&config.binds, adopted)?;
    }
    Ok(wanted)
}

/// The most workers a generation may run: as the limits allow for
/// `sockets` (a set per worker with round-robin), and with round-robin no
/// more than `room`, the slots its rotation has room for.
pub(super) fn ceiling(config: &Config, sockets: usize, room: Option<u32>) -> CountCeiling {
    let ceiling = crate::config::count_ceiling(sockets, config.tag_output, config.preload, room.is_some());
    match room {
        Some(room) if room < ceiling.max => CountCeiling { max: room, bound: Bound::Slots(room) },
        _ => ceiling,
    }
}

/// Why round-robin cannot run on `binds` (`adopted`: systemd passed the
/// sockets in), before anything is bound: one line, a usage error.
pub(crate) fn refuse(binds: &[sockets::BindSpec], adopted: bool) -> Result<(), Error> {
    if adopted {
        return Err(Error::Usage(
            "--balance round-robin: the sockets systemd passed in (LISTEN_FDS) are one per address; \
                 round-robin needs a socket per worker, which panzer binds itself: use --bind, or \
                 --balance shared"
                .into(),
        ));
    }
    if let Some(unix) = binds.iter().find(|b| matches!(b.addr, BindAddr::Unix(_))) {
        return Err(Error::Usage(format!(
            "--balance round-robin: --bind {unix}: a unix socket cannot be balanced (SO_REUSEPORT \
                 groups are TCP only); use --balance shared"
        )));
    }
    Ok(())
}

/// Whether the kernel and this process's privileges let main set up the
/// rotation (`--check`): the program loaded once, on maps of its own.
pub(crate) fn probe() -> Result<(), Error> {
    Rotation::attach(&[], 1).map(drop).map_err(|refused| failed("", refused))
}

/// The error for a rotation the kernel refused, with what would help.
fn failed(on: &str, refused: crate::sys::reuseport::Refused) -> Error {
    let hint = match refused.error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            " (needs root, or CAP_BPF and CAP_NET_ADMIN; or use --balance shared)"
        }
        _ => " (needs a Linux kernel 5.12 or later with BPF; or use --balance shared)",
    };
    Error::os(format!("--balance round-robin{on}: {}{hint}", refused.step), refused.error)
}

impl Main {
    /// With `--balance round-robin`, the slots bound so far.
    pub(super) fn slots(&self) -> Option<u32> {
        self.balance.as_ref().map(Balance::slots)
    }

    /// With `--balance round-robin`, the most slots the rotation takes.
    pub(super) fn room(&self) -> Option<u32> {
        self.balance.as_ref().map(Balance::room)
    }

    /// Before a generation runs `count` workers: with round-robin, binds
    /// the slots above those bound so far and hands them to every running
    /// monitor. A count above the ceiling is left to the policy to refuse.
    /// Refused (nothing bound) when a live generation's monitor cannot
    /// take them (an older panzer's, until a reload replaces it), or
    /// cannot be sent them now.
    pub(super) fn make_room(&mut self, what: &str, count: u32) -> Result<(), Error> {
        let Some(slots) = self.slots().filter(|&slots| count > slots) else { return Ok(()) };
        let ceiling = super::settings(&self.config, self.sockets.len(), self.room()).ceiling;
        if count > ceiling.max {
            return Ok(());
        }
        let live = |number: u32| {
            self.policy
                .generations()
                .iter()
                .any(|g| g.number == number && !matches!(g.state, State::Draining | State::Failed))
        };
        let mut older = Vec::new();
        for (&number, monitor) in self.monitors.iter_mut().filter(|(_, m)| !m.closed) {
            if !crate::protocol::takes_slots(monitor.protocol) {
                if live(number) {
                    older.push(number.to_string());
                }
                continue;
            }
            if monitor.channel.flush().is_ok() && monitor.channel.wants_write() && live(number) {
                return Err(Error::Usage(format!(
                    "{what}: generation {number}'s monitor is not reading main's orders; try again"
                )));
            }
        }
        if !older.is_empty() {
            return Err(Error::Usage(format!(
                "{what}: generation(s) {} run a monitor of an older panzer, which cannot take new \
                 round-robin sockets: reload first, then scale",
                older.join(", ")
            )));
        }
        let (backlog, nodelay) = (self.config.backlog, self.config.nodelay);
        let Some(balance) = &mut self.balance else { return Ok(()) };
        let grown = balance.grow(&self.sockets, count, backlog, nodelay).map_err(|e| match e {
            Error::Usage(why) => Error::Usage(format!("{what}: {why}")),
            e => e,
        });
        // The slots that made it into the array go to the monitors even when
        // a later one failed, so none is left that no monitor has.
        let bound = balance.slots();
        if bound > slots {
            log::info!("round-robin: bound sockets for slots {slots}…{}", bound - 1);
        }
        for slot in slots..bound {
            let fds: Vec<BorrowedFd<'_>> = self.slot_sockets(slot).collect();
            let fds: Vec<OwnedFd> = fds.iter().filter_map(|fd| fd.try_clone_to_owned().ok()).collect();
            let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
            let order = crate::protocol::Order::Slot { slot };
            for (number, monitor) in self.monitors.iter_mut().filter(|(_, m)| !m.closed) {
                if !crate::protocol::takes_slots(monitor.protocol) {
                    continue;
                }
                if let Err(e) = monitor.channel.send_with_fds(&order, &fds) {
                    log::warn!("cannot hand slot {slot}'s sockets to generation {number}'s monitor: {e}");
                }
            }
        }
        grown
    }

    /// The listening sockets a monitor gets, in order.
    pub(super) fn monitor_sockets(&self) -> Vec<RawFd> {
        match &self.balance {
            Some(balance) => balance.fds(&self.sockets),
            None => self.sockets.iter().map(|l| l.fd().as_raw_fd()).collect(),
        }
    }

    /// Puts in rotation the slots the policy's generations have ready now;
    /// called after each event, before its effects are carried out, so a
    /// slot leaves the rotation before its worker is told to drain.
    pub(super) fn sync_rotation(&mut self) {
        if let Some(balance) = &mut self.balance {
            balance.sync(self.policy.generations(), self.policy.count(), self.config.backlog);
        }
    }

    /// Slot `slot`'s socket of each address (slot 0's are main's own).
    fn slot_sockets(&self, slot: u32) -> impl Iterator<Item = BorrowedFd<'_>> {
        let more = self.balance.iter().flat_map(|b| &b.more);
        self.sockets.iter().zip(more).filter_map(move |(first, more)| match slot {
            0 => Some(first.fd()),
            k => more.get(k as usize - 1).map(Listener::fd),
        })
    }

    /// What slot `slot`'s sockets show now.
    fn seen(&self, slot: u32) -> Seen {
        let queued = self.slot_sockets(slot).map(|fd| accept_queue(fd).unwrap_or(0)).sum();
        let rotations = self.balance.iter().flat_map(|b| &b.rotations);
        let handed = rotations.map(|r| r.handed(slot).unwrap_or(0)).fold(0u32, u32::wrapping_add);
        Seen { queued, handed }
    }

    /// What main polls for the rotation: the sockets of the slots watched
    /// for a queue that does not empty.
    pub(super) fn rotation_fds<'a>(
        &'a self,
        tokens: &mut Vec<Token>,
        fds: &mut Vec<(BorrowedFd<'a>, Interest)>,
    ) {
        let Some(balance) = &self.balance else { return };
        for slot in balance.watch.armed(&balance.ready) {
            for fd in self.slot_sockets(slot) {
                tokens.push(Token::Slot(slot));
                fds.push((fd, Interest::Read));
            }
        }
    }

    /// A slot's queue holds a connection: look again in a while.
    pub(super) fn on_slot_readable(&mut self, slot: u32, now: Instant) {
        let seen = self.seen(slot);
        if let Some(balance) = &mut self.balance {
            balance.watch.woke(slot, seen, now);
        }
    }

    /// When main looks at a queue next.
    pub(super) fn rotation_deadline(&self) -> Option<Instant> {
        self.balance.as_ref().and_then(|b| b.watch.next_look())
    }

    /// Looks at the queues that are due: a stuck slot leaves the
    /// rotation, and comes back once its queue is empty.
    pub(super) fn on_rotation_timer(&mut self, now: Instant) {
        if !self.rotation_deadline().is_some_and(|at| at <= now) {
            return;
        }
        let due = self.balance.as_ref().map(|b| b.watch.due(now)).unwrap_or_default();
        let seen: BTreeMap<u32, Seen> = due.into_iter().map(|k| (k, self.seen(k))).collect();
        let Some(balance) = &mut self.balance else { return };
        for (slot, stuck) in balance.watch.look(now, &balance.ready, &seen) {
            let waiting = seen.get(&slot).map_or(0, |s| s.queued);
            if stuck {
                log::warn!(
                    "round-robin: slot {slot}: its worker accepts nothing, {waiting} connection(s) wait: out \
                     of the rotation until it accepts again"
                );
            } else {
                log::info!("round-robin: slot {slot}: its worker accepts again: back in the rotation");
            }
        }
        balance.apply();
    }
}

/// What a slot's sockets showed: connections waiting in their queues, and
/// handed to the slot by the program so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) queued: u32,
    pub(super) handed: u32,
}

/// The slots whose queue keeps its connections: those main polls, those it
/// looks at again later, and those out of the rotation for it.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Per slot: when to look at its queue again, and when main first saw
    /// it hold connections and what it showed then.
    looking: BTreeMap<u32, (Instant, Instant, Seen)>,
    /// Out of the rotation until their queue is empty.
    stuck: BTreeSet<u32>,
}

impl Watch {
    /// Forgets slots that are no longer ready (a new worker starts afresh).
    pub(super) fn keep(&mut self, ready: &[u32]) {
        self.looking.retain(|k, _| ready.contains(k));
        self.stuck.retain(|k| ready.contains(k));
    }

    /// The slots main polls: ready, and not looked at later.
    pub(super) fn armed(&self, ready: &[u32]) -> Vec<u32> {
        ready.iter().copied().filter(|k| !self.looking.contains_key(k)).collect()
    }

    /// `slot`'s queue holds connections now.
    pub(super) fn woke(&mut self, slot: u32, seen: Seen, now: Instant) {
        self.looking.insert(slot, (now + STUCK_AFTER, now, seen));
    }

    /// The slots whose queue is due to be looked at `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<u32> {
        self.looking.iter().filter(|(_, &(at, _, _))| at <= now).map(|(&k, _)| k).collect()
    }

    pub(super) fn next_look(&self) -> Option<Instant> {
        self.looking.values().map(|&(at, _, _)| at).min()
    }

    /// Looks at the slots due with what their sockets show `now`; returns
    /// the slots that became stuck (`true`) or accept again (`false`). A
    /// slot is stuck when, since main first saw its queue hold connections,
    /// at least 2 more were handed to it and its worker accepted at most a
    /// quarter of them (what was handed and is not in the queue was
    /// accepted, or is still in its handshake); or when its worker accepted
    /// none for two looks though its queue held some all along (clients
    /// that each wait for an answer all end up waiting on that slot, and
    /// then nothing more is handed to it).
    pub(super) fn look(
        &mut self,
        now: Instant,
        ready: &[u32],
        seen: &BTreeMap<u32, Seen>,
    ) -> Vec<(u32, bool)> {
        let mut changes = Vec::new();
        for slot in self.due(now) {
            let (_, since, first) = self.looking[&slot];
            let now_seen = seen.get(&slot).copied().unwrap_or_default();
            let serving = ready.iter().filter(|k| !self.stuck.contains(k)).count();
            let handed = i64::from(now_seen.handed.wrapping_sub(first.handed));
            let accepted = handed - (i64::from(now_seen.queued) - i64::from(first.queued));
            let starved = handed >= 2 && accepted * 4 <= handed;
            let still = accepted <= 0 && now.duration_since(since) >= STUCK_AFTER * 2;
            if self.stuck.contains(&slot) {
                if now_seen.queued == 0 {
                    self.stuck.remove(&slot);
                    changes.push((slot, false));
                }
            } else if now_seen.queued > 0 && (starved || still) && serving > 1 {
                self.stuck.insert(slot);
                changes.push((slot, true));
            }
            if now_seen.queued > 0 {
                // Looked at again, still against what it showed first.
                self.looking.insert(slot, (now + STUCK_AFTER, since, first));
            } else {
                // Polled again.
                self.looking.remove(&slot);
            }
        }
        changes
    }
}

impl Balance {
    /// With `--balance round-robin` and sockets to balance (main's own,
    /// bound with `SO_REUSEPORT`), one per slot for `--count` workers.
    pub(super) fn for_config(config: &Config, sockets: &[Listener]) -> Result<Option<Balance>, Error> {
        if config.balance != crate::units::Balance::RoundRobin || sockets.is_empty() {
            return Ok(None);
        }
        Balance::start(sockets, config.count, config.backlog, config.nodelay).map(Some)
    }

    /// Binds slots 1…`slots`-1 beside each of `sockets` (bound with
    /// `SO_REUSEPORT`) and attaches the rotation program to each group.
    pub(super) fn start(
        sockets: &[Listener],
        slots: u32,
        backlog: i32,
        nodelay: bool,
    ) -> Result<Balance, Error> {
        let mut more = Vec::new();
        let mut rotations = Vec::new();
        for first in sockets {
            let others: Vec<Listener> =
                (1..slots).map(|_| sockets::bind_slot(first, backlog, nodelay)).collect::<Result<_, _>>()?;
            let fds: Vec<BorrowedFd<'_>> = std::iter::once(first).chain(&others).map(Listener::fd).collect();
            let on = format!(" on {}", first.local);
            let rotation = Rotation::attach(&fds, crate::limits::COUNT_CEILING)
                .map_err(|refused| failed(&on, refused))?;
            more.push(others);
            rotations.push(rotation);
        }
        Ok(Balance {
            slots,
            more,
            rotations,
            ready: Vec::new(),
            count: slots,
            flushed: BTreeSet::new(),
            rotation: InRotation::default(),
            watch: Watch::default(),
        })
    }

    pub(super) fn slots(&self) -> u32 {
        self.slots
    }

    /// The drain of a stop begins: the sockets of slots 1… stop listening
    /// too (main's own, slot 0's, are stopped with the others), so a new
    /// connection is refused, not queued on a slot nobody accepts from.
    pub(super) fn stop_listening(&self) {
        for listener in self.more.iter().flatten() {
            if let Err(e) = listener.stop_listening() {
                log::warn!("cannot stop listening on {} (a round-robin slot): {e}", listener.local);
            }
        }
    }

    /// The most slots every address's rotation takes.
    pub(super) fn room(&self) -> u32 {
        self.rotations.iter().map(Rotation::capacity).min().unwrap_or(self.slots)
    }

    /// Binds slots `self.slots`…`to`-1 beside each of `sockets` (main's,
    /// slot 0 of each address) and puts them in the socket arrays, out of
    /// rotation. All the sockets are bound before any goes in.
    pub(super) fn grow(
        &mut self,
        sockets: &[Listener],
        to: u32,
        backlog: i32,
        nodelay: bool,
    ) -> Result<(), Error> {
        if to > self.room() {
            return Err(Error::Usage(format!(
                "the round-robin rotation has room for {} workers (set up by an older panzer); restart \
                 panzer to run more",
                self.room()
            )));
        }
        // Every new socket is bound before any joins the rotation's array: a
        // bind that fails (out of descriptors, say) leaves nothing half done,
        // no slot in the array that no monitor was sent.
        let bound: Vec<Vec<Listener>> = (self.slots..to)
            .map(|_| sockets.iter().map(|first| sockets::bind_slot(first, backlog, nodelay)).collect())
            .collect::<Result<_, _>>()?;
        for (slot, bound) in (self.slots..to).zip(bound) {
            for ((listener, rotation), more) in bound.into_iter().zip(&mut self.rotations).zip(&mut self.more)
            {
                rotation.add(slot, listener.fd()).map_err(|e| {
                    Error::os(format!("round-robin: cannot add slot {slot} on {}", listener.local), e)
                })?;
                more.push(listener);
            }
            self.slots = slot + 1;
        }
        Ok(())
    }

    /// What the next image of main needs to take the slots over (an
    /// upgrade): the fds of every address's slot sockets and rotation, and
    /// the workers that count for nothing. The slots in rotation are read
    /// back from the state map; which queues are watched starts afresh.
    pub(super) fn save(&self) -> SavedBalance {
        let groups = self
            .more
            .iter()
            .zip(&self.rotations)
            .map(|(more, rotation)| {
                let [state, socks, program] = rotation.fds().map(|fd| fd.as_raw_fd());
                SavedGroup {
                    sockets: more.iter().map(|l| l.fd().as_raw_fd()).collect(),
                    state,
                    socks,
                    program,
                }
            })
            .collect();
        SavedBalance { slots: self.slots, groups, retired: self.rotation.retired.iter().copied().collect() }
    }

    /// Every fd [`Balance::save`] names, to keep across the `execve`.
    pub(super) fn handover_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let sockets = self.more.iter().flatten().map(Listener::fd);
        sockets.chain(self.rotations.iter().flat_map(Rotation::fds))
    }

    /// The slots a previous image of main saved, beside `sockets` (slot 0
    /// of each address, taken over already), with `adopt` taking each fd.
    pub(super) fn resume(
        saved: &SavedBalance,
        sockets: &[Listener],
        mut adopt: impl FnMut(RawFd) -> Result<OwnedFd, Error>,
    ) -> Result<Balance, Error> {
        if saved.groups.len() != sockets.len()
            || saved.slots == 0
            || saved.slots > crate::limits::COUNT_CEILING
        {
            return Err(Error::Usage(format!(
                "the state handed over has {} round-robin group(s) of {} slot(s) for {} socket(s)",
                saved.groups.len(),
                saved.slots,
                sockets.len()
            )));
        }
        let mut more = Vec::new();
        let mut rotations = Vec::new();
        for (first, group) in sockets.iter().zip(&saved.groups) {
            if group.sockets.len() + 1 != saved.slots as usize {
                return Err(Error::Usage(format!(
                    "the state handed over has {} slot socket(s) on {} for {} slot(s)",
                    group.sockets.len() + 1,
                    first.local,
                    saved.slots
                )));
            }
            let mut others = Vec::new();
            for &fd in &group.sockets {
                others.push(Listener::resume(
                    adopt(fd)?,
                    first.spec.clone(),
                    first.local.clone(),
                    None,
                    false,
                ));
            }
            let (state, socks, program) = (adopt(group.state)?, adopt(group.socks)?, adopt(group.program)?);
            let rotation = Rotation::resume(state, socks, program, saved.slots).map_err(|e| {
                Error::os(format!("cannot take over the round-robin rotation on {}", first.local), e)
            })?;
            more.push(others);
            rotations.push(rotation);
        }
        let count = rotations.first().map_or(0, |r| r.active().len() as u32);
        Ok(Balance {
            slots: saved.slots,
            more,
            rotations,
            ready: Vec::new(),
            count,
            flushed: BTreeSet::new(),
            rotation: InRotation { retired: saved.retired.iter().copied().collect() },
            watch: Watch::default(),
        })
    }

    /// Every socket a monitor gets, address-major: address b's slot k at
    /// `b * slots + k` (`sockets` are main's, slot 0 of each).
    pub(super) fn fds(&self, sockets: &[Listener]) -> Vec<RawFd> {
        sockets
            .iter()
            .zip(&self.more)
            .flat_map(|(first, more)| std::iter::once(first).chain(more))
            .map(|l| l.fd().as_raw_fd())
            .collect()
    }

    /// Puts exactly the slots [`InRotation`] names in rotation, but for
    /// those found stuck.
    pub(super) fn sync(&mut self, generations: &[Generation], count: u32, backlog: i32) {
        self.count = count.min(self.slots);
        self.ready = self.rotation.update(generations, self.count);
        self.watch.keep(&self.ready);
        self.apply();
        self.flush_left(generations, backlog);
    }

    /// A slot a scale down left keeps its socket, and what waits in its
    /// queue once its last worker is gone (one that stalled past the hold,
    /// a handshake that completed late) would wait for ever: once no
    /// process runs on it, its queue moves to the slots in rotation.
    fn flush_left(&mut self, generations: &[Generation], backlog: i32) {
        let running: BTreeSet<u32> = generations
            .iter()
            .flat_map(|g| g.workers.iter().filter(|(_, w)| w.pid != 0).map(|(&k, _)| k))
            .collect();
        for slot in self.count.max(1)..self.slots {
            if running.contains(&slot) {
                self.flushed.remove(&slot);
                continue;
            }
            if !self.flushed.insert(slot) {
                continue;
            }
            for (more, rotation) in self.more.iter().zip(&mut self.rotations) {
                let Some(listener) = more.get(slot as usize - 1) else { continue };
                match rotation.flush(slot, listener.fd(), backlog) {
                    Ok(0) => {}
                    Ok(waiting) => log::warn!(
                        "round-robin: slot {slot}: {waiting} connection(s) left with no worker on {}: moved \
                         to the slots in rotation (reset on a kernel before 5.14)",
                        listener.local
                    ),
                    Err(e) => log::warn!(
                        "round-robin: slot {slot}: cannot move what waits on {}: {e}",
                        listener.local
                    ),
                }
            }
        }
    }

    /// With no slot ready and accepting (every worker crashed, or stuck),
    /// new connections wait on the slots below the count, whose workers
    /// will serve them once ready: left to the kernel's hash, some would
    /// wait on a slot a scale down left, which nothing serves any more.
    fn apply(&mut self) {
        let mut active: Vec<u32> =
            self.ready.iter().copied().filter(|k| !self.watch.stuck.contains(k)).collect();
        if active.is_empty() {
            active = (0..self.count).collect();
        }
        if self.rotations.iter().all(|r| r.active() == active) {
            return;
        }
        log::debug!("round-robin: slots in rotation: {active:?}");
        for rotation in &mut self.rotations {
            if let Err(e) = rotation.set(&active) {
                log::warn!("round-robin: cannot update the rotation: {e}");
            }
        }
    }
}

/// Round-robin in the state handed over across an upgrade.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedBalance {
    pub(super) slots: u32,
    /// One per address, in the order of main's sockets.
    pub(super) groups: Vec<SavedGroup>,
    /// The workers that count for nothing ([`InRotation`]).
    pub(super) retired: Vec<i32>,
}

/// One address's slot sockets and rotation, as fd numbers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedGroup {
    /// Slots 1…, in order (slot 0's is main's socket of the address).
    pub(super) sockets: Vec<RawFd>,
    /// The rotation's state map, socket array and program.
    pub(super) state: RawFd,
    pub(super) socks: RawFd,
    pub(super) program: RawFd,
}

/// Which slots are in rotation, from the policy's generations. A staged
/// reload runs the new generation on slots 0… and scales the old one down
/// from the top, so for a while a low slot has two workers and a high one
/// none.
#[derive(Debug, Default)]
pub(super) struct InRotation {
    /// Workers seen on a slot at or above the count (a scale down told
    /// them to drain): they count for nothing, even if a scale up brings
    /// their slot back before they are gone.
    retired: BTreeSet<i32>,
}

impl InRotation {
    /// The slots below `count` on which a generation that is starting or
    /// ready has a ready worker that was never retired, in order.
    pub(super) fn update(&mut self, generations: &[Generation], count: u32) -> Vec<u32> {
        let live = || generations.iter().filter(|g| matches!(g.state, State::Starting | State::Ready));
        let on = |slot: u32| live().filter_map(move |g| g.workers.get(&slot)).filter(|w| w.pid != 0);
        let present: BTreeSet<i32> = live().flat_map(|g| g.workers.values().map(|w| w.pid)).collect();
        self.retired.retain(|pid| present.contains(pid));
        for g in live() {
            let drained = g.count().min(count);
            self.retired.extend(g.workers.range(drained..).map(|(_, w)| w.pid).filter(|&pid| pid != 0));
        }
        (0..count).filter(|&slot| on(slot).any(|w| w.ready && !self.retired.contains(&w.pid))).collect()
    }
}
