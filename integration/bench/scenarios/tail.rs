//! `reload-tail-fresh`, `reload-tail-keepalive`, `reload-tail-auto`,
//! `reload-tail-bare`: the slowest request during reloads as an outside
//! latency probe sees it, one `GET /` every 2 ms, against a baseline as
//! long between reloads; the bare one replaces servers without panzer
//! (`bare.rs`), the floor the others are held to.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};

use super::bare::Bare;
use crate::bench::{line, Bench, Outcome, WORKERS};
use crate::load::{connect, exchange, kind, phase, LOAD_LIMIT, REQUEST_CLOSE, REQUEST_KEEP};
use crate::measured::{in_ms, stamp_ms, Measured, Reload, PATIENCE};
use crate::stats::{max, median, ms, percentile};

/// `reload-tail`: what the slowest request waits while panzer reloads, the
/// way an outside latency probe sees it: one request every `TAIL_PERIOD`
/// at a steady pace (a fresh connection each, or one kept-alive connection),
/// a reload every `TAIL_PACE`, `TAIL_RELOADS` times. A poll counts as
/// "during a reload" if it overlaps signal → old generation stopped
/// + `TAIL_SETTLE`; every other poll is the steady-state baseline.
pub(crate) fn reload_tail(bench: &Bench, name: &str, keep_alive: bool, ready: &str) -> Outcome {
    let count = WORKERS.to_string();
    let env: &[(&str, &str)] = if ready == "notify" { &[] } else { &[("NO_NOTIFY", "1")] };
    let mut panzer = bench.panzer(&["--count", &count, "--ready", ready], env)?;
    let port = panzer.port()?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let (polls, reloads) = poll_through_reloads(port, keep_alive, |k| reload_quietly(&mut panzer, k))?;
    let options =
        format!("--count {WORKERS} --ready {ready}{}", if env.is_empty() { "" } else { " (NO_NOTIFY=1)" });
    let repro = bench.repro(
        name,
        &options,
        &format!(
            "GET / every {} ms while {} × kill -USR1 <main>, {} s apart",
            TAIL_PERIOD.as_millis(),
            reloads.len(),
            TAIL_PACE.as_secs()
        ),
    );
    Ok(tail_report(name, &polls, &reloads, keep_alive, &repro))
}

/// `reload-tail-bare`: `reload-tail` without panzer, the floor it is held
/// to. The bench binds the socket and plays the least a launcher can do:
/// start 4 servers on it (`sh` moves the socket to fd 3 and execs the
/// server), wait for their 4 `READY=1`, `SIGTERM` the 4 old ones and reap
/// them. The same server start-ups and drains on the same 2 CPUs, with no
/// main, monitor or log.
pub(crate) fn reload_tail_bare(bench: &Bench) -> Outcome {
    let name = "reload-tail-bare";
    let mut bare = Bare::new(bench)?;
    let port = bare.port;
    let (polls, reloads) = poll_through_reloads(port, false, |k| bare.reload(k))?;
    let repro = bench.repro(
        name,
        "",
        &format!(
            "no panzer: GET / every {} ms while 4 new servers replace the 4 serving ones {} times, {} s \
             apart",
            TAIL_PERIOD.as_millis(),
            reloads.len(),
            TAIL_PACE.as_secs()
        ),
    );
    Ok(tail_report(name, &polls, &reloads, false, &repro))
}

