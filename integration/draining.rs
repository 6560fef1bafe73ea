//! Draining generations: a monitor that does not act on its drain order
//! (stopped, or stuck in the kernel) does not stretch the drain.

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
