//! `--user` / `--group`: monitors and workers drop privileges after main has
//! bound the sockets; main keeps them.

use nix::unistd::Pid;

use crate::harness::*;

/// The real, effective, saved and filesystem uids (or gids) of `pid`.
fn ids(pid: Pid, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn monitors_and_workers_run_as_the_given_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    let panzer = Panzer::start(&[
        "--bind",
        "127.0.0.1:0",
        "--count",
        "2",
        "--ready",
        "notify",
        "--user",
        "65534",
        "--group",
        "65534",
        &example("hello"),
    ]);
    let port = panzer.port(0);
    // notify mode: the workers reached their monitor's socket as that user.
    panzer.wait_ready(1);
    let worker = get(port, "/").unwrap().pid();
    assert_eq!(ids(worker, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(ids(worker, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(ids(panzer.monitors()[0], "Uid:"), "65534 65534 65534 65534");
    assert_eq!(ids(panzer.pid, "Uid:"), "0 0 0 0");
}

#[test]
fn an_unknown_user_is_a_usage_error() {
    let mut panzer = Panzer::start(&["--user", "no-such-user-here", "sleep"]);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(2));
    assert_eq!(
        panzer.log().trim(),
        "panzer: --user no-such-user-here: no such user"
    );
}
