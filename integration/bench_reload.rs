//! `cargo bench --bench reload`: what a hot restart costs, measured on the
//! real `panzer` binary serving the `server` test fixture (release build).
//!
//! Scenarios (pass names, or parts of names, after `--` to run a subset):
//!
//! * `failures-fresh`: 64 clients, a new connection per request, while main
//!   gets 50 × `SIGUSR1`. Every connect/read/write error and every non-200
//!   counts as failed. Target: 0.
//! * `failures-keepalive`: the same with kept-alive connections; a client
//!   reconnects when the server answers `Connection: close`. Failures on a
//!   reused connection and on a new one are counted apart.
//! * `reload-latency`: idle, ≥ 20 reloads. Signal → `generation K ready` (wall
//!   time, and the monitor's own `in X ms`); panzer's overhead is the
//!   difference. Then new generation ready → `generation K-1 stopped`.
//! * `reload-auto`: the same idle reloads with the default `--ready auto` and
//!   a server that never sends `READY=1` (`NO_NOTIFY=1`): panzer must see it
//!   accept. Target: the monitor's `in X ms` within 5 ms of the server's own
//!   start-up (spawn → `READY=1` when run alone).
//! * `reload-tail-fresh`, `reload-tail-keepalive`, `reload-tail-auto`: the
//!   slowest request during reloads, as an outside latency probe sees it: one
//!   `GET /` every 2 ms (a fresh connection each, one kept-alive connection,
//!   or fresh under `--ready auto` with `NO_NOTIFY=1`) while main gets a
//!   `SIGUSR1` every 2 s, 20 times; the slowest poll, p99 and p99.9 during
//!   the reloads, the same over a baseline window as long between reloads,
//!   and the polls by time since the signal. Target: ≤ 5 ms.
//! * `reload-tail-bare`: the same poller and reload pace with no panzer: the
//!   bench binds the socket and replaces 4 servers with 4 new ones itself;
//!   the floor `reload-tail-fresh` is held to.
//! * `memory`: VmRSS of main and of the monitor, at start and after reloads.
//! * `idle-cpu`: CPU ticks of main and monitor over 10 s of idleness.
//! * `start-64`: panzer start → `generation 1 ready` with 64 workers.
//! * `staged-rolling`, `staged-canary`: 10 reloads with `--reload-strategy
//!   rolling:1` or `--canary 200ms` under 16 clients: failed requests (0),
//!   the most workers alive at once (N + 1, and 2N after a canary), and the
//!   time from the signal to the new generation serving.
//! * `upgrade`: 50 × `SIGUSR2` (panzer re-executes itself in place, from a
//!   copy of the binary) under 32 fresh and 32 kept-alive clients: failed
//!   requests (target 0), and the time from the signal to the new image's
//!   first answer on the control socket.
//! * `preload`: library mode against exec mode, 8 workers of
//!   `examples/preload.rs` with a 200 MB table: the sum of the PSS of the
//!   monitor and its workers (target: library mode ≤ 1.2 × one table), panzer
//!   start → generation 1 ready, and 5 idle reloads (signal → ready, ready →
//!   old generation stopped) in each mode.
//!
//! Timing method: the bench never parses timestamps for wall times. It takes
//! an `Instant` right before `kill(2)` (or before spawning panzer) and polls
//! the log file every 250 µs, stamping each new line with the `Instant` it
//! was read at; so a figure is late by at most one poll period plus a read.
//!
//! Process hygiene is the tests' own (`integration/harness.rs`, included
//! below): panzer runs in a process group of its own; on drop (also on
//! panic), and on Ctrl-C or SIGTERM of the bench, main's group, every
//! descendant and every descendant's group get `SIGKILL`. Ports are
//! 127.0.0.1:0; every wait has a deadline; sleeps only pace the reloads or
//! make up the idle period being measured.

#[allow(dead_code, unused_imports)] // the bench uses part of the tests' harness
#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigSet, Signal};
use nix::unistd::Pid;

use harness::{
    children_of, cpu_ticks, descendants_of, kill_every_panzer, process_table, read_response, within,
    without_keepers, LogWatch, Panzer, TestDir,
};

/// Workers per generation in every scenario but `start-64`.
const WORKERS: u32 = 4;
/// Concurrent load-generating clients.
const CLIENTS: usize = 64;
/// Reloads under load.
const LOADED_RELOADS: u32 = 50;
/// Least time between two reloads under load.
const RELOAD_PACE: Duration = Duration::from_millis(200);
/// Idle reloads measured for latency.
const IDLE_RELOADS: u32 = 25;
/// Limit for anything that should take a moment (a line, an exit).
const PATIENCE: Duration = Duration::from_secs(30);
/// Connect, read and write timeout of a client request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// No load thread runs longer than this, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// The idle period of `idle-cpu`.
const IDLE_PERIOD: Duration = Duration::from_secs(10);

const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const REQUEST_KEEP: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

type Outcome = Result<Vec<String>, String>;

