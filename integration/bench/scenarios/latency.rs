//! `reload-latency`, `reload-auto`: idle reloads, signal → new generation
//! ready and how much of it is panzer's, held against the server's own
//! start-up when run alone; ready → old generation stopped.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{line, Bench, KillOnDrop, Outcome, WORKERS};
use crate::harness::TestDir;
use crate::measured::PATIENCE;
use crate::stats::{median, ms, p99};

/// Idle reloads measured for latency.
const IDLE_RELOADS: u32 = 25;

/// Scenario 2: how long a reload takes and how much of it is panzer's.
pub(crate) fn reload_latency(bench: &Bench) -> Outcome {
    let alone = server_alone(bench, 20)?;
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "notify"], &[])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let mut reloads = Vec::new();
    for k in 2..=IDLE_RELOADS + 1 {
        // The previous reload is over: only generation k-1 is left, and main sleeps.
        panzer.wait_settled(k - 1)?;
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
pub(crate) fn reload_auto(bench: &Bench) -> Outcome {
    let alone = server_alone(bench, 20)?;
    let count = WORKERS.to_string();
    let mut panzer = bench.panzer(&["--count", &count, "--ready", "auto"], &[("NO_NOTIFY", "1")])?;
    panzer.log.wait(0, "generation 1 ready:", PATIENCE)?;
    let mut reloads = Vec::new();
    for k in 2..=IDLE_RELOADS + 1 {
        // The previous reload is over: only generation k-1 is left, and main sleeps.
        panzer.wait_settled(k - 1)?;
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
