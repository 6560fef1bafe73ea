//! Readiness without the worker's help (`--ready accepting` and `auto`):
//! a worker is accepting once a process of its tree (itself or a
//! descendant, such as gunicorn's worker child) waits for connections on
//! one of the listening sockets, which `/proc` shows from outside:
//!
//! - an epoll instance has the socket's inode registered
//!   (`/proc/PID/fdinfo/N` of an `anon_inode:[eventpoll]` fd lists a
//!   `tfd: … ino: …` line per target);
//! - a thread is blocked in `accept`/`accept4` on an fd of the socket
//!   (`/proc/PID/task/TID/syscall`: the call's number and arguments);
//! - a thread is blocked in `poll`/`ppoll` or `select`/`pselect6` with
//!   the socket among its read fds (the set is read from `/proc/PID/mem`).
//!
//! Workers are looked at only while they start, and less as they age: every
//! millisecond for the first 5 ms (a fast server is accepting by then), every
//! 5 ms at 25 ms, every 50 ms from 250 ms; the walk reads the worker's own subtree
//! (`/proc/PID/task/*/children`), never all of `/proc`.
//!
//! The parsing is pure and tested on sample text; [`look`] is the thin
//! reader; [`Readiness`] decides, with time passed in.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::units::ReadyMode;

/// With `auto`, how long a worker whose accepting cannot be seen must stay
/// alive to count as ready (and with `accepting`, where `/proc` hides it).
pub(crate) const ALIVE_FALLBACK: Duration = Duration::from_secs(1);
/// The first look at a new worker: a fast server is already accepting.
const FIRST_LOOK: Duration = Duration::from_millis(1);
/// Shortest and longest time between two looks at a starting worker.
const FIRST_PERIOD: Duration = Duration::from_millis(1);
const LAST_PERIOD: Duration = Duration::from_millis(50);
/// Most processes of one worker's tree looked at, and most fds read from
/// one `poll` or `select` set: a bound on what one look costs.
const MAX_TREE: usize = 64;
const MAX_POLL_FDS: u64 = 4096;

/// What made a worker ready; the monitor logs it per generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Notify,
    Accepting,
    Alive(Duration),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Notify => write!(f, "notify"),
            Reason::Accepting => write!(f, "accepting"),
            Reason::Alive(d) if d.subsec_millis() == 0 => write!(f, "alive {}s", d.as_secs()),
            Reason::Alive(d) => write!(f, "alive {}ms", d.as_millis()),
        }
    }
}

/// What one look at a worker's process tree found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Waiting for connections on a listening socket.
    Accepting,
    /// Visibly waiting on something else: an epoll instance without the
    /// socket, or a blocking call whose fds do not include it. It would
    /// show if it were accepting.
    NotYet,
    /// Nothing that would show accepting (no epoll instance, not blocked
    /// in a call panzer can read), e.g. busy or asleep.
    Blind,
    /// `/proc` refused (another user, a non-dumpable process); the text says what.
    Hidden(String),
}

/// The readiness decisions of one monitor: which starting workers to look
/// at when, and what made each slot's worker ready. Pure: time is passed in.
#[derive(Debug)]
pub(crate) struct Readiness {
    mode: ReadyMode,
    /// Inodes of the listening sockets.
    inodes: Vec<u64>,
    /// Starting workers: when to look next.
    next: HashMap<i32, Instant>,
    /// Why each slot's current worker is ready.
    reasons: HashMap<u32, Reason>,
    /// Starting workers once seen waiting on something else: observable,
    /// so a later blind look (caught running) never makes them ready by
    /// time alive.
    observed: std::collections::HashSet<i32>,
    told_hidden: bool,
}

impl Readiness {
    pub(crate) fn new(mode: ReadyMode, inodes: Vec<u64>) -> Readiness {
        Readiness {
            mode,
            inodes,
            next: HashMap::new(),
            reasons: HashMap::new(),
            observed: std::collections::HashSet::new(),
            told_hidden: false,
        }
    }

    /// The monitor holds more listening sockets (a round-robin slot added).
    pub(crate) fn set_inodes(&mut self, inodes: Vec<u64>) {
        self.inodes = inodes;
    }

    /// The inodes of the listening sockets the monitor holds.
    pub(crate) fn socket_inodes(sockets: &[OwnedFd]) -> Vec<u64> {
        sockets.iter().filter_map(|fd| nix::sys::stat::fstat(fd).ok()).map(|st| st.st_ino).collect()
    }

    /// Whether `READY=1` makes a worker ready.
    pub(crate) fn counts_notify(&self) -> bool {
        matches!(self.mode, ReadyMode::Notify | ReadyMode::Auto)
    }

