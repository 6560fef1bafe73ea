//! The control plane: `panzerctl`, the control socket, the pid file, live
//! scaling.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::*;

/// panzer running `command` with a pid file and the default control socket;
/// returns it with the paths of both.
fn start(count: &str, command: &str) -> (Panzer, String, String) {
    let panzer = Panzer::new(command).count(count).notify().pid_file().start();
    panzer.wait_ready(1);
    let line = panzer.wait_for_line("control socket at ");
    let control = line.rsplit("control socket at ").next().unwrap().trim().to_string();
    let pid_file = panzer.dir.join("panzer.pid").to_string_lossy().into_owned();
    (panzer, control, pid_file)
}

fn status(control: &str) -> Value {
    let out = panzerctl(&["--control", control, "--json", "status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true);
    reply["status"].clone()
}

fn worker_pids(status: &Value) -> HashSet<Pid> {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "ready")
        .flat_map(|g| g["workers"].as_array().unwrap().iter())
        .map(|w| Pid::from_raw(w["pid"].as_i64().unwrap() as i32))
        .collect()
}

#[test]
fn status_lists_the_workers_that_serve() {
    let (panzer, control, pid_file) = start("3", &example("server"));
    let port = panzer.port(0);
    let served = distinct_pids(port, 3);
    let s = status(&control);
    assert_eq!(s["pid"], panzer.pid.as_raw());
    assert_eq!(s["count"], 3);
    assert_eq!(s["sockets"][0]["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(worker_pids(&s), served);
    let generation = &s["generations"][0];
    assert_eq!(generation["generation"], 1);
    assert_eq!(generation["monitor_pid"], panzer.monitors()[0].as_raw());
    for w in generation["workers"].as_array().unwrap() {
        assert_eq!(w["ready"], true);
        assert!(w["rss_kib"].as_u64().unwrap() > 0);
    }
    // The pid file names main, and the human table shows every worker.
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), panzer.pid.to_string());
    let table = panzerctl(&["--control", &control, "status"]);
    assert_eq!(table.code, 0);
    for pid in &served {
        assert!(table.stdout.contains(&format!(" {pid} ")), "{}", table.stdout);
    }
    assert!(table.stdout.contains("generation 1  ready"), "{}", table.stdout);
}

#[test]
fn reload_answers_with_the_new_generation_and_rollback_with_the_reason() {
    let dir = TestDir::new("ctl-deploy");
    let script = dir.join("server.sh");
    let deploy = |env: &str| {
        let tmp = dir.join("server.new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{env} exec {} \"$@\"\n", example("server"))).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &script).unwrap();
    };
    deploy("");
    let (panzer, control, pid_file) = start("2", script.to_str().unwrap());
    let port = panzer.port(0);

    let out = panzer.ctl(&["--pid-file", &pid_file, "reload"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "reloaded: generation 2 serves"), "{}", out.stderr);
    // Generation 1 may still answer a request or two while it drains.
    let mut serving = HashSet::new();
    let serving = eventually(PATIENCE, "both workers of generation 2", || {
        if let Ok(r) = get(port, "/").map(|r| (r.field("generation"), r.pid())) {
            if r.0 == "2" {
                serving.insert(r.1);
            }
        }
        (serving.len() == 2).then(|| serving.clone())
    });

    deploy("FAIL_ON_START=1");
    let out = panzerctl(&["--control", &control, "reload"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("panzerctl: reload failed: worker"), "{}", out.stderr);
    assert!(out.stderr.contains("generation 2 keeps serving"), "{}", out.stderr);
    for _ in 0..10 {
        let r = get(port, "/").unwrap();
        assert!(serving.contains(&r.pid()), "answered by {:?}", r.body);
    }
    let s = status(&control);
    assert_eq!((s["reloads"]["ok"].as_u64(), s["reloads"]["failed"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn scaling_by_control_and_by_signal_changes_the_workers_that_serve() {
    let (panzer, control, _) = start("1", &example("server"));
    let port = panzer.port(0);
    let out = panzerctl(&["--control", &control, "scale", "3"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "panzer now runs 3 worker(s) per generation"));
    distinct_pids(port, 3);
    let count_workers = || worker_pids(&status(&control)).len();
    eventually(PATIENCE, "3 workers in status", || (count_workers() == 3).then_some(()));

    panzer.signal(Signal::SIGTTOU);
    eventually(PATIENCE, "2 workers after SIGTTOU", || (count_workers() == 2).then_some(()));
    // One signal at a time: two of a kind sent at once may arrive as one.
    panzer.signal(Signal::SIGTTIN);
    eventually(PATIENCE, "3 workers after SIGTTIN", || (count_workers() == 3).then_some(()));
    panzer.signal(Signal::SIGTTIN);
    eventually(PATIENCE, "4 workers after another SIGTTIN", || (count_workers() == 4).then_some(()));
    distinct_pids(port, 4);
    assert_eq!(status(&control)["count"], 4);

    let out = panzerctl(&["--control", &control, "scale", "0"]);
    assert_eq!(out.code, 2, "scale 0 is a usage error");
    assert!(out.stderr.contains("at least 1") && !out.stderr.contains("4294967295"), "{}", out.stderr);
    // A reload keeps the new count.
    assert_eq!(panzerctl(&["--control", &control, "reload"]).code, 0);
    assert_eq!(worker_pids(&status(&control)).len(), 4);
}

#[test]
fn stop_by_control_drains_and_exits_0() {
    let (mut panzer, control, pid_file) = start("2", &example("server"));
    let tree = panzer.descendants();
    let out = panzerctl(&["--control", &control, "stop"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "panzer is stopping"));
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    assert!(tree.iter().all(|p| !alive(*p)));
    assert!(!std::path::Path::new(&control).exists(), "control socket left behind");
    assert!(!std::path::Path::new(&pid_file).exists(), "pid file left behind");
    let out = panzerctl(&["--control", &control, "status"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot connect to"), "{}", out.stderr);
}

#[test]
fn bad_clients_never_stop_main_from_answering_others() {
    let (panzer, control, _) = start("1", &example("server"));
    // One connects and says nothing.
    let _silent = UnixStream::connect(&control).unwrap();
    // One sends garbage: an error, then the connection is closed.
    let garbage = UnixStream::connect(&control).unwrap();
    (&garbage).write_all(b"hello there\n").unwrap();
    let mut reply = String::new();
    let mut reader = BufReader::new(&garbage);
    reader.read_line(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("not a JSON object"));
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "connection not closed");
    // One sends an unknown command.
    let unknown = UnixStream::connect(&control).unwrap();
    (&unknown).write_all(b"{\"cmd\":\"explode\"}\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&unknown).read_line(&mut reply).unwrap();
    assert!(reply.contains("unknown request"), "{reply}");
    // One sends an endless line.
    let huge = UnixStream::connect(&control).unwrap();
    let _ = (&huge).write_all(&vec![b'x'; 200 * 1024]);
    let mut reply = String::new();
    BufReader::new(&huge).read_line(&mut reply).unwrap();
    assert!(reply.contains("longer than"), "{reply}");
    // Meanwhile status answers, repeatedly.
    for _ in 0..3 {
        assert_eq!(status(&control)["pid"], panzer.pid.as_raw());
    }
}

#[test]
fn panzerctl_finds_the_one_panzer_running() {
    // A short runtime dir of its own, so no other test's panzer is in it.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let runtime = TestDir(std::env::temp_dir().join(format!("pzx-{}-{n}", std::process::id())));
    std::fs::create_dir_all(&runtime.0).unwrap();
    let xdg = [("XDG_RUNTIME_DIR", runtime.0.to_str().unwrap())];
    let out = panzerctl_as(None, &["status"], &xdg);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no running panzer in"), "{}", out.stderr);

    let panzer = Panzer::new(example("server")).count(1).envs(&xdg).start();
    panzer.wait_for_line("control socket at");
    let out = panzerctl_as(None, &["--json", "status"], &xdg);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["status"]["pid"], panzer.pid.as_raw());
}

#[test]
fn another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run panzerctl under another uid");
        return;
    }
    let (_panzer, control, _) = start("1", &example("server"));
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The socket's mode keeps uid 65534 out…
    let out = panzerctl_as(Some(65534), &["--control", &control, "status"], &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    // …and so does the peer-credential check when the mode is opened up
    // (the socket's and its private directory's).
    let private = std::path::Path::new(&control).parent().unwrap();
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = panzerctl_as(Some(65534), &["--control", &control, "status"], &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("only panzer's own user or root"), "{}", out.stderr);
    assert_eq!(panzerctl(&["--control", &control, "status"]).code, 0);
}

#[test]
fn stale_control_socket_and_pid_file_are_replaced_live_ones_refused() {
    let dir = TestDir::new("stale");
    let control = dir.join("ctl.sock");
    let pid_file = dir.join("panzer.pid");
    drop(UnixListener::bind(&control).unwrap()); // a socket file nobody listens on
    std::fs::write(&pid_file, "999999999\n").unwrap(); // a pid that cannot be running
    let (control, pid_file) = (control.to_str().unwrap(), pid_file.to_str().unwrap());
    let start = |control: &str, pid_file: &str| {
        let options = ["--control", control, "--pid-file", pid_file];
        Panzer::new("sleep").args(&options).command_args(&["--", "1000"]).start()
    };
    let first = start(control, pid_file);
    first.wait_for_line("control socket at");
    eventually(PATIENCE, "the pid file", || {
        (std::fs::read_to_string(pid_file).ok()?.trim() == first.pid.to_string()).then_some(())
    });

    let other_pid_file = dir.join("other.pid");
    let mut second = start(control, other_pid_file.to_str().unwrap());
    assert_eq!(second.wait_exit(PATIENCE).code(), Some(71));
    assert!(second.log().contains("a running panzer already listens there"), "{}", second.log());

    let other_control = dir.join("other.sock");
    let mut third = start(other_control.to_str().unwrap(), pid_file);
    assert_eq!(third.wait_exit(PATIENCE).code(), Some(71));
    assert!(
        third.log().contains(&format!("names process {}, which is running", first.pid)),
        "{}",
        third.log()
    );
    // The refused ones touched nothing of the first.
    assert_eq!(std::fs::read_to_string(pid_file).unwrap().trim(), first.pid.to_string());
    assert_eq!(panzerctl(&["--control", control, "status"]).code, 0);
}

/// `panzerctl status --ready` (and the `ready`, `stopping` and `readiness`
/// status fields) for the panzer `panzer` runs: its exit code and one line.
fn ready_probe(panzer: &Panzer) -> (i32, String) {
    let out = panzer.ctl(&["status", "--ready"]);
    assert!(out.code == 0 || out.code == 1, "status --ready exited {}: {}", out.code, out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "one line: {:?}", out.stdout);
    let status = panzer.status();
    assert_eq!(status["ready"], out.code == 0, "{status}");
    assert_eq!(status["readiness"], out.stdout.trim(), "{status}");
    (out.code, out.stdout.trim().to_string())
}

#[test]
fn status_ready_fails_with_the_reason_while_no_worker_is_ready() {
    let panzer = Panzer::new(example("never_ready")).count(2).notify().start();
    panzer.wait_for_lines("never_ready: pid", 2);
    let (code, line) = ready_probe(&panzer);
    assert_eq!((code, line.as_str()), (1, "generation 1 starting: 0/2 workers ready"));
    let status = panzer.status();
    assert_eq!(status["stopping"], false, "{status}");
    // The table says it too.
    let table = panzer.ctl(&["status"]);
    assert!(table.stdout.contains("not ready: generation 1 starting: 0/2 workers ready"), "{}", table.stdout);
}

#[test]
fn status_ready_turns_to_zero_once_a_generation_is_ready() {
    let gate = Gate::new();
    let panzer = Panzer::new(gate.path()).count(2).notify().start();
    panzer.wait_for_line("starting generation 1");
    assert_eq!(ready_probe(&panzer), (1, "generation 1 starting: 0/2 workers ready".into()));
    gate.open();
    panzer.wait_ready(1);
    assert_eq!(ready_probe(&panzer), (0, "generation 1 ready: 2/2 workers ready".into()));
    let table = panzer.ctl(&["status"]);
    assert!(table.stdout.contains("ready: generation 1 ready: 2/2 workers ready"), "{}", table.stdout);
}

#[test]
fn status_ready_says_stopping_from_the_moment_a_graceful_stop_is_taken() {
    // The worker takes 20 s to drain: the stop lasts as long as the test needs.
    let panzer = Panzer::new(example("slow_drain")).count(1).notify().env("DRAIN_MS", "20000").start();
    panzer.wait_ready(1);
    assert_eq!(ready_probe(&panzer).0, 0);
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_line("stopping gracefully");
    assert_eq!(ready_probe(&panzer), (1, "stopping".into()));
    assert_eq!(panzer.status()["stopping"], true);
    assert!(panzer.exited().is_none(), "still draining");
}

#[test]
fn a_zero_refresh_interval_or_reply_timeout_is_refused_with_the_option_named() {
    // `top --interval 0` would ask main for a status back to back, each a
    // read of /proc for every worker; a zero timeout cannot be waited for.
    for (args, named) in [
        (&["--control", "/nonexistent", "top", "--interval", "0s"][..], "--interval"),
        (&["--control", "/nonexistent", "top", "--interval", "10ms"], "--interval"),
        (&["--control", "/nonexistent", "--timeout", "0s", "status"], "--timeout"),
    ] {
        let out = panzerctl(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(named), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("/nonexistent"), "refused before connecting: {}", out.stderr);
    }
}
