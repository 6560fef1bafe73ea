//! Hostile local users and bad input: panzer, usually root, never writes
//! through a file another user planted, never uses a path another user can
//! squat on, takes only the control requests it documents, and refuses
//! counts it could never run — each with one line naming the culprit.
//!
//! Tests that need root act as uid 65534 through `setpriv`; without root
//! they say why and return.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The next `n` pids the kernel will hand out (give or take what other
/// tests start meanwhile), wrapping at `pid_max` as the kernel does.
fn next_pids(n: u32) -> Vec<u32> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap().trim().parse::<u32>().unwrap();
    let last = read("/proc/sys/kernel/ns_last_pid");
    let max = read("/proc/sys/kernel/pid_max");
    (1..=n).map(|i| if last + i < max { last + i } else { 300 + (last + i - max) }).collect()
}

/// A directory anyone may create files in, like /tmp (mode 1777).
fn sticky_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Hands `path` (not what it points at) to uid 65534.
fn give_to_nobody(path: &Path) {
    std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// Runs panzer to completion within `PATIENCE`; returns (exit code, log).
fn fails(panzer: &mut Panzer) -> (i32, String) {
    let status = panzer.wait_exit(PATIENCE);
    assert!(panzer.monitors().is_empty(), "a monitor was left running");
    (status.code().expect("panzer was killed by a signal"), panzer.log())
}

/// The control socket path main logged.
fn control_path(panzer: &Panzer) -> PathBuf {
    let line = panzer.wait_for_line("control socket at ");
    PathBuf::from(line.rsplit("control socket at ").next().unwrap().trim())
}

/// Sends one request line over `stream` and returns the parsed reply.
fn ask(control: &Path, line: &str) -> Value {
    let stream = UnixStream::connect(control).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    (&stream).write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"))
}

#[test]
fn the_pid_file_is_never_written_through_a_planted_symlink() {
    if !is_root() {
        eprintln!("skipped: needs root to plant files as another user");
        return;
    }
    let dir = TestDir::new("pidlink");
    let shared = dir.join("shared");
    sticky_dir(&shared);
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid_file = shared.join("app.pid");
    // uid 65534 guesses the temporary names panzer might use next.
    for pid in next_pids(4000) {
        let link = shared.join(format!("app.pid.{pid}.tmp"));
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        give_to_nobody(&link);
    }
    let mut panzer = Panzer::new("sleep")
        .args(&["--pid-file", pid_file.to_str().unwrap()])
        .command_args(&["--", "1000"])
        .start();
    panzer.wait_for_line("control socket at ");
    eventually(PATIENCE, "the pid file", || {
        (std::fs::read_to_string(&pid_file).ok()?.trim() == panzer.pid.to_string()).then_some(())
    });
    assert!(std::fs::symlink_metadata(&pid_file).unwrap().is_file(), "the pid file is not a plain file");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "the victim was overwritten");
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    assert!(!pid_file.exists(), "pid file left behind");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn a_fifo_planted_as_the_pid_file_is_refused_at_once_not_waited_on() {
    if !is_root() {
        eprintln!("skipped: needs root to plant files as another user");
        return;
    }
    let dir = TestDir::new("pidfifo");
    let shared = dir.join("shared");
    sticky_dir(&shared);
    let pid_file = shared.join("app.pid");
    nix::unistd::mkfifo(&pid_file, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    give_to_nobody(&pid_file);
    let mut panzer = Panzer::new("sleep")
        .args(&["--pid-file", pid_file.to_str().unwrap()])
        .command_args(&["--", "1000"])
        .start();
    let (code, log) = fails(&mut panzer);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("is not a regular file"), "{log}");
    assert_eq!(log.lines().count(), 1, "one line: {log}");
}

#[test]
fn a_pid_file_another_user_filled_with_a_running_pid_does_not_block_the_start() {
    if !is_root() {
        eprintln!("skipped: needs root to plant files as another user");
        return;
    }
    let dir = TestDir::new("pidsquat");
    let shared = dir.join("shared");
    sticky_dir(&shared);
    let pid_file = shared.join("app.pid");
    // pid 1 runs, and so does this test: neither is a panzer.
    std::fs::write(&pid_file, "1\n").unwrap();
    give_to_nobody(&pid_file);
    let mut panzer = Panzer::new("sleep")
        .args(&["--pid-file", pid_file.to_str().unwrap()])
        .command_args(&["--", "1000"])
        .start();
    eventually(PATIENCE, "the pid file to name panzer", || {
        if let Some(status) = panzer.exited() {
            panic!("panzer exited ({status}):\n{}", panzer.log());
        }
        (std::fs::read_to_string(&pid_file).ok()?.trim() == panzer.pid.to_string()).then_some(())
    });
    assert!(panzer.log().contains("not a panzer"), "{}", panzer.log());
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn a_pid_file_in_a_directory_anyone_may_write_is_refused() {
    let dir = TestDir::new("pidopen");
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pid_file = open.join("app.pid");
    let mut panzer = Panzer::new("sleep")
        .args(&["--pid-file", pid_file.to_str().unwrap()])
        .command_args(&["--", "1000"])
        .start();
    let (code, log) = fails(&mut panzer);
    assert_eq!(code, 2, "{log}");
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.starts_with(&format!("panzer: --pid-file {}: ", pid_file.display())), "{log}");
    assert!(log.contains("writable by other users"), "{log}");
    assert!(!pid_file.exists());
}

#[test]
fn a_file_of_ours_that_holds_no_pid_is_never_replaced_by_the_pid_file() {
    // An operator's slip (`--pid-file /etc/passwd`) must not cost the file.
    let dir = TestDir::new("pidslip");
    let precious = dir.join("passwd");
    std::fs::write(&precious, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let mut panzer = Panzer::new("sleep")
        .args(&["--pid-file", precious.to_str().unwrap()])
        .command_args(&["--", "1000"])
        .start();
    let (code, log) = fails(&mut panzer);
    assert_eq!(code, 2, "{log}");
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.starts_with(&format!("panzer: --pid-file {}: ", precious.display())), "{log}");
    assert!(log.contains("holds something other than a pid"), "{log}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "root:x:0:0:root:/root:/bin/sh\n");
}

#[test]
fn files_planted_for_the_next_pids_do_not_block_the_default_control_socket() {
    if !is_root() {
        eprintln!("skipped: needs root to plant files as another user");
        return;
    }
    let dir = TestDir::new("squatpids");
    let tmp = dir.join("tmp");
    sticky_dir(&tmp);
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // uid 65534 fills the temp dir with the old per-pid names: files,
    // symlinks to a victim, and the private dir of root's uid.
    for (i, pid) in next_pids(3000).into_iter().enumerate() {
        for name in [format!("panzer-{pid}.sock"), format!("panzer-{pid}.d")] {
            let path = tmp.join(name);
            if i % 2 == 0 {
                std::fs::write(&path, "").unwrap();
            } else {
                std::os::unix::fs::symlink(&victim, &path).unwrap();
            }
            give_to_nobody(&path);
        }
    }
    let squat = tmp.join("panzer-0");
    std::fs::create_dir(&squat).unwrap();
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();
    give_to_nobody(&squat);
    let env = [("XDG_RUNTIME_DIR", ""), ("TMPDIR", tmp.to_str().unwrap())];
    let mut panzer =
        Panzer::new("sleep").count(1).pid_file().command_args(&["--", "1000"]).envs(&env).start();
    let control = control_path(&panzer);
    // root's private dir, which no other user can create or enter.
    assert_eq!(control, PathBuf::from(format!("/run/panzer/{}.sock", panzer.pid)));
    let meta = std::fs::symlink_metadata("/run/panzer").unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700));
    let pid_file = panzer.dir.join("panzer.pid");
    let pid_file = pid_file.to_str().unwrap();
    eventually(PATIENCE, "the pid file", || std::path::Path::new(pid_file).exists().then_some(()));
    let out = panzerctl_as(None, &["--pid-file", pid_file, "status"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Nothing planted was touched.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(std::fs::read_dir(&squat).unwrap().count(), 0);
    assert_eq!(std::fs::symlink_metadata(&squat).unwrap().uid(), NOBODY);
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    assert!(!control.exists(), "control socket left behind");
}

#[test]
fn a_squatted_private_dir_is_refused_never_followed() {
    if !is_root() {
        eprintln!("skipped: needs root to run panzer as one user and squat as another");
        return;
    }
    let dir = TestDir::new("squatdir");
    // uid 65534's own directory, where a squatter's symlink would lead it.
    let lure = dir.join("lure");
    std::fs::create_dir(&lure).unwrap();
    give_to_nobody(&lure);
    type Squat = fn(&Path, &Path);
    let squats: [(&str, Squat); 4] = [
        ("belongs to uid 0", |path, _| std::fs::create_dir(path).unwrap()),
        ("mode 0777", |path, _| {
            std::fs::create_dir(path).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
            give_to_nobody(path);
        }),
        ("symlink", |path, lure| std::os::unix::fs::symlink(lure, path).unwrap()),
        ("a file", |path, _| std::fs::write(path, "").unwrap()),
    ];
    for (what, squat) in squats {
        let tmp = dir.join(&what.replace(' ', "-"));
        sticky_dir(&tmp);
        let private = tmp.join(format!("panzer-{NOBODY}"));
        squat(&private, &lure);
        let panzer = env!("CARGO_BIN_EXE_panzer");
        let mut panzer = Panzer::new("sleep")
            .command_args(&["--", "1000"])
            .via("setpriv", &["--reuid=65534", "--regid=65534", "--clear-groups", panzer])
            .env("XDG_RUNTIME_DIR", "")
            .env("TMPDIR", tmp.to_str().unwrap())
            .start();
        let (code, log) = fails(&mut panzer);
        assert_eq!(code, 71, "{what}: {log}");
        assert_eq!(log.trim().lines().count(), 1, "{what}: {log}");
        assert!(log.contains(&format!("{}", private.display())), "{what}: {log}");
        assert!(log.contains("remove it"), "{what}: {log}");
        assert_eq!(std::fs::read_dir(&lure).unwrap().count(), 0, "{what}: panzer followed the symlink");
    }
}

#[test]
fn leftovers_of_a_killed_panzer_are_removed_by_the_next_one() {
    let runtime = TestDir::new("leftovers");
    let env = [("XDG_RUNTIME_DIR", runtime.0.to_str().unwrap())];
    let hello = example("hello");
    let start = || Panzer::new(hello.as_str()).count(1).notify().envs(&env).start();
    let mut first = start();
    first.wait_ready(1);
    let private = runtime.join("panzer");
    let socket = private.join(format!("{}.sock", first.pid));
    let notify_dir = private.join(format!("{}.d", first.pid));
    assert_eq!(control_path(&first), socket);
    assert!(notify_dir.is_dir(), "no notify dir at {}", notify_dir.display());
    // An entry of a live process stays.
    let alive = private.join(format!("{}.sock", std::process::id()));
    std::fs::write(&alive, "").unwrap();
    first.signal(Signal::SIGKILL);
    first.wait_exit(PATIENCE);
    drop(first); // reaps it: its pid is free now
    assert!(socket.exists() && notify_dir.exists(), "kill -9 left nothing behind?");

    let second = start();
    second.wait_for_line("control socket at ");
    assert!(!socket.exists(), "the dead panzer's control socket is still there");
    assert!(!notify_dir.exists(), "the dead panzer's notify dir is still there");
    assert!(alive.exists(), "an entry of a live pid was removed");
    assert!(private.join(format!("{}.sock", second.pid)).exists());
}

#[test]
fn unknown_fields_and_commands_are_refused_and_do_nothing() {
    let mut panzer =
        Panzer::new(example("hello")).count(1).notify().args(&["--control", "{dir}/ctl.sock"]).start();
    panzer.wait_ready(1);
    let control = panzer.dir.join("ctl.sock");
    for (line, culprit) in [
        (r#"{"cmd":"reload","dry_run":true}"#, "dry_run"),
        (r#"{"cmd":"stop","now":true}"#, "now"),
        (r#"{"cmd":"status","verbose":1}"#, "verbose"),
        (r#"{"cmd":"scale","count":2,"by":1}"#, "by"),
        (r#"{"cmd":"explode"}"#, "explode"),
        (r#"{"count":2}"#, "cmd"),
        (r#"{"cmd":"stop","cmd":"stop"}"#, "cmd"),
    ] {
        let reply = ask(&control, line);
        assert_eq!(reply["ok"], false, "{line} → {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(culprit), "{line} → {error}");
    }
    // Nothing happened: the same generation serves, no reload or stop ran.
    let reply = ask(&control, r#"{"cmd":"status"}"#);
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["status"]["generations"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["status"]["count"], 1);
    let log = panzer.log();
    assert!(!log.contains("generation 2"), "{log}");
    assert!(!log.contains("stopping"), "{log}");
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn counts_above_the_ceiling_are_usage_errors() {
    let mut panzer = Panzer::new("sleep").count("4294967295").command_args(&["--", "1000"]).start();
    let (code, log) = fails(&mut panzer);
    assert_eq!(code, 2, "{log}");
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains("--count 4294967295: at most "), "{log}");
    assert!(panzer.descendants().is_empty());

    let mut panzer = Panzer::new("sleep").command_args(&["--", "1000"]).env("PANZER_COUNT", "5000").start();
    let (code, log) = fails(&mut panzer);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("5000: at most "), "{log}");
}

#[test]
fn scale_above_the_ceiling_is_refused() {
    let panzer =
        Panzer::new(example("hello")).count(1).notify().args(&["--control", "{dir}/ctl.sock"]).start();
    panzer.wait_ready(1);
    let control = panzer.dir.join("ctl.sock");
    let control = control.to_str().unwrap();
    let out = panzerctl(&["--control", control, "scale", "100000"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("100000") && out.stderr.contains("at most"), "{}", out.stderr);
    let out = panzerctl(&["--control", control, "--json", "status"]);
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["status"]["count"], 1);
    assert_eq!(without_keepers(panzer.descendants()).len(), 2, "monitor and one worker");
}

#[test]
fn idle_clients_never_lock_out_the_operator() {
    let panzer = Panzer::new("sleep")
        .count(1)
        .args(&["--control", "{dir}/ctl.sock"])
        .command_args(&["--", "1000"])
        .start();
    panzer.wait_for_line("control socket at ");
    let control = panzer.dir.join("ctl.sock");
    let idle: Vec<UnixStream> = (0..100).map(|_| UnixStream::connect(&control).unwrap()).collect();
    // Well inside the 30 s idle timeout that would otherwise free a place.
    eventually(Duration::from_secs(5), "panzerctl status to succeed", || {
        let out = panzerctl(&["--control", control.to_str().unwrap(), "status"]);
        (out.code == 0).then_some(())
    });
    drop(idle);
}

#[test]
fn a_flood_of_bad_notify_messages_logs_a_handful_of_lines() {
    if std::process::Command::new("python3").arg("-c").arg("").status().map_or(true, |s| !s.success()) {
        eprintln!("skipped: needs python3 for a worker that floods its notify socket");
        return;
    }
    // The worker itself sends (the monitor goes by the sender's pid): a burst
    // of non-text datagrams, one more a second later, an over-long STATUS=
    // that turns into a much longer JSON report, then READY=1.
    let script = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
for _ in range(10000):
    s.send(b"\xff\xfe")
time.sleep(1.2)
s.send(b"\xff")
s.send(b"STATUS=" + b"\x01" * 4000)
s.send(b"READY=1")
time.sleep(1000)
"#;
    let panzer = Panzer::new("python3").count(1).notify().command_args(&["--", "-c", script]).start();
    panzer.wait_ready(1);
    let log = panzer.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("not text")).collect();
    assert!((1..=3).contains(&warnings.len()), "{} warnings:\n{}", warnings.len(), warnings.join("\n"));
    assert!(warnings.iter().any(|l| l.contains("more suppressed)")), "{}", warnings.join("\n"));
    assert!(!log.contains("malformed"), "{log}");
}

/// A tiny deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `base` with one to three random edits: drop, duplicate, swap, replace
/// with an odd token, insert one, or flip characters of one argument.
fn mutate(base: &[String], rng: &mut Rng) -> Vec<String> {
    const ODD: &[&str] = &[
        "",
        "-",
        "--",
        "-c",
        "-b",
        "-q",
        "-vvvvvv",
        "0",
        "-1",
        "4097",
        "4294967295",
        "4294967296",
        "99999999999999999999999",
        "1e308",
        "NaN",
        "inf",
        "1.5.5s",
        ".s",
        "999999999999999h",
        "0.0000000001ms",
        "unix:",
        "unix:/",
        "unix:\u{1}",
        "[::1]:",
        "[::1]:99999",
        "0.0.0.0:-1",
        "a=b=c",
        "=127.0.0.1:0",
        "é=127.0.0.1:0",
        "🦀",
        "--count=",
        "--bind=",
        "--ready=",
        "--ready=notify",
        "--user",
        "--group",
        "--control",
        "--pid-file",
        "--backlog",
        "--backlog=0",
        "--startup-timeout",
        "--graceful-timeout=0",
        "--frobnicate",
        "__monitor",
    ];
    let mut argv = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(argv.len().max(1));
        match rng.below(6) {
            0 if !argv.is_empty() => {
                argv.remove(i);
            }
            1 if !argv.is_empty() => argv.insert(i, argv[i].clone()),
            2 if argv.len() > 1 => {
                let j = rng.below(argv.len());
                argv.swap(i, j);
            }
            3 if !argv.is_empty() => argv[i] = ODD[rng.below(ODD.len())].to_string(),
            4 => argv.insert(i.min(argv.len()), ODD[rng.below(ODD.len())].to_string()),
            _ if !argv.is_empty() => {
                let mut chars: Vec<char> = argv[i].chars().collect();
                for _ in 0..1 + rng.below(3) {
                    let c = char::from(b' ' + rng.below(95) as u8);
                    match chars.len() {
                        0 => chars.push(c),
                        n => chars[rng.below(n)] = c,
                    }
                }
                argv[i] = chars.into_iter().collect();
            }
            _ => argv.push(ODD[rng.below(ODD.len())].to_string()),
        }
    }
    argv
}

#[test]
fn mutated_command_lines_never_crash_panzer() {
    // Every run starts in its own directory, so a mutation that turns an
    // argument into --pid-file or --control writes nothing elsewhere.
    let base: Vec<String> = [
        "--bind",
        "127.0.0.1:0",
        "--count",
        "2",
        "--ready",
        "notify",
        "--startup-timeout",
        "50ms",
        "--graceful-timeout",
        "100ms",
        "--pid-file",
        "app.pid",
        "sleep",
        "--",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let panzer = env!("CARGO_BIN_EXE_panzer");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut started = 0;
    for run in 0..300 {
        let argv = mutate(&base, &mut rng);
        let mut args: Vec<&str> = vec!["-c", "cd \"$0\" && exec \"$@\"", "{dir}", panzer];
        args.extend(argv.iter().map(String::as_str));
        let panzer = Panzer::with_args(&args).via("sh", &[]).start();
        let status = within(Duration::from_secs(3), || panzer.exited());
        let log = panzer.log();
        match status {
            // Still running (a mutation that starts): the guard kills it.
            None => started += 1,
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), None, "run {run}: panzer {argv:?} died by a signal\n{log}");
                assert_ne!(status.code(), Some(101), "run {run}: panzer {argv:?} panicked\n{log}");
            }
        }
        assert!(!log.contains("panicked at"), "run {run}: panzer {argv:?} panicked\n{log}");
    }
    eprintln!("{started} of 300 mutated command lines kept running until killed");
}

#[test]
fn another_user_hammering_an_open_control_socket_cannot_flood_the_log() {
    if !is_root() {
        eprintln!("skipped: needs root to connect as another uid");
        return;
    }
    // An operator opened the socket up (--control in a shared directory,
    // mode changed): other users reach the peer check, which refuses them.
    let dir = TestDir::new("ctl-flood");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let control = dir.join("ctl.sock");
    let panzer = Panzer::new("sleep")
        .args(&["--control", control.to_str().unwrap()])
        .count(1)
        .command_args(&["--", "1000"])
        .start();
    panzer.wait_for_line("control socket at ");
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The system python: a per-user one (pyenv under /root) is out of reach for uid 65534.
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        eprintln!("skipped: needs {python}");
        return;
    }
    let script = format!(
        "import socket\nfor _ in range(500):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({:?})\n    s.recv(4096)\n    s.close()\nprint('done')",
        control.to_str().unwrap()
    );
    let out = std::process::Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", python, "-c"])
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "done",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every refusal was answered; main still serves its own user.
    let reply = ask(&control, r#"{"cmd":"status"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let warnings = panzer.log().lines().filter(|l| l.contains("refused a client with uid")).count();
    assert!((1..=5).contains(&warnings), "{warnings} warning lines for 500 refusals:\n{}", panzer.log());
}

#[test]
fn panzerctl_never_trusts_a_runtime_directory_another_user_planted() {
    if !is_root() || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: needs root and /usr/bin/python3 to serve a socket as another user");
        return;
    }
    // Without XDG_RUNTIME_DIR, a non-root panzerctl (uid 1000 here) looks in
    // $TMPDIR/panzer-<uid>; TMPDIR points at a sticky directory where uid
    // 65534 planted panzer-1000/<pid>.sock, served by a fake panzer that
    // answers every request with ok.
    let dir = TestDir::new("ctlsquat");
    let shared = dir.join("shared");
    sticky_dir(&shared);
    let planted = shared.join("panzer-1000");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    give_to_nobody(&planted);
    let socket = planted.join(format!("{}.sock", std::process::id()));
    let fake = format!(
        "import socket, os\ns = socket.socket(socket.AF_UNIX)\ns.bind({:?})\nos.chmod({:?}, 0o777)\ns.listen(8)\nprint('up', flush=True)\nwhile True:\n    c, _ = s.accept()\n    c.recv(4096)\n    c.sendall(b'{{\"ok\":true,\"generation\":999}}\\n')\n    c.close()\n",
        socket.to_str().unwrap(),
        socket.to_str().unwrap()
    );
    let mut server = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(&fake)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut up).unwrap();
    assert_eq!(up.trim(), "up");
    let out = panzerctl_as(
        Some(1000),
        &["reload"],
        &[("TMPDIR", shared.to_str().unwrap()), ("XDG_RUNTIME_DIR", "")],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_ne!(out.code, 0, "panzerctl believed a planted socket: {}", out.stdout);
    assert!(!out.stdout.contains("generation 999"), "{}", out.stdout);
    assert!(out.stderr.contains(planted.to_str().unwrap()), "the error names the directory: {}", out.stderr);
}

/// Connects to the unix socket `path` as `uid`:`gid` (no other group):
/// `Ok` or the error the client saw.
fn connect_as(uid: u32, gid: u32, path: &Path) -> Result<(), String> {
    let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(e.strerror)";
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .args([script, path.to_str().unwrap()])
        .output()
        .unwrap();
    match String::from_utf8_lossy(&out.stdout).trim() {
        "connected" => Ok(()),
        other => Err(format!("{other}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

#[test]
fn a_unix_socket_gets_the_mode_owner_and_group_asked_for() {
    if !is_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    const SYS: u32 = 3; // group `sys`
    const DAEMON: u32 = 1; // user and group `daemon`
    let dir = TestDir::new("sockmode");
    let path = dir.join("app.sock");
    let bind = format!("unix:{},mode=0660,owner=nobody,group=sys", path.display());
    let panzer = Panzer::new("sleep").bind(&bind).ready("100ms").command_args(&["--", "1000"]).start();
    panzer.wait_ready(1);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, SYS));
    assert_eq!(connect_as(DAEMON, SYS, &path), Ok(()), "a client in the group connects");
    assert_eq!(connect_as(NOBODY, NOBODY, &path), Ok(()), "the owner connects");
    assert_eq!(connect_as(DAEMON, DAEMON, &path), Err("Permission denied".into()), "anyone else is refused");

    // Numbers do as well as names, and `mode` alone leaves the owner root.
    let other = dir.join("other.sock");
    let bind = format!("unix:{},mode=600,group=3", other.display());
    let panzer2 = Panzer::new("sleep").bind(&bind).ready("100ms").command_args(&["--", "1000"]).start();
    panzer2.wait_ready(1);
    let meta = std::fs::symlink_metadata(&other).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o600, 0, SYS));

    // In PANZER_BIND, where commas also separate addresses.
    let third = dir.join("third.sock");
    let env = format!("unix:{},mode=0640,group=sys,127.0.0.1:0", third.display());
    let panzer3 =
        Panzer::new("sleep").no_bind().env("PANZER_BIND", &env).ready("100ms").command_args(&["--", "1000"]);
    let panzer3 = panzer3.start();
    panzer3.wait_ready(1);
    let meta = std::fs::symlink_metadata(&third).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o640, SYS));
    assert_eq!(panzer3.log().matches("listening on ").count(), 2, "{}", panzer3.log());
}

#[test]
fn unix_socket_options_are_parsed_strictly_and_unknown_owners_named() {
    let dir = TestDir::new("sockopts");
    let sock = dir.join("app.sock");
    let s = sock.display();
    for (options, says) in [
        ("mode=0660,colour=blue", "unknown option 'colour'"),
        ("mode=01777", "invalid mode '01777'"),
        ("mode=rw", "expected an octal mode from 0 to 0777"),
        ("mode=0660,mode=0600", "'mode' given twice"),
        ("owner=no-such-user-here", "owner=no-such-user-here: no such user"),
        ("group=no-such-group-here", "group=no-such-group-here: no such group"),
    ] {
        let mut panzer =
            Panzer::new("sleep").bind(format!("unix:{s},{options}")).command_args(&["--", "100"]).start();
        let (code, log) = fails(&mut panzer);
        assert_eq!(code, 2, "{options}: {log}");
        assert_eq!(log.trim().lines().count(), 1, "{options}: {log}");
        assert!(log.contains(says), "{options}: {log}");
        assert!(!sock.exists(), "{options}: left {s}");
    }
    // Options belong to unix sockets only.
    let mut panzer = Panzer::new("sleep").bind("127.0.0.1:0,mode=0660").command_args(&["--", "100"]).start();
    let (code, log) = fails(&mut panzer);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("only a unix: socket takes mode"), "{log}");
}
