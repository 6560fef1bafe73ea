//! `--user` / `--group`: monitors and workers drop privileges after main has
//! bound the sockets; main keeps them.

use std::os::unix::fs::DirBuilderExt;

use nix::unistd::Pid;

use crate::harness::*;

/// The real, effective, saved and filesystem uids (or gids) of `pid`.
fn ids(pid: Pid, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(key)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn monitors_and_workers_run_as_the_given_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    // Like a root login's /run/user/0: the other user cannot enter it.
    let dir = TestDir::new("xdg");
    let runtime = dir.join("run");
    std::fs::DirBuilder::new().mode(0o700).create(&runtime).unwrap();
    let mut panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--user", "65534", "--group", "65534"])
        .env("XDG_RUNTIME_DIR", runtime.to_str().unwrap())
        .start();
    let port = panzer.port(0);
    // notify mode: the workers reached their monitor's socket as that user.
    panzer.wait_ready(1);
    let worker = get(port, "/").unwrap().pid();
    assert_eq!(ids(worker, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(ids(worker, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(ids(panzer.monitors()[0], "Uid:"), "65534 65534 65534 65534");
    assert_eq!(ids(panzer.pid, "Uid:"), "0 0 0 0");
    // A graceful stop also removes the notify sockets' dir in the temp dir.
    panzer.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn an_unknown_user_is_a_usage_error() {
    let mut panzer = Panzer::with_args(&["--user", "no-such-user-here", "sleep"]).start();
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(2));
    assert_eq!(panzer.log().trim(), "panzer: --user no-such-user-here: no such user");
}
