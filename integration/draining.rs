//! Draining generations: a monitor that does not act on its drain order
//! (stopped, or stuck in the kernel) does not stretch the drain, and an
//! operator sees what every draining generation still holds and when what
//! is left of it gets `SIGKILL`.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::*;

/// A kept-alive connection answered by a worker of `generation`, and that
/// worker's pid. A connection another generation answers is dropped, and
/// another one tried.
fn kept_alive(port: u16, generation: u32) -> (TcpStream, Pid) {
    eventually(PATIENCE, &format!("a kept-alive connection to generation {generation}"), || {
        let mut stream = connect(port).ok()?;
        write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
        let r = read_response(&mut stream).ok()?;
        (r.field("generation") == generation.to_string() && !r.closes()).then(|| (stream, r.pid()))
    })
}

/// The status object of `generation`, if it is listed.
fn generation_of(status: &Value, generation: u32) -> Option<Value> {
    status["generations"].as_array()?.iter().find(|g| g["generation"] == generation).cloned()
}

fn pid_of(value: &Value) -> Option<Pid> {
    value.as_i64().filter(|&p| p > 0).map(|p| Pid::from_raw(p as i32))
}

/// Waits until `pid` is gone; panics, saying how long it took, when it
/// is still alive at `deadline`.
fn gone_by(pid: Pid, deadline: Instant, what: &str) {
    let left = deadline.saturating_duration_since(Instant::now());
    if within(left, || (!alive(pid)).then_some(())).is_none() {
        panic!("{what}: pid {pid} is still alive");
    }
}

// ---------------------------------------------------------------------------
// A frozen monitor

#[test]
fn a_failed_generation_whose_monitor_is_stopped_gets_the_drain_signal_and_sigkill_within_5_s() {
    let dir = TestDir::new("frozen-failed");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "1", &["--startup-timeout", "3s", "--graceful-timeout", "30s"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);

    // Generation 2 never gets ready, and its worker only logs SIGTERM.
    deploy.set_fixture("stubborn", "NO_NOTIFY=1");
    let mut log = panzer.watch_log();
    let reload = panzer.ctl_start(&["reload"]);
    let (monitor, worker) = eventually(PATIENCE, "generation 2's worker to start", || {
        let g = generation_of(&panzer.status(), 2)?;
        Some((pid_of(&g["monitor_pid"])?, pid_of(&g["workers"][0]["pid"])?))
    });
    signal::kill(monitor, Signal::SIGSTOP).unwrap();

    let out = reload.answer(PATIENCE);
    assert_ne!(out.code, 0, "the reload succeeded: {}", out.stdout);
    let (failed_at, _) = log.wait(0, "generation 2 failed", PATIENCE).unwrap();
    // main sends the drain signal itself, since the monitor cannot…
    log.wait(0, &format!("stubborn: pid {worker} ignoring SIGTERM"), PATIENCE)
        .unwrap_or_else(|e| panic!("generation 2's worker never got the drain signal: {e}"));
    // …and SIGKILL at most 5 s after the failure (2 s of slack for a busy machine).
    gone_by(worker, failed_at + Duration::from_secs(7), "5 s after the failure of generation 2");
    eventually(PATIENCE, "the stopped monitor to be gone", || (!alive(monitor)).then_some(()));
    assert_eq!(get(port, "/").unwrap().field("generation"), "1", "generation 1 no longer serves");
}

