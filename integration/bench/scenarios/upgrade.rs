//! `upgrade`: 50 × `SIGUSR2` under load: panzer re-executes itself in
//! place, from a copy of the binary, while 32 fresh and 32 kept-alive
//! clients send requests; failed requests, and the time from the signal to
//! the new image's first answer on the control socket.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::bench::{line, Bench, Outcome, WORKERS};
use crate::harness::TestDir;
use crate::load::{client, describe_failures, Tally, CLIENTS, LOADED_RELOADS, LOAD_LIMIT, RELOAD_PACE};
use crate::measured::PATIENCE;
use crate::stats::{median, ms, p99};

/// Upgrades of panzer itself under load: signal → the new image answers a
/// control request, and failed requests over all of them.
pub(crate) fn upgrade(bench: &Bench) -> Outcome {
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
