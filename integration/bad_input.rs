//! Bad input: a one-line error naming the culprit, the documented exit code,
//! and nothing left running or bound.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

/// Runs panzer to completion; returns (exit code, log).
pub(crate) fn fails(command: PanzerCommand) -> (i32, String) {
    let mut panzer = command.start();
    let status = panzer.wait_exit(PATIENCE);
    assert!(panzer.monitors().is_empty());
    (status.code().expect("killed by a signal"), panzer.log())
}

#[test]
fn usage_errors_exit_2() {
    let (code, log) = fails(Panzer::with_args(&[]));
    assert_eq!(code, 2);
    assert!(log.contains("<COMMAND>"), "{log}");

    let (code, log) = fails(Panzer::with_args(&["--count", "0", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("--count"), "{log}");

    let (code, log) = fails(Panzer::with_args(&["--frobnicate", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("--frobnicate"), "{log}");

    let (code, log) = fails(Panzer::with_args(&["--bind", "nonsense", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("invalid address 'nonsense'"), "{log}");

    let (code, log) = fails(Panzer::with_args(&["--startup-timeout", "0s", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("--startup-timeout must be longer than 0"), "{log}");

    let (code, log) = fails(Panzer::with_args(&["--graceful-timeout", "soon", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("invalid duration 'soon'"), "{log}");
}

#[test]
fn a_command_that_cannot_run_is_named() {
    let (code, log) = fails(Panzer::new("./no-such-server"));
    assert_eq!(code, 2);
    assert_eq!(log.trim(), "panzer: cannot run ./no-such-server: no such file or directory");

    let dir = TestDir::new("not-executable");
    let script = dir.join("server.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, log) = fails(Panzer::new(script.to_str().unwrap()));
    assert_eq!(code, 2);
    assert!(log.contains("permission denied"), "{log}");

    let (code, log) = fails(Panzer::with_args(&["no-such-command-anywhere"]));
    assert_eq!(code, 2);
    assert!(log.contains("cannot run no-such-command-anywhere: command not found in PATH"), "{log}");
}

#[test]
fn a_port_in_use_exits_71_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, log) = fails(Panzer::new("sleep").bind(&addr).command_args(&["--", "100"]));
    assert_eq!(code, 71);
    assert_eq!(
        log.trim(),
        format!("panzer: cannot bind {addr}: address already in use (another process listens there)")
    );
}

#[test]
fn an_unusable_unix_path_exits_71_and_unbinds_what_was_bound() {
    let dir = TestDir::new("unix");
    let good = dir.join("good.sock");
    let bad = dir.join("missing/dir/bad.sock");
    let (code, log) = fails(Panzer::with_args(&[
        "--bind",
        &format!("unix:{}", good.display()),
        "--bind",
        &format!("unix:{}", bad.display()),
        "sleep",
    ]));
    assert_eq!(code, 71);
    assert!(log.contains(&format!("cannot bind unix:{}: no such file or directory", bad.display())), "{log}");
    assert!(!good.exists(), "the first socket file was left behind");
}

#[test]
fn a_double_dash_with_nothing_after_it_is_a_usage_error() {
    let (code, log) = fails(Panzer::with_args(&["--count", "1", "--"]));
    assert_eq!(code, 2);
    assert!(log.contains("<COMMAND>"), "{log}");
}

#[test]
fn durations_read_compound_forms_and_days_and_an_out_of_range_one_names_the_range() {
    // Accepted: a generation starts (it would not with a bad duration).
    for good in ["1m30s", "1h", "1d", "1h30m", "2m 5s"] {
        let panzer =
            Panzer::new("sleep").args(&["--graceful-timeout", good]).command_args(&["--", "100"]).start();
        panzer.wait_for_line("listening on");
    }
    let (code, log) = fails(Panzer::with_args(&["--graceful-timeout", "99999999999s", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("invalid duration '99999999999s': out of range, at most 1000000000s"), "{log}");
}

#[test]
fn a_count_of_0_names_the_real_range() {
    let (code, log) = fails(Panzer::with_args(&["--count", "0", "sleep"]));
    assert_eq!(code, 2);
    assert!(log.contains("invalid count '0': workers per generation are 1..=4096"), "{log}");
    assert!(!log.contains("4294967295"), "{log}");

    // Under a lower RLIMIT_NPROC, that is the range (prlimit sets it, then
    // execs panzer in the same process).
    let (code, log) = fails(
        Panzer::with_args(&["--count", "0", "sleep"])
            .via("prlimit", &["--nproc=50:50", "--", env!("CARGO_BIN_EXE_panzer")]),
    );
    assert_eq!(code, 2);
    assert!(log.contains("workers per generation are 1..=50 (RLIMIT_NPROC is 50)"), "{log}");
}

#[test]
fn no_nodelay_accepts_exactly_the_words_tag_output_accepts() {
    for var in ["PANZER_NO_NODELAY", "PANZER_TAG_OUTPUT"] {
        let (code, log) = fails(Panzer::new("sleep").env(var, "maybe").command_args(&["--", "100"]));
        assert_eq!(code, 2, "{var}");
        assert!(log.contains("invalid value 'maybe'"), "{var}: {log}");
    }
}

#[test]
fn without_any_socket_panzer_says_once_that_workers_get_none() {
    let panzer = Panzer::new("sleep").no_bind().ready("100ms").command_args(&["--", "100"]).start();
    panzer.wait_ready(1);
    let log = panzer.log();
    let says = "no --bind and no socket from systemd: workers get no listening socket";
    assert_eq!(log.matches(says).count(), 1, "{log}");
    assert!(log.lines().any(|l| l.contains(" WARN ") && l.contains(says)), "{log}");

    let with_socket = Panzer::new("sleep").ready("100ms").command_args(&["--", "100"]).start();
    with_socket.wait_ready(1);
    assert!(!with_socket.log().contains("no listening socket"), "{}", with_socket.log());
}