struct Scenario {
    name: &'static str,
    run: fn(&Bench) -> Outcome,
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "failures-fresh", run: |b| failures(b, false) },
    Scenario { name: "failures-keepalive", run: |b| failures(b, true) },
    Scenario { name: "reload-latency", run: reload_latency },
    Scenario { name: "reload-auto", run: reload_auto },
    Scenario { name: "reload-tail-fresh", run: |b| reload_tail(b, "reload-tail-fresh", false, "notify") },
    Scenario {
        name: "reload-tail-keepalive",
        run: |b| reload_tail(b, "reload-tail-keepalive", true, "notify"),
    },
    Scenario { name: "reload-tail-auto", run: |b| reload_tail(b, "reload-tail-auto", false, "auto") },
    Scenario { name: "reload-tail-bare", run: reload_tail_bare },
    Scenario { name: "memory", run: memory },
    Scenario { name: "idle-cpu", run: idle_cpu },
    Scenario { name: "start-64", run: start_64 },
    Scenario {
        name: "staged-rolling",
        run: |b| staged(b, "rolling", &["--reload-strategy", "rolling:1"], 1),
    },
    Scenario { name: "staged-canary", run: |b| staged(b, "canary", &["--canary", "200ms"], WORKERS) },
    Scenario { name: "upgrade", run: upgrade },
    Scenario { name: "preload", run: preload },
];

/// Reloads per staged scenario (each takes N steps, or a canary soak).
const STAGED_RELOADS: u32 = 10;

