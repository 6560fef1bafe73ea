//! `memory`, `idle-cpu`: what an idle panzer costs: the resident memory of
//! main and of the monitor once both sleep, at start and after reloads, and
//! the CPU they use over 10 s of nothing happening.

use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::bench::{line, Bench, Outcome, WORKERS};
use crate::harness::{children_of, cpu_ticks, without_keepers};
use crate::measured::PATIENCE;
use crate::proc::{rss, wait_idle, Rss};
use crate::stats::mib;

/// The idle period of `idle-cpu`.
const IDLE_PERIOD: Duration = Duration::from_secs(10);

/// Scenario 3: resident memory of main and of the monitor, once both sleep
/// (each drops the code pages it ran since it last slept before a long
/// sleep: `sys::resident`), at start and after reloads.
pub(crate) fn memory(bench: &Bench) -> Outcome {
    const RELOADS: u32 = 10;
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let at_start = [settled_rss(panzer.pid)?, settled_rss(panzer.monitor_of(1)?)?];
    for k in 2..=RELOADS + 1 {
        panzer.reload(k)?;
    }
    let after = [settled_rss(panzer.pid)?, settled_rss(panzer.monitor_of(RELOADS + 1)?)?];
    let total = |r: &[Rss; 2]| r[0].total + r[1].total;
    let pss = |r: &[Rss; 2]| r[0].pss.unwrap_or(u64::MAX) + r[1].pss.unwrap_or(u64::MAX);
    let worst = total(&at_start).max(total(&after));
    let worst_pss = pss(&at_start).max(pss(&after));
    let describe = |r: &[Rss; 2]| format!("main {} + monitor {} = {:.2} MiB", r[0], r[1], mib(total(r)));
    Ok(vec![line(
        "memory",
        &format!("VmRSS at start: {}; after {RELOADS} reloads: {}", describe(&at_start), describe(&after)),
        "main + monitor ≤ 3 MiB RSS, ≤ 1.5 MiB PSS",
        worst <= 3 * 1024 && worst_pss <= 1536,
        &bench.repro(
            "memory",
            &format!("--count {WORKERS} --ready notify"),
            "grep -E '^(Rss|Pss):' /proc/<main>/smaps_rollup /proc/<monitor>/smaps_rollup",
        ),
    )])
}

/// [`rss`] of `pid` once it sleeps with nothing pending: it has dropped
/// the code pages it ran (`sys::resident`), and its resident set is the one
/// it keeps while idle.
fn settled_rss(pid: Pid) -> Result<Rss, String> {
    wait_idle(pid, PATIENCE)?;
    rss(pid)
}

/// Scenario 4: CPU used by main and monitor while nothing happens.
pub(crate) fn idle_cpu(bench: &Bench) -> Outcome {
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let monitor = panzer.monitor_of(1)?;
    let workers: Vec<Pid> = without_keepers(children_of(monitor));
    // Past the one wake-up each makes to drop its code pages after start-up.
    wait_idle(panzer.pid, PATIENCE)?;
    wait_idle(monitor, PATIENCE)?;
    let before =
        (cpu_ticks(panzer.pid), cpu_ticks(monitor), workers.iter().map(|w| cpu_ticks(*w)).sum::<u64>());
    let deadline = Instant::now() + IDLE_PERIOD;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        thread::sleep(left.min(Duration::from_secs(1))); // the idle period measured
    }
    let after =
        (cpu_ticks(panzer.pid), cpu_ticks(monitor), workers.iter().map(|w| cpu_ticks(*w)).sum::<u64>());
    let (main, mon, work) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    Ok(vec![line(
        "idle-cpu",
        &format!(
            "over {} s idle: main {main} ticks, monitor {mon} ticks (utime+stime; {} workers: {work} \
             ticks)",
            IDLE_PERIOD.as_secs(),
            workers.len()
        ),
        "main + monitor 0 ticks",
        main + mon == 0,
        &bench.repro(
            "idle-cpu",
            &format!("--count {WORKERS} --ready notify"),
            "fields 14+15 of /proc/<main>/stat and /proc/<monitor>/stat, 10 s apart",
        ),
    )])
}
