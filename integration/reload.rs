//! Hot restart: new workers take over without a refused connection; a bad
//! deploy rolls back; requests for reloads coalesce.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};

use crate::harness::*;

fn start(deploy: &Deploy, count: &str, extra: &[&str]) -> Panzer {
    Panzer::new(deploy.path()).count(count).notify().args(extra).start()
}

fn pids(port: u16, n: usize) -> Vec<nix::unistd::Pid> {
    distinct_pids(port, n).into_iter().collect()
}

fn in_generation(port: u16, generation: u32) -> Response {
    eventually(PATIENCE, &format!("generation {generation} to answer"), || {
        get(port, "/").ok().filter(|r| r.field("generation") == generation.to_string())
    })
}

#[test]
fn sigusr1_replaces_every_worker_and_sighup_does_too() {
    let dir = TestDir::new("reload");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = pids(port, 2);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    panzer.wait_for_line("generation 1 stopped");
    let new = pids(port, 2);
    assert!(new.iter().all(|p| !old.contains(p)), "old {old:?} new {new:?}");
    for pid in &old {
        assert!(!alive(*pid), "old worker {pid} still running");
    }
    assert_eq!(get(port, "/").unwrap().field("generation"), "2");
    // The old workers drained on SIGTERM (the server logs it), not SIGKILL.
    let log = panzer.log();
    for pid in &old {
        assert!(log.contains(&format!("server: pid {pid} draining")), "{log}");
        assert!(log.contains(&format!("(pid {pid}) exited with status 0")), "{log}");
    }

    panzer.signal(Signal::SIGHUP);
    panzer.wait_ready(3);
    in_generation(port, 3);
}

#[test]
fn a_slow_request_on_the_old_generation_completes_during_a_reload() {
    let dir = TestDir::new("inflight");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "1", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let (mut stream, old) = slow_request_in_flight(port, 1500);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    let slow = read_response(&mut stream).unwrap();
    assert_eq!((slow.status, slow.pid()), (200, old));
    assert!(slow.headers.to_ascii_lowercase().contains("connection: close"), "{}", slow.headers);
    panzer.wait_for_line("generation 1 stopped");
    assert!(!alive(old));
}

#[test]
fn in_notify_mode_the_old_generation_drains_only_after_every_new_worker_is_ready() {
    let dir = TestDir::new("notify");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = pids(port, 2);
    deploy.set("READY_DELAY_MS=1500");
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("starting generation 2");
    // A new worker prints "serving" before it accepts and before READY=1:
    // until one has, every answer must come from generation 1.
    let serving = |log: &str| log.matches(" serving").count();
    let mut answered_by_old = 0;
    loop {
        let r = get(port, "/").unwrap();
        if serving(&panzer.log()) > 2 {
            break;
        }
        assert_eq!(r.field("generation"), "1");
        assert!(old.contains(&r.pid()));
        answered_by_old += 1;
    }
    assert!(answered_by_old > 0, "generation 2 was up before any request");
    panzer.wait_ready(2);
    // The old monitor logs its drain after main logged the new generation ready.
    panzer.wait_for_line("gen 1]: draining");
    let log = panzer.log();
    let ready_at = log.find("generation 2 ready").unwrap();
    let drain_at = log.find("gen 1]: draining").expect("generation 1 drained");
    let last_serving = log.rfind(" serving").unwrap();
    assert!(
        drain_at > ready_at && drain_at > last_serving,
        "generation 1 drained before generation 2 was ready:\n{log}"
    );
    in_generation(port, 2);
}

fn assert_rolled_back(panzer: &Panzer, port: u16, old: &[nix::unistd::Pid], reason: &str) {
    let line = panzer.wait_for_line("reload failed");
    assert!(line.contains(reason), "{line}");
    assert!(line.contains("generation 1 keeps serving"), "{line}");
    panzer.wait_for_line("generation 2 stopped");
    for _ in 0..10 {
        let r = get(port, "/").unwrap();
        assert_eq!(r.field("generation"), "1");
        assert!(old.contains(&r.pid()));
    }
    assert!(old.iter().all(|p| alive(*p)));
}

#[test]
fn a_deploy_that_crashes_on_start_rolls_back() {
    let dir = TestDir::new("crash-deploy");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = pids(port, 2);
    deploy.set("FAIL_ON_START=1");
    panzer.signal(Signal::SIGUSR1);
    assert_rolled_back(&panzer, port, &old, "exited 5 times before it was ready");
    // A fixed deploy goes through.
    deploy.set("");
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(3);
    in_generation(port, 3);
}

