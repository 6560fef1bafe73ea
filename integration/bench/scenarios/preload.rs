//! `preload`: library mode (`--preload`) against exec mode, 8 workers of
//! `examples/preload.rs` with a 200 MB table: the PSS of the monitor and its
//! workers, the start of generation 1, and idle reloads.

use std::path::Path;
use std::time::Instant;

use nix::unistd::Pid;

use crate::bench::{build_example, line, Bench, Outcome};
use crate::harness::{children_of, without_keepers, Panzer};
use crate::measured::{Measured, PATIENCE};
use crate::proc::rss;
use crate::stats::{median, mib, ms, p99};

/// Scenario: library mode (`--preload`) against exec mode with a large
/// preloaded table: memory, generation start, reloads.
pub(crate) fn preload(bench: &Bench) -> Outcome {
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
            // The previous reload is over: only generation k-1 is left, and main sleeps.
            panzer.wait_settled(k - 1)?;
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
