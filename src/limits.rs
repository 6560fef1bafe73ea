//! The process limits panzer runs under, `RLIMIT_NPROC` and `RLIMIT_NOFILE`,
//! and what each role needs of them.
//!
//! Both limits are per process and inherited: main's limits are every
//! monitor's (main execs them with its own), and a monitor starts the
//! workers. So main, which knows a generation's sockets and options, can
//! tell up front how many workers a monitor can run ([`MonitorFds`]), and
//! refuse a count past that (`--count`, `scale`, `SIGTTIN`) instead of
//! leaving every extra slot to fail its start in a loop. The arithmetic is
//! written once, here, for both roles: main uses it to refuse, a monitor to
//! say what a start that ran out needed.

use std::io;

use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};

/// Most workers per generation, whatever the limits allow.
pub const COUNT_CEILING: u32 = 4096;

/// The soft `RLIMIT_NOFILE`, or `None` when unlimited (or unreadable).
pub fn nofile() -> Option<u64> {
    soft(Resource::RLIMIT_NOFILE)
}

/// The soft `RLIMIT_NPROC`, or `None` when unlimited (or unreadable).
pub fn nproc() -> Option<u64> {
    soft(Resource::RLIMIT_NPROC)
}

fn soft(resource: Resource) -> Option<u64> {
    match getrlimit(resource) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// What a monitor holds in descriptors, and needs to start a worker, from
/// what main knows of its generation. Counted from the code that opens
/// them (`monitor`, `monitor::output`, `sys::spawn`, `sys::fork`); a test
/// (`integration/descriptors.rs`) runs panzer at the edge of the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorFds {
    /// The listening sockets it passes to every worker.
    pub sockets: u32,
    /// `--tag-output`: a pair of pipes per worker.
    pub tag_output: bool,
    /// `--preload`: workers are forked, not exec'd (the app's own
    /// descriptors come on top, which main cannot count).
    pub library: bool,
    /// `--balance round-robin`: it holds `sockets` more for each worker
    /// slot (every slot has its own), and passes a worker its slot's.
    pub round_robin: bool,
}

/// What a monitor's loop may open for a moment between starts (a directory
/// and a file of `/proc` it reads to see whether a worker accepts).
const LOOKING: u64 = 2;

impl MonitorFds {
    /// Held whatever the count: 0–2, the status channel, the sockets, the
    /// signalfd, the notify socket, its own copy of stderr (`logging`
    /// opens one where stderr is a pipe or a terminal; of stdout too with
    /// `--tag-output`), and unless in library mode the pipe to the
    /// generation's keeper and the keeper's exec error pipe.
    pub fn held(&self) -> u64 {
        let keeper = if self.library { 0 } else { 2 };
        let own_output = if self.tag_output { 2 } else { 1 };
        3 + 1 + u64::from(self.sockets) + 2 + own_output + keeper
    }

    /// Held for each worker it runs: with `--tag-output`, the read ends of
    /// the worker's two pipes; with `--balance round-robin`, its slot's
    /// sockets (the first slot's are in [`MonitorFds::held`]).
    pub fn per_worker(&self) -> u64 {
        let pipes = if self.tag_output { 2 } else { 0 };
        let slot = if self.round_robin { u64::from(self.sockets) } else { 0 };
        pipes + slot
    }

    /// Free descriptors one worker start needs at its peak, the worker's
    /// own pipes included. Exec: the spawn's error pipe (2); in the child,
    /// its write end and a copy of every fd passed (the sockets, and with
    /// `--tag-output` the pipes' write ends) moved above their targets
    /// first; `--tag-output`'s two pipes (4). Fork (library mode): the
    /// thread count's read of `/proc/self/task` (1), and the pipes.
    pub fn worker_start(&self) -> u64 {
        let pipes = if self.tag_output { 4 } else { 0 };
        if self.library {
            return 1 + pipes;
        }
        let passed = u64::from(self.sockets) + if self.tag_output { 2 } else { 0 };
        2 + 1 + passed + pipes
    }

    /// Descriptors a monitor needs to run `count` workers and start the last.
    pub fn needed(&self, count: u64) -> u64 {
        let peak = self.worker_start().max(self.per_worker() + LOOKING);
        self.held() + count.saturating_sub(1) * self.per_worker() + peak
    }

