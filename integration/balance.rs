//! `--balance round-robin`: a socket per worker slot, and new connections
//! handed to the ready slots in turn; kept-alive connections spread evenly,
//! reloads, scaling and a killed worker lose nothing, and where the kernel
//! or the setup does not allow it panzer says why and does not start.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

fn round_robin(count: u32) -> Panzer {
    Panzer::new(example("server")).count(count).notify().args(&["--balance", "round-robin"]).start()
}

/// `GET /` on a kept-alive connection; the pid that answered.
fn ask(stream: &mut TcpStream) -> std::io::Result<Response> {
    write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    read_response(stream)
}

/// Opens `connections` kept-alive connections one after the other, asks
/// once on each, and counts the connections each worker pid holds.
fn spread(port: u16, connections: usize) -> BTreeMap<Pid, usize> {
    let mut streams: Vec<TcpStream> = (0..connections).map(|_| connect(port).unwrap()).collect();
    let mut held = BTreeMap::new();
    for stream in &mut streams {
        *held.entry(ask(stream).unwrap().pid()).or_insert(0) += 1;
    }
    held
}

/// Every worker of the current generation, once each has answered.
fn workers(port: u16, n: usize) -> Vec<Pid> {
    distinct_pids(port, n).into_iter().collect()
}

#[test]
fn kept_alive_connections_are_spread_evenly_over_the_workers() {
    let panzer = round_robin(4);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let all = workers(port, 4);
    for trial in 0..8 {
        let held = spread(port, 4);
        assert_eq!(held.len(), 4, "trial {trial}: {held:?} (workers {all:?})");
        assert!(held.values().all(|&n| n == 1), "trial {trial}: {held:?}");
    }
    for trial in 0..4 {
        let held = spread(port, 8);
        assert_eq!(held.len(), 4, "trial {trial}: {held:?}");
        assert!(held.values().all(|&n| n == 2), "trial {trial}: {held:?}");
    }
    // Each worker got its own socket at fd 3, and nothing changed for it.
    let env = environ(all[0]);
    assert_eq!(env["LISTEN_FDS"], "1");
    let sockets: std::collections::BTreeSet<String> = all.iter().map(|&pid| fd_target(pid, 3)).collect();
    assert_eq!(sockets.len(), 4, "one socket per worker: {sockets:?}");
}

/// Opens `n` kept-alive connections and asks once on each, so every one is
/// accepted; they stay open as long as the result lives.
fn held_open(port: u16, n: usize) -> Vec<TcpStream> {
    let mut streams: Vec<TcpStream> = (0..n).map(|_| connect(port).unwrap()).collect();
    for stream in &mut streams {
        ask(stream).unwrap();
    }
    streams
}

