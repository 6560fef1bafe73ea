//! Stopping: the lame duck of `--stop-delay` (not ready at once, serving
//! until the delay ends), and the drain that follows, after which a new
//! connection is refused at once instead of being held in a backlog nobody
//! accepts from and reset later.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;
use crate::systemd::FakeSystemd;

/// How soon a connection made after the drain began must be refused.
const REFUSED_WITHIN: Duration = Duration::from_millis(50);

pub(crate) fn lame_duck(delay: &str, env: &[(&str, &str)]) -> Panzer {
    Panzer::new(example("server")).admin().count(2).notify().args(&["--stop-delay", delay]).envs(env).start()
}

#[test]
fn a_stop_delay_says_stopping_at_once_and_serves_new_connections_until_it_ends() {
    let systemd = FakeSystemd::new();
    let mut panzer = lame_duck("1500ms", &[("NOTIFY_SOCKET", systemd.path())]);
    let port = panzer.port(0);
    let admin = panzer.admin_port();
    systemd.until("READY=1");
    assert_eq!(get(admin, "/readyz").unwrap().status, 200);
    let mut log = panzer.watch_log();
    let signalled = Instant::now();
    panzer.signal(Signal::SIGTERM);
    systemd.until("STOPPING=1");
    let stopping = Instant::now();
    log.wait(0, "stopping in 1.5s (--stop-delay); serving until then", PATIENCE).unwrap();
    // Not ready for probes from the first instant of the delay.
    let readyz = get(admin, "/readyz").unwrap();
    assert_eq!((readyz.status, readyz.body.trim()), (503, "stopping"));
    let probe = panzer.ctl(&["status", "--ready"]);
    assert_eq!(probe.code, 1, "{}{}", probe.stdout, probe.stderr);
    assert!(format!("{}{}", probe.stdout, probe.stderr).contains("stopping"));
    let status = panzer.status();
    assert_eq!((&status["ready"], &status["stopping"]), (&false.into(), &true.into()), "{status}");
    // Fresh connections, each answered by generation 1, until the drain.
    let mut answered_while_stopping = 0;
    let drain = loop {
        let started = Instant::now();
        let answer = match get(port, "/") {
            Ok(answer) => answer,
            // The delay may have ended since the last look at the log: a
            // connection queued as the drain begins is refused or reset
            // (the stop-under-load test counts those). Never before the
            // delay is over, though: it began after `signalled`.
            Err(e) => {
                let failed = Instant::now();
                assert!(
                    failed >= signalled + Duration::from_millis(1500),
                    "refused during the stop delay, {:?} after SIGTERM: {e}",
                    failed - signalled
                );
                break log.wait(0, "stopping gracefully", PATIENCE).unwrap().0;
            }
        };
        assert_eq!((answer.status, answer.field("generation").as_str()), (200, "1"));
        if started > stopping {
            answered_while_stopping += 1;
        }
        log.poll();
        if let Some((at, _)) = log.lines.iter().find(|(_, l)| l.contains("stopping gracefully")) {
            break *at;
        }
        assert!(signalled.elapsed() < PATIENCE, "no drain after the stop delay");
    };
    assert!(answered_while_stopping > 0);
    assert!(drain >= signalled + Duration::from_millis(1500), "the drain began before the delay ended");
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
}

#[test]
fn a_second_sigterm_or_sigint_during_the_stop_delay_skips_it_and_sigquit_stops_at_once() {
    for (first, second, then) in [
        (Signal::SIGTERM, Signal::SIGTERM, "stopping gracefully"),
        (Signal::SIGINT, Signal::SIGINT, "stopping gracefully"),
        (Signal::SIGTERM, Signal::SIGQUIT, "stopping now, killing every worker"),
    ] {
        let mut panzer = lame_duck("1h", &[]);
        panzer.wait_ready(1);
        panzer.signal(first);
        panzer.wait_for_line("stopping in 60m (--stop-delay); serving until then");
        panzer.signal(second);
        panzer.wait_for_line(then);
        assert!(panzer.wait_exit(PATIENCE).success(), "{}", panzer.log());
        let log = panzer.log();
        assert!(!log.contains("stopping now") || second == Signal::SIGQUIT, "{first} {second}: {log}");
    }
}

