//! What the bench reads of `/proc` beyond the harness's process table:
//! the waits that stand where a settle sleep would (a reload's exits over
//! before the next reload; a process asleep with nothing pending before its
//! memory or CPU is read), and the resident memory of one process.
//!
//! Each wait polls its condition with a deadline (the harness's `within`:
//! every 2 ms at first, then less often) and, at the deadline, says what
//! it found instead.

use std::time::Duration;

use nix::unistd::Pid;

use crate::harness::within;
use crate::stats::mib;

/// Waits until everything below `main` is the serving generation, whose
/// process group is `serving` (its monitor's pid), and `main` sleeps: the
/// processes of the older generations, keepers included, have exited and
/// main has reaped them (none is left, not even as a zombie).
pub(crate) fn wait_settled(main: Pid, serving: Pid, limit: Duration) -> Result<(), String> {
    if within(limit, || unsettled(main, serving).is_empty().then_some(())).is_some() {
        return Ok(());
    }
    Err(format!(
        "after {limit:?}, still below main {main} beside generation group {serving}: {}",
        unsettled(main, serving).join(", ")
    ))
}

/// What keeps `main`'s tree from being the serving generation alone:
/// main awake, a zombie, a process of another group, one that vanished
/// while the tree was read.
fn unsettled(main: Pid, serving: Pid) -> Vec<String> {
    let mut found = Vec::new();
    match stat(main) {
        Some(('S', _)) => {}
        Some((state, _)) => found.push(format!("main in state {state}")),
        None => found.push("main gone".to_owned()),
    }
    let mut frontier = vec![main];
    while let Some(parent) = frontier.pop() {
        for pid in children(parent) {
            match stat(pid) {
                Some(('Z', group)) => found.push(format!("pid {pid} of group {group}, a zombie")),
                Some((_, group)) if group != serving.as_raw() => {
                    found.push(format!("pid {pid} of group {group}"));
                }
                Some(_) => {}
                None => found.push(format!("pid {pid}, gone while read")),
            }
            frontier.push(pid);
        }
    }
    found
}

/// The children of `pid`, zombies included, from the kernel's lists of
/// each of its threads' children.
fn children(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .map(Pid::from_raw)
        .collect()
}

/// State letter and process group of `pid` (`pid (comm) state ppid pgrp …`).
fn stat(pid: Pid) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Waits until `pid` sleeps in `poll(2)` with no timeout: its event loop
/// has nothing pending, not even the quiet timer after which main and a
/// monitor drop the code pages they ran (`sys::resident`: a loop that
/// wakes arms it; the drop disarms it). So its resident set is the one it
/// keeps while idle, and nothing wakes it until something happens.
pub(crate) fn wait_idle(pid: Pid, limit: Duration) -> Result<(), String> {
    let path = format!("/proc/{pid}/syscall");
    let mut last = String::new();
    let idle = within(limit, || match std::fs::read_to_string(&path) {
        Ok(text) => {
            let idle = polls_forever(&text);
            last = text.trim().to_owned();
            idle.then_some(Ok(()))
        }
        Err(e) => Some(Err(format!("cannot read {path}: {e}"))),
    });
    match idle {
        Some(read) => read,
        None => Err(format!(
            "pid {pid} not asleep in poll(2) with no timeout after {limit:?}: {path} says {last:?} \
             (read as poll(2) on x86_64 and aarch64 only)"
        )),
    }
}

/// Whether a `/proc/PID/syscall` line (`number arg1 … arg6 sp pc`, the
/// arguments in hex) shows `poll(2)` with no timeout, as the C library
/// makes that call on this architecture: `poll(fds, nfds, -1)`, or
/// `ppoll(fds, nfds, NULL, …)`.
fn polls_forever(line: &str) -> bool {
    const POLL: Option<u32> = if cfg!(target_arch = "x86_64") { Some(7) } else { None };
    const PPOLL: Option<u32> = if cfg!(target_arch = "x86_64") {
        Some(271)
    } else if cfg!(target_arch = "aarch64") {
        Some(73)
    } else {
        None
    };
    let mut fields = line.split_whitespace();
    let number = fields.next().and_then(|n| n.parse::<u32>().ok());
    let Some(third) = fields.nth(2).and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
    else {
        return false;
    };
    (number.is_some() && number == POLL && third as u32 == u32::MAX)
        || (number.is_some() && number == PPOLL && third == 0)
}

/// Resident memory of one process, in KiB.
pub(crate) struct Rss {
    pub(crate) total: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub(crate) pss: Option<u64>,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} MiB (anon {:.2}, file {:.2}, PSS {})",
            mib(self.total),
            mib(self.anon),
            mib(self.file),
            self.pss.map_or_else(|| "?".to_owned(), |p| format!("{:.2}", mib(p)))
        )
    }
}

/// VmRSS, RssAnon and RssFile from /proc/PID/status; Pss from
/// /proc/PID/smaps_rollup where the kernel has it.
pub(crate) fn rss(pid: Pid) -> Result<Rss, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("pid {pid}: {e}"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} for pid {pid}"))
    };
    Ok(Rss {
        total: field(&status, "VmRSS:")?,
        anon: field(&status, "RssAnon:")?,
        file: field(&status, "RssFile:")?,
        pss: field(&rollup, "Pss:").ok(),
    })
}
