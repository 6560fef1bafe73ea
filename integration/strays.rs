//! A worker's stray descendants (issue #17): a wrapper that leaves a child
//! in the background (`sh -c 'sidecar & exec ./server'`) hands it the
//! listening socket. Whatever kills panzer, that child must not live on
//! holding the port: where panzer may create a PID namespace (root with
//! `CAP_SYS_ADMIN`) nothing of a generation outlives it; where it may not,
//! the next panzer on the same bind ends what a dead one left, and says so.

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::faults::{leftovers, Sweep};
use crate::harness::*;

/// How long everything a killed panzer started may take to be gone: the
/// worker's drain (its idle-connection grace is 500 ms) and the sidecar's
/// end, with room for a busy machine.
const GONE: Duration = Duration::from_secs(10);

/// Whether this process may create PID namespaces (`CAP_SYS_ADMIN` in
/// `CapEff`), as panzer started by it then does.
fn may_create_pid_namespaces() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(caps, 16).unwrap() & (1 << 21) != 0
}

/// The worker command: a wrapper that starts a sidecar in the background,
/// then execs the server. The sidecar is a shell loop named
/// `<dir>/sidecar` (so a sweep finds it by its command line) that holds
/// the inherited listening socket; with `ignore_term` it ignores `SIGTERM`.
fn wrapper(ignore_term: bool) -> Vec<String> {
    let trap = if ignore_term { "trap \"\" TERM; " } else { "" };
    let script = format!("sh -c '{trap}while :; do sleep 1; done' \"$1/sidecar\" & exec \"$0\" \"$1\"");
    vec!["sh".into(), "-c".into(), script, example("server"), "{dir}".into()]
}

/// The sidecar's pid, once it runs.
fn sidecar(panzer: &Panzer) -> Pid {
    let name = format!("{}/sidecar", panzer.dir.0.display());
    eventually(PATIENCE, "the sidecar to run", || {
        process_table().into_iter().find(|(_, p)| p.cmdline.contains(&name)).map(|(pid, _)| pid)
    })
}

/// Starts panzer (through `via`, a program that execs it, when given) with
/// one wrapped worker on `bind`.
fn start(via: &[&str], bind: &str, extra: &[&str], ignore_term: bool) -> Panzer {
    let mut args: Vec<String> = via.iter().skip(1).map(|s| s.to_string()).collect();
    if !via.is_empty() {
        args.push(env!("CARGO_BIN_EXE_panzer").into());
    }
    args.extend(["--bind", bind, "--count", "1", "--ready", "notify"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(wrapper(ignore_term));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match via.first() {
        Some(program) => Panzer::start_via(program, &args, &[]),
        None => Panzer::start(&args),
    }
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

/// Asserts that `panzer`'s port can be bound again and nothing it started
/// is alive, both within [`GONE`]; prints how long each took.
fn assert_all_gone(panzer: &Panzer, port: u16, tree: &[Pid], groups: &HashSet<Pid>) {
    let killed = std::time::Instant::now();
    assert!(
        within(GONE, || TcpListener::bind(("127.0.0.1", port)).ok()).is_some(),
        "port {port} is still taken {GONE:?} after kill -9 of main and monitor\n{}",
        panzer.log()
    );
    let free = killed.elapsed();
    let left = || -> Vec<String> {
        let mut left: Vec<String> =
            leftovers(&panzer.dir.0, groups).into_iter().map(|(pid, cmd)| format!("{pid} {cmd}")).collect();
        left.extend(tree.iter().filter(|p| alive(**p)).map(|p| format!("{p} (was below main)")));
        left
    };
    if within(GONE, || left().is_empty().then_some(())).is_none() {
        panic!("still alive {GONE:?} after kill -9 of main and monitor: {:#?}\n{}", left(), panzer.log());
    }
    eprintln!(
        "after kill -9 of main and monitor: port free in {free:?}, every process gone in {:?}",
        killed.elapsed()
    );
}

#[test]
fn a_background_child_of_a_worker_dies_with_its_generation_after_kill_9_of_main_and_monitor() {
    if !may_create_pid_namespaces() {
        return eprintln!("skipped: panzer needs CAP_SYS_ADMIN to give a generation its own PID namespace");
    }
    // A graceful timeout far beyond the deadline: only the drain signal,
    // never a timeout, can end the sidecar in time.
    for run in 1..=3 {
        let mut panzer = start(&[], "127.0.0.1:0", &["--graceful-timeout", "60s"], false);
        let port = panzer.port(0);
        panzer.wait_ready(1);
        let _sweep = Sweep(panzer.dir.0.clone());
        sidecar(&panzer);
        let (tree, groups) = kill_main_and_monitor(&mut panzer);
        assert_all_gone(&panzer, port, &tree, &groups);

        // The next panzer binds the same port and serves.
        let next = start(&[], &format!("127.0.0.1:{port}"), &[], false);
        next.wait_ready(1);
        assert_eq!(get(port, "/").unwrap().status, 200, "run {run}");
        assert!(!next.log().contains("left by"), "run {run}: nothing was left to end:\n{}", next.log());
    }
}

#[test]
fn with_user_a_background_child_that_ignores_the_drain_signal_dies_at_the_graceful_timeout() {
    if !may_create_pid_namespaces() {
        return eprintln!("skipped: panzer needs CAP_SYS_ADMIN to give a generation its own PID namespace");
    }
    // main creates the namespace before the monitor drops privileges, so
    // --user keeps the guarantee.
    let extra = ["--graceful-timeout", "1s", "--user", "65534", "--group", "65534"];
    let mut panzer = start(&[], "127.0.0.1:0", &extra, true);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let _sweep = Sweep(panzer.dir.0.clone());
    sidecar(&panzer);
    let (tree, groups) = kill_main_and_monitor(&mut panzer);
    assert_all_gone(&panzer, port, &tree, &groups);
}

#[test]
fn without_cap_sys_admin_the_next_panzer_ends_what_a_killed_one_left_on_its_port() {
    if !nix::unistd::geteuid().is_root() {
        return eprintln!("skipped: needs root to start panzer without CAP_SYS_ADMIN");
    }
    // Root without CAP_SYS_ADMIN, as in a container: no PID namespace.
    let via = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"];
    let mut panzer = start(&via, "127.0.0.1:0", &["--graceful-timeout", "60s"], false);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let _sweep = Sweep(panzer.dir.0.clone());
    let stray = sidecar(&panzer);
    let worker = get(port, "/").unwrap().pid();
    kill_main_and_monitor(&mut panzer);
    // The worker drains on its parent-death signal; the sidecar, which
    // nobody signals, lives on with the port.
    eventually(PATIENCE, "the worker to drain and exit", || (!alive(worker)).then_some(()));
    assert!(alive(stray), "the sidecar is gone: this test shows nothing\n{}", panzer.log());

    let next = start(&via, &format!("127.0.0.1:{port}"), &[], false);
    next.wait_ready(1);
    let said = next.wait_for_line("left by");
    assert!(said.contains(&format!("pid {stray}")) && said.contains(&format!("127.0.0.1:{port}")), "{said}");
    eventually(PATIENCE, "the sidecar to be gone", || (!alive(stray)).then_some(()));
    let answer = get(port, "/").unwrap();
    assert_eq!((answer.status, answer.field("generation")), (200, "1".to_string()));
    assert!(alive(next.pid));
}
