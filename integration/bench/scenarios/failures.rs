//! `failures-fresh`, `failures-keepalive`: failed requests while main
//! reloads 50 times under the load of 64 clients, on fresh or kept-alive
//! connections, and where the failures fell.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::bench::{line, Bench, Outcome, WORKERS};
use crate::load::{client, describe_failures, Tally, CLIENTS, LOADED_RELOADS, LOAD_LIMIT, RELOAD_PACE};
use crate::measured::{Measured, Reload, PATIENCE};
use crate::stats::{median, ms, p99};

/// Scenario 1: failed requests while main reloads 50 times under load.
pub(crate) fn failures(bench: &Bench, keep_alive: bool) -> Outcome {
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