fn main() -> ExitCode {
    guard_against_signals();
    // cargo passes `--bench`; anything else not starting with `-` filters.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let bench = match Bench::new() {
        Ok(bench) => bench,
        Err(e) => {
            eprintln!("bench reload: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut errors = 0;
    for scenario in SCENARIOS {
        if !filters.is_empty() && !filters.iter().any(|f| scenario.name.contains(f.as_str())) {
            continue;
        }
        let outcome = std::panic::catch_unwind(|| (scenario.run)(&bench))
            .unwrap_or_else(|_| Err("panicked (see above)".to_owned()));
        match outcome {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                errors += 1;
                println!("{:<26} ERROR: {e} | {}", scenario.name, bench.repro(scenario.name, "", ""));
            }
        }
        let _ = io::stdout().flush();
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// Scenario 1: failed requests while main reloads 50 times under load.
fn failures(bench: &Bench, keep_alive: bool) -> Outcome {
    let name = if keep_alive { "failures-keepalive" } else { "failures-fresh" };
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    let port = panzer.port()?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;

    let stop = AtomicBool::new(false);
    let served = AtomicU64::new(0);
    let hard_stop = Instant::now() + LOAD_LIMIT;
    let (tally, reloads, load_time) = thread::scope(|s| {
        let clients: Vec<_> =
            (0..CLIENTS).map(|_| s.spawn(|| client(port, keep_alive, &stop, &served, hard_stop))).collect();
        let started = Instant::now();
        let driven = drive_reloads(&mut panzer, &served);
        stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for c in clients {
            tally.merge(c.join().expect("a client thread panicked"));
        }
        (tally, driven, started.elapsed())
    });
    let reloads = reloads?;

    let requests = tally.ok + tally.failed_new + tally.failed_reused;
    let failed = tally.failed_new + tally.failed_reused;
    let rate = requests as f64 / load_time.as_secs_f64();
    let reload_ms: Vec<f64> = reloads.iter().map(|r| ms(r.ready - r.signal)).collect();
    let in_x: Vec<f64> = reloads.iter().map(|r| r.in_ms as f64).collect();
    let mut figures = if keep_alive {
        format!(
            "{failed} failed of {requests} requests: {} on reused kept-alive connections, \
             {} on new ones; {} connections opened, {} closed by the server",
            tally.failed_reused, tally.failed_new, tally.connections, tally.server_closes
        )
    } else {
        format!("{failed} failed of {requests} requests")
    };
    let _ = write!(
        figures,
        " ({:.0} req/s, {CLIENTS} clients, {} reloads, signal→ready median {:.1} ms p99 {:.1} ms \
         of which `in X ms` median {:.0} p99 {:.0}, last answer from generation {})",
        rate,
        reloads.len(),
        median(&reload_ms),
        p99(&reload_ms),
        median(&in_x),
        p99(&in_x),
        tally.max_generation,
    );
    if tally.max_generation != LOADED_RELOADS + 1 {
        figures.push_str(" [the newest generation never answered]");
    }
    let mut lines = vec![line(
        name,
        &figures,
        "0 failed",
        failed == 0,
        &bench.repro(
            name,
            &format!("--count {WORKERS} --ready notify"),
            &format!("{LOADED_RELOADS} × kill -USR1 <main> under {CLIENTS} clients"),
        ),
    )];
    lines.extend(describe_failures(&tally, &reloads));
    Ok(lines)
}

/// Staged reloads (`--reload-strategy rolling:1`, `--canary 200ms`) under
/// load of fresh connections: failed requests, the most workers alive at
/// once (target N + K; a canary followed by `all` needs 2N), and how long a
/// reload takes.
fn staged(bench: &Bench, what: &str, options: &[&str], extra: u32) -> Outcome {
    let name = format!("staged-{what}");
    let count = WORKERS.to_string();
    let mut args = vec!["--count", &count, "--ready", "notify"];
    args.extend_from_slice(options);
    let mut panzer = bench.panzer(&args, &[])?;
    let port = panzer.port()?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let main = panzer.pid;
    let server = bench.server.to_string_lossy().into_owned();

    let stop = AtomicBool::new(false);
    let served = AtomicU64::new(0);
    let peak = AtomicU64::new(0);
    let hard_stop = Instant::now() + LOAD_LIMIT;
    let (tally, reloads) = thread::scope(|s| {
        let clients: Vec<_> =
            (0..CLIENTS / 4).map(|_| s.spawn(|| client(port, false, &stop, &served, hard_stop))).collect();
        let sampler = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                let table = process_table();
                let alive = descendants_of(main)
                    .iter()
                    .filter(|p| table.get(p).is_some_and(|info| info.cmdline.starts_with(&server)))
                    .count() as u64;
                peak.fetch_max(alive, Ordering::Relaxed);
                thread::yield_now();
            }
        });
        let mut reloads = Vec::new();
        let warm = Instant::now() + PATIENCE;
        while served.load(Ordering::Relaxed) < 200 && Instant::now() < warm {
            thread::yield_now();
        }
        for k in 2..=STAGED_RELOADS + 1 {
            match panzer.reload(k) {
                Ok(reload) => reloads.push(reload),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return (Tally::default(), Err(e));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let mut tally = Tally::default();
        for c in clients {
            tally.merge(c.join().expect("a client thread panicked"));
        }
        (tally, Ok(reloads))
    });
    let reloads = reloads?;
    let failed = tally.failed_new + tally.failed_reused;
    let requests = tally.ok + failed;
    let reload_ms: Vec<f64> = reloads.iter().map(|r| ms(r.ready - r.signal)).collect();
    let peak = peak.load(Ordering::Relaxed);
    let allowed = u64::from(WORKERS + extra);
    let figures = format!(
        "{failed} failed of {requests} requests; at most {peak} workers alive (N = {WORKERS}); \
         signal→new generation serving median {:.1} ms p99 {:.1} ms over {} reloads ({} clients)",
        median(&reload_ms),
        p99(&reload_ms),
        reloads.len(),
        CLIENTS / 4,
    );
    Ok(vec![line(
        &name,
        &figures,
        &format!("0 failed, at most {allowed} alive"),
        failed == 0 && peak <= allowed,
        &bench.repro(
            &name,
            &format!("--count {WORKERS} --ready notify {}", options.join(" ")),
            &format!("{STAGED_RELOADS} × kill -USR1 <main> under {} clients", CLIENTS / 4),
        ),
    )])
}

/// Scenario 2: how long a reload takes and how much of it is panzer's.
fn reload_latency(bench: &Bench) -> Outcome {
    let alone = server_alone(bench, 20)?;
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let mut reloads = Vec::new();
    for k in 2..=IDLE_RELOADS + 1 {
        // Let the previous reload's last log lines and exits settle.
        thread::sleep(Duration::from_millis(30));
        reloads.push(panzer.reload(k)?);
    }
    let wall: Vec<f64> = reloads.iter().map(|r| ms(r.ready - r.signal)).collect();
    let in_x: Vec<f64> = reloads.iter().map(|r| r.in_ms as f64).collect();
    let overhead: Vec<f64> = wall.iter().zip(&in_x).map(|(w, x)| w - x).collect();
    let gone: Vec<f64> = reloads.iter().map(|r| ms(r.stopped - r.ready)).collect();
    let gone_ts: Vec<f64> = reloads.iter().filter_map(|r| Some(r.stopped_stamp? - r.ready_stamp?)).collect();
    let n = reloads.len();
    let repro = bench.repro(
        "reload-latency",
        &format!("--count {WORKERS} --ready notify"),
        &format!("idle, {n} × kill -USR1 <main>"),
    );
    Ok(vec![
        line(
            "reload-latency/overhead",
            &format!(
                "n={n} signal→ready median {:.1} ms p99 {:.1} ms; monitor's `in X ms` median {:.1} \
                 p99 {:.1}; panzer overhead median {:.1} ms p99 {:.1} ms; server alone \
                 spawn→READY=1 median {:.1} ms p99 {:.1} ms",
                median(&wall),
                p99(&wall),
                median(&in_x),
                p99(&in_x),
                median(&overhead),
                p99(&overhead),
                median(&alone),
                p99(&alone),
            ),
            "overhead median ≤ 5 ms",
            median(&overhead) <= 5.0,
            &repro,
        ),
        line(
            "reload-latency/old-gone",
            &format!(
                "n={n} generation K ready → `generation K-1 stopped` median {:.1} ms p99 {:.1} ms \
                 (by log timestamps: median {:.0} ms p99 {:.0} ms)",
                median(&gone),
                p99(&gone),
                median(&gone_ts),
                p99(&gone_ts),
            ),
            "median ≤ 20 ms",
            median(&gone) <= 20.0,
            &repro,
        ),
    ])
}

/// Scenario: idle reloads with `--ready auto` of a server that never
/// notifies, so each new worker is seen accepting.
fn reload_auto(bench: &Bench) -> Outcome {
    let alone = server_alone(bench, 20)?;
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "auto"], &[("NO_NOTIFY", "1")])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let mut reloads = Vec::new();
    for k in 2..=IDLE_RELOADS + 1 {
        // Let the previous reload's last log lines and exits settle.
        thread::sleep(Duration::from_millis(30));
        reloads.push(panzer.reload(k)?);
    }
    panzer.log.poll();
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    // main's `generation K ready: N/N workers in X ms (accepting)`.
    for (_, text) in panzer.log.lines.iter().filter(|(_, l)| l.contains(" ready: ") && l.ends_with(')')) {
        let reason = text.rsplit('(').next().unwrap_or("").trim_end_matches(')');
        *reasons.entry(reason.to_owned()).or_default() += 1;
    }
    let wall: Vec<f64> = reloads.iter().map(|r| ms(r.ready - r.signal)).collect();
    let in_x: Vec<f64> = reloads.iter().map(|r| r.in_ms as f64).collect();
    let n = reloads.len();
    let repro = bench.repro(
        "reload-auto",
        &format!("--count {WORKERS} --ready auto (NO_NOTIFY=1)"),
        &format!("idle, {n} × kill -USR1 <main>"),
    );
    let margin = median(&in_x) - median(&alone);
    Ok(vec![line(
        "reload-auto",
        &format!(
            "n={n} signal→ready median {:.1} ms p99 {:.1} ms; monitor's `in X ms` median {:.1} p99 \
             {:.1}; server alone spawn→READY=1 median {:.1} ms, so panzer saw it accept {margin:.1} ms \
             after its start-up; decided by {reasons:?}",
            median(&wall),
            p99(&wall),
            median(&in_x),
            p99(&in_x),
            median(&alone),
        ),
        "`in X ms` median ≤ start-up + 5 ms",
        margin <= 5.0,
        &repro,
    )])
}

