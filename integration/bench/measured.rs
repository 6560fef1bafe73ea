//! One panzer under measurement: the tests' process guard with its log
//! read as it grows, each line stamped with the `Instant` it was read at,
//! and what the scenarios ask of it: its port, a generation's monitor, the
//! end of the reloads so far, a reload timed from the signal to the new
//! generation ready and the old one stopped.

use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::harness::{LogWatch, Panzer};
use crate::proc;

/// Limit for anything that should take a moment (a line, an exit).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// When one reload's milestones were seen.
pub(crate) struct Reload {
    pub(crate) signal: Instant,
    pub(crate) ready: Instant,
    /// The monitor's own `in X ms`.
    pub(crate) in_ms: u64,
    pub(crate) stopped: Instant,
    /// Milliseconds of the day, from the log lines' own timestamps.
    pub(crate) ready_stamp: Option<f64>,
    pub(crate) stopped_stamp: Option<f64>,
}

/// One panzer being measured: the tests' guard, which kills it and
/// everything below it on drop, and its log read as it grows.
pub(crate) struct Measured {
    pub(crate) guard: Panzer,
    pub(crate) log: LogWatch,
}

impl std::ops::Deref for Measured {
    type Target = Panzer;

    fn deref(&self) -> &Panzer {
        &self.guard
    }
}

impl Measured {
    /// The port of the first `listening on` line.
    pub(crate) fn port(&mut self) -> Result<u16, String> {
        let (_, text) = self.log.wait(0, "listening on ", PATIENCE)?;
        text.rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("no port in {text:?}"))
    }

    /// The monitor of generation `k`, from `starting generation k: …, monitor pid P`.
    pub(crate) fn monitor_of(&mut self, k: u32) -> Result<Pid, String> {
        let (_, text) = self.log.wait(0, &format!("starting generation {k}:"), PATIENCE)?;
        text.rsplit("monitor pid ")
            .next()
            .and_then(|p| p.trim().parse().ok())
            .map(Pid::from_raw)
            .ok_or_else(|| format!("no monitor pid in {text:?}"))
    }

    /// Waits until the reloads so far are over: nothing is left below main
    /// but generation `serving`, whose group is its monitor's (the older
    /// generations' processes, keepers included, have exited and main has
    /// reaped them), and main sleeps.
    pub(crate) fn wait_settled(&mut self, serving: u32) -> Result<(), String> {
        let monitor = self.monitor_of(serving)?;
        proc::wait_settled(self.pid, monitor, PATIENCE)
    }

    /// Sends `SIGUSR1` and waits for generation `k` to be ready and `k-1`
    /// to be stopped.
    pub(crate) fn reload(&mut self, k: u32) -> Result<Reload, String> {
        self.log.poll();
        let from = self.log.lines.len();
        let ready = format!("generation {k} ready:");
        let failed = format!("generation {k} failed");
        let signal = Instant::now();
        signal::kill(self.pid, Signal::SIGUSR1).map_err(|e| format!("kill -USR1: {e}"))?;
        let (ready_at, ready_line) = self.log.wait_any(from, &[&ready, &failed], PATIENCE)?;
        if !ready_line.contains(&ready) {
            return Err(format!("reload to generation {k} failed: {ready_line}"));
        }
        let stopped = format!("generation {} stopped", k - 1);
        let (stopped_at, stopped_line) = self.log.wait(from, &stopped, PATIENCE)?;
        Ok(Reload {
            signal,
            ready: ready_at,
            in_ms: in_ms(&ready_line)?,
            stopped: stopped_at,
            ready_stamp: stamp_ms(&ready_line),
            stopped_stamp: stamp_ms(&stopped_line),
        })
    }
}

/// `X` of `generation K ready: N/N workers in X ms`.
pub(crate) fn in_ms(line: &str) -> Result<u64, String> {
    // `generation 3 ready: 4/4 workers in 212 ms (accepting)`
    line.split(" workers in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no `in X ms` in {line:?}"))
}

/// Milliseconds of the day of a line's RFC 3339 timestamp (`…T12:34:56.789Z`).
pub(crate) fn stamp_ms(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}
