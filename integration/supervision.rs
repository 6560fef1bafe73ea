//! Keeping workers healthy (issue #9): the drain signal, the watchdog, the
//! memory and age limits, startup timeouts for restarts, and readiness
//! from a worker's descendants. Each test says what an operator may rely on.
//!
//! A replacement is surge-first: the old worker gets the drain signal only
//! once its successor is ready. The tests check that where a user sees it:
//! the successor's "serving" line comes before the old worker's "got"
//! line, `panzerctl status` never shows fewer ready workers, and a client
//! loading the server throughout sees no failed request.

use std::collections::HashSet;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::*;

/// Stops a load of one client; returns how many requests were answered,
/// after asserting that none failed.
fn finished(load: Load) -> u64 {
    let (failures, generations) = load.finish();
    let answered: u32 = generations.values().sum();
    assert!(failures.is_empty(), "{} of {} requests failed: {failures:?}", failures.len(), answered);
    answered.into()
}

/// Ready workers of generation 1, as status shows them.
fn ready_workers(status: &Value) -> usize {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["generation"] == 1)
        .flat_map(|g| g["workers"].as_array().unwrap().iter())
        .filter(|w| w["ready"] == true)
        .count()
}

/// The number after `prefix` in `line` (`pid 42` → 42).
fn number_after(line: &str, prefix: &str) -> i32 {
    let rest = line.split(prefix).nth(1).unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"));
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// Waits for the `replacing pid` line of a replacement and the exit of the
/// old worker; returns `(ordinal, old pid, new pid)`.
fn wait_replaced(panzer: &Panzer) -> (u32, i32, i32) {
    let line = panzer.wait_for_line(", replacing pid ");
    let ordinal = number_after(&line, "worker ") as u32;
    let new = number_after(&line, ": pid ");
    let old = number_after(&line, "replacing pid ");
    panzer.wait_for_line(&format!("(pid {old}) exited with status 0; replaced by pid {new}"));
    (ordinal, old, new)
}

/// The index of the first log line containing `needle`.
fn line_index(log: &str, needle: &str) -> usize {
    log.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{log}"))
}

/// Checks surge-first in the log: the successor was serving before the
/// old worker got its drain signal.
fn assert_successor_served_first(panzer: &Panzer, old: i32, new: i32, signal: &str) {
    let got = panzer.wait_for_line(&format!("server: pid {old} got "));
    assert!(got.ends_with(signal), "{got}");
    let log = panzer.log();
    let serving = line_index(&log, &format!(" pid {new} serving"));
    let drained = line_index(&log, &format!("server: pid {old} got "));
    assert!(serving < drained, "pid {old} was told to drain before pid {new} served:\n{log}");
}

#[test]
fn the_drain_signal_reaches_workers_on_reload_and_on_stop_and_sigterm_never_does() {
    let mut panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--drain-signal", "USR2"])
        .env("DRAIN_SIGNALS", "USR2")
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let first = distinct_pids(port, 2);

    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    for pid in &first {
        panzer.wait_for_line(&format!("server: pid {pid} got SIGUSR2"));
        panzer.wait_for_line(&format!("server: pid {pid} exiting"));
    }
    let second = distinct_pids(port, 2);
    assert!(second.is_disjoint(&first), "generation 2 answers: {second:?}");

    panzer.signal(Signal::SIGTERM);
    let status = panzer.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    let log = panzer.log();
    for pid in &second {
        assert!(log.contains(&format!("server: pid {pid} got SIGUSR2")), "{log}");
    }
    assert!(!log.contains("got SIGTERM"), "a worker got SIGTERM:\n{log}");
    assert!(!log.contains("killed by SIGUSR2"), "a monitor died of its own drain signal:\n{log}");
}

#[test]
fn kill_and_unknown_drain_signals_are_usage_errors() {
    for (signal, says) in [("KILL", "SIGKILL cannot be a drain signal"), ("BOGUS", "invalid signal 'BOGUS'")]
    {
        let mut panzer = Panzer::new(example("server")).no_bind().args(&["--drain-signal", signal]).start();
        let status = panzer.wait_exit(PATIENCE);
        assert_eq!(status.code(), Some(2), "--drain-signal {signal}");
        assert!(panzer.log().contains(says), "{}", panzer.log());
    }
}

#[test]
fn a_worker_that_stops_sending_watchdog_is_replaced_and_status_never_shows_fewer_ready() {
    let fault = TestDir::new("watchdog");
    let once = fault.join("once");
    let panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--health-timeout", "1s"])
        .env("WATCHDOG_STOP_MS", "300")
        .env("FAULT_ONCE", once.to_str().unwrap())
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let load = Load::start(port, 1, "/");

    // Status, polled until the replacement is over, always shows two ready.
    let mut fewest = usize::MAX;
    let mut polls = 0;
    let silent = eventually(PATIENCE, "the silent worker to be replaced", || {
        let ready = ready_workers(&panzer.status());
        fewest = fewest.min(ready);
        polls += 1;
        let log = panzer.log();
        log.contains("; replaced by pid ").then_some(log)
    });
    assert!(polls > 1, "status was polled only once");
    let (ordinal, old, new) = wait_replaced(&panzer);
    let line = panzer.wait_for_line("after WATCHDOG=1: replacing it");
    assert!(line.contains(&format!("worker {ordinal} (pid {old}) silent for ")), "{line}");
    assert!(silent.contains(&format!("server: pid {old} stops sending WATCHDOG=1")));
    assert_successor_served_first(&panzer, old, new, "SIGTERM");
    assert_eq!(fewest, 2, "status showed {fewest} ready worker(s) during the replacement");

    let status = panzer.status();
    let slot = &status["generations"][0]["workers"][ordinal as usize];
    assert_eq!((slot["pid"].as_i64(), slot["ready"].as_bool()), (Some(new as i64), Some(true)), "{slot}");
    assert_eq!((slot["replaced"].as_u64(), slot["restarts"].as_u64()), (Some(1), Some(0)), "{slot}");
    assert!(finished(load) > 0);
}

#[test]
fn workers_see_the_watchdog_timeout_and_their_own_pid() {
    let panzer =
        Panzer::new(example("server")).count(1).notify().args(&["--health-timeout", "2500ms"]).start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let pid = get(port, "/").unwrap().pid();
    let env = environ(pid);
    assert_eq!(env.get("WATCHDOG_USEC").map(String::as_str), Some("2500000"));
    assert_eq!(env.get("WATCHDOG_PID"), Some(&pid.to_string()));
    assert_eq!(env.get("LISTEN_PID"), Some(&pid.to_string()));
}

#[test]
fn a_worker_above_max_rss_is_replaced_under_load_without_a_failed_request() {
    let fault = TestDir::new("rss");
    let once = fault.join("once");
    let panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--max-rss", "64M"])
        .env("GROW_MB", "96")
        .env("FAULT_ONCE", once.to_str().unwrap())
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let load = Load::start(port, 1, "/");
    let (ordinal, old, new) = wait_replaced(&panzer);
    let line = panzer.wait_for_line("(--max-rss 64.0 MiB): replacing it");
    assert!(line.contains(&format!("worker {ordinal} (pid {old}) uses ")), "{line}");
    assert!(panzer.log().contains(&format!("server: pid {old} grew by 96 MiB")));
    assert_successor_served_first(&panzer, old, new, "SIGTERM");
    assert!(finished(load) > 0);
    assert!(get(port, "/").is_ok());
}

#[test]
fn max_age_recycles_every_slot_one_at_a_time_without_a_failed_request() {
    let panzer = Panzer::new(example("server")).count(3).notify().args(&["--max-age", "2s"]).start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let load = Load::start(port, 1, "/");
    // Every slot recycled at least once.
    eventually(PATIENCE, "every slot to be recycled", || {
        let log = panzer.log();
        let recycled: HashSet<i32> = log
            .lines()
            .filter(|l| l.contains("; replaced by pid "))
            .map(|l| number_after(l, "worker "))
            .collect();
        (recycled.len() == 3).then_some(())
    });
    assert!(finished(load) > 0);

    // One at a time: each replacement ends (the old worker exits) before
    // the next one is decided.
    let log = panzer.log();
    let mut in_flight = None;
    for line in log.lines() {
        if line.contains("(--max-age 2.0s): replacing it") {
            let ordinal = number_after(line, "worker ");
            assert_eq!(in_flight, None, "slot {ordinal} recycled while slot {in_flight:?} was:\n{log}");
            in_flight = Some(ordinal);
        } else if line.contains("; replaced by pid ") {
            assert_eq!(in_flight, Some(number_after(line, "worker ")), "{line}\n{log}");
            in_flight = None;
        }
    }
}

#[test]
fn a_restarted_worker_that_never_gets_ready_is_stopped_and_restarted() {
    // The first worker serves; every later one never sends READY=1.
    let dir = TestDir::new("restart");
    let script = dir.join("worker.sh");
    let first = dir.join("first");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif mkdir {} 2>/dev/null; then exec {}; fi\nexec {}\n",
            first.display(),
            example("server"),
            example("never_ready")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let panzer = Panzer::new(script.to_str().unwrap())
        .count(1)
        .notify()
        .args(&["--startup-timeout", "1s", "--graceful-timeout", "2s"])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let serving = get(port, "/").unwrap().pid();
    nix::sys::signal::kill(serving, Signal::SIGKILL).unwrap();

    let line = panzer.wait_for_line("(--startup-timeout): stopping it with SIGTERM");
    let stalled = number_after(&line, "(pid ");
    assert!(line.contains("worker 0 (pid "), "{line}");
    panzer.wait_for_line(&format!("worker 0 (pid {stalled}) killed by SIGTERM"));
    // Restarted, with backoff, and stopped again: the slot keeps trying.
    let lines = panzer.wait_for_lines("(--startup-timeout): stopping it with SIGTERM", 2);
    assert_ne!(number_after(&lines[1], "(pid "), stalled);
    assert!(!alive(Pid::from_raw(stalled)));
    assert!(panzer.exited().is_none(), "main gave up:\n{}", panzer.log());
}

#[test]
fn a_wrapper_that_does_not_exec_gets_ready_through_its_childs_ready() {
    // `sh -c 'server; true'` keeps the shell as the worker; the server, its
    // child, sends READY=1. (LISTEN_PID names the shell: unset, listenfd
    // takes the sockets without the pid check.)
    let panzer = Panzer::new("sh")
        .count(1)
        .notify()
        .command_args(&["--", "-c", "unset LISTEN_PID; \"$0\"; true", &example("server")])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let server = get(port, "/").unwrap().pid();
    let shell = Pid::from_raw(number_after(&panzer.wait_for_line("worker 0 started: pid "), "started: pid "));
    assert_ne!(server, shell);
    assert_eq!(children_of(shell), vec![server], "the server is the shell's child");

    // A stranger's message is ignored, and said so.
    let notify = environ(shell)["NOTIFY_SOCKET"].clone();
    let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
    socket.send_to(b"READY=1", &notify).unwrap();
    let me = std::process::id();
    panzer.wait_for_line(&format!("ignoring notify message from pid {me}: neither a worker"));
}
