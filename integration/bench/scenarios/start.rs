//! `start-64`: panzer start → `generation 1 ready` with 64 workers that
//! notify at once.

use std::time::Instant;

use crate::bench::{line, Bench, Outcome};
use crate::measured::{in_ms, PATIENCE};
use crate::stats::{median, ms, p99};

/// Scenario 5: start a generation of 64 workers that notify at once.
pub(crate) fn start_64(bench: &Bench) -> Outcome {
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