/// `reload-tail`: what the slowest request waits while panzer reloads, the
/// way an outside latency probe sees it: one request every `TAIL_PERIOD`
/// at a steady pace (a fresh connection each, or one kept-alive connection),
/// a reload every `TAIL_PACE`, `TAIL_RELOADS` times. A poll counts as
/// "during a reload" if it overlaps signal → old generation stopped
/// + `TAIL_SETTLE`; every other poll is the steady-state baseline.
fn reload_tail(bench: &Bench, name: &str, keep_alive: bool, ready: &str) -> Outcome {
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
fn reload_tail_bare(bench: &Bench) -> Outcome {
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

/// The launcher of `reload-tail-bare`: a socket, 4 servers on it, and
/// their notify socket.
struct Bare {
    server: PathBuf,
    listener: std::net::TcpListener,
    port: u16,
    notify: UnixDatagram,
    notify_path: PathBuf,
    serving: Vec<KillOnDrop>,
    _dir: TestDir,
}

impl Bare {
    fn new(bench: &Bench) -> Result<Bare, String> {
        let dir = TestDir::new("tail-bare");
        let notify_path = dir.join("notify");
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("bind {notify_path:?}: {e}"))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let mut bare = Bare {
            server: bench.server.clone(),
            listener,
            port,
            notify,
            notify_path,
            serving: Vec::new(),
            _dir: dir,
        };
        bare.serving = bare.start(1)?;
        Ok(bare)
    }

    /// Starts generation `k`'s 4 servers and waits for their `READY=1`.
    fn start(&self, k: u32) -> Result<Vec<KillOnDrop>, String> {
        let mut started = Vec::new();
        for worker in 0..WORKERS {
            let socket = self.listener.try_clone().map_err(|e| format!("dup: {e}"))?;
            let child = Command::new("sh")
                .args(["-c", "exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec \"$0\""])
                .arg(&self.server)
                .env("LISTEN_FDS", "1")
                .env_remove("LISTEN_FDNAMES")
                .env("PANZER_GENERATION", k.to_string())
                .env("PANZER_WORKER", worker.to_string())
                .env("NOTIFY_SOCKET", &self.notify_path)
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(socket)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start sh: {e}"))?;
            started.push(KillOnDrop(child));
        }
        let deadline = Instant::now() + PATIENCE;
        let mut ready = 0;
        let mut buf = [0u8; 512];
        while ready < WORKERS {
            let left =
                deadline.checked_duration_since(Instant::now()).ok_or("bare servers never all ready")?;
            self.notify
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            match self.notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => ready += 1,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(e) => return Err(format!("notify socket: {e}")),
            }
        }
        Ok(started)
    }

    /// New servers ready, then the old ones drained (`SIGTERM`) and reaped;
    /// exits are checked every 2 ms, as `reload_quietly` reads the log.
    fn reload(&mut self, k: u32) -> Result<Reload, String> {
        let signal = Instant::now();
        let fresh = self.start(k)?;
        let ready = Instant::now();
        let mut old = std::mem::replace(&mut self.serving, fresh);
        for child in &old {
            let _ = signal::kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM);
        }
        let deadline = ready + PATIENCE;
        while !old.is_empty() {
            thread::sleep(Duration::from_millis(2)); // a poll period, not synchronisation
            old.retain_mut(|c| !matches!(c.0.try_wait(), Ok(Some(_))));
            if Instant::now() > deadline {
                return Err(format!("generation {} of bare servers still running", k - 1));
            }
        }
        let stopped = Instant::now();
        let in_ms = (ready - signal).as_millis() as u64;
        Ok(Reload { signal, ready, in_ms, stopped, ready_stamp: None, stopped_stamp: None })
    }
}

