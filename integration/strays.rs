//! A worker's stray descendants (issue #17): a wrapper that leaves a child
//! in the background (`sh -c 'sidecar & exec ./server'`) hands it the
//! listening socket. Whatever kills panzer, that child must not live on
//! holding the port: the generation's keeper ends what stayed in the
//! generation's process group; what left it (`setsid`) is ended by the next
//! panzer on the same bind, which says so.

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::faults::{leftovers, Sweep};
use crate::harness::*;

/// How long a background child may outlive `kill -9` of main and monitor
/// (issue #17): the worker's drain (its idle-connection grace is 500 ms)
/// and the child's end on the drain signal.
const DIES: Duration = Duration::from_secs(2);

/// How long everything a killed panzer started may take to be gone,
/// including the keeper, with room for a busy machine.
const GONE: Duration = Duration::from_secs(10);

/// How the wrapper starts its sidecar.
#[derive(Clone, Copy)]
enum Sidecar {
    /// In the background: it stays in the generation's process group.
    Background,
    /// The same, ignoring `SIGTERM` (so also the drain signal).
    IgnoresTerm,
    /// Through `setsid`: it leaves the group, as a daemon does.
    Escapes,
}

/// The worker command: a wrapper that starts a sidecar, then execs the
/// server. The sidecar is a shell loop named `<dir>/sidecar` (so a sweep
/// finds it by its command line) that holds the inherited listening socket.
fn wrapper(sidecar: Sidecar) -> Vec<String> {
    let (via, trap) = match sidecar {
        Sidecar::Background => ("", ""),
        Sidecar::IgnoresTerm => ("", "trap \"\" TERM; "),
        Sidecar::Escapes => ("setsid ", ""),
    };
    let script = format!("{via}sh -c '{trap}while :; do sleep 1; done' \"$1/sidecar\" & exec \"$0\" \"$1\"");
    vec!["sh".into(), "-c".into(), script, example("server"), "{dir}".into()]
}

/// The sidecar's pid, once it runs.
fn sidecar(panzer: &Panzer) -> Pid {
    let name = format!("{}/sidecar", panzer.dir.0.display());
    eventually(PATIENCE, "the sidecar to run", || {
        process_table().into_iter().find(|(_, p)| p.cmdline.contains(&name)).map(|(pid, _)| pid)
    })
}

/// panzer with one wrapped worker, to start.
fn wrapped(extra: &[&str], sidecar: Sidecar) -> PanzerCommand {
    let wrapper = wrapper(sidecar);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Panzer::new(wrapper[0]).count(1).notify().args(extra).arg("--").command_args(&wrapper[1..])
}

/// `kill -9` of main and its monitor together: both are stopped first, so
/// that neither acts on the other's death, and the monitor dies first (a
/// stopped member of a process group that main's death orphans would make
/// the kernel send the group `SIGHUP`). Returns every pid that was below
/// main then, and their process groups.
fn kill_main_and_monitor(panzer: &mut Panzer) -> (Vec<Pid>, HashSet<Pid>) {
    let monitor = panzer.monitors()[0];
    let table = process_table();
    let mut tree = panzer.descendants();
    tree.push(panzer.pid);
    let groups: HashSet<Pid> = tree.iter().filter_map(|p| table.get(p)).map(|p| p.pgid).collect();
    kill(panzer.pid, Signal::SIGSTOP).unwrap();
    kill(monitor, Signal::SIGSTOP).unwrap();
    kill(monitor, Signal::SIGKILL).unwrap();
    kill(panzer.pid, Signal::SIGKILL).unwrap();
    panzer.wait_exit(PATIENCE);
    (tree, groups)
}

/// Asserts that nothing `panzer` started is alive within [`GONE`].
fn assert_all_gone(panzer: &Panzer, tree: &[Pid], groups: &HashSet<Pid>) {
    let left = || -> Vec<String> {
        let mut left: Vec<String> =
            leftovers(&panzer.dir.0, groups).into_iter().map(|(pid, cmd)| format!("{pid} {cmd}")).collect();
        left.extend(tree.iter().filter(|p| alive(**p)).map(|p| format!("{p} (was below main)")));
        left
    };
    if within(GONE, || left().is_empty().then_some(())).is_none() {
        panic!("still alive {GONE:?} after kill -9 of main and monitor: {:#?}\n{}", left(), panzer.log());
    }
}