    fn watches(&self) -> bool {
        matches!(self.mode, ReadyMode::Accepting | ReadyMode::Auto)
    }

    /// Starting workers (`pid`, start time) due for a look at `now`. Forgets
    /// workers that are no longer starting.
    pub(crate) fn due(&mut self, starting: &[(i32, Instant)], now: Instant) -> Vec<i32> {
        if !self.watches() {
            return Vec::new();
        }
        self.next.retain(|pid, _| starting.iter().any(|(p, _)| p == pid));
        self.observed.retain(|pid| starting.iter().any(|(p, _)| p == pid));
        let mut due = Vec::new();
        for &(pid, started) in starting {
            let at = *self.next.entry(pid).or_insert(started + FIRST_LOOK);
            if at <= now {
                due.push(pid);
            }
        }
        due
    }

    /// What a look at `pid` (started at `started`) found at `now`: `Some`
    /// if that makes it ready. Schedules the next look otherwise.
    pub(crate) fn seen(&mut self, pid: i32, started: Instant, now: Instant, seen: &Seen) -> Option<Reason> {
        let alive = now.saturating_duration_since(started);
        if *seen == Seen::NotYet {
            self.observed.insert(pid);
        }
        let blind = *seen == Seen::Blind && !self.observed.contains(&pid);
        let ready = match (seen, self.mode) {
            (Seen::Accepting, _) => Some(Reason::Accepting),
            (Seen::Blind, ReadyMode::Auto) if blind && alive >= ALIVE_FALLBACK => {
                Some(Reason::Alive(ALIVE_FALLBACK))
            }
            (Seen::Hidden(_), _) if alive >= ALIVE_FALLBACK => Some(Reason::Alive(ALIVE_FALLBACK)),
            _ => None,
        };
        if ready.is_some() {
            self.next.remove(&pid);
            self.observed.remove(&pid);
        } else {
            // Back off with age, and look again right at the fallback time.
            let mut at = now + (alive / 5).clamp(FIRST_PERIOD, LAST_PERIOD);
            if alive < ALIVE_FALLBACK {
                at = at.min(started + ALIVE_FALLBACK);
            }
            self.next.insert(pid, at);
        }
        ready
    }

    /// True the first time only: `/proc` hid a worker.
    pub(crate) fn first_hidden(&mut self) -> bool {
        !std::mem::replace(&mut self.told_hidden, true)
    }