/// Scenario 3: resident memory of main and of the monitor, once both sleep
/// (each drops the code pages it ran since it last slept before a long
/// sleep: `sys::resident`), at start and after reloads.
fn memory(bench: &Bench) -> Outcome {
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

/// How long main and monitor stay quiet before they drop the code pages
/// they ran (`sys::resident::QUIET`, 250 ms), with a margin.
const SHED_AFTER: Duration = Duration::from_millis(400);

/// [`rss`] of `pid` once it has been quiet long enough to drop its code
/// pages, asleep, with a resident set that has stopped changing.
fn settled_rss(pid: Pid) -> Result<Rss, String> {
    // Nothing to poll for: the drop is internal to the process.
    thread::sleep(SHED_AFTER);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = rss(pid)?;
    loop {
        thread::sleep(Duration::from_millis(50));
        let asleep = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('S')))
            .unwrap_or(false);
        let now = rss(pid)?;
        if (asleep && now.total == last.total) || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Scenario 4: CPU used by main and monitor while nothing happens.
fn idle_cpu(bench: &Bench) -> Outcome {
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let monitor = panzer.monitor_of(1)?;
    let workers: Vec<Pid> = without_keepers(children_of(monitor));
    // Past the one wake-up each makes to drop its code pages after start-up.
    thread::sleep(SHED_AFTER);
    let before =
        (cpu_ticks(panzer.pid), cpu_ticks(monitor), workers.iter().map(|w| cpu_ticks(*w)).sum::<u64>());
    let deadline = Instant::now() + IDLE_PERIOD;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        thread::sleep(left.min(Duration::from_secs(1)));
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

/// Scenario 5: start a generation of 64 workers that notify at once.
fn start_64(bench: &Bench) -> Outcome {
    const RUNS: usize = 5;
    let mut wall = Vec::new();
    let mut in_x = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut panzer = bench.panzer(&["--count", "64", "--ready", "notify"], &[])?;
        let (at, text) = panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
        wall.push(ms(at - started));
        in_x.push(in_ms(&text)? as f64);
    }
    Ok(vec![line(
        "start-64",
        &format!(
            "n={RUNS} panzer start → generation 1 ready median {:.1} ms max {:.1} ms; monitor's `in \
             X ms` median {:.0} max {:.0}",
            median(&wall),
            p99(&wall),
            median(&in_x),
            p99(&in_x),
        ),
        "median ≤ 100 ms",
        median(&wall) <= 100.0,
        &bench.repro("start-64", "--count 64 --ready notify", ""),
    )])
}

/// Scenario: library mode (`--preload`) against exec mode with a large
/// preloaded table: memory, generation start, reloads.
fn preload(bench: &Bench) -> Outcome {
    const TABLE_MB: u64 = 200;
    const COUNT: usize = 8;
    const RELOADS: u32 = 5;
    let app = bench.server.with_file_name("preload");
    if let Some(cargo) = std::env::var_os("CARGO") {
        if bench
            .server
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .is_some_and(|d| d == "release")
        {
            build_example(&cargo, "preload")?;
        }
    }
    if !app.exists() {
        return Err(format!("{} is missing: run `cargo build --release --examples`", app.display()));
    }
    let app = app.to_string_lossy().into_owned();
    let table_mb = TABLE_MB.to_string();
    let count = COUNT.to_string();
    let mut lines = Vec::new();
    for (mode, preload) in [("exec", false), ("library", true)] {
        let mut args = vec!["--bind", "127.0.0.1:0", "--count", &count, "--ready", "notify"];
        if preload {
            args.insert(0, "--preload");
        }
        args.push(&app);
        let started = Instant::now();
        let guard = Panzer::start_via(&bench.panzer.to_string_lossy(), &args, &[("PRELOAD_MB", &table_mb)]);
        let mut panzer = Measured { log: guard.watch_log(), guard };
        let (ready_at, _) = panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
        let start_ms = ms(ready_at - started);
        let monitor = panzer.monitor_of(1)?;
        let workers = without_keepers(children_of(monitor));
        if workers.len() != COUNT {
            return Err(format!("{mode} mode: {} workers under monitor {monitor}", workers.len()));
        }
        let pss = |pid: Pid| rss(pid).map(|r| r.pss.unwrap_or(r.total));
        let workers_pss = workers.iter().map(|w| pss(*w)).sum::<Result<u64, String>>()?;
        let total_pss = workers_pss + pss(monitor)?;
        let mut reloads = Vec::new();
        for k in 2..=RELOADS + 1 {
            thread::sleep(Duration::from_millis(30));
            reloads.push(panzer.reload(k)?);
        }
        let wall: Vec<f64> = reloads.iter().map(|r| ms(r.ready - r.signal)).collect();
        let gone: Vec<f64> = reloads.iter().map(|r| ms(r.stopped - r.ready)).collect();
        lines.push(line(
            &format!("preload/{mode}"),
            &format!(
                "{COUNT} workers, {TABLE_MB} MB table: PSS workers {:.1} MiB, with monitor {:.1} MiB \
                 ({:.2} × table); start → generation 1 ready {:.0} ms; n={RELOADS} reloads signal→ready \
                 median {:.0} ms max {:.0} ms, ready→old stopped median {:.0} ms",
                mib(workers_pss),
                mib(total_pss),
                total_pss as f64 / (TABLE_MB * 1024) as f64,
                start_ms,
                median(&wall),
                p99(&wall),
                median(&gone),
            ),
            if preload { "PSS ≤ 1.2 × table" } else { "(reference)" },
            !preload || total_pss as f64 <= 1.2 * (TABLE_MB * 1024) as f64,
            &format!(
                "repro: cargo bench --bench reload -- preload  # PRELOAD_MB={TABLE_MB} panzer{} --bind \
                 127.0.0.1:0 --count {COUNT} --ready notify target/release/examples/preload; sum Pss of \
                 /proc/<monitor and workers>/smaps_rollup",
                if preload { " --preload" } else { "" }
            ),
        ));
    }
    Ok(lines)
}

/// One result line: name, figures, target, verdict, how to reproduce.
fn line(name: &str, figures: &str, target: &str, pass: bool, repro: &str) -> String {
    let verdict = if pass { "PASS" } else { "MISS" };
    format!("{name:<26} {figures} | target: {target} | {verdict} | {repro}")
}

// ---------------------------------------------------------------------------
// Reloads

/// When one reload's milestones were seen.
struct Reload {
    signal: Instant,
    ready: Instant,
    /// The monitor's own `in X ms`.
    in_ms: u64,
    stopped: Instant,
    /// Milliseconds of the day, from the log lines' own timestamps.
    ready_stamp: Option<f64>,
    stopped_stamp: Option<f64>,
}

/// Reloads `LOADED_RELOADS` times, each after the previous one's new
/// generation is ready and its old one stopped, and at least `RELOAD_PACE`
/// after the previous signal.
fn drive_reloads(panzer: &mut Measured, served: &AtomicU64) -> Result<Vec<Reload>, String> {
    let warm = Instant::now() + PATIENCE;
    while served.load(Ordering::Relaxed) < 1000 {
        if Instant::now() > warm {
            return Err("the server never answered 1000 requests".to_owned());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let mut reloads = Vec::new();
    for k in 2..=LOADED_RELOADS + 1 {
        let reload = panzer.reload(k)?;
        let next = reload.signal + RELOAD_PACE;
        reloads.push(reload);
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            thread::sleep(left); // pacing, not synchronisation
        }
    }
    // Let the clients run a moment on the last generation.
    thread::sleep(RELOAD_PACE);
    Ok(reloads)
}

/// Where the failures fell relative to the reloads.
fn describe_failures(tally: &Tally, reloads: &[Reload]) -> Vec<String> {
    let mut lines = Vec::new();
    if tally.kinds.is_empty() {
        return lines;
    }
    let kinds: Vec<String> = tally.kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
    lines.push(format!("    failure kinds: {}", kinds.join(", ")));
    let mut phases: BTreeMap<&str, u64> = BTreeMap::new();
    for (at, _, _) in &tally.samples {
        phases.entry(phase(*at, reloads).1).and_modify(|n| *n += 1).or_insert(1);
    }
    let phases: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    lines.push(format!(
        "    of {} sampled failures (each client's first 20): {}",
        tally.samples.len(),
        phases.join(", ")
    ));
    let mut samples: Vec<&(Instant, bool, String)> = tally.samples.iter().collect();
    samples.sort_by_key(|s| s.0);
    for (at, reused, what) in samples.iter().take(8) {
        let (offset, phase) = phase(*at, reloads);
        let conn = if *reused { "reused" } else { "new" };
        lines.push(format!("    e.g. {what} on a {conn} connection, {offset} ({phase})"));
    }
    lines
}

/// Describes `at` as an offset from the latest reload signal before it.
fn phase(at: Instant, reloads: &[Reload]) -> (String, &'static str) {
    let Some((i, r)) = reloads.iter().enumerate().rev().find(|(_, r)| r.signal <= at) else {
        return ("before the first reload".to_owned(), "before any reload");
    };
    let offset = format!("{:.1} ms after SIGUSR1 #{}", ms(at - r.signal), i + 1);
    let phase = if at < r.ready {
        "while the new generation started"
    } else if at < r.stopped {
        "while the old generation drained"
    } else {
        "after the old generation stopped"
    };
    (offset, phase)
}

// ---------------------------------------------------------------------------
// Load

/// What one client saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Failed on a new connection: connecting, or its first request.
    failed_new: u64,
    /// Failed on a kept-alive connection that had already served a request.
    failed_reused: u64,
    connections: u64,
    /// Responses that said `Connection: close` to a keep-alive request.
    server_closes: u64,
    max_generation: u32,
    kinds: BTreeMap<String, u64>,
    /// The first few failures: when, on a reused connection?, what.
    samples: Vec<(Instant, bool, String)>,
}

impl Tally {
    fn fail(&mut self, reused: bool, what: String) {
        if reused {
            self.failed_reused += 1;
        } else {
            self.failed_new += 1;
        }
        if self.samples.len() < 20 {
            self.samples.push((Instant::now(), reused, what.clone()));
        }
        let conn = if reused { "reused" } else { "new" };
        *self.kinds.entry(format!("{what} ({conn})")).or_insert(0) += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed_new += other.failed_new;
        self.failed_reused += other.failed_reused;
        self.connections += other.connections;
        self.server_closes += other.server_closes;
        self.max_generation = self.max_generation.max(other.max_generation);
        for (kind, n) in other.kinds {
            *self.kinds.entry(kind).or_insert(0) += n;
        }
        self.samples.extend(other.samples);
    }
}

/// One load-generating client: requests back to back until `stop`.
fn client(port: u16, keep_alive: bool, stop: &AtomicBool, served: &AtomicU64, hard_stop: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut kept: Option<TcpStream> = None;
    let request = if keep_alive { REQUEST_KEEP } else { REQUEST_CLOSE };
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let reused = kept.is_some();
        let mut stream = match kept.take() {
            Some(stream) => stream,
            None => match connect(port) {
                Ok(stream) => {
                    tally.connections += 1;
                    stream
                }
                Err(e) => {
                    tally.fail(false, format!("connect: {}", kind(&e)));
                    thread::sleep(Duration::from_millis(1)); // no hot loop on a dead port
                    continue;
                }
            },
        };
        match exchange(&mut stream, request) {
            Ok(reply) if reply.status == 200 => {
                tally.ok += 1;
                served.fetch_add(1, Ordering::Relaxed);
                tally.max_generation = tally.max_generation.max(reply.generation);
                if keep_alive {
                    if reply.close {
                        tally.server_closes += 1;
                    } else {
                        kept = Some(stream);
                    }
                }
            }
            Ok(reply) => tally.fail(reused, format!("status {}", reply.status)),
            Err(what) => tally.fail(reused, what),
        }
    }
    tally
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let stream = harness::connect(port)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

struct Reply {
    status: u16,
    close: bool,
    generation: u32,
}

/// Sends `request`, reads one response. The error names the step that
/// failed and how.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<Reply, String> {
    stream.write_all(request).map_err(|e| format!("write: {}", kind(&e)))?;
    let response = read_response(stream).map_err(|e| format!("read: {}", kind(&e)))?;
    Ok(Reply {
        status: response.status,
        close: response.closes(),
        generation: response.find("generation").and_then(|g| g.parse().ok()).unwrap_or(0),
    })
}