/// Runs the steady poller while `reload(k)` for k = 2…`TAIL_RELOADS` + 1
/// is called every `TAIL_PACE`; returns the polls and the reloads.
fn poll_through_reloads(
    port: u16,
    keep_alive: bool,
    mut reload: impl FnMut(u32) -> Result<Reload, String>,
) -> Result<(Vec<TailPoll>, Vec<Reload>), String> {
    let stop = AtomicBool::new(false);
    let hard_stop = Instant::now() + LOAD_LIMIT;
    let (polls, reloads) = thread::scope(|s| {
        let poller = s.spawn(|| poll_steadily(port, keep_alive, &stop, hard_stop));
        let mut reloads = Vec::new();
        let first = Instant::now() + TAIL_PACE / 2;
        let mut outcome = Ok(());
        for k in 2..=TAIL_RELOADS + 1 {
            let at = first + TAIL_PACE * (k - 2);
            if let Some(left) = at.checked_duration_since(Instant::now()) {
                thread::sleep(left); // pacing, not synchronisation
            }
            match reload(k) {
                Ok(r) => reloads.push(r),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            thread::sleep(TAIL_PACE / 2); // the last steady stretch
        }
        stop.store(true, Ordering::Relaxed);
        let polls = poller.join().expect("the poller panicked");
        (polls, outcome.map(|()| reloads))
    });
    Ok((polls, reloads?))
}

/// The `reload-tail` result line and where the slowest polls fell.
fn tail_report(
    name: &str,
    polls: &[TailPoll],
    reloads: &[Reload],
    keep_alive: bool,
    repro: &str,
) -> Vec<String> {
    // Each reload's window, and a baseline window as long, half a pace
    // later, when nothing happens: the same number of polls under the
    // same background load.
    let windows: Vec<(Instant, Instant)> =
        reloads.iter().map(|r| (r.signal, r.stopped + TAIL_SETTLE)).collect();
    let baselines: Vec<(Instant, Instant)> =
        windows.iter().map(|(from, to)| (*from + TAIL_PACE / 2, *to + TAIL_PACE / 2)).collect();
    let overlaps = |p: &&TailPoll, spans: &[(Instant, Instant)]| {
        spans.iter().any(|(from, to)| p.at + p.total >= *from && p.at <= *to)
    };
    let during: Vec<&TailPoll> = polls.iter().filter(|p| overlaps(p, &windows)).collect();
    let baseline: Vec<&TailPoll> = polls.iter().filter(|p| overlaps(p, &baselines)).collect();
    let failed = polls.iter().filter(|p| p.failed.is_some()).count();
    let times = |set: &[&TailPoll]| set.iter().map(|p| ms(p.total)).collect::<Vec<f64>>();
    let all: Vec<&TailPoll> = polls.iter().collect();
    let (during_ms, baseline_ms, all_ms) = (times(&during), times(&baseline), times(&all));
    let slowest = max(&during_ms);
    let over = |set: &[f64]| set.iter().filter(|t| **t > 5.0).count();
    let reload_ms: Vec<f64> = reloads.iter().map(|r| ms(r.ready - r.signal)).collect();
    let window_ms: Vec<f64> = windows.iter().map(|(from, to)| ms(*to - *from)).collect();
    let how = if keep_alive { "one kept-alive connection" } else { "a fresh connection each" };
    let figures = format!(
        "slowest poll during reloads {slowest:.2} ms (p99 {:.2} p99.9 {:.2} median {:.2}, {} of {} \
         polls > 5 ms); baseline as long between reloads: slowest {:.2} ms (p99 {:.2} median {:.2}, {} \
         of {} > 5 ms); whole run slowest {:.2} ms p99.9 {:.2} ({} polls, {failed} failed); 1 poll / \
         {} ms ({how}), {} reloads every {} s, signal→ready median {:.1} ms, window signal→stopped \
         + {} ms median {:.0} ms",
        percentile(&during_ms, 99.0),
        percentile(&during_ms, 99.9),
        median(&during_ms),
        over(&during_ms),
        during.len(),
        max(&baseline_ms),
        percentile(&baseline_ms, 99.0),
        median(&baseline_ms),
        over(&baseline_ms),
        baseline.len(),
        max(&all_ms),
        percentile(&all_ms, 99.9),
        polls.len(),
        TAIL_PERIOD.as_millis(),
        reloads.len(),
        TAIL_PACE.as_secs(),
        median(&reload_ms),
        TAIL_SETTLE.as_millis(),
        median(&window_ms),
    );
    let mut lines = vec![line(
        name,
        &figures,
        "slowest poll during reloads ≤ 5 ms, 0 failed",
        slowest <= 5.0 && failed == 0,
        repro,
    )];
    // Where the slowest polls during reloads fell, to tell start-up from drain.
    let mut worst = during.clone();
    worst.sort_by_key(|p| std::cmp::Reverse(p.total));
    for p in worst.iter().take(TAIL_SHOWN) {
        let (offset, phase) = phase(p.at, reloads);
        let what = match &p.failed {
            Some(e) => format!("failed ({e})"),
            None => format!("answered by generation {}", p.generation),
        };
        lines.push(format!(
            "    {:.2} ms (connect {:.2} ms), sent {offset} ({phase}), {what}",
            ms(p.total),
            ms(p.connect),
        ));
    }
    lines.push(tail_profile(polls, reloads));
    lines
}

/// The polls by time since the latest signal: how many, the slowest, and
/// how many took over 2 ms, per span; a reload that costs the requests
/// something shows as a worse start than the spans long after it.
fn tail_profile(polls: &[TailPoll], reloads: &[Reload]) -> String {
    const EDGES_MS: [u64; 9] = [0, 2, 5, 10, 20, 50, 100, 500, 2000];
    let mut spans: Vec<Vec<f64>> = vec![Vec::new(); EDGES_MS.len() - 1];
    for p in polls {
        let Some(r) = reloads.iter().rev().find(|r| r.signal <= p.at) else { continue };
        let since = (p.at - r.signal).as_millis() as u64;
        if let Some(i) = EDGES_MS.windows(2).position(|w| w[0] <= since && since < w[1]) {
            spans[i].push(ms(p.total));
        }
    }
    let parts: Vec<String> = EDGES_MS
        .windows(2)
        .zip(&spans)
        .map(|(w, t)| {
            let slow = t.iter().filter(|t| **t > 2.0).count();
            format!("{}-{} ms: {} polls max {:.2} >2ms {}", w[0], w[1], t.len(), max(t), slow)
        })
        .collect();
    format!("    by time since SIGUSR1: {}", parts.join("; "))
}

/// Polls of `reload-tail`: one request this often…
const TAIL_PERIOD: Duration = Duration::from_millis(2);
/// …a reload this often…
const TAIL_PACE: Duration = Duration::from_secs(2);
/// …this many times.
const TAIL_RELOADS: u32 = 20;
/// A poll this soon after the old generation stopped still counts as
/// during the reload.
const TAIL_SETTLE: Duration = Duration::from_millis(20);
/// The slowest polls described one by one.
const TAIL_SHOWN: usize = 5;

/// One request of the steady poller.
struct TailPoll {
    /// Right before connecting (or writing, on a kept-alive connection).
    at: Instant,
    /// Spent connecting (zero on a kept-alive connection).
    connect: Duration,
    /// Connect (if any) + request + whole response.
    total: Duration,
    generation: u32,
    failed: Option<String>,
}

/// One request every `TAIL_PERIOD`, each on time or, when the previous one
/// ran late, right after it (no burst to catch up), until `stop`.
fn poll_steadily(port: u16, keep_alive: bool, stop: &AtomicBool, hard_stop: Instant) -> Vec<TailPoll> {
    let mut polls = Vec::new();
    let mut kept: Option<TcpStream> = None;
    let request = if keep_alive { REQUEST_KEEP } else { REQUEST_CLOSE };
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            thread::sleep(left); // the poll rate, not synchronisation
        }
        next = (next + TAIL_PERIOD).max(Instant::now());
        let at = Instant::now();
        let mut stream = match kept.take() {
            Some(stream) => stream,
            None => match connect(port) {
                Ok(stream) => stream,
                Err(e) => {
                    let total = at.elapsed();
                    let failed = Some(format!("connect: {}", kind(&e)));
                    polls.push(TailPoll { at, connect: total, total, generation: 0, failed });
                    continue;
                }
            },
        };
        let connect = at.elapsed();
        let (generation, failed) = match exchange(&mut stream, request) {
            Ok(reply) if reply.status == 200 => {
                if keep_alive && !reply.close {
                    kept = Some(stream);
                }
                (reply.generation, None)
            }
            Ok(reply) => (reply.generation, Some(format!("status {}", reply.status))),
            Err(what) => (0, Some(what)),
        };
        polls.push(TailPoll { at, connect, total: at.elapsed(), generation, failed });
    }
    polls
}

