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
//! * `balance`: `--balance shared` against `round-robin` (needs root), N = 2
//!   and 4 workers, C = N and 2N kept-alive connections opened one after the
//!   other, and N clients on fresh connections, 8 trials of 300 ms each: in how many trials the connections did
//!   not spread C/N per worker, or a worker stayed idle, each worker's share
//!   of the requests, and the median req/s. Target (round-robin): C/N
//!   connections per worker in every trial. Then, with N = 4, one worker
//!   stopped (`SIGSTOP`) for 1.5 s under 8 fresh-connection clients: the
//!   slowest request and the failed ones in each mode.
//!
//! Timing method: the bench never parses timestamps for wall times. It takes
//! an `Instant` right before `kill(2)` (or before spawning panzer) and polls
//! the log file every 250 µs, stamping each new line with the `Instant` it
//! was read at; so a figure is late by at most one poll period plus a read.
//!
//! Process hygiene is the tests' own (`integration/harness/`, included
//! below): panzer runs in a process group of its own; on drop (also on
//! panic), and on Ctrl-C or SIGTERM of the bench, main's group, every
//! descendant and every descendant's group get `SIGKILL`. Ports are
//! 127.0.0.1:0; every wait polls a condition with a deadline: a log line,
//! or `/proc` (`proc.rs`): before each idle reload, that the previous one
//! is over, its processes exited and reaped and main asleep; before memory
//! or idle CPU is read, that main and the monitor sleep with nothing
//! pending. Sleeps only pace the reloads, the load and the polls, or make
//! up the idle period being measured.
//!
//! The rooms: this file runs the scenarios the command line names;
//! `scenarios/` holds them, one file per scenario or family, and their
//! table; `bench.rs` finds the binaries, starts a panzer and writes a
//! result line; `measured.rs` is one panzer under measurement, its log
//! read as it grows and its reloads timed; `load.rs` the clients that
//! load it; `proc.rs` what the bench reads of `/proc`; `stats.rs` the
//! medians and percentiles.

#[allow(dead_code, unused_imports)] // the bench uses part of the tests' harness
#[path = "../harness/mod.rs"]
mod harness;

mod bench;
mod load;
mod measured;
mod proc;
mod scenarios;
mod stats;

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;

use nix::sys::signal::{SigSet, Signal};

use bench::Bench;
use harness::kill_every_panzer;
use scenarios::SCENARIOS;

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