fn kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".to_owned(),
        io::ErrorKind::UnexpectedEof => e.to_string(),
        k => format!("{k:?}"),
    }
}

// ---------------------------------------------------------------------------
// server on its own

/// Spawn → `READY=1` of server without panzer (it binds 127.0.0.1:0 itself),
/// `runs` times, in milliseconds.
fn server_alone(bench: &Bench, runs: usize) -> Result<Vec<f64>, String> {
    let dir = TestDir::new("server-alone");
    let path = dir.0.join("notify");
    let socket = UnixDatagram::bind(&path).map_err(|e| format!("bind {path:?}: {e}"))?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let child = Command::new(&bench.server)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env("PORT", "0")
            .env("NOTIFY_SOCKET", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bench.server.display()))?;
        let _child = KillOnDrop(child);
        let deadline = started + PATIENCE;
        let mut buf = [0u8; 512];
        loop {
            let left =
                deadline.checked_duration_since(Instant::now()).ok_or("server alone never sent READY=1")?;
            socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
            match socket.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("notify socket: {e}")),
            }
        }
        times.push(ms(started.elapsed()));
    }
    Ok(times)
}

/// A plain child that is killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let child = &mut self.0;
        let _ = within(PATIENCE, || child.try_wait().ok().flatten());
    }
}