    /// When the next look is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next.values().min().copied()
    }

    pub(crate) fn inodes(&self) -> &[u64] {
        &self.inodes
    }

    /// The worker in slot `ordinal` is ready because of `reason`.
    pub(crate) fn ready(&mut self, ordinal: u32, reason: Reason) {
        self.reasons.insert(ordinal, reason);
    }

    /// What made the slots `ordinals` ready: `accepting`, or a mix such as
    /// `3 accepting, 1 notify`.
    pub(crate) fn summary(&self, ordinals: impl Iterator<Item = u32>) -> String {
        let mut counts: Vec<(Reason, usize)> = Vec::new();
        for reason in ordinals.filter_map(|o| self.reasons.get(&o)) {
            match counts.iter_mut().find(|(r, _)| r == reason) {
                Some((_, n)) => *n += 1,
                None => counts.push((*reason, 1)),
            }
        }
        counts.sort_by_key(|(r, n)| (std::cmp::Reverse(*n), r.to_string()));
        match counts.as_slice() {
            [(only, _)] => only.to_string(),
            _ => counts.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Looks at the process tree of worker `pid`: is any of it accepting on a
/// socket whose inode is in `inodes`?
pub(crate) fn look(pid: i32, inodes: &[u64]) -> Seen {
    if inodes.is_empty() {
        return Seen::Hidden("the workers have no listening socket".into());
    }
    let mut seen = Seen::Blind;
    // A process whose wait could not be read: unless another accepts, the
    // worker counts as hidden (1 s alive), never as visibly waiting.
    let mut hidden = None;
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() && tree.len() <= MAX_TREE {
        let p = tree[i];
        i += 1;
        match look_at_process(p, inodes, &mut tree) {
            Ok(Seen::Accepting) => return Seen::Accepting,
            Ok(Seen::NotYet) if hidden.is_none() => seen = Seen::NotYet,
            Ok(found @ Seen::Hidden(_)) => hidden = Some(found),
            Ok(_) => {}
            // Gone meanwhile: its parent's next look tells.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if p == pid || seen == Seen::Blind => {
                return Seen::Hidden(format!("/proc/{p}: {e}"));
            }
            Err(_) => {}
        }
    }
    hidden.unwrap_or(seen)
}

/// One process: its fds, epoll registrations and its threads' blocking
/// calls; appends its children to `tree`.
fn look_at_process(pid: i32, inodes: &[u64], tree: &mut Vec<i32>) -> io::Result<Seen> {
    let mut socket_fds = Vec::new();
    let mut epolls = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        if socket_inode(&target).is_some_and(|ino| inodes.contains(&ino)) {
            socket_fds.push(fd);
        } else if is_epoll(&target) {
            epolls.push(fd);
        }
    }
    let mut seen = if epolls.is_empty() { Seen::Blind } else { Seen::NotYet };
    for fd in epolls {
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        if epoll_targets(&info).any(|ino| inodes.contains(&ino)) {
            return Ok(Seen::Accepting);
        }
    }
    let mut mem = None;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        if let Ok(children) = fs::read_to_string(task.join("children")) {
            tree.extend(parse_children(&children));
        }
        let Ok(call) = fs::read_to_string(task.join("syscall")) else { continue };
        let Some((number, args)) = parse_syscall(&call) else { continue };
        let Some(wait) = Wait::of(number) else { continue };
        seen = Seen::NotYet;
        if socket_fds.is_empty() {
            continue;
        }
        // Reading a poll or select set needs /proc/PID/mem, which a
        // hardened kernel (Yama ptrace_scope 2 or 3) refuses: then this
        // worker is hidden, not "visibly waiting", so it cannot hang a
        // reload until the startup timeout.
        let hidden = || Seen::Hidden(format!("/proc/{pid}/mem cannot be read"));
        let accepting = match wait {
            Wait::Accept => socket_fds.contains(&(args[0] as i32)),
            Wait::Poll => {
                let len = args[1].min(MAX_POLL_FDS) * 8;
                match read_memory(&mut mem, pid, args[0], len) {
                    Some(bytes) => polls_for_input(&bytes, &socket_fds),
                    None => return Ok(hidden()),
                }
            }
            Wait::Select if args[1] == 0 => false,
            Wait::Select => {
                let len = args[0].min(MAX_POLL_FDS).div_ceil(64) * 8;
                match read_memory(&mut mem, pid, args[1], len) {
                    Some(bytes) => socket_fds.iter().any(|&fd| fd_set_has(&bytes, fd)),
                    None => return Ok(hidden()),
                }
            }
        };
        if accepting {
            return Ok(Seen::Accepting);
        }
    }
    Ok(seen)
}

/// `len` bytes of `pid`'s memory at `address`, opening `/proc/PID/mem` once.
fn read_memory(mem: &mut Option<fs::File>, pid: i32, address: u64, len: u64) -> Option<Vec<u8>> {
    if mem.is_none() {
        *mem = fs::File::open(format!("/proc/{pid}/mem")).ok();
    }
    let mut bytes = vec![0; len as usize];
    mem.as_ref()?.read_exact_at(&mut bytes, address).ok()?;
    Some(bytes)
}

/// The blocking calls that wait for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// `accept(fd, …)`, `accept4(fd, …)`.
    Accept,
    /// `poll(fds, nfds, …)`, `ppoll(fds, nfds, …)`.
    Poll,
    /// `select(nfds, readfds, …)`, `pselect6(nfds, readfds, …)`.
    Select,
}

