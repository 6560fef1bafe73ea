//! As PID 1 of a container (a new pid namespace): signals that PID 1 would
//! ignore by default still stop panzer gracefully, and it reaps orphans.

use nix::sys::signal::{kill, Signal};

use crate::harness::*;

#[test]
fn as_pid_1_sigterm_is_a_graceful_stop() {
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("unshare").arg("--version").output().is_err()
    {
        eprintln!("skipped: needs root and unshare(1) for a pid namespace");
        return;
    }
    // The worker leaves a background child behind that exits at once: a
    // zombie for PID 1 to reap.
    let server = format!("(true &); exec {}", example("server"));
    let mut panzer = Panzer::new("sh")
        .count(2)
        .notify()
        .command_args(&["--", "-c", &server])
        .via("unshare", &["--pid", "--fork", "--kill-child", "--mount-proc", env!("CARGO_BIN_EXE_panzer")])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    assert!(panzer.log().contains("panzer[1]:"), "{}", panzer.log());
    distinct_pids(port, 2);
    // panzer as the host sees it: the child of unshare.
    let table = process_table();
    let main = *table
        .iter()
        .find(|(_, p)| p.ppid == panzer.pid && p.cmdline.contains("--bind"))
        .expect("panzer under unshare")
        .0;
    kill(main, Signal::SIGTERM).unwrap();
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    let log = panzer.log();
    assert!(log.contains("stopping gracefully") && log.contains("stopped"), "{log}");
}
