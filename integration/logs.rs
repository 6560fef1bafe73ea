//! What panzer's log says and how: `--log-format json` (one object per
//! line, main's, the monitors' and the workers' under `--tag-output`), what
//! `-q` still says, and lines that read as an operator expects (no Rust
//! debug formatting, no promise of a grace a stop does not give, the right
//! level, no noise about a generation's own workers).

use nix::sys::signal::{kill, Signal};
use serde_json::Value;

use crate::harness::*;

/// Every line of `log`, each parsed as a JSON object (panics on one that
/// is not, naming it).
fn objects(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("not a JSON object: {line:?}\n{log}"),
        })
        .collect()
}

/// The port of the first `listening on` object (`addr` field).
fn json_port(panzer: &Panzer) -> u16 {
    let line = panzer.wait_for_line("listening on ");
    let object: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let addr = object["addr"].as_str().unwrap_or_else(|| panic!("no addr: {line}"));
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_line_of_a_json_run_is_an_object_with_its_fields() {
    let mut panzer = Panzer::new(example("hello"))
        .count(2)
        .notify()
        .args(&["--log-format", "json", "--tag-output"])
        .start();
    let port = json_port(&panzer);
    panzer.wait_ready(1);
    assert!(get(port, "/").is_ok());
    panzer.signal(Signal::SIGHUP);
    panzer.wait_for_line("reload done");
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));

    let log = panzer.log();
    let lines = objects(&log);
    let (own, workers): (Vec<&Value>, Vec<&Value>) = lines.iter().partition(|l| l.get("msg").is_some());
    for line in &own {
        assert!(line["ts"].is_string() && line["level"].is_string() && line["pid"].is_u64(), "{line}");
        assert!(
            ["info", "warn", "error", "debug", "trace"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
    }
    // A worker's start names its slot and pid, and comes from a monitor.
    let started: Vec<&&Value> =
        own.iter().filter(|l| l["msg"].as_str().unwrap().contains(" started: pid ")).collect();
    assert_eq!(started.len(), 4, "two workers for each of two generations:\n{log}");
    for line in &started {
        let (worker, pid) = (line["worker"].as_u64().unwrap(), line["worker_pid"].as_u64().unwrap());
        assert_eq!(line["msg"], format!("worker {worker} started: pid {pid}"), "{line}");
        assert!(line["generation"].as_u64().is_some_and(|g| g == 1 || g == 2), "{line}");
        assert_ne!(line["pid"], line["worker_pid"], "pid is the monitor's own: {line}");
    }
    // Main's lines have no generation field of their own process.
    let main_pid = panzer.pid.as_raw() as u64;
    let listening = own.iter().find(|l| l["msg"].as_str().unwrap().starts_with("listening on ")).unwrap();
    assert_eq!(
        (listening["pid"].as_u64(), listening.get("generation")),
        (Some(main_pid), None),
        "{listening}"
    );
    // main's lines about a generation name it.
    let ready = own.iter().find(|l| l["msg"].as_str().unwrap().starts_with("generation 2 ready")).unwrap();
    assert_eq!((ready["pid"].as_u64(), ready["generation"].as_u64()), (Some(main_pid), Some(2)), "{ready}");
    // The workers' own lines, as objects naming where they come from.
    assert!(workers.len() >= 4, "hello says `serving` and more:\n{log}");
    for line in &workers {
        assert!(["stdout", "stderr"].contains(&line["stream"].as_str().unwrap_or_default()), "{line}");
        assert!(line["generation"].is_u64() && line["worker"].is_u64(), "{line}");
        assert!(line["line"].as_str().is_some_and(|l| l.starts_with("hello: pid ")), "{line}");
    }
}

#[test]
fn the_environment_sets_the_format_and_an_upgrade_keeps_it() {
    let panzer = Panzer::new(example("hello"))
        .count(1)
        .notify()
        .arg("--tag-output")
        .env("PANZER_LOG_FORMAT", "json")
        .start();
    panzer.wait_ready(1);
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    panzer.wait_for_line("resumed as panzer");
    let out = panzer.ctl(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    panzer.wait_for_line("reload done");
    // The new image's lines, and those of the monitor it started.
    let log = panzer.log();
    assert!(log.contains(r#""msg":"control request: upgrade""#), "as panzerctl says it: {log}");
    let lines = objects(&log);
    let resumed =
        lines.iter().position(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("resumed as"))).unwrap();
    assert!(lines[resumed..].iter().any(|l| l["generation"] == 2 && l["msg"].is_string()), "{lines:?}");
}

#[test]
fn a_bad_log_format_is_refused_naming_it() {
    let mut panzer = Panzer::new(example("hello")).args(&["--log-format", "yaml"]).start();
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(2));
    let log = panzer.log();
    assert!(log.contains("--log-format") && log.contains("yaml") && log.contains("json"), "{log}");
}

#[test]
fn quiet_still_says_where_it_listens_and_nothing_else_of_a_start() {
    let panzer = Panzer::new(example("hello")).count(1).notify().admin().arg("-q").start();
    let port = panzer.port(0);
    panzer.admin_port();
    eventually(PATIENCE, "a worker serving", || get(port, "/").ok());
    let log = panzer.log();
    assert!(!log.contains("control socket at") && !log.contains("started: pid"), "{log}");
    for line in log.lines().filter(|l| l.contains(" INFO ")) {
        assert!(line.contains(": listening on ") || line.contains(": admin endpoint on "), "{line}\n{log}");
    }
}

#[test]
fn a_dead_monitors_workers_are_named_by_their_pids_plainly() {
    // stubborn ignores the drain signal: it outlives its monitor for a while.
    let panzer =
        Panzer::new(example("stubborn")).count(1).notify().args(&["--graceful-timeout", "2s"]).start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = get(port, "/").unwrap().pid();
    kill(panzer.monitors()[0], Signal::SIGKILL).unwrap();
    let line = panzer.wait_for_line("main takes over pids");
    assert!(line.contains(&format!("main takes over pids {old} of group ")), "{line}");
    panzer.wait_for_line("still running after the graceful timeout");
    assert!(!panzer.log().contains("Pid("), "{}", panzer.log());
}

#[test]
fn sigquit_kills_at_once_and_says_no_grace() {
    // Several times: the monitor hears the drain order only if it runs
    // before main's SIGKILL reaches it.
    for _ in 0..3 {
        let mut panzer = Panzer::new(example("hello")).count(4).notify().start();
        panzer.wait_ready(1);
        panzer.signal(Signal::SIGQUIT);
        panzer.wait_exit(PATIENCE);
        let log = panzer.log();
        assert!(log.contains("stopping now, killing every worker"), "{log}");
        assert!(!log.contains("SIGKILL in"), "{log}");
        assert!(!log.contains("Pid("), "{log}");
    }
}

#[test]
fn a_planned_max_age_recycle_is_info() {
    let panzer = Panzer::new(example("hello")).count(1).notify().args(&["--max-age", "1s"]).start();
    let line = panzer.wait_for_line("(--max-age 1.0s): replacing it");
    assert!(line.contains(" INFO "), "{line}");
    panzer.wait_for_line("replaced by pid");
    assert!(!panzer.log().contains(" WARN "), "{}", panzer.log());
}

#[test]
fn a_rolling_reload_says_nothing_of_its_own_retired_workers_notify_messages() {
    // The bundled example says STOPPING=1 as it drains, just before it exits.
    let panzer =
        Panzer::new(example("hello")).count(2).notify().args(&["--reload-strategy", "rolling"]).start();
    panzer.wait_ready(1);
    for reloads in 1..=3 {
        panzer.signal(Signal::SIGHUP);
        panzer.wait_for_lines("reload done", reloads);
        panzer.wait_for_line(&format!("generation {reloads} stopped"));
    }
    let log = panzer.log();
    assert!(!log.contains("ignoring notify message"), "{log}");
}

#[test]
fn with_json_logs_the_error_that_ends_panzer_is_an_object_too() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut panzer = Panzer::new(example("hello")).bind(&addr).args(&["--log-format", "json"]).start();
    assert_ne!(panzer.wait_exit(PATIENCE).code(), Some(0));
    let lines = objects(&panzer.log());
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "error", "{last}");
    assert!(last["msg"].as_str().unwrap().starts_with(&format!("cannot bind {addr}: ")), "{last}");
}

#[test]
fn library_mode_logs_json_too() {
    let mut panzer = Panzer::new(example("preload"))
        .arg("--preload")
        .count(2)
        .notify()
        .args(&["--log-format", "json", "--tag-output"])
        .env("PRELOAD_MB", "1")
        .start();
    let port = json_port(&panzer);
    panzer.wait_ready(1);
    assert!(get(port, "/").is_ok());
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    // The app is the monitor: what it writes itself is its own (untagged).
    let log: String =
        panzer.log().lines().filter(|l| !l.starts_with("preload: ")).map(|l| l.to_string() + "\n").collect();
    let lines = objects(&log);
    let started =
        lines.iter().filter(|l| l["msg"].as_str().is_some_and(|m| m.contains(" started: pid "))).count();
    assert!(started >= 2, "{log}");
    assert!(lines.iter().any(|l| l["generation"] == 1 && l["worker_pid"].is_u64()), "{lines:?}");
}
