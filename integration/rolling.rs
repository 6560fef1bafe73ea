//! Staged reloads: `--reload-strategy rolling:K` replaces the workers K at a
//! time, never running more than K above the count; `--canary D` lets one
//! new worker serve alone for D first. A failure at any step rolls back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::harness::*;

/// How many workers (processes running the server fixture) are alive
/// below main right now.
fn workers_alive(panzer: &Panzer) -> usize {
    let table = process_table();
    let server = example("server");
    panzer
        .descendants()
        .iter()
        .filter(|p| table.get(p).is_some_and(|info| info.cmdline.starts_with(&server)))
        .count()
}

/// Samples the number of live workers until stopped; returns the largest.
struct PeakWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl PeakWatch {
    fn start(main: nix::unistd::Pid) -> PeakWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let (flag, seen) = (stop.clone(), peak.clone());
        let server = example("server");
        let thread = std::thread::spawn(move || {
            let until = std::time::Instant::now() + PATIENCE * 3;
            while !flag.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                let table = process_table();
                let alive = descendants_of(main)
                    .iter()
                    .filter(|p| table.get(p).is_some_and(|info| info.cmdline.starts_with(&server)))
                    .count();
                seen.fetch_max(alive, Ordering::Relaxed);
                std::thread::yield_now();
            }
            seen.load(Ordering::Relaxed)
        });
        PeakWatch { stop, thread }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_rolling_reload_never_runs_more_than_one_extra_worker_and_fails_no_request() {
    let dir = TestDir::new("rolling");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "3", &["--reload-strategy", "rolling:1"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 3);
    eventually(PATIENCE, "3 workers alive", || (workers_alive(&panzer) == 3).then_some(()));

    let load = Load::start(port, 4, "/slow?ms=20");
    load.wait_for(20);
    let peak = PeakWatch::start(panzer.pid);
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("generation 2"), "{}", out.stdout);
    load.wait_for(20);
    let peak = peak.finish();
    let (failures, generations) = load.finish();

    assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
    assert!(peak <= 4, "{peak} workers were alive at once; rolling:1 allows 3 + 1\n{}", panzer.log());
    assert!(generations.contains_key("2"), "generation 2 never answered: {generations:?}");
    // An old worker may take a connection until its drain signal lands.
    eventually(PATIENCE, "only new workers to answer", || {
        distinct_pids(port, 3).is_disjoint(&old).then_some(())
    });
    eventually(PATIENCE, "the old workers to exit", || old.iter().all(|p| !alive(*p)).then_some(()));
    // The log tells the steps.
    panzer.wait_for_line("retiring 1 worker(s) for the new ones");
}

#[test]
fn a_rolling_reload_that_fails_midway_gives_the_old_generation_all_its_workers_back() {
    let dir = TestDir::new("rolling-fail");
    let deploy = Deploy::new(&dir);
    // Worker 1 of the new build never starts: the first step (worker 0)
    // succeeds and retires one old worker, the second crash-loops. That
    // fails the roll at once, not at the (default, 60 s) startup timeout.
    let panzer = start_deploy(&deploy, "3", &["--reload-strategy", "rolling:1"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 3);
    deploy.set("CRASH_WORKER=1");
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_ne!(out.code, 0, "the reload succeeded: {}", out.stdout);
    assert!(out.stderr.contains("worker 1 exited 5 times before it was ready"), "{}", out.stderr);
    assert!(out.stderr.contains("generation 1 keeps serving"), "{}", out.stderr);
    panzer.wait_for_line("retiring 1 worker(s)");
    panzer.wait_for_line("generation 1 goes back to 3 worker(s)");
    // Generation 1 serves with three workers again: two of the old ones and
    // one started in the retired slot.
    eventually(PATIENCE, "generation 1 alone to serve, with 3 workers", || {
        let pids = distinct_pids(port, 3);
        let answers: Vec<Response> = (0..30).filter_map(|_| get(port, "/").ok()).collect();
        answers.iter().all(|r| r.field("generation") == "1").then_some(pids)
    });
    assert!(old.iter().filter(|p| alive(**p)).count() >= 2);
}

#[test]
fn a_rolling_reload_whose_new_monitor_is_killed_gives_the_old_generation_its_count_back() {
    let dir = TestDir::new("rolling-kill");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "3", &["--reload-strategy", "rolling:1"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    // Each new worker takes a while, so the roll is midway when the kill comes.
    deploy.set("READY_DELAY_MS=400");
    let reload = panzer.ctl_start(&["reload"]);
    panzer.wait_for_line("retiring 1 worker(s)");
    let new_monitor = eventually(PATIENCE, "the new monitor", || {
        let table = process_table();
        panzer
            .monitors()
            .into_iter()
            .find(|p| table.get(p).is_some_and(|i| i.cmdline.contains("--generation=2")))
    });
    nix::sys::signal::kill(new_monitor, nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = reload.answer(PATIENCE);
    assert_ne!(out.code, 0, "{}", out.stdout);
    panzer.wait_for_line("generation 1 goes back to 3 worker(s)");
    let pids = distinct_pids(port, 3);
    assert_eq!(pids.len(), 3);
}

#[test]
fn a_canary_that_crashes_during_its_soak_rolls_the_reload_back() {
    let dir = TestDir::new("canary-crash");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "2", &["--canary", "3s"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 2);
    deploy.set("CRASH_AFTER_MS=1000");
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_ne!(out.code, 0, "the reload succeeded: {}", out.stdout);
    assert!(out.stderr.contains("the canary (worker 0"), "{}", out.stderr);
    assert!(out.stderr.contains("during its soak"), "{}", out.stderr);
    panzer.wait_for_line("the canary is ready; it serves beside the old generation for 3.0s");
    // Only one new worker ever ran: the canary.
    assert!(
        !panzer.log().contains("worker 1 started: pid")
            || panzer.log().matches("worker 1 started").count() == 1
    );
    let now = distinct_pids(port, 2);
    assert_eq!(now, old, "the old generation keeps serving");
}

#[test]
fn a_canary_that_stays_ready_lets_the_reload_go_on() {
    let dir = TestDir::new("canary-ok");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "2", &["--canary", "500ms"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 2);
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let log = panzer.log();
    let canary = log.find("the canary is ready").expect("no canary line");
    let went_on = log.find("the canary stayed ready; the reload goes on").expect("no go-on line");
    assert!(canary < went_on);
    // An old worker may take a connection until its drain signal lands.
    eventually(PATIENCE, "only new workers to answer", || {
        distinct_pids(port, 2).is_disjoint(&old).then_some(())
    });
}