#[test]
fn an_old_generation_whose_monitor_is_stopped_gets_the_drain_signal_and_sigkill_at_the_graceful_timeout() {
    let dir = TestDir::new("frozen-old");
    let deploy = Deploy::new(&dir);
    // Idle kept-alive connections stay open while draining: the worker
    // drains until it is killed.
    deploy.set("DRAIN_GRACE_MS=60000");
    let panzer = start_deploy(&deploy, "1", &["--graceful-timeout", "4s"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let (_client, worker) = kept_alive(port, 1);
    let monitor = pid_of(&generation_of(&panzer.status(), 1).unwrap()["monitor_pid"]).unwrap();
    signal::kill(monitor, Signal::SIGSTOP).unwrap();

    let mut log = panzer.watch_log();
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_eq!(out.code, 0, "reload failed: {}", out.stderr);
    // Generation 1 was told to drain before the answer.
    let drained_at = Instant::now();
    log.wait(0, &format!("server: pid {worker} got SIGTERM"), PATIENCE)
        .unwrap_or_else(|e| panic!("generation 1's worker never got the drain signal: {e}"));
    // SIGKILL at the graceful timeout (with 3 s of slack for a busy machine).
    gone_by(worker, drained_at + Duration::from_secs(4 + 3), "7 s after generation 1 was told to drain");
    eventually(PATIENCE, "the stopped monitor to be gone", || (!alive(monitor)).then_some(()));
    assert_eq!(get(port, "/").unwrap().field("generation"), "2");
}

// ---------------------------------------------------------------------------
// What is still draining

/// The draining generations in `status`: (generation, kill_in_ms, each
/// worker's connections).
fn draining(status: &Value) -> Vec<(u32, Option<u64>, Vec<Option<u64>>)> {
    let generations = status["generations"].as_array().cloned().unwrap_or_default();
    generations
        .iter()
        .filter(|g| g["state"] == "draining")
        .map(|g| {
            let workers = g["workers"].as_array().cloned().unwrap_or_default();
            (
                g["generation"].as_u64().unwrap() as u32,
                g["kill_in_ms"].as_u64(),
                workers.iter().map(|w| w["connections"].as_u64()).collect(),
            )
        })
        .collect()
}

/// The value of the metrics sample `name{generation="k"}`, if there is one.
fn sample(metrics: &str, name: &str, generation: u32) -> Option<f64> {
    let prefix = format!("{name}{{generation=\"{generation}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

#[test]
fn status_and_metrics_show_each_draining_generation_s_deadline_and_connections_until_its_clients_close() {
    let dir = TestDir::new("what-drains");
    let deploy = Deploy::new(&dir);
    deploy.set("DRAIN_GRACE_MS=60000");
    let panzer = start_deploy(&deploy, "1", &["--graceful-timeout", "20s"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);

    // Three reloads, each once the one before has been answered; the test
    // keeps one connection open to each generation that drains.
    let mut clients = vec![kept_alive(port, 1)];
    for generation in 2..=4 {
        let out = panzer.ctl_by_pid_file(&["reload"]);
        assert_eq!(out.code, 0, "reload failed: {}", out.stderr);
        assert!(out.stdout.contains(&format!("generation {generation} serves")), "{}", out.stdout);
        if generation < 4 {
            clients.push(kept_alive(port, generation));
        }
    }

    let status = eventually(PATIENCE, "three draining generations holding one connection each", || {
        let status = panzer.status();
        let draining = draining(&status);
        let held = draining.iter().map(|(g, _, c)| (*g, c.clone())).collect::<Vec<_>>();
        (held == [(1, vec![Some(1)]), (2, vec![Some(1)]), (3, vec![Some(1)])]).then_some(status)
    });
    let deadlines: Vec<u64> = draining(&status).iter().map(|(_, kill_in, _)| kill_in.unwrap()).collect();
    assert!(deadlines.iter().all(|&ms| ms > 0 && ms <= 20_000), "kill_in_ms: {deadlines:?}");
    assert!(deadlines.windows(2).all(|w| w[0] < w[1]), "each generation has its own deadline: {deadlines:?}");
    let serving = generation_of(&status, 4).unwrap();
    assert_eq!(serving["kill_in_ms"], Value::Null, "{serving}");
    assert_eq!(serving["workers"][0]["connections"], 0, "a listening socket is not a connection: {serving}");

    // The table and the metrics say the same.
    let table = panzer.ctl_by_pid_file(&["status"]).stdout;
    for generation in 1..=3 {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("generation {generation}  draining")))
            .unwrap_or_else(|| panic!("no draining generation {generation} in\n{table}"));
        assert!(line.contains("SIGKILL in "), "{line}");
    }
    assert!(table.contains("CONNS"), "{table}");
    let metrics = panzer.ctl_by_pid_file(&["metrics"]).stdout;
    for generation in 1..=3 {
        assert_eq!(sample(&metrics, "panzer_draining_connections", generation), Some(1.0), "{metrics}");
        let kill_in = sample(&metrics, "panzer_draining_kill_in_seconds", generation);
        assert!(kill_in.is_some_and(|s| s > 0.0 && s <= 20.0), "{metrics}");
    }
    assert_eq!(sample(&metrics, "panzer_draining_connections", 4), None, "{metrics}");

    // As the clients close, each generation's count goes to 0 and its
    // worker exits on its own, long before its SIGKILL.
    for (index, (client, worker)) in clients.into_iter().enumerate() {
        let generation = index as u32 + 1;
        drop(client);
        eventually(PATIENCE, &format!("generation {generation} to hold no connection"), || {
            let status = panzer.status();
            let draining = draining(&status);
            let this = draining.iter().find(|(g, _, _)| *g == generation);
            let done = this.map_or(true, |(_, _, c)| c.iter().all(|c| *c == Some(0)));
            let others = draining.iter().filter(|(g, _, _)| *g > generation).all(|(_, _, c)| c == &[Some(1)]);
            assert!(others, "a generation lost its connection with generation {generation}'s: {draining:?}");
            done.then_some(())
        });
        panzer.wait_for_line(&format!("server: pid {worker} exiting"));
    }
    eventually(PATIENCE, "no generation left draining", || {
        draining(&panzer.status()).is_empty().then_some(())
    });
}
