//! Serving, restarting, stopping: the life of one panzer.

use nix::sys::signal::{kill, Signal};

use crate::harness::*;

fn server(count: &str) -> Panzer {
    Panzer::new(example("server")).count(count).ready("100ms").start()
}

#[test]
fn requests_are_served_by_every_worker() {
    let panzer = server("3");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let pids = distinct_pids(port, 3);
    let monitors = panzer.monitors();
    assert_eq!(monitors.len(), 1);
    let table = process_table();
    for pid in &pids {
        assert_eq!(table[pid].ppid, monitors[0], "worker {pid} is not the monitor's child");
        assert_eq!(table[pid].pgid, monitors[0], "worker {pid} is not in the generation's group");
    }
    assert_ne!(table[&monitors[0]].pgid, panzer.pid, "the generation shares main's process group");
}

#[test]
fn a_killed_worker_is_replaced_in_the_same_slot() {
    let panzer = server("2");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let first = get(port, "/").unwrap();
    let (victim, slot) = (first.pid(), first.field("worker"));
    kill(victim, Signal::SIGKILL).unwrap();
    panzer.wait_for_line(&format!("worker {slot} (pid {victim}) killed by SIGKILL"));
    let replacement = eventually(PATIENCE, "a new worker in the same slot", || {
        get(port, "/").ok().filter(|r| r.field("worker") == slot && r.pid() != victim)
    });
    assert!(!alive(victim));
    assert_eq!(replacement.field("generation"), "1");
}

#[test]
fn a_crash_loop_backs_off_and_generation_one_failing_exits_1() {
    let mut panzer = Panzer::new("false").count(1).start();
    panzer.wait_for_line("restarting in 100ms");
    panzer.wait_for_line("restarting in 200ms");
    panzer.wait_for_line("restarting in 400ms");
    panzer.wait_for_line("restarting in 800ms");
    // Waiting out the backoff costs main next to nothing.
    let ticks = cpu_ticks(panzer.pid);
    assert!(ticks < 25, "main used {ticks} CPU ticks during the crash loop");
    let monitors = panzer.monitors();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(1));
    assert!(
        panzer.log().contains("panzer: generation 1 never became ready: worker 0 exited 5 times"),
        "{}",
        panzer.log()
    );
    for pid in monitors {
        assert!(!alive(pid), "monitor {pid} outlived main");
    }
}

#[test]
fn a_killed_monitor_is_replaced_by_a_new_generation_on_the_same_port() {
    let panzer = server("2");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = get(port, "/").unwrap();
    let monitor = panzer.monitors()[0];
    kill(monitor, Signal::SIGKILL).unwrap();
    panzer.wait_for_line("was killed by SIGKILL");
    panzer.wait_ready(2);
    let new = eventually(PATIENCE, "generation 2 to answer", || {
        get(port, "/").ok().filter(|r| r.field("generation") == "2")
    });
    assert_ne!(new.pid(), old.pid());
    eventually(PATIENCE, "generation 1's workers to exit", || (!alive(old.pid())).then_some(()));
    assert_eq!(panzer.monitors().len(), 1);
}

#[test]
fn kill_9_of_main_leaves_no_process_behind() {
    let mut panzer = server("2");
    panzer.wait_ready(1);
    let tree = panzer.descendants();
    assert!(tree.len() >= 3, "expected a monitor and 2 workers, got {tree:?}");
    panzer.signal(Signal::SIGKILL);
    panzer.wait_exit(PATIENCE);
    eventually(PATIENCE, "every process of the tree to die", || {
        tree.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mut panzer = server("1");
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let (mut stream, worker) = slow_request_in_flight(port, 1000);
    let tree = panzer.descendants();
    panzer.signal(Signal::SIGTERM);
    let slow = read_response(&mut stream).unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.pid(), worker);
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", panzer.log());
    assert!(panzer.log().contains("stopping gracefully"));
    for pid in tree {
        assert!(!alive(pid), "pid {pid} outlived main");
    }
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_graceful_timeout() {
    let mut panzer = Panzer::new(example("stubborn"))
        .count(1)
        .ready("100ms")
        .args(&["--graceful-timeout", "300ms"])
        .start();
    panzer.wait_ready(1);
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_line("ignoring SIGTERM");
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0));
    let log = panzer.log();
    assert!(log.contains("still running after the graceful timeout: SIGKILL"), "{log}");
    assert!(log.contains("killed by SIGKILL"), "{log}");
}

#[test]
fn a_slow_drain_is_waited_for_not_killed() {
    let mut panzer = Panzer::new(example("slow_drain"))
        .count(2)
        .ready("100ms")
        .args(&["--graceful-timeout", "20s"])
        .env("DRAIN_MS", "700")
        .start();
    panzer.wait_ready(1);
    let tree = panzer.descendants();
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    let log = panzer.log();
    assert_eq!(log.matches(" draining for 700 ms").count(), 2, "{log}");
    assert_eq!(log.matches(" exiting").count(), 2, "{log}");
    assert_eq!(log.matches("exited with status 0").count(), 2, "{log}");
    assert!(!log.contains("killed by SIGKILL"), "{log}");
    assert!(tree.iter().all(|p| !alive(*p)));
}

#[test]
fn with_a_ready_duration_only_time_alive_counts_not_an_early_ready_1() {
    // the server sends READY=1 at once; with --ready 400ms that must not count.
    let panzer = Panzer::new(example("server")).count(1).ready("400ms").start();
    let line = panzer.wait_for_line("generation 1 ready");
    // `generation 1 ready: 1/1 workers in 401 ms (alive 400ms)`
    let ms: u64 =
        line.split(" workers in ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(ms >= 400, "{line}");
}

#[test]
fn the_command_may_follow_the_double_dash_as_einhorn_and_start_server_users_write_it() {
    // `panzer [OPTIONS] -- COMMAND [ARGS]`: the first word after `--` is
    // the command, and everything after it goes to the command, options
    // that look like panzer's included.
    let script = r#"echo "args: $*"; exec sleep 1000"#;
    let mut panzer = Panzer::with_args(&[
        "--count", "2", "--ready", "50ms", "--", "sh", "-c", script, "sh", "--count", "3",
    ])
    .start();
    panzer.wait_ready(1);
    assert_eq!(panzer.wait_for_lines("args: --count 3", 2).len(), 2);
    assert!(panzer.log().contains("ready: 2/2 workers"), "{}", panzer.log());
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));

    // The other form keeps working: options after COMMAND are panzer's.
    let panzer = Panzer::with_args(&[
        "sh", "--count", "2", "--ready", "50ms", "--", "-c", script, "sh", "--port", "1",
    ])
    .start();
    panzer.wait_ready(1);
    assert_eq!(panzer.wait_for_lines("args: --port 1", 2).len(), 2);
    assert!(panzer.log().contains("ready: 2/2 workers"), "{}", panzer.log());
}