#[test]
fn status_and_metrics_show_the_spread_each_worker_holds() {
    let panzer = round_robin(4);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    workers(port, 4);
    let _open = held_open(port, 8);
    // `panzerctl status --json`: each worker holds two.
    let held = eventually(PATIENCE, "two connections on each worker in status", || {
        let status = panzer.status();
        let workers = status["generations"][0]["workers"].as_array().cloned().unwrap_or_default();
        let held: Vec<Option<u64>> = workers.iter().map(|w| w["connections"].as_u64()).collect();
        (held == [Some(2); 4]).then_some(held)
    });
    assert_eq!(held.len(), 4);
    // The table has a CONNS column; the metrics have a sample per slot.
    let table = panzer.ctl(&["status"]).stdout;
    assert!(table.contains("CONNS"), "{table}");
    let metrics = panzer.ctl(&["metrics"]).stdout;
    assert!(metrics.contains("# TYPE panzer_worker_connections gauge"), "{metrics}");
    for slot in 0..4 {
        let line = format!("panzer_worker_connections{{generation=\"1\",slot=\"{slot}\"}} 2");
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
}

#[test]
fn two_workers_two_connections_never_share_a_worker() {
    let panzer = round_robin(2);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    for trial in 0..8 {
        let held = spread(port, 2);
        assert_eq!(held.len(), 2, "trial {trial}: {held:?}");
    }
}

/// Once generation 1 is ready: its port, and 4 clients on fresh connections
/// and 4 on kept-alive ones.
fn under_load(panzer: &Panzer) -> (u16, Load, KeepAlive) {
    let port = panzer.port(0);
    panzer.wait_ready(1);
    (port, Load::start(port, 4, "/"), KeepAlive::start(port, 4))
}

fn assert_no_failure(what: &str, fresh: Load, kept: KeepAlive) {
    let (failures, generations) = fresh.finish();
    let (answered, kept_failures) = kept.finish();
    assert!(failures.is_empty(), "{what}: fresh connections failed: {failures:?} ({generations:?})");
    assert!(kept_failures.is_empty(), "{what}: kept-alive connections failed: {kept_failures:?}");
    assert!(answered > 0, "{what}: no kept-alive answer");
}

#[test]
fn reloads_under_load_lose_nothing() {
    // Each new worker takes 150 ms to be ready, as a real server would:
    // connections queue on the slots meanwhile, and the load runs for as
    // long as the 50 reloads take (well past 20,000 requests).
    let panzer = Panzer::new(example("server"))
        .count(4)
        .notify()
        .env("READY_DELAY_MS", "150")
        .args(&["--balance", "round-robin"])
        .start();
    let (_, fresh, kept) = under_load(&panzer);
    for generation in 2..=51 {
        fresh.wait_for(50);
        panzer.signal(Signal::SIGUSR1);
        panzer.wait_ready(generation);
    }
    fresh.wait_for(50);
    assert_no_failure("50 reloads", fresh, kept);
}

#[test]
fn a_rolling_reload_and_a_canary_under_load_lose_nothing() {
    for (what, staged) in
        [("a rolling reload", ["--reload-strategy", "rolling"]), ("a canary", ["--canary", "300ms"])]
    {
        let panzer = Panzer::new(example("server"))
            .count(4)
            .notify()
            .args(&["--balance", "round-robin"])
            .args(&staged)
            .start();
        let (_, fresh, kept) = under_load(&panzer);
        fresh.wait_for(50);
        panzer.signal(Signal::SIGUSR1);
        panzer.wait_ready(2);
        panzer.wait_for_line("generation 1 stopped");
        fresh.wait_for(50);
        assert_no_failure(what, fresh, kept);
    }
}

#[test]
fn scaling_down_and_up_and_a_killed_worker_lose_nothing() {
    let panzer = round_robin(4);
    let (port, fresh, kept) = under_load(&panzer);
    fresh.wait_for(50);
    let out = panzer.ctl(&["scale", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    panzer.wait_for_lines("exited with status 0", 2);
    fresh.wait_for(100);
    let out = panzer.ctl(&["scale", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ready_workers(&panzer, 4);
    fresh.wait_for(100);
    assert_no_failure("scale 4 to 2 to 4", fresh, kept);
    // A killed worker's own connections die with it (a request it had
    // accepted, under load, fails: so the load starts once it is killed);
    // new ones wait on its socket for its replacement, or go to the others.
    let victim = get(port, "/").unwrap().pid();
    kill(victim, Signal::SIGKILL).unwrap();
    let fresh = Load::start(port, 4, "/");
    panzer.wait_for_line("killed by SIGKILL");
    ready_workers(&panzer, 4);
    fresh.wait_for(100);
    let (failures, _) = fresh.finish();
    assert!(failures.is_empty(), "a killed worker: {failures:?}");
}

/// `n` kept-alive connections land one on each of the `n` workers.
fn one_each(port: u16, n: usize, what: &str) {
    let held = spread(port, n);
    assert_eq!(held.len(), n, "{what}: {held:?}");
    assert!(held.values().all(|&c| c == 1), "{what}: {held:?}");
}

#[test]
fn scaling_up_above_the_start_count_loses_nothing_and_the_new_workers_take_turns() {
    let panzer = round_robin(4);
    let (port, fresh, kept) = under_load(&panzer);
    fresh.wait_for(50);
    let out = panzer.ctl(&["scale", "6"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ready_workers(&panzer, 6);
    fresh.wait_for(100);
    assert_no_failure("scale 4 to 6", fresh, kept);
    one_each(port, 6, "after scale 6");
    // SIGTTIN: one more, above what was bound so far.
    let (fresh, kept) = (Load::start(port, 4, "/"), KeepAlive::start(port, 4));
    fresh.wait_for(50);
    panzer.signal(Signal::SIGTTIN);
    ready_workers(&panzer, 7);
    fresh.wait_for(100);
    assert_no_failure("SIGTTIN to 7", fresh, kept);
    one_each(port, 7, "after SIGTTIN");
    // A reload: the new generation runs on all 7 slots.
    let (fresh, kept) = (Load::start(port, 4, "/"), KeepAlive::start(port, 4));
    fresh.wait_for(50);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    panzer.wait_for_line("generation 1 stopped");
    ready_workers(&panzer, 7);
    fresh.wait_for(50);
    assert_no_failure("a reload after scaling up", fresh, kept);
    one_each(port, 7, "after the reload");
    // Back down: the slots stay bound, the rotation leaves them out.
    let (fresh, kept) = (Load::start(port, 4, "/"), KeepAlive::start(port, 4));
    fresh.wait_for(50);
    let out = panzer.ctl(&["scale", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ready_workers(&panzer, 4);
    fresh.wait_for(100);
    assert_no_failure("scale 7 to 4", fresh, kept);
    one_each(port, 4, "after scale 4");
}

#[test]
fn slots_added_by_a_scale_cross_an_upgrade() {
    let panzer = round_robin(2);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let out = panzer.ctl(&["scale", "3"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ready_workers(&panzer, 3);
    let (fresh, kept) = (Load::start(port, 4, "/"), KeepAlive::start(port, 4));
    fresh.wait_for(50);
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    panzer.wait_for_line("resumed as panzer");
    fresh.wait_for(50);
    assert_no_failure("an upgrade after scaling up", fresh, kept);
    one_each(port, 3, "after the upgrade");
    // The new image adds a slot, and a reload runs on all of them.
    let out = panzer.ctl(&["scale", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ready_workers(&panzer, 4);
    one_each(port, 4, "scaled up after the upgrade");
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    panzer.wait_for_line("generation 1 stopped");
    one_each(port, 4, "after the reload");
}

/// The pid of worker `ordinal` of the serving generation.
fn worker_pid(panzer: &Panzer, ordinal: u64) -> Pid {
    let status = panzer.status();
    let workers = status["generations"][0]["workers"].as_array().unwrap().clone();
    let w = workers.iter().find(|w| w["ordinal"].as_u64() == Some(ordinal)).unwrap();
    Pid::from_raw(w["pid"].as_i64().unwrap() as i32)
}

/// A worker that stops accepting at once on SIGTERM, whatever waits in
/// its queue (as a server that closes its listener first does), and
/// answers each connection with its pid.
const ABRUPT: &str = r#"
import os, signal, socket
class Drain(Exception): pass
def drain(*_): raise Drain()
signal.signal(signal.SIGTERM, drain)
listener = socket.socket(fileno=3)
try:
    while True:
        c, _ = listener.accept()
        c.recv(4096)
        body = ("pid=%d worker=%s" % (os.getpid(), os.environ["PANZER_WORKER"])).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        c.close()
except Drain:
    listener.close()
"#;

/// 4 workers of [`ABRUPT`] in round-robin (with `args`); worker 3 is
/// stopped, 4 connections each send a request (so one waits in slot 3's
/// queue), and panzer is scaled down to 2. The stopped worker's pid, and
/// the connections.
fn one_waits_on_a_slot_scaled_away(args: &[&str]) -> (Panzer, Pid, Vec<TcpStream>) {
    let panzer = Panzer::new("python3")
        .command_args(&["--", "-c", ABRUPT])
        .count(4)
        .ready("accepting")
        .args(&["--balance", "round-robin"])
        .args(args)
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    ready_workers(&panzer, 4);
    let stalled = worker_pid(&panzer, 3);
    stop_process(stalled);
    let mut streams: Vec<TcpStream> = (0..4).map(|_| connect(port).unwrap()).collect();
    for stream in &mut streams {
        write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    }
    let out = panzer.ctl(&["scale", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    (panzer, stalled, streams)
}

#[test]
fn a_connection_queued_on_a_slot_that_is_scaled_away_is_served_before_its_worker_drains() {
    // Worker 3 stalls, then goes on before its drain is due.
    let (panzer, stalled, mut streams) = one_waits_on_a_slot_scaled_away(&[]);
    panzer.wait_for_line("now running 2 worker(s)");
    kill(stalled, Signal::SIGCONT).unwrap();
    let answered: Vec<String> =
        streams.iter_mut().map(|s| read_response(s).map(|r| r.body)).collect::<Result<_, _>>().unwrap();
    assert!(answered.iter().any(|a| a.contains(&format!("pid={stalled} "))), "{answered:?}");
    panzer.wait_for_line(&format!("(pid {stalled}) exited"));
}

#[test]
fn a_stopped_worker_leaves_the_rotation_until_it_accepts_again() {
    let panzer = round_robin(2);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    ready_workers(&panzer, 2);
    let (serving, stopped) = (worker_pid(&panzer, 0), worker_pid(&panzer, 1));
    stop_process(stopped);
    // New connections keep coming; half of them wait for the stopped one.
    let mut waiting: Vec<TcpStream> = Vec::new();
    eventually(PATIENCE, "slot 1 to leave the rotation", || {
        let mut stream = connect(port).unwrap();
        write!(stream, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        waiting.push(stream);
        panzer.log().contains("slot 1: ").then_some(())
    });
    let line = panzer.wait_for_line("out of the rotation until it accepts again");
    assert!(line.contains("round-robin: slot 1: its worker accepts nothing"), "{line}");
    // Now every new connection goes to the worker that accepts.
    for _ in 0..10 {
        assert_eq!(get(port, "/").unwrap().pid(), serving);
    }
    kill(stopped, Signal::SIGCONT).unwrap();
    panzer.wait_for_line("round-robin: slot 1: its worker accepts again: back in the rotation");
    // What waited was served, by one worker or the other.
    for stream in &mut waiting {
        let pid = read_response(stream).unwrap().pid();
        assert!(pid == serving || pid == stopped, "{pid}");
    }
    assert!(waiting.len() >= 2, "{}", waiting.len());
    workers(port, 2);
}

/// Waits until the serving generation has `n` ready workers.
fn ready_workers(panzer: &Panzer, n: usize) {
    eventually(PATIENCE, &format!("{n} ready workers"), || {
        let status = panzer.status();
        let workers = status["generations"][0]["workers"].as_array()?.clone();
        let ready = workers.iter().filter(|w| w["ready"] == true && w["pid"].as_i64() != Some(0)).count();
        (ready == n).then_some(())
    });
}

/// Execs panzer with a listening socket at fd 3, as systemd would.
const SYSTEMD: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(16)
t = os.dup(s.fileno())
s.close()
os.dup2(t, 3)
os.close(t)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn sockets_from_systemd_cannot_be_balanced_and_panzer_says_so() {
    let mut panzer = Panzer::new(example("server"))
        .no_bind()
        .args(&["--balance", "round-robin"])
        .via("python3", &["-c", SYSTEMD, env!("CARGO_BIN_EXE_panzer")])
        .start();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", panzer.log());
    let log = panzer.log();
    assert!(log.contains("--balance round-robin: the sockets systemd passed in"), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("round-robin")).count(), 1, "{log}");
}

#[test]
fn a_unix_socket_cannot_be_balanced_and_panzer_says_so() {
    let dir = TestDir::new("balance-unix");
    let path = dir.0.join("s.sock");
    let mut panzer = Panzer::new(example("server"))
        .bind(format!("unix:{}", path.display()))
        .args(&["--balance", "round-robin"])
        .start();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", panzer.log());
    assert!(panzer.log().contains("a unix socket cannot be balanced"), "{}", panzer.log());
    assert!(!path.exists(), "the socket file was left behind");
}

/// `--inh-caps` and `--bounding-set` for `setpriv`: root without what BPF needs.
const NO_BPF: &str = "-bpf,-sys_admin,-net_admin";

/// Runs `panzer ARGS…` under `setpriv` without the capabilities BPF needs;
/// `None` where that cannot be arranged (not root, no `setpriv`).
fn without_bpf(args: &[&str]) -> Option<(i32, String)> {
    if !std::path::Path::new("/usr/bin/setpriv").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root and setpriv");
        return None;
    }
    let (inh, bounding) = (format!("--inh-caps={NO_BPF}"), format!("--bounding-set={NO_BPF}"));
    let mut panzer = Panzer::new(example("server"))
        .args(args)
        .via("/usr/bin/setpriv", &[&inh, &bounding, env!("CARGO_BIN_EXE_panzer")])
        .start();
    let status = panzer.wait_exit(PATIENCE);
    Some((status.code().unwrap(), panzer.log()))
}

#[test]
fn without_the_capabilities_for_bpf_round_robin_fails_at_start() {
    let Some((code, log)) = without_bpf(&["--balance", "round-robin"]) else { return };
    assert_eq!(code, 71, "{log}");
    assert!(log.contains("--balance round-robin on 127.0.0.1:"), "{log}");
    assert!(log.contains("CAP_BPF"), "{log}");
    assert!(!log.contains("starting generation"), "{log}");
}

#[test]
fn check_says_what_round_robin_would_refuse() {
    let Some((code, log)) = without_bpf(&["--check", "--balance", "round-robin"]) else { return };
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("--balance round-robin: cannot create a BPF map"), "{log}");
    let mut panzer =
        Panzer::with_args(&["--check", "--balance", "round-robin", "--bind", "unix:/nowhere/s.sock", "true"])
            .start();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", panzer.log());
    assert!(panzer.log().contains("a unix socket cannot be balanced"), "{}", panzer.log());
}

#[test]
fn the_default_is_shared_and_an_unknown_mode_is_refused() {
    // Without --balance, every worker accepts from the one socket.
    let shared = Panzer::new(example("server")).count(2).notify().start();
    let port = shared.port(0);
    shared.wait_ready(1);
    let sockets: std::collections::BTreeSet<String> =
        workers(port, 2).into_iter().map(|pid| fd_target(pid, 3)).collect();
    assert_eq!(sockets.len(), 1, "one socket for all: {sockets:?}");
    drop(shared);
    let mut panzer = Panzer::new(example("server")).args(&["--balance", "random"]).start();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", panzer.log());
    assert!(panzer.log().contains("invalid balance mode 'random'"), "{}", panzer.log());
}

#[test]
fn library_mode_workers_take_turns_too() {
    let panzer = Panzer::new(example("preload"))
        .arg("--preload")
        .count(2)
        .env("PRELOAD_MB", "1")
        .args(&["--balance", "round-robin"])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    ready_workers(&panzer, 2);
    // Fresh connections one after the other: the slots in turn.
    let mut answered: BTreeMap<Pid, usize> = BTreeMap::new();
    for _ in 0..8 {
        *answered.entry(get(port, "/").unwrap().pid()).or_insert(0) += 1;
    }
    assert_eq!(answered.values().copied().collect::<Vec<_>>(), [4, 4], "{answered:?}");
}

#[test]
fn an_upgrade_under_load_loses_nothing_and_the_rotation_goes_on() {
    let panzer = round_robin(4);
    let (port, fresh, kept) = under_load(&panzer);
    let mut before = workers(port, 4);
    before.sort();
    for n in 1..=3 {
        fresh.wait_for(50);
        if n == 2 {
            panzer.signal(Signal::SIGUSR2);
        } else {
            let out = panzer.ctl(&["upgrade"]);
            assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        }
        panzer.wait_for_lines("resumed as panzer", n);
    }
    fresh.wait_for(50);
    assert_no_failure("3 upgrades", fresh, kept);
    // The same workers, each still on its own slot, and new kept-alive
    // connections still go one to each.
    let mut after = workers(port, 4);
    after.sort();
    assert_eq!(before, after);
    for trial in 0..4 {
        let held = spread(port, 4);
        assert_eq!(held.len(), 4, "after the upgrades, trial {trial}: {held:?}");
        assert!(held.values().all(|&n| n == 1), "after the upgrades, trial {trial}: {held:?}");
    }
    // A reload after the upgrades: the new generation takes the slots over.
    let (_, fresh, kept) = (port, Load::start(port, 4, "/"), KeepAlive::start(port, 4));
    fresh.wait_for(50);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    panzer.wait_for_line("generation 1 stopped");
    fresh.wait_for(50);
    assert_no_failure("a reload after the upgrades", fresh, kept);
    let held = spread(port, 8);
    assert_eq!(held.len(), 4, "after the reload: {held:?}");
    assert!(held.values().all(|&n| n == 2), "after the reload: {held:?}");
    assert!(held.keys().all(|pid| !before.contains(pid)), "after the reload: {held:?} (before {before:?})");
    // The new image updates the rotation: scaled down to 2, new
    // connections go to the 2 slots left, two each.
    let out = panzer.ctl(&["scale", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let held = spread(port, 4);
    assert_eq!(held.values().copied().collect::<Vec<_>>(), [2, 2], "after scale 2: {held:?}");
}

#[test]
fn a_stop_refuses_new_connections_on_every_slot_at_once() {
    let panzer = Panzer::new(example("slow_drain"))
        .count(4)
        .notify()
        .env("DRAIN_MS", "3000")
        .args(&["--balance", "round-robin"])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_lines("draining for 3000 ms", 4);
    // Connections would go to the slots in turn: 20 tries, 5 per slot.
    for round in 0..4 {
        crate::stopping::assert_refused_at_once(|| connect(port).map(drop), &format!("round {round}"));
    }
}

#[test]
fn with_no_worker_ready_new_connections_wait_for_the_slots_that_will_have_one() {
    // Workers get ready 2 s after they start: after a scale down to 2 and
    // both workers killed, no slot is ready for a while. Connections made
    // then must wait on slots 0 and 1, whose replacements will serve them,
    // not on slots 2 and 3, which nothing serves any more.
    let panzer = Panzer::new(example("server"))
        .count(4)
        .notify()
        .env("READY_DELAY_MS", "2000")
        .args(&["--balance", "round-robin"])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let out = panzer.ctl(&["scale", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    panzer.wait_for_lines("exited with status 0", 2);
    let both = workers(port, 2);
    for pid in &both {
        kill(*pid, Signal::SIGKILL).unwrap();
    }
    panzer.wait_for_lines("killed by SIGKILL", 2);
    let asked: Vec<_> = (0..8)
        .map(|_| {
            let mut stream = connect(port).unwrap();
            std::thread::spawn(move || ask(&mut stream).map(|r| r.pid()).map_err(|e| e.to_string()))
        })
        .collect();
    // They were made while no worker was ready (none can stop being ready).
    let ready = panzer.status()["generations"][0]["workers"].as_array().cloned().unwrap_or_default();
    assert!(ready.iter().all(|w| w["ready"] == false), "a worker was ready already: {ready:?}");
    let answers: Vec<Result<Pid, String>> = asked.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let answered: std::collections::BTreeSet<Pid> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answered.len(), 2, "the two replacements answered: {answered:?}");
    assert!(answered.iter().all(|pid| !both.contains(pid)), "{answered:?} (killed {both:?})");
}

#[test]
fn a_connection_left_on_a_slot_scaled_away_is_moved_to_a_slot_in_rotation_once_its_worker_is_gone() {
    // Worker 3 stops for good: it is killed at the graceful timeout
    // without ever accepting what waits on its slot.
    let (panzer, stalled, mut streams) = one_waits_on_a_slot_scaled_away(&["--graceful-timeout", "2s"]);
    let port = panzer.port(0);
    panzer.wait_for_line(&format!("worker 3 (pid {stalled}) killed by SIGKILL"));
    let answered: Vec<Result<String, String>> =
        streams.iter_mut().map(|s| read_response(s).map(|r| r.body).map_err(|e| e.to_string())).collect();
    assert!(answered.iter().all(Result::is_ok), "{answered:?}");
    assert!(answered.iter().flatten().all(|a| !a.contains(&format!("pid={stalled} "))), "{answered:?}");
    panzer.wait_for_line("round-robin: slot 3: 1 connection(s) left with no worker");
    assert!(!panzer.log().contains("cannot move"), "{}", panzer.log());
    // The slot still takes its turn when a scale brings it back.
    let out = panzer.ctl(&["scale", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ready_workers(&panzer, 4);
    let mut seen = BTreeMap::new();
    eventually(PATIENCE, "all 4 slots in the rotation again", || {
        seen = spread(port, 4);
        (seen.len() == 4).then_some(())
    });
}