/// Upgrades of panzer itself under load: signal → the new image answers a
/// control request, and failed requests over all of them.
fn upgrade(bench: &Bench) -> Outcome {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    // From a copy, as an installed panzer runs: the upgrade execs what is at that path.
    let install = TestDir::new("bench-upgrade");
    let copy = install.join("panzer");
    std::fs::copy(&bench.panzer, &copy).map_err(|e| format!("cannot copy panzer: {e}"))?;
    let bench = Bench { panzer: copy, server: bench.server.clone() };
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    let port = panzer.port()?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let control = panzer.dir.join("panzer").join(format!("{}.sock", panzer.pid));
    let status = |control: &Path| -> Result<(), String> {
        let mut stream = UnixStream::connect(control).map_err(|e| format!("control socket: {e}"))?;
        stream.set_read_timeout(Some(PATIENCE)).map_err(|e| e.to_string())?;
        stream.write_all(b"{\"cmd\":\"status\"}\n").map_err(|e| format!("control socket: {e}"))?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).map_err(|e| format!("control socket: {e}"))?;
        reply.starts_with("{\"ok\":true").then_some(()).ok_or(format!("status reply: {reply}"))
    };
    let stop = AtomicBool::new(false);
    let served = AtomicU64::new(0);
    let hard_stop = Instant::now() + LOAD_LIMIT;
    let (tally, times) = thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (stop, served) = (&stop, &served);
                s.spawn(move || client(port, i % 2 == 1, stop, served, hard_stop))
            })
            .collect();
        let mut times = Vec::new();
        let mut seen = 0;
        let result = (|| -> Result<(), String> {
            for _ in 0..LOADED_RELOADS {
                // Pacing between upgrades, not synchronisation.
                thread::sleep(RELOAD_PACE);
                let signal = Instant::now();
                panzer.signal(Signal::SIGUSR2);
                let needles = ["resumed as panzer", "upgrade failed"];
                let (_, line) = panzer.log.wait_any(seen, &needles, PATIENCE)?;
                if line.contains("upgrade failed") {
                    return Err(line);
                }
                seen = panzer.log.lines.len();
                status(&control)?;
                times.push(ms(signal.elapsed()));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for c in clients {
            tally.merge(c.join().expect("a client thread panicked"));
        }
        (tally, result.map(|()| times))
    });
    let times = times?;
    let requests = tally.ok + tally.failed_new + tally.failed_reused;
    let failed = tally.failed_new + tally.failed_reused;
    let alive = panzer.exited().is_none();
    let figures = format!(
        "{failed} failed of {requests} requests ({} on reused kept-alive connections, {} on new ones) \
         over {} upgrades; SIGUSR2 → the new image answers status median {:.1} ms p99 {:.1} ms; \
         main pid {} alive throughout: {}",
        tally.failed_reused,
        tally.failed_new,
        times.len(),
        median(&times),
        p99(&times),
        panzer.pid,
        if alive { "yes" } else { "no" },
    );
    let repro = bench.repro(
        "upgrade",
        &format!("--count {WORKERS} --ready notify"),
        &format!("{LOADED_RELOADS} × kill -USR2 <main> under {CLIENTS} clients"),
    );
    let mut lines = vec![line("upgrade", &figures, "0 failed", failed == 0 && alive, &repro)];
    lines.extend(describe_failures(&tally, &[]));
    Ok(lines)
}

// ---------------------------------------------------------------------------
// The guard around one panzer

struct Bench {
    panzer: PathBuf,
    server: PathBuf,
}