#[test]
fn a_deploy_that_never_gets_ready_rolls_back_at_the_startup_timeout() {
    let dir = TestDir::new("never-ready");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &["--startup-timeout", "1s"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = pids(port, 2);
    std::fs::write(&deploy.0, format!("#!/bin/sh\nexec {}\n", example("never_ready"))).unwrap();
    panzer.signal(Signal::SIGUSR1);
    assert_rolled_back(&panzer, port, &old, "not ready within 1.0s (0/2 workers ready)");
}

#[test]
fn twenty_reload_signals_at_once_make_at_most_two_reloads() {
    let dir = TestDir::new("coalesce");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    for _ in 0..20 {
        panzer.signal(Signal::SIGUSR1);
    }
    panzer.wait_ready(2);
    // Generation 1 stops at least one loop turn after generation 2 was ready,
    // so by then the coalesced reload, if any, has started.
    panzer.wait_for_line("generation 1 stopped");
    let last = if panzer.log().contains("starting generation 3") { 3 } else { 2 };
    panzer.wait_ready(last);
    panzer.wait_for_line(&format!("generation {} stopped", last - 1));
    assert!(!panzer.log().contains("starting generation 4"), "{}", panzer.log());
    in_generation(port, last);
    let tree = without_keepers(panzer.descendants());
    assert_eq!(tree.len(), 3, "one monitor and two workers, got {tree:?}");
}

#[test]
fn killing_either_monitor_during_a_reload_leaves_a_serving_generation() {
    let dir = TestDir::new("kill-during-reload");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    deploy.set("READY_DELAY_MS=1000");

    // The new monitor dies: the old generation keeps serving.
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("starting generation 2");
    let new_monitor = monitor_of(&panzer, 2);
    kill(new_monitor, Signal::SIGKILL).unwrap();
    panzer.wait_for_line("reload failed");
    assert_eq!(get(port, "/").unwrap().field("generation"), "1");

    // The old monitor dies: the new generation takes over when ready.
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("starting generation 3");
    kill(monitor_of(&panzer, 1), Signal::SIGKILL).unwrap();
    panzer.wait_ready(3);
    in_generation(port, 3);
    assert_eq!(panzer.monitors().len(), 1);
}

pub(crate) fn monitor_of(panzer: &Panzer, generation: u32) -> nix::unistd::Pid {
    let line = panzer.wait_for_line(&format!("starting generation {generation}:"));
    nix::unistd::Pid::from_raw(line.rsplit("monitor pid ").next().unwrap().trim().parse().unwrap())
}

#[test]
fn concurrent_clients_see_no_failed_request_across_ten_reloads() {
    let dir = TestDir::new("load");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                // Bounded: at most 20 000 requests per client.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(port, "/") {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("status {}", r.status)),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect();
    for generation in 2..=11 {
        panzer.signal(Signal::SIGUSR1);
        panzer.wait_ready(generation);
        panzer.wait_for_line(&format!("generation {} stopped", generation - 1));
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "too few requests to mean anything");
}

#[test]
fn reloads_leak_no_fd_in_main_and_no_notify_socket() {
    let dir = TestDir::new("leaks");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "2", &[]);
    panzer.wait_ready(1);
    let fds_before = open_fds(panzer.pid);
    for generation in 2..=6 {
        panzer.signal(Signal::SIGUSR1);
        panzer.wait_ready(generation);
        panzer.wait_for_line(&format!("generation {} stopped", generation - 1));
    }
    // Once main is idle again, the same number of fds: only the current
    // monitor's channel (its number may differ), whatever the reloads
    // before. (While it works, main briefly holds /proc entries open.)
    eventually(PATIENCE, &format!("main's fds back to {fds_before:?}"), || {
        (open_fds(panzer.pid).len() == fds_before.len()).then_some(())
    });
    // The monitor holds its status channel, its signalfd, its notify socket
    // and the listening socket (and, when it has a keeper, the pipe to it
    // and the keeper's error pipe): nothing per worker, nothing per reload.
    let monitor = panzer.monitors()[0];
    let keeper = children_of(monitor).len() > without_keepers(children_of(monitor)).len();
    let own = 4 + 2 * usize::from(keeper);
    eventually(PATIENCE, &format!("the monitor to hold 0-2 and {own} fds of its own"), || {
        (open_fds(monitor).len() == 3 + own).then_some(())
    });
    // Only the serving generation's notify socket is left.
    let cmdline = process_table().remove(&monitor).unwrap().cmdline;
    let notify = cmdline.split(' ').find_map(|a| a.strip_prefix("--notify-socket=")).unwrap();
    let runtime = std::path::Path::new(notify).parent().unwrap();
    let left: Vec<String> =
        std::fs::read_dir(runtime).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, ["gen-6.notify"]);
}
