//! `staged-rolling`, `staged-canary`: staged reloads under load: failed
//! requests, the most workers alive at once, and how long a reload takes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use crate::bench::{line, Bench, Outcome, WORKERS};
use crate::harness::{descendants_of, process_table};
use crate::load::{client, Tally, CLIENTS, LOAD_LIMIT};
use crate::measured::PATIENCE;
use crate::stats::{median, ms, p99};

/// Reloads per staged scenario (each takes N steps, or a canary soak).
const STAGED_RELOADS: u32 = 10;

/// Staged reloads (`--reload-strategy rolling:1`, `--canary 200ms`) under
/// load of fresh connections: failed requests, the most workers alive at
/// once (target N + K; a canary followed by `all` needs 2N), and how long a
/// reload takes.
pub(crate) fn staged(bench: &Bench, what: &str, options: &[&str], extra: u32) -> Outcome {
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