impl Bench {
    /// Finds panzer and builds (or finds) the release `server` example:
    /// `cargo bench` builds benches and binaries, not examples.
    fn new() -> Result<Bench, String> {
        let panzer = PathBuf::from(env!("CARGO_BIN_EXE_panzer"));
        let server = panzer
            .parent()
            .ok_or("CARGO_BIN_EXE_panzer has no parent directory")?
            .join("examples")
            .join("server");
        let profile_is_release = panzer.parent().and_then(Path::file_name).is_some_and(|d| d == "release");
        match std::env::var_os("CARGO") {
            Some(cargo) if profile_is_release => build_example(&cargo, "server")?,
            _ if server.exists() => {}
            _ => {
                return Err(format!(
                    "{} is missing: run `cargo build --release --examples` first (`cargo bench` \
                     does not build examples)",
                    server.display()
                ))
            }
        }
        if !server.exists() {
            return Err(format!(
                "{} is still missing after building it: run `cargo build --release --examples`",
                server.display()
            ));
        }
        // Another build of panzer may be measured instead, e.g. a static one
        // (see README, "Performance").
        let panzer = match std::env::var_os("PANZER_BENCH_BIN") {
            Some(other) => {
                println!("bench reload: measuring {}", Path::new(&other).display());
                PathBuf::from(other)
            }
            None => panzer,
        };
        Ok(Bench { panzer, server })
    }

    fn panzer(&self, options: &[&str], env: &[(&str, &str)]) -> Result<Measured, String> {
        let server = self.server.to_string_lossy();
        let mut args = vec!["--bind", "127.0.0.1:0"];
        args.extend_from_slice(options);
        args.push(&server);
        let guard = Panzer::start_via(&self.panzer.to_string_lossy(), &args, env);
        let log = guard.watch_log();
        Ok(Measured { guard, log })
    }

    /// How to rerun a scenario, and roughly what it does by hand: panzer
    /// with `options`, then `then`.
    fn repro(&self, filter: &str, options: &str, then: &str) -> String {
        let here = std::env::current_dir().unwrap_or_default();
        let short = |p: &Path| p.strip_prefix(&here).unwrap_or(p).to_string_lossy().into_owned();
        let mut repro = format!("repro: cargo bench --bench reload -- {filter}");
        if !options.is_empty() {
            let _ = write!(
                repro,
                "  # {} --bind 127.0.0.1:0 {options} {}",
                short(&self.panzer),
                short(&self.server)
            );
        }
        if !then.is_empty() {
            let _ = write!(repro, "; {then}");
        }
        repro
    }
}

/// `cargo build --release --example NAME`, so that the bench measures the
/// current source. A no-op when it is up to date.
fn build_example(cargo: &std::ffi::OsStr, name: &str) -> Result<(), String> {
    eprintln!("bench reload: cargo build --release --example {name}");
    let child = Command::new(cargo)
        .args(["build", "--release", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    let mut child = KillOnDrop(child);
    let status = within(Duration::from_secs(900), || child.0.try_wait().ok().flatten())
        .ok_or_else(|| format!("`cargo build --release --example {name}` took over 15 minutes"))?;
    if !status.success() {
        return Err(format!("`cargo build --release --example {name}` failed ({status})"));
    }
    Ok(())
}

/// One panzer being measured: the tests' guard, which kills it and
/// everything below it on drop, and its log read as it grows.
struct Measured {
    guard: Panzer,
    log: LogWatch,
}

impl std::ops::Deref for Measured {
    type Target = Panzer;

    fn deref(&self) -> &Panzer {
        &self.guard
    }
}

impl Measured {
    /// The port of the first `listening on` line.
    fn port(&mut self) -> Result<u16, String> {
        let (_, text) = self.log.wait(0, "listening on ", PATIENCE)?;
        text.rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("no port in {text:?}"))
    }

    /// The monitor of generation `k`, from `starting generation k: …, monitor pid P`.
    fn monitor_of(&mut self, k: u32) -> Result<Pid, String> {
        let (_, text) = self.log.wait(0, &format!("starting generation {k}:"), PATIENCE)?;
        text.rsplit("monitor pid ")
            .next()
            .and_then(|p| p.trim().parse().ok())
            .map(Pid::from_raw)
            .ok_or_else(|| format!("no monitor pid in {text:?}"))
    }

    /// Sends `SIGUSR1` and waits for generation `k` to be ready and `k-1`
    /// to be stopped.
    fn reload(&mut self, k: u32) -> Result<Reload, String> {
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

/// Ctrl-C or SIGTERM of the bench kills every panzer it started, then exits.
/// The signals are blocked before any other thread exists, so only this
/// thread receives them (spawned commands get an empty mask from std).
fn guard_against_signals() {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    if mask.thread_block().is_err() {
        return;
    }
    let _ = thread::Builder::new().name("signals".into()).spawn(move || {
        let Ok(got) = mask.wait() else { return };
        kill_every_panzer();
        eprintln!("bench reload: {got}: killed every panzer, exiting");
        std::process::exit(130);
    });
}

/// Resident memory of one process, in KiB.
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pss: Option<u64>,
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

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// VmRSS, RssAnon and RssFile from /proc/PID/status; Pss from
/// /proc/PID/smaps_rollup where the kernel has it.
fn rss(pid: Pid) -> Result<Rss, String> {
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

// ---------------------------------------------------------------------------
// Log lines

/// `X` of `generation K ready: N/N workers in X ms`.
fn in_ms(line: &str) -> Result<u64, String> {
    // `generation 3 ready: 4/4 workers in 212 ms (accepting)`
    line.split(" workers in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no `in X ms` in {line:?}"))
}

/// Milliseconds of the day of a line's RFC 3339 timestamp (`…T12:34:56.789Z`).
fn stamp_ms(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}

// ---------------------------------------------------------------------------
// Small helpers

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(values: &[f64]) -> f64 {
    let v = sorted(values);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// Nearest-rank percentile `p` (0 < p ≤ 100).
fn percentile(values: &[f64], p: f64) -> f64 {
    let v = sorted(values);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((v.len() as f64) * p / 100.0).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Nearest-rank 99th percentile (the maximum below 100 samples).
fn p99(values: &[f64]) -> f64 {
    let v = sorted(values);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
