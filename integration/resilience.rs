//! When things go wrong around a generation: its monitor dies, its server
//! is a wrapper script, its binary disappears, a reload is asked for while
//! the first generation is still starting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};

use crate::harness::*;

fn start(deploy: &Deploy, ready: &str) -> Panzer {
    Panzer::new(deploy.path()).count(2).ready(ready).start()
}

fn monitor(panzer: &Panzer) -> nix::unistd::Pid {
    let monitors = panzer.monitors();
    assert_eq!(monitors.len(), 1, "{monitors:?}");
    monitors[0]
}

#[test]
fn workers_of_a_killed_monitor_drain_at_once_and_no_connection_fails_while_a_replacement_starts() {
    let dir = TestDir::new("orphans");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "notify");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 2);
    // The replacement takes 3 s to get ready; meanwhile connections wait
    // in the backlog of the socket main keeps open.
    deploy.set("READY_DELAY_MS=3000");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut answers, mut failures) = (Vec::new(), Vec::new());
                // Bounded: at most 5 000 requests per client.
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(port, "/") {
                        Ok(r) if r.status == 200 => answers.push(r.field("generation")),
                        Ok(r) => failures.push(format!("status {}", r.status)),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (answers, failures)
            })
        })
        .collect();

    kill(monitor(&panzer), Signal::SIGKILL).unwrap();
    // Their monitor's death is the drain signal: the old workers go at
    // once, not when the replacement is ready.
    eventually(PATIENCE, "the old workers to drain and exit", || {
        old.iter().all(|p| !alive(*p)).then_some(())
    });
    assert!(!panzer.log().contains("generation 2 ready"), "the old workers outlived the replacement's start");
    for pid in &old {
        assert!(panzer.log().contains(&format!("server: pid {pid} draining")), "{}", panzer.log());
    }
    panzer.wait_ready(2);
    eventually(PATIENCE, "generation 2 to answer", || {
        get(port, "/").ok().filter(|r| r.field("generation") == "2")
    });
    stop.store(true, Ordering::Relaxed);
    let (answers, failures): (Vec<_>, Vec<_>) = clients.into_iter().map(|c| c.join().unwrap()).unzip();
    let failures: Vec<String> = failures.concat();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answers.concat().iter().any(|g| g == "2"), "no client was answered by generation 2");
}

#[test]
fn a_server_behind_a_wrapper_script_drains_its_in_flight_request() {
    let dir = TestDir::new("wrapper");
    let deploy = Deploy::new(&dir);
    // No `exec`: the server is the wrapper's child, the worker's grandchild
    // (started so that LISTEN_PID names it, as systemd's convention wants).
    let wrapper = format!("#!/bin/sh\nsh -c 'LISTEN_PID=$$ exec {}'\n", example("server"));
    std::fs::write(&deploy.0, wrapper).unwrap();
    let panzer = start(&deploy, "300ms");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let (mut stream, server) = slow_request_in_flight(port, 1500);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("generation 1 stopped");
    let slow = read_response(&mut stream).expect("the in-flight request was cut off");
    assert_eq!((slow.status, slow.pid()), (200, server));
    eventually(PATIENCE, "the drained server to exit", || (!alive(server)).then_some(()));
}

#[test]
fn a_vanished_binary_is_named_and_replacements_back_off() {
    let dir = TestDir::new("vanished");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "notify");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 2);
    std::fs::remove_file(&deploy.0).unwrap();

    let out = panzer.ctl(&["--control", &control_path(&panzer), "reload"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!("cannot run {}: no such file or directory", deploy.path())),
        "{}",
        out.stderr
    );

    // The serving monitor dies while no replacement can start: its workers
    // drain (their monitor's death is the drain signal), replacements are
    // retried with a growing delay, and a connection waits in the backlog
    // until one serves.
    panzer.wait_for_line("generation 2 stopped");
    kill(monitor(&panzer), Signal::SIGKILL).unwrap();
    panzer.wait_for_line("in 100ms");
    panzer.wait_for_line("in 200ms");
    eventually(PATIENCE, "the old workers to drain and exit", || {
        old.iter().all(|p| !alive(*p)).then_some(())
    });
    let waiting = std::thread::spawn(move || get(port, "/"));
    deploy.set("");
    let line = panzer.wait_for_lines(" workers in ", 2).pop().unwrap();
    let generation: u32 =
        line.split("generation ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(generation > 2, "{line}");
    let answer = waiting.join().unwrap().expect("the connection waiting in the backlog failed");
    assert_eq!(answer.field("generation"), generation.to_string());
    assert!(panzer.log().matches("starting generation").count() < 20, "{}", panzer.log());
}

#[test]
fn a_reload_asked_while_generation_one_starts_is_answered() {
    let dir = TestDir::new("early-reload");
    let deploy = Deploy::new(&dir);
    deploy.set("READY_DELAY_MS=800");
    let panzer = start(&deploy, "notify");
    panzer.wait_for_line("starting generation 1");
    let out = panzer.ctl(&["--control", &control_path(&panzer), "reload"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "reloaded: generation 2 serves"), "{}", out.stderr);
}

fn control_path(panzer: &Panzer) -> String {
    let line = panzer.wait_for_line("control socket at ");
    line.rsplit("control socket at ").next().unwrap().trim().to_string()
}

#[test]
fn a_server_behind_a_wrapper_drains_when_its_monitor_died_and_a_replacement_took_over() {
    let dir = TestDir::new("wrapper-orphan");
    let deploy = Deploy::new(&dir);
    let wrapper = format!("#!/bin/sh\nsh -c 'LISTEN_PID=$$ exec {}'\n", example("server"));
    std::fs::write(&deploy.0, wrapper).unwrap();
    let panzer = Panzer::new(deploy.path()).count(1).ready("300ms").start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let server = get(port, "/").unwrap().pid();
    kill(monitor(&panzer), Signal::SIGKILL).unwrap();
    panzer.wait_ready(2);
    // The grandchild got SIGTERM with its group, not SIGKILL at a deadline.
    panzer.wait_for_line(&format!("server: pid {server} exiting"));
    assert!(panzer.log().contains(&format!("server: pid {server} draining")), "{}", panzer.log());
    assert!(!panzer.log().contains("graceful timeout: SIGKILL"), "{}", panzer.log());
}

#[test]
fn a_monitor_killed_before_it_could_drain_still_gets_its_workers_stopped() {
    let dir = TestDir::new("killed-draining");
    let deploy = Deploy::new(&dir);
    let panzer = start(&deploy, "notify");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 2);
    let first = monitor(&panzer);
    // Frozen, it cannot act on the drain order main is about to send.
    kill(first, Signal::SIGSTOP).unwrap();
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    kill(first, Signal::SIGKILL).unwrap();
    panzer.wait_for_line("while stopping");
    for pid in &old {
        panzer.wait_for_line(&format!("server: pid {pid} exiting"));
    }
    assert!(!panzer.log().contains("graceful timeout: SIGKILL"), "{}", panzer.log());
}