#[test]
fn a_reload_or_an_upgrade_during_the_stop_delay_is_refused_as_stopping() {
    let panzer = lame_duck("1h", &[]);
    panzer.wait_ready(1);
    let out = panzer.ctl(&["stop"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    panzer.wait_for_line("(--stop-delay); serving until then");
    for command in ["reload", "upgrade"] {
        let out = panzer.ctl(&[command]);
        assert_ne!(out.code, 0, "{command} during the stop delay: {}", out.stdout);
        assert!(out.stderr.contains("panzer is stopping"), "{command}: {}", out.stderr);
    }
    assert_eq!(panzer.status()["generations"][0]["state"], "ready", "it still serves");
}

/// Connections made once the drain began must be refused, never held: each
/// of a few attempts is refused, and (a busy machine may pause this thread)
/// at least one within [`REFUSED_WITHIN`].
pub(crate) fn assert_refused_at_once(connect: impl Fn() -> std::io::Result<()>, what: &str) {
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let result = connect();
        fastest = fastest.min(started.elapsed());
        match result {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("{what}: a connection after the drain began failed with {e}, not refused"),
            Ok(()) => panic!("{what}: a connection after the drain began was held, not refused"),
        }
    }
    assert!(fastest < REFUSED_WITHIN, "{what}: refused only after {fastest:?}");
}

#[test]
fn a_connection_after_the_drain_began_is_refused_at_once_not_held_and_reset() {
    let panzer = Panzer::new(example("slow_drain")).count(2).notify().env("DRAIN_MS", "3000").start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_lines("slow_drain: pid", 4); // 2 × serving, 2 × draining
    panzer.wait_for_lines("draining for 3000 ms", 2);
    assert_refused_at_once(|| connect(port).map(drop), "TCP");
    assert!(panzer.log().contains(&format!("stopped listening on 127.0.0.1:{port}")), "{}", panzer.log());
}

#[test]
fn after_a_reload_and_an_upgrade_the_socket_still_listens_and_a_stop_still_refuses() {
    let panzer = Panzer::new(example("slow_drain")).count(1).notify().env("DRAIN_MS", "3000").start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    for command in ["reload", "upgrade"] {
        let out = panzer.ctl(&[command]);
        assert_eq!(out.code, 0, "{command}: {}", out.stderr);
        assert_eq!(get(port, "/").unwrap().status, 200, "after the {command}");
    }
    assert!(!panzer.log().contains("stopped listening"), "{}", panzer.log());
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_lines("draining for 3000 ms", 2); // generations 1 (reload) and 2 (stop)
    assert_refused_at_once(|| connect(port).map(drop), "after an upgrade");
}

#[test]
fn a_unix_socket_refuses_at_once_too_once_the_drain_began() {
    let panzer =
        Panzer::new(example("server")).args(&["--bind", "unix:{dir}/web.sock"]).count(1).notify().start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    // A slow request keeps the worker draining.
    let (mut slow, _) = slow_request_in_flight(port, 3000);
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_line("draining 1 worker(s)");
    let path = panzer.dir.join("web.sock");
    assert_refused_at_once(
        || {
            let mut stream = UnixStream::connect(&path)?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        },
        "unix",
    );
    assert_eq!(read_response(&mut slow).unwrap().status, 200, "the request in flight finishes");
}

/// One connection attempt of the load below.
struct Attempt {
    started: Instant,
    /// `None`: answered 200.
    failure: Option<std::io::Error>,
    took: Duration,
}

#[test]
fn a_stop_under_load_refuses_what_comes_after_the_drain_began_and_loses_at_most_its_backlog() {
    let mut panzer = Panzer::new(example("server")).count(2).notify().start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let mut log = panzer.watch_log();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let failure = get(port, "/").and_then(|r| match r.status {
                        200 => Ok(()),
                        s => Err(std::io::Error::other(format!("status {s}"))),
                    });
                    let attempt = Attempt { started, failure: failure.err(), took: started.elapsed() };
                    attempts.lock().unwrap().push(attempt);
                }
            })
        })
        .collect();
    eventually(PATIENCE, "200 answers", || (attempts.lock().unwrap().len() >= 200).then_some(()));
    panzer.signal(Signal::SIGTERM);
    let (drain_began, _) = log.wait(0, "stopped listening on", PATIENCE).unwrap();
    // A while after the drain began, then until main is gone.
    eventually(PATIENCE, "200 more attempts", || {
        let n = attempts.lock().unwrap().iter().filter(|a| a.started > drain_began).count();
        (n >= 200).then_some(())
    });
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let attempts = attempts.lock().unwrap();
    let (before, after): (Vec<&Attempt>, Vec<&Attempt>) =
        attempts.iter().partition(|a| a.started <= drain_began);
    let refused =
        |a: &&&Attempt| a.failure.as_ref().is_some_and(|e| e.kind() == ErrorKind::ConnectionRefused);
    // Refused before the log line was read: it was after the drain began too.
    let lost: Vec<String> = before
        .iter()
        .filter(|a| !refused(a))
        .filter_map(|a| a.failure.as_ref().map(|e| e.to_string()))
        .collect();
    let slowest = after.iter().filter(refused).map(|a| a.took).max().unwrap_or_default();
    println!(
        "stop under load: {} requests before the drain began, {} failed other than refused {lost:?}; \
         {} after it, {} refused (slowest refusal {slowest:?})",
        before.len(),
        lost.len(),
        after.len(),
        after.iter().filter(refused).count(),
    );
    for a in &after {
        match &a.failure {
            Some(e) if e.kind() != ErrorKind::ConnectionRefused => {
                panic!("a connection made after the drain began failed with {e}, not refused")
            }
            _ => assert!(a.took < PATIENCE / 4, "held for {:?}", a.took),
        }
    }
}