#[test]
fn a_background_child_of_a_worker_dies_within_2s_of_kill_9_of_main_and_monitor() {
    // A graceful timeout far beyond the deadline: only the drain signal,
    // never a timeout, can end the sidecar in time.
    for run in 1..=3 {
        let mut panzer = wrapped(&["--graceful-timeout", "60s"], Sidecar::Background).start();
        let port = panzer.port(0);
        panzer.wait_ready(1);
        let _sweep = Sweep(panzer.dir.0.clone());
        let stray = sidecar(&panzer);
        let (tree, groups) = kill_main_and_monitor(&mut panzer);
        let killed = std::time::Instant::now();
        let freed =
            within(DIES, || (!alive(stray) && TcpListener::bind(("127.0.0.1", port)).is_ok()).then_some(()));
        assert!(
            freed.is_some(),
            "run {run}: {DIES:?} after kill -9 of main and monitor, sidecar alive: {}, port free: {}\n{}",
            alive(stray),
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            panzer.log()
        );
        eprintln!("run {run}: sidecar gone and port free {:?} after kill -9", killed.elapsed());
        assert_all_gone(&panzer, &tree, &groups);

        // The next panzer binds the same port and serves, with nothing to end.
        let next = wrapped(&[], Sidecar::Background).bind(format!("127.0.0.1:{port}")).start();
        next.wait_ready(1);
        assert_eq!(get(port, "/").unwrap().status, 200, "run {run}");
        assert!(!next.log().contains("left by"), "run {run}: nothing was left to end:\n{}", next.log());
    }
}

#[test]
fn with_user_a_background_child_that_ignores_the_drain_signal_dies_at_the_graceful_timeout() {
    if !nix::unistd::geteuid().is_root() {
        return eprintln!("skipped: needs root for --user");
    }
    let extra = ["--graceful-timeout", "3s", "--user", "65534", "--group", "65534"];
    let mut panzer = wrapped(&extra, Sidecar::IgnoresTerm).start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let _sweep = Sweep(panzer.dir.0.clone());
    let stray = sidecar(&panzer);
    let worker = get(port, "/").unwrap().pid();
    let (tree, groups) = kill_main_and_monitor(&mut panzer);
    let killed = std::time::Instant::now();
    // The worker drains on the drain signal; the sidecar ignores it and
    // lives on until the graceful timeout.
    eventually(PATIENCE, "the worker to drain and exit", || (!alive(worker)).then_some(()));
    assert!(
        alive(stray) || killed.elapsed() >= Duration::from_secs(3),
        "the sidecar died on the drain signal: this test shows nothing\n{}",
        panzer.log()
    );
    assert_all_gone(&panzer, &tree, &groups);
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} is still taken");
}

#[test]
fn a_child_that_left_the_generations_group_is_ended_by_the_next_panzer_on_its_port() {
    let mut panzer = wrapped(&["--graceful-timeout", "60s"], Sidecar::Escapes).start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let _sweep = Sweep(panzer.dir.0.clone());
    let stray = sidecar(&panzer);
    let group = process_table()[&panzer.monitors()[0]].pgid;
    assert_ne!(process_table()[&stray].pgid, group, "the sidecar did not leave the group");
    let worker = get(port, "/").unwrap().pid();
    kill_main_and_monitor(&mut panzer);
    // The worker drains on the drain signal; the sidecar, out of the
    // group, lives on with the port.
    eventually(PATIENCE, "the worker to drain and exit", || (!alive(worker)).then_some(()));
    assert!(alive(stray), "the sidecar is gone: this test shows nothing\n{}", panzer.log());

    let next = wrapped(&[], Sidecar::Background).bind(format!("127.0.0.1:{port}")).start();
    next.wait_ready(1);
    let said = next.wait_for_line("left by");
    assert!(said.contains(&format!("pid {stray}")) && said.contains(&format!("127.0.0.1:{port}")), "{said}");
    eventually(PATIENCE, "the sidecar to be gone", || (!alive(stray)).then_some(()));
    let answer = get(port, "/").unwrap();
    assert_eq!((answer.status, answer.field("generation")), (200, "1".to_string()));
    assert!(alive(next.pid));
}

#[test]
fn a_worker_knows_itself_by_the_pid_status_and_ps_show() {
    let panzer = Panzer::new(example("hello")).count(2).notify().start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let status = panzer.status();
    let listed: HashSet<i64> = status["generations"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_i64())
        .collect();
    // Its own getpid(), as a server puts in its log and its pid file.
    let said = get(port, "/").unwrap().pid();
    assert!(listed.contains(&(said.as_raw() as i64)), "hello says pid={said}, status lists {listed:?}");
    let ppid = process_table().get(&said).map(|p| p.ppid);
    assert_eq!(ppid, Some(panzer.monitors()[0]), "pid {said} is not the monitor's child on this host");
}
