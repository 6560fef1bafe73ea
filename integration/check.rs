//! `panzer --check`, as an operator runs it before a start or a restart
//! (`nginx -t`): every problem on its own line and exit 2, or one line
//! saying the configuration is good and exit 0; nothing bound, started or
//! written either way. And, at a real start, a script whose `#!`
//! interpreter is missing is named at once.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Runs panzer to completion; returns (exit code, log).
fn run(command: PanzerCommand) -> (i32, String) {
    let mut panzer = command.start();
    let status = panzer.wait_exit(PATIENCE);
    assert!(panzer.monitors().is_empty());
    (status.code().expect("killed by a signal"), panzer.log())
}

/// An executable script at `path` whose `#!` line names `interpreter`;
/// when it runs, it leaves a file `ran` beside itself.
fn script(path: &Path, interpreter: &str) -> String {
    let ran = path.with_file_name("ran");
    std::fs::write(path, format!("#!{interpreter}\ntouch {}\nexec sleep 100\n", ran.display())).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_good_setup_is_confirmed_and_nothing_is_bound_started_or_written() {
    let dir = TestDir::new("good");
    let server = script(&dir.join("server.sh"), "/bin/sh");
    // Held by this test throughout: a check that bound it would fail.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let unix = dir.join("app.sock");
    let mut panzer = Panzer::new(&server)
        .bind(&addr)
        .args(&["--bind", &format!("unix:{}", unix.display())])
        .args(&["--admin-bind", "127.0.0.1:0", "--count", "2", "--pid-file", "{dir}/panzer.pid", "--check"])
        .start();
    let code = panzer.wait_exit(PATIENCE).code();
    let log = panzer.log();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.trim(), format!("panzer: configuration OK: {server} (interpreter /bin/sh), 2 workers"));
    // Nothing of what a start makes: no socket file, no runtime directory
    // (XDG_RUNTIME_DIR is the guard's own directory), no pid file, no worker.
    assert!(!unix.exists(), "the unix socket was bound");
    assert!(!panzer.dir.join("panzer").exists(), "the runtime directory was created");
    assert!(!panzer.dir.join("panzer.pid").exists(), "the pid file was written");
    assert!(!dir.join("ran").exists(), "a worker ran");
    // `-q` leaves only the problems, as `nginx -t -q` does: none here.
    let (code, log) = run(Panzer::new(&server).args(&["--check", "-q"]));
    assert_eq!((code, log.as_str()), (0, ""));
    let dir_name = dir.0.to_str().unwrap();
    let left: Vec<_> = process_table().into_values().filter(|p| p.cmdline.contains(dir_name)).collect();
    assert!(left.is_empty(), "left running: {:?}", left.iter().map(|p| &p.cmdline).collect::<Vec<_>>());
}

#[test]
fn every_problem_is_printed_on_a_line_of_its_own_and_exits_2() {
    let dir = TestDir::new("problems");
    let missing_dir = dir.join("missing");
    let (code, log) = run(Panzer::new("./no-such-server")
        .no_bind()
        .args(&["--bind", &format!("unix:{}/app.sock", missing_dir.display())])
        .args(&["--user", "no-such-user-pz", "--pid-file", &format!("{}/panzer.pid", missing_dir.display())])
        .arg("--check"));
    assert_eq!(code, 2, "{log}");
    let lines: Vec<&str> = log.lines().collect();
    let missing = missing_dir.display();
    assert_eq!(
        lines,
        [
            "panzer: cannot run ./no-such-server: no such file or directory".to_string(),
            "panzer: --user no-such-user-pz: no such user".to_string(),
            format!("panzer: --pid-file {missing}/panzer.pid: cannot use its directory {missing}: no such file or directory"),
            format!("panzer: --bind unix:{missing}/app.sock: its directory {missing}: no such file or directory"),
            "panzer: configuration check failed: 4 problems".to_string(),
        ],
        "{log}"
    );

    let server = script(&dir.join("server.py"), "/usr/bin/no-such-interpreter -u");
    let (code, log) = run(Panzer::new(&server).args(&["--group", "no-such-group-pz", "--check"]));
    assert_eq!(code, 2, "{log}");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            format!(
                "panzer: cannot run {server}: its interpreter /usr/bin/no-such-interpreter (from its #! line): \
                 no such file or directory"
            ),
            "panzer: --group no-such-group-pz: no such group".to_string(),
            "panzer: configuration check failed: 2 problems".to_string(),
        ],
        "{log}"
    );
}