/// `Measured::reload` with the log read every 2 ms instead of every 250 µs,
/// so that the bench's own waiting takes as little CPU as it can from the
/// requests being timed (the phases it finds are late by up to 2 ms).
fn reload_quietly(panzer: &mut Measured, k: u32) -> Result<Reload, String> {
    panzer.log.poll();
    let from = panzer.log.lines.len();
    let ready = format!("generation {k} ready:");
    let failed = format!("generation {k} failed");
    let stopped = format!("generation {} stopped", k - 1);
    let signal = Instant::now();
    signal::kill(panzer.pid, Signal::SIGUSR1).map_err(|e| format!("kill -USR1: {e}"))?;
    let deadline = signal + PATIENCE;
    loop {
        thread::sleep(Duration::from_millis(2)); // a poll period, not synchronisation
        panzer.log.poll();
        let seen = &panzer.log.lines[from..];
        if let Some((_, l)) = seen.iter().find(|(_, l)| l.contains(&failed)) {
            return Err(format!("reload to generation {k} failed: {l}"));
        }
        let ready_line = seen.iter().find(|(_, l)| l.contains(&ready));
        let stopped_line = seen.iter().find(|(_, l)| l.contains(&stopped));
        if let (Some((ready_at, ready_line)), Some((stopped_at, stopped_line))) = (ready_line, stopped_line) {
            return Ok(Reload {
                signal,
                ready: *ready_at,
                in_ms: in_ms(ready_line)?,
                stopped: *stopped_at,
                ready_stamp: stamp_ms(ready_line),
                stopped_stamp: stamp_ms(stopped_line),
            });
        }
        if Instant::now() > deadline {
            return Err(format!("generation {k} not ready and {} not stopped after {PATIENCE:?}", k - 1));
        }
    }
}