    /// Most workers a monitor can run under `limit` (0: not even one).
    pub fn max_workers(&self, limit: u64) -> u64 {
        let first = self.needed(1);
        if limit < first {
            0
        } else if self.per_worker() == 0 {
            u64::MAX
        } else {
            1 + (limit - first) / self.per_worker()
        }
    }
}

/// What holds the count of workers down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// [`COUNT_CEILING`].
    Ceiling,
    /// The soft `RLIMIT_NPROC`.
    Nproc(u64),
    /// The soft `RLIMIT_NOFILE`, with what a monitor needs.
    Nofile(u64, MonitorFds),
    /// `--balance round-robin`: the slots the rotation has room for (the
    /// count ceiling, but where an older panzer set it up).
    Slots(u32),
}

/// The most workers per generation panzer runs, and why no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountCeiling {
    pub max: u32,
    pub bound: Bound,
}

impl CountCeiling {
    /// From the limits this process runs under; `fds` leaves out
    /// `RLIMIT_NOFILE` (where the generation's shape is not known).
    pub fn now(fds: Option<MonitorFds>) -> CountCeiling {
        CountCeiling::of(nproc(), fds.and_then(|fds| Some((nofile()?, fds))))
    }

    /// The lowest of [`COUNT_CEILING`], `nproc` (at least 1: panzer runs)
    /// and what `nofile` leaves room for.
    pub fn of(nproc: Option<u64>, nofile: Option<(u64, MonitorFds)>) -> CountCeiling {
        let mut ceiling = CountCeiling { max: COUNT_CEILING, bound: Bound::Ceiling };
        if let Some(limit) = nproc.filter(|&n| n < u64::from(COUNT_CEILING)) {
            ceiling = CountCeiling { max: limit.max(1) as u32, bound: Bound::Nproc(limit) };
        }
        if let Some((limit, fds)) = nofile {
            let max = fds.max_workers(limit);
            if max < u64::from(ceiling.max) {
                ceiling = CountCeiling { max: max as u32, bound: Bound::Nofile(limit, fds) };
            }
        }
        ceiling
    }

    /// `count` if it is at most the ceiling; otherwise an error naming
    /// `what` (`--count 5000`, `scale 5000`), the ceiling and why.
    pub fn check(&self, what: &str, count: u64) -> Result<u32, String> {
        if count <= u64::from(self.max) {
            return Ok(count as u32);
        }
        let why = match self.bound {
            Bound::Ceiling => String::new(),
            Bound::Slots(slots) => format!(
                " (the --balance round-robin rotation an older panzer set up has room for {slots}; restart \
                 panzer to run more)"
            ),
            Bound::Nproc(limit) => {
                format!(" (RLIMIT_NPROC allows {limit} processes; raise it with ulimit -u)")
            }
            Bound::Nofile(limit, fds) => {
                let per_worker = match fds.per_worker() {
                    0 => String::new(),
                    n => format!(" and {n} per worker"),
                };
                let app = if fds.library { " (besides the app's own)" } else { "" };
                format!(
                    " (RLIMIT_NOFILE is {limit}: a monitor holds {} descriptors{app}{per_worker}, and a \
                     worker needs {} to start; raise it with ulimit -n)",
                    fds.held(),
                    fds.worker_start()
                )
            }
        };
        Err(match self.max {
            0 => format!("{what}: no worker can start{why}"),
            1 => format!("{what}: at most 1 worker{why}"),
            max => format!("{what}: at most {max} workers{why}"),
        })
    }
}

/// The most workers per generation panzer runs: [`COUNT_CEILING`], or the
/// soft `RLIMIT_NPROC` when that is lower (unlimited counts as the
/// ceiling). `--count`, `PANZER_COUNT`, `scale` and `SIGTTIN` are held to it,
/// so a large number is refused up front instead of tried; main also holds
/// them to what `RLIMIT_NOFILE` leaves room for (`config::count_ceiling`).
/// Only the tests ask for it by itself.
#[cfg(test)]
pub fn max_count() -> u32 {
    CountCeiling::now(None).max
}

/// `count` if it is at most [`max_count`]; otherwise an error naming `what`
/// (`--count 5000`, `scale 5000`) and the ceiling.
pub fn check_count(what: &str, count: u64) -> Result<u32, String> {
    CountCeiling::now(None).check(what, count)
}