#[test]
fn a_command_line_that_does_not_parse_is_one_problem() {
    let (code, log) = run(Panzer::new("sleep").args(&["--count", "999999", "--check"]));
    assert_eq!(code, 2, "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines[0].starts_with("panzer: --count 999999: at most "), "{log}");
    assert_eq!(lines[1..], ["panzer: configuration check failed: 1 problem"], "{log}");
}

#[test]
fn a_script_whose_interpreter_is_missing_fails_at_once_naming_the_interpreter() {
    let dir = TestDir::new("interpreter");
    let server = script(&dir.join("server.sh"), "/usr/bin/no-such-interpreter");
    let started = Instant::now();
    let (code, log) = run(Panzer::new(&server).count(1));
    assert_eq!(code, 2, "{log}");
    assert_eq!(
        log.trim(),
        format!(
            "panzer: cannot run {server}: its interpreter /usr/bin/no-such-interpreter (from its #! line): \
             no such file or directory"
        )
    );
    // Before any worker was tried: no restarts with backoff.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn a_reload_to_a_script_whose_interpreter_is_missing_fails_naming_it() {
    let dir = TestDir::new("reload-interp");
    let deploy = Deploy::new(&dir);
    let panzer = Panzer::new(deploy.path()).count(1).notify().start();
    panzer.wait_ready(1);
    let next = dir.join("next.sh");
    script(&next, "/usr/bin/no-such-interpreter");
    std::fs::rename(&next, &deploy.0).unwrap();
    let out = panzer.ctl(&["reload"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("its interpreter /usr/bin/no-such-interpreter (from its #! line)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("exited 5 times"), "{}", out.stderr);
    panzer.wait_for_line("generation 1 keeps serving");
}

#[test]
fn what_a_start_refuses_before_binding_the_check_refuses_too() {
    let dir = TestDir::new("check-start");
    let server = script(&dir.join("server.sh"), "/bin/sh");
    // Library mode with no socket, and a socket owner nobody is.
    let (code, log) = run(Panzer::new(&server).no_bind().args(&["--preload", "--check"]));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("panzer: --preload needs a listening socket"), "{log}");
    // `LISTEN_FDS` meant for another process (no `LISTEN_PID` of panzer's)
    // passes no socket to a start, nor to the check.
    let (code, log) =
        run(Panzer::new(&server).no_bind().env("LISTEN_FDS", "1").args(&["--preload", "--check"]));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("panzer: --preload needs a listening socket"), "{log}");
    let sock = format!("unix:{}/app.sock,owner=no-such-user-here", dir.0.display());
    let (code, log) = run(Panzer::new(&server).bind(&sock).args(&["--check"]));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(&format!("panzer: --bind {sock}: no such user")), "{log}");
    assert!(log.contains("configuration check failed: 1 problem"), "{log}");
}

#[test]
fn a_bad_directory_user_and_group_are_each_one_problem_among_the_rest() {
    let (code, log) = run(Panzer::new("./no-such-server").args(&[
        "--check",
        "--chdir",
        "/etc/passwd",
        "--user",
        "no-such-user-here",
        "--group",
        "no-such-group-here",
    ]));
    assert_eq!(code, 2, "{log}");
    for line in [
        "panzer: --chdir /etc/passwd: not a directory",
        "panzer: --user no-such-user-here: no such user",
        "panzer: --group no-such-group-here: no such group",
        "panzer: cannot run ./no-such-server: no such file or directory",
    ] {
        assert!(log.lines().any(|l| l == line), "no {line:?} in\n{log}");
    }
}

#[test]
fn an_interpreter_found_through_env_is_looked_up_in_the_workers_path() {
    let dir = TestDir::new("check-env");
    let missing = script(&dir.join("missing.sh"), "/usr/bin/env no-such-interpreter-here");
    let (code, log) = run(Panzer::new(&missing).args(&["--check"]));
    assert_eq!(code, 2, "{log}");
    let line = format!(
        "panzer: cannot run {missing}: its interpreter no-such-interpreter-here (through /usr/bin/env, \
         from its #! line): command not found in PATH"
    );
    assert!(log.lines().any(|l| l == line), "no {line:?} in\n{log}");
    // Found in the PATH the workers get (--env), it is fine.
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    script(&bin.join("no-such-interpreter-here"), "/bin/sh");
    let path = format!("PATH={}:/usr/bin:/bin", bin.display());
    let (code, log) = run(Panzer::new(&missing).args(&["--check", "--env", &path]));
    assert_eq!(code, 0, "{log}");
}