impl Wait {
    #[cfg(target_arch = "x86_64")]
    fn of(number: i64) -> Option<Wait> {
        match number {
            43 | 288 => Some(Wait::Accept),
            7 | 271 => Some(Wait::Poll),
            23 | 270 => Some(Wait::Select),
            _ => None,
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn of(number: i64) -> Option<Wait> {
        match number {
            202 | 242 => Some(Wait::Accept),
            73 => Some(Wait::Poll),
            72 => Some(Wait::Select),
            _ => None,
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn of(_number: i64) -> Option<Wait> {
        None
    }
}

/// The inode of a `socket:[INODE]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn is_epoll(target: &str) -> bool {
    target == "anon_inode:[eventpoll]"
}

/// The inodes an epoll instance watches: `ino:` (hex) of each `tfd:` line
/// of its fdinfo.
fn epoll_targets(fdinfo: &str) -> impl Iterator<Item = u64> + '_ {
    fdinfo.lines().filter(|l| l.starts_with("tfd:")).filter_map(|line| {
        let hex = line.split_whitespace().find_map(|word| word.strip_prefix("ino:"))?;
        u64::from_str_radix(hex, 16).ok()
    })
}

/// A thread's `syscall` file: the number and the first two arguments of
/// the call it is blocked in; `None` when running or not in a call.
fn parse_syscall(text: &str) -> Option<(i64, [u64; 2])> {
    let mut words = text.split_whitespace();
    let number: i64 = words.next()?.parse().ok()?;
    if number < 0 {
        return None;
    }
    let mut arg = || u64::from_str_radix(words.next()?.strip_prefix("0x")?, 16).ok();
    Some((number, [arg()?, arg()?]))
}

/// Pids in a `task/TID/children` file.
fn parse_children(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.split_whitespace().filter_map(|p| p.parse().ok())
}

/// Whether an array of `struct pollfd` waits for input on one of `fds`.
fn polls_for_input(bytes: &[u8], fds: &[i32]) -> bool {
    bytes.chunks_exact(8).any(|entry| {
        let fd = i32::from_ne_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let events = i16::from_ne_bytes([entry[4], entry[5]]);
        fds.contains(&fd) && events & libc::POLLIN != 0
    })
}

/// Whether `fd` is set in an `fd_set` (an array of native-endian 64-bit words).
fn fd_set_has(bytes: &[u8], fd: i32) -> bool {
    let Ok(fd) = usize::try_from(fd) else { return false };
    let Some(word) = bytes.chunks_exact(8).nth(fd / 64) else { return false };
    let word = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
    word & (1 << (fd % 64)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn link_targets_name_sockets_and_epoll_instances() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123456));
        assert_eq!(socket_inode("pipe:[123456]"), None);
        assert_eq!(socket_inode("socket:[12x]"), None);
        assert!(is_epoll("anon_inode:[eventpoll]"));
        assert!(!is_epoll("anon_inode:[signalfd]"));
    }