/// A count of workers as the command line gives it (`--count`,
/// `PANZER_COUNT`): a whole number from 1; one that is not names the range
/// this process can run, `1..=4096` or lower under `RLIMIT_NPROC`. Above
/// the ceiling, [`CountCeiling::check`] says why.
pub fn parse_count(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(n as u32),
        _ => Err(count_range(s, CountCeiling::now(None))),
    }
}

/// `invalid count 'S': workers per generation are 1..=MAX (why)`.
fn count_range(s: &str, ceiling: CountCeiling) -> String {
    let why = match ceiling.bound {
        Bound::Nproc(limit) => format!(" (RLIMIT_NPROC is {limit})"),
        _ => String::new(),
    };
    format!("invalid count '{s}': workers per generation are 1..={}{why}", ceiling.max)
}

/// Whether `error` means this process (`EMFILE`) or the system (`ENFILE`)
/// has no descriptor left.
pub fn out_of_fds(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// `error` as a short phrase that, where a limit refused it, names the limit
/// and its value: `too many open files (RLIMIT_NOFILE is 24; a worker needs
/// 10)` (`needs`: what the refused start needed), `cannot fork: resource
/// temporarily unavailable (RLIMIT_NPROC is 50)` (`forking`: `error` came
/// from `fork`).
pub fn explain(error: &io::Error, forking: bool, needs: Option<u64>) -> String {
    let text = crate::error::describe(error);
    let needs = needs.map(|n| format!("; a worker needs {n}")).unwrap_or_default();
    match error.raw_os_error() {
        Some(libc::EMFILE) => match nofile() {
            Some(limit) => format!("{text} (RLIMIT_NOFILE is {limit}{needs})"),
            None => text,
        },
        Some(libc::ENFILE) => "the system's file table is full (ENFILE; see fs.file-max)".into(),
        // The C library's words for it, which `ulimit -u` users know.
        Some(libc::EAGAIN) if forking => match nproc() {
            Some(limit) => format!("cannot fork: resource temporarily unavailable (RLIMIT_NPROC is {limit})"),
            None => "cannot fork: resource temporarily unavailable".into(),
        },
        _ if forking => format!("cannot fork: {text}"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_that_is_no_whole_number_from_1_names_the_range() {
        assert_eq!(parse_count("3"), Ok(3));
        for bad in ["0", "-1", "x", "", "99999999999"] {
            assert!(parse_count(bad)
                .unwrap_err()
                .starts_with(&format!("invalid count '{bad}': workers per generation are 1..=")));
        }
        assert_eq!(
            count_range("0", CountCeiling::of(None, None)),
            "invalid count '0': workers per generation are 1..=4096"
        );
        assert_eq!(
            count_range("0", CountCeiling::of(Some(50), None)),
            "invalid count '0': workers per generation are 1..=50 (RLIMIT_NPROC is 50)"
        );
    }

    #[test]
    fn counts_above_the_ceiling_are_refused_naming_both() {
        assert!(max_count() >= 1 && max_count() <= COUNT_CEILING);
        assert_eq!(check_count("--count 1", 1), Ok(1));
        assert_eq!(check_count("--count 4096", max_count().into()), Ok(max_count()));
        let err = check_count("--count 4294967295", u32::MAX.into()).unwrap_err();
        assert!(err.starts_with(&format!("--count 4294967295: at most {} workers", max_count())), "{err}");
    }

    const TAGGED: MonitorFds =
        MonitorFds { sockets: 1, tag_output: true, library: false, round_robin: false };
    const PLAIN: MonitorFds =
        MonitorFds { sockets: 1, tag_output: false, library: false, round_robin: false };

    #[test]
    fn a_round_robin_monitor_holds_a_set_of_sockets_per_worker_and_passes_one() {
        // Two addresses, so 2 sockets per slot.
        let fds = MonitorFds { sockets: 2, round_robin: true, ..PLAIN };
        assert_eq!((fds.held(), fds.per_worker(), fds.worker_start()), (11, 2, 5));
        // 4 workers: 11 held, 3 more slots of 2, and room to start the last.
        assert_eq!(fds.needed(4), 11 + 6 + 5);
        assert_eq!(fds.max_workers(22), 4);
    }

    #[test]
    fn a_tagged_monitor_holds_two_per_worker_and_needs_ten_to_start_one_with_one_socket() {
        // With the keeper's two pipes: count 1 needs 21, count 2 needs 23.
        assert_eq!((TAGGED.held(), TAGGED.per_worker(), TAGGED.worker_start()), (11, 2, 10));
        assert_eq!(TAGGED.needed(1), 21);
        assert_eq!(TAGGED.needed(2), 23);
        assert_eq!(TAGGED.max_workers(20), 0);
        assert_eq!(TAGGED.max_workers(21), 1);
        assert_eq!(TAGGED.max_workers(22), 1);
        assert_eq!(TAGGED.max_workers(24), 2);
    }

    #[test]
    fn without_tagged_output_workers_cost_the_monitor_nothing_once_started() {
        assert_eq!((PLAIN.held(), PLAIN.per_worker(), PLAIN.worker_start()), (10, 0, 4));
        assert_eq!(PLAIN.max_workers(13), 0);
        assert_eq!(PLAIN.max_workers(14), u64::MAX);
        let forked = MonitorFds { library: true, ..PLAIN };
        assert_eq!(forked.needed(1), 8 + LOOKING);
    }

    #[test]
    fn the_lowest_limit_sets_the_ceiling_and_is_named() {
        let ceiling = CountCeiling::of(None, None);
        assert_eq!(ceiling, CountCeiling { max: COUNT_CEILING, bound: Bound::Ceiling });
        assert_eq!(ceiling.check("--count 5000", 5000).unwrap_err(), "--count 5000: at most 4096 workers");

        let ceiling = CountCeiling::of(Some(50), Some((1024, TAGGED)));
        assert_eq!(ceiling.max, 50);
        assert_eq!(
            ceiling.check("scale 51", 51).unwrap_err(),
            "scale 51: at most 50 workers (RLIMIT_NPROC allows 50 processes; raise it with ulimit -u)"
        );

        let ceiling = CountCeiling::of(Some(50), Some((26, TAGGED)));
        assert_eq!(ceiling.check("scale 3", 3), Ok(3));
        assert_eq!(
            ceiling.check("scale 4", 4).unwrap_err(),
            "scale 4: at most 3 workers (RLIMIT_NOFILE is 26: a monitor holds 11 descriptors and 2 per \
             worker, and a worker needs 10 to start; raise it with ulimit -n)"
        );
        assert!(CountCeiling::of(None, Some((21, TAGGED)))
            .check("--count 2", 2)
            .unwrap_err()
            .starts_with("--count 2: at most 1 worker (RLIMIT_NOFILE is 21"));
        let ceiling = CountCeiling::of(None, Some((13, PLAIN)));
        assert_eq!(
            ceiling.check("--count 1", 1).unwrap_err(),
            "--count 1: no worker can start (RLIMIT_NOFILE is 13: a monitor holds 10 descriptors, and a \
             worker needs 4 to start; raise it with ulimit -n)"
        );
        assert_eq!(CountCeiling::of(None, Some((14, PLAIN))).max, COUNT_CEILING);
    }

    #[test]
    fn errors_name_the_limit_that_refused_them() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let eagain = io::Error::from_raw_os_error(libc::EAGAIN);
        match nofile() {
            Some(limit) => {
                let expected = format!("too many open files (RLIMIT_NOFILE is {limit}; a worker needs 10)");
                assert_eq!(explain(&emfile, false, Some(10)), expected);
                assert_eq!(
                    explain(&emfile, true, None),
                    format!("too many open files (RLIMIT_NOFILE is {limit})")
                );
            }
            None => assert_eq!(explain(&emfile, false, Some(10)), "too many open files"),
        }
        let forked = explain(&eagain, true, None);
        assert!(forked.starts_with("cannot fork: resource temporarily unavailable"), "{forked}");
        assert_eq!(nproc().is_some(), forked.contains("(RLIMIT_NPROC is "), "{forked}");
        assert_eq!(explain(&eagain, false, None), crate::error::describe(&eagain));
        let enfile = io::Error::from_raw_os_error(libc::ENFILE);
        assert_eq!(
            explain(&enfile, true, Some(10)),
            "the system's file table is full (ENFILE; see fs.file-max)"
        );
        assert!(out_of_fds(&emfile) && out_of_fds(&enfile));
        assert!(!out_of_fds(&eagain));
    }
}