    #[test]
    fn epoll_fdinfo_lists_the_watched_inodes_in_hex() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
            tfd:        3 events:       19 data:                3  pos:0 ino:1e240 sdev:8\n\
            tfd:        7 events:       19 data:                7  pos:0 ino:2a sdev:9\n";
        assert_eq!(epoll_targets(fdinfo).collect::<Vec<_>>(), vec![123456, 42]);
        assert_eq!(epoll_targets("pos:\t0\nflags:\t02\n").count(), 0, "an empty instance");
    }

    #[test]
    fn syscall_files_give_the_call_and_its_first_arguments() {
        let blocked = "288 0x3 0x7ffd5a1c 0x7ffd5a18 0x80800 0x0 0x0 0x7ffd5a00 0x7f3b1c\n";
        assert_eq!(parse_syscall(blocked), Some((288, [3, 0x7ffd5a1c])));
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd5a00 0x7f3b1c\n"), None);
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn children_files_list_pids() {
        assert_eq!(parse_children("4242 4243 \n").collect::<Vec<_>>(), vec![4242, 4243]);
        assert_eq!(parse_children("").count(), 0);
    }

    #[test]
    fn a_pollfd_array_waits_for_input_on_the_socket() {
        let entry = |fd: i32, events: i16| {
            let mut e = fd.to_ne_bytes().to_vec();
            e.extend(events.to_ne_bytes());
            e.extend(0i16.to_ne_bytes());
            e
        };
        let signals_only = entry(5, libc::POLLIN);
        let mut both = signals_only.clone();
        both.extend(entry(3, libc::POLLIN));
        assert!(!polls_for_input(&signals_only, &[3]));
        assert!(polls_for_input(&both, &[3]));
        assert!(!polls_for_input(&entry(3, libc::POLLOUT), &[3]), "writable is not accepting");
    }

    #[test]
    fn an_fd_set_is_a_bit_per_fd() {
        let mut set = [0u8; 16];
        set[..8].copy_from_slice(&(1u64 << 3).to_ne_bytes());
        set[8..].copy_from_slice(&(1u64 << 2).to_ne_bytes());
        assert!(fd_set_has(&set, 3));
        assert!(fd_set_has(&set, 66));
        assert!(!fd_set_has(&set, 4));
        assert!(!fd_set_has(&set, 200), "beyond the set");
    }

    fn readiness(mode: &str) -> (Readiness, Instant) {
        (Readiness::new(mode.parse().unwrap(), vec![1]), Instant::now())
    }

    #[test]
    fn a_starting_worker_is_looked_at_often_then_less() {
        let (mut r, t0) = readiness("auto");
        assert!(r.due(&[(10, t0)], t0).is_empty());
        assert_eq!(r.next_deadline(), Some(t0 + MS));
        assert_eq!(r.due(&[(10, t0)], t0 + MS), vec![10]);
        assert_eq!(r.seen(10, t0, t0 + MS, &Seen::NotYet), None);
        assert_eq!(r.next_deadline(), Some(t0 + 2 * MS), "every millisecond at first");
        r.seen(10, t0, t0 + 25 * MS, &Seen::NotYet);
        assert_eq!(r.next_deadline(), Some(t0 + 30 * MS), "every 5 ms at 25 ms");
        r.seen(10, t0, t0 + 2000 * MS, &Seen::NotYet);
        assert_eq!(r.next_deadline(), Some(t0 + 2050 * MS), "at most every 50 ms");
        assert!(r.due(&[], t0 + 3000 * MS).is_empty());
        assert_eq!(r.next_deadline(), None, "a worker no longer starting is forgotten");
    }

    #[test]
    fn accepting_is_ready_at_once_in_both_modes() {
        for mode in ["auto", "accepting"] {
            let (mut r, t0) = readiness(mode);
            assert_eq!(r.seen(10, t0, t0 + 5 * MS, &Seen::Accepting), Some(Reason::Accepting));
        }
    }

    #[test]
    fn auto_falls_back_to_alive_only_for_a_worker_it_cannot_watch() {
        let (mut r, t0) = readiness("auto");
        assert_eq!(r.seen(10, t0, t0 + 900 * MS, &Seen::Blind), None);
        assert_eq!(r.next_deadline(), Some(t0 + 950 * MS), "every 50 ms from 250 ms");
        r.seen(10, t0, t0 + 980 * MS, &Seen::Blind);
        assert_eq!(r.next_deadline(), Some(t0 + 1000 * MS), "looked at again right at 1 s");
        assert_eq!(r.seen(10, t0, t0 + 1000 * MS, &Seen::Blind), Some(Reason::Alive(ALIVE_FALLBACK)));
        // An epoll instance without the socket: visibly not accepting yet.
        assert_eq!(r.seen(11, t0, t0 + 5000 * MS, &Seen::NotYet), None);
    }

    #[test]
    fn accepting_waits_for_a_blind_worker_but_falls_back_where_proc_hides_it() {
        let (mut r, t0) = readiness("accepting");
        assert_eq!(r.seen(10, t0, t0 + 5000 * MS, &Seen::Blind), None);
        let hidden = Seen::Hidden("/proc/10: permission denied".into());
        assert_eq!(r.seen(10, t0, t0 + 500 * MS, &hidden), None);
        assert_eq!(r.seen(10, t0, t0 + 1000 * MS, &hidden), Some(Reason::Alive(ALIVE_FALLBACK)));
        assert!(r.first_hidden());
        assert!(!r.first_hidden(), "said once");
    }

    #[test]
    fn notify_and_durations_never_look() {
        for mode in ["notify", "1s"] {
            let (mut r, t0) = readiness(mode);
            assert!(r.due(&[(10, t0)], t0 + 10 * MS).is_empty());
            assert_eq!(r.next_deadline(), None);
        }
        assert!(readiness("notify").0.counts_notify());
        assert!(readiness("auto").0.counts_notify());
        assert!(!readiness("accepting").0.counts_notify());
        assert!(!readiness("1s").0.counts_notify());
    }

    #[test]
    fn the_summary_names_one_reason_or_counts_a_mix() {
        let (mut r, _) = readiness("auto");
        for o in 0..4 {
            r.ready(o, Reason::Accepting);
        }
        assert_eq!(r.summary(0..4), "accepting");
        r.ready(2, Reason::Notify);
        assert_eq!(r.summary(0..4), "3 accepting, 1 notify");
        r.ready(3, Reason::Alive(ALIVE_FALLBACK));
        assert_eq!(r.summary(0..4), "2 accepting, 1 alive 1s, 1 notify");
        assert_eq!(Reason::Alive(Duration::from_millis(250)).to_string(), "alive 250ms");
    }

    #[test]
    fn a_worker_once_seen_waiting_is_never_ready_by_time_after_a_look_that_caught_it_running() {
        let t0 = Instant::now();
        let mut r = Readiness::new(ReadyMode::Auto, vec![7]);
        assert_eq!(r.seen(10, t0, t0 + 5 * MS, &Seen::NotYet), None);
        // At the fallback time it happens to be on the CPU: no wait to read.
        assert_eq!(r.seen(10, t0, t0 + 1000 * MS, &Seen::Blind), None);
        assert_eq!(r.seen(10, t0, t0 + 1500 * MS, &Seen::Accepting), Some(Reason::Accepting));
    }
}
