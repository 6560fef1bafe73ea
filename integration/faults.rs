//! Faults around a generation (issue #7): `kill -9` of main and monitors at
//! any instant, a reload that fails while serving workers are busy, a flood
//! of notify messages, stray signals, an operator's stop in the middle of a
//! reload. Each test states what an operator may rely on.

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

// ---------------------------------------------------------------------------
// Nothing outlives `kill -9`

/// Which of main and its monitor gets `SIGKILL` first, and how long before
/// the other.
enum Kills {
    MonitorThenMain(Duration),
    MainThenMonitor,
}

/// Busy-waits for `gap`: the time between two kills is the scenario itself,
/// not synchronisation, and a busy wait keeps it close to exact.
fn after(gap: Duration) {
    let until = Instant::now() + gap;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Every live process that belongs to this test's panzer: in one of
/// `groups` (recorded before the kills), or with this test's directory on
/// its command line (every process of the tree has it: main and workers as
/// an argument, monitors in their notify socket's path), so also one started
/// after the groups were recorded.
pub(crate) fn leftovers(dir: &Path, groups: &HashSet<Pid>) -> Vec<(Pid, String)> {
    let dir = dir.to_string_lossy();
    let me = Pid::this();
    process_table()
        .into_iter()
        .filter(|(pid, p)| *pid != me && (groups.contains(&p.pgid) || p.cmdline.contains(&*dir)))
        .map(|(pid, p)| (pid, p.cmdline))
        .collect()
}

/// Kills, on drop (also when the test failed), every process with this
/// test's directory on its command line: a leaked worker is no longer below
/// main, where the guard looks. (Not by group: once empty, a group's id may
/// be taken by an unrelated process.)
pub(crate) struct Sweep(pub(crate) PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        let ours = || leftovers(&self.0, &HashSet::new());
        for _ in 0..3 {
            let left = ours();
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = within(PATIENCE, || ours().is_empty().then_some(()));
        }
    }
}

fn nothing_outlives(kills: Kills) {
    // Generation 1 is still starting when the kills come (3 s before
    // READY=1); a graceful timeout far beyond the deadline below means
    // only a drain on SIGTERM, never a timeout, can clean up in time.
    let mut panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--graceful-timeout", "60s"])
        .command_args(&["--", "{dir}"])
        .env("READY_DELAY_MS", "3000")
        .start();
    let port = panzer.port(0);
    let server = example("server");
    let monitor = eventually(PATIENCE, "the monitor and both workers to run", || {
        let monitors = panzer.monitors();
        let [monitor] = monitors[..] else { return None };
        let table = process_table();
        let workers = table.values().filter(|p| p.ppid == monitor && p.cmdline.starts_with(&server)).count();
        (workers == 2).then_some(monitor)
    });
    let table = process_table();
    let mut tree = panzer.descendants();
    tree.push(panzer.pid);
    let groups: HashSet<Pid> = tree.iter().filter_map(|p| table.get(p)).map(|p| p.pgid).collect();
    let sweep = Sweep(panzer.dir.0.clone());
    assert!(!panzer.log().contains("generation 1 ready"), "generation 1 was ready before the kills");

    match kills {
        Kills::MonitorThenMain(gap) => {
            kill(monitor, Signal::SIGKILL).unwrap();
            after(gap);
            kill(panzer.pid, Signal::SIGKILL).unwrap();
        }
        Kills::MainThenMonitor => {
            kill(panzer.pid, Signal::SIGKILL).unwrap();
            kill(monitor, Signal::SIGKILL).unwrap();
        }
    }
    panzer.wait_exit(PATIENCE);

    let deadline = Duration::from_secs(10);
    let gone = within(deadline, || leftovers(&sweep.0, &groups).is_empty().then_some(()));
    if gone.is_none() {
        let left = leftovers(&sweep.0, &groups);
        panic!("{} process(es) outlived kill -9 of main and monitor by {deadline:?}: {left:#?}", left.len());
    }
    let bound = within(deadline, || TcpListener::bind(("127.0.0.1", port)).ok());
    assert!(bound.is_some(), "port {port} is still taken after every process is gone");
}

#[test]
fn nothing_outlives_kill_9_of_main_while_its_monitor_starts_many_workers() {
    // The monitor hears of main's death (its report fails) in the middle of
    // starting 30 workers: it must stop starting them, not go on with
    // workers that get no sockets and nobody to stop them.
    let mut panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--graceful-timeout", "60s"])
        .command_args(&["--", "{dir}"])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let monitor = panzer.monitors()[0];
    let sweep = Sweep(panzer.dir.0.clone());
    let groups: HashSet<Pid> = [panzer.pid, monitor].into_iter().collect();
    let control = panzer.wait_for_line("control socket at ");
    let control = control.rsplit("control socket at ").next().unwrap().trim().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(&control).unwrap();
    stream.write_all(b"{\"cmd\":\"scale\",\"count\":30}\n").unwrap();
    eventually(PATIENCE, "the monitor to start scaling", || {
        panzer.log().contains("now running 30").then_some(())
    });
    kill(panzer.pid, Signal::SIGKILL).unwrap();
    panzer.wait_exit(PATIENCE);
    let deadline = Duration::from_secs(10);
    let gone = within(deadline, || leftovers(&sweep.0, &groups).is_empty().then_some(()));
    if gone.is_none() {
        let left = leftovers(&sweep.0, &groups);
        panic!(
            "{} process(es) outlived kill -9 of main by {deadline:?}: {left:#?}\n{}",
            left.len(),
            panzer.log()
        );
    }
    assert!(
        !panzer.log().contains("server: listening on 127.0.0.1:8080"),
        "a worker got no sockets:\n{}",
        panzer.log()
    );
    assert!(within(deadline, || TcpListener::bind(("127.0.0.1", port)).ok()).is_some());
}

#[test]
fn nothing_outlives_kill_9_of_the_monitor_then_main() {
    nothing_outlives(Kills::MonitorThenMain(Duration::ZERO));
}

#[test]
fn nothing_outlives_kill_9_of_main_then_the_monitor() {
    nothing_outlives(Kills::MainThenMonitor);
}

#[test]
fn nothing_outlives_kill_9_of_main_5_ms_after_the_monitor() {
    nothing_outlives(Kills::MonitorThenMain(Duration::from_millis(5)));
}

#[test]
fn nothing_outlives_kill_9_of_main_50_ms_after_the_monitor() {
    nothing_outlives(Kills::MonitorThenMain(Duration::from_millis(50)));
}

#[test]
fn nothing_outlives_kill_9_of_main_1_s_after_the_monitor() {
    nothing_outlives(Kills::MonitorThenMain(Duration::from_secs(1)));
}

// ---------------------------------------------------------------------------
// A failed reload

/// Waits until only one monitor is left: the failed generation is gone.
fn failed_generation_gone(panzer: &Panzer) {
    eventually(PATIENCE, "the failed generation's monitor to exit", || {
        (panzer.monitors().len() == 1).then_some(())
    });
}

#[test]
fn a_failed_reload_never_kills_serving_workers() {
    let dir = TestDir::new("failed-reload");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "4", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = distinct_pids(port, 4);

    // Workers 0, 2 and 3 of generation 2 get ready and take connections;
    // worker 1 crashes until the generation fails.
    deploy.set("CRASH_WORKER=1");
    let load = Load::start(port, 8, "/slow?ms=100");
    load.wait_for(20);
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_ne!(out.code, 0, "the reload succeeded: {}", out.stdout);
    assert!(out.stderr.contains("worker 1"), "the reason does not name worker 1: {}", out.stderr);
    failed_generation_gone(&panzer);
    load.wait_for(20);
    let (failures, generations) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests around the failed reload, e.g. {:?}; answers by generation: {generations:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(generations.get("2").is_some_and(|n| *n > 0), "generation 2 never answered: {generations:?}");

    // The same generation 1 workers still serve.
    for _ in 0..20 {
        let r = get(port, "/").unwrap();
        assert_eq!(r.field("generation"), "1", "{r:?}");
        assert!(old.contains(&r.pid()), "{} is not one of generation 1's workers {old:?}", r.pid());
    }
    assert!(old.iter().all(|p| alive(*p)), "a worker of generation 1 is gone");
}

#[test]
fn the_drain_of_a_failed_generation_waits_for_its_request_in_flight() {
    let dir = TestDir::new("failed-inflight");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);

    // Generation 2 fails once worker 1 has crashed 5 times (over 1.5 s of
    // restart backoff); worker 0 is ready well before.
    deploy.set("CRASH_WORKER=1");
    let reload = panzer.ctl_start(&["reload"]);
    // A kept-alive connection served by generation 2, then a request that
    // takes longer than what is left of its start (at most 1.5 s plus any
    // slowness of the machine), and less than the 5 s a failed generation
    // gets to drain.
    let (mut stream, server) = eventually(PATIENCE, "a connection to generation 2", || {
        let mut stream = connect(port).ok()?;
        write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
        let r = read_response(&mut stream).ok()?;
        (r.field("generation") == "2").then(|| (stream, r.pid()))
    });
    write!(stream, "GET /slow?ms=4000 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();

    let out = reload.answer(PATIENCE);
    assert_ne!(out.code, 0, "the reload succeeded: {}", out.stdout);
    let slow = read_response(&mut stream).expect("the request in flight was cut off");
    assert_eq!((slow.status, slow.pid()), (200, server));
    // Connection: close: the drain had started while the request ran.
    assert!(slow.closes(), "the generation failed only after the request was done: {}", slow.headers);
    failed_generation_gone(&panzer);
}

// ---------------------------------------------------------------------------
// The status channel

#[test]
fn the_status_channel_never_drops_a_message() {
    // Each reload must be answered long before the startup timeout: a lost
    // "ready" would only be answered (as a failure) by that timeout.
    let panzer = Panzer::new(example("server"))
        .count(2)
        .notify()
        .args(&["--startup-timeout", "60s"])
        .pid_file()
        .env("STATUS_FLOOD", "4")
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    for generation in 2..=21 {
        let out = panzer.ctl_start(&["reload"]).wait(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!("reload to generation {generation} got no answer within 30 s: a message was lost")
        });
        assert_eq!(
            (out.code, out.stdout.trim()),
            (0, format!("reloaded: generation {generation} serves").as_str()),
            "reload to generation {generation}: {}",
            out.stderr
        );
    }
    eventually(PATIENCE, "generation 21 to answer", || {
        get(port, "/").ok().filter(|r| r.field("generation") == "21")
    });
}

#[test]
fn a_waiting_reload_logs_its_progress() {
    let dir = TestDir::new("progress");
    let deploy = Deploy::new(&dir);
    let panzer = start_deploy(&deploy, "2", &[]);
    panzer.wait_ready(1);
    deploy.set("READY_DELAY_MS=12000");
    panzer.signal(Signal::SIGUSR1);
    // The first report is due 5 s into the reload, long before the workers
    // are ready at 12 s.
    let line = panzer.wait_for_line("generation 2 starting: 0/2 ready after");
    assert!(line.split_whitespace().nth(1) == Some("INFO"), "not at INFO: {line}");
    assert!(!panzer.log().contains("generation 2 ready"), "reported only after generation 2 was ready");
}

// ---------------------------------------------------------------------------
// Monitors

#[test]
fn a_monitor_killed_during_generation_1_s_start_is_replaced() {
    let mut panzer = Panzer::new(example("server")).count(2).notify().env("READY_DELAY_MS", "2000").start();
    let port = panzer.port(0);
    let monitor = eventually(PATIENCE, "the first monitor", || panzer.monitors().first().copied());
    assert!(!panzer.log().contains("generation 1 ready"), "generation 1 was ready before the kill");
    kill(monitor, Signal::SIGKILL).unwrap();

    let answer = eventually(PATIENCE, "a later generation to answer", || {
        if let Some(status) = panzer.exited() {
            panic!("panzer exited ({status}) instead of replacing the monitor\n{}", panzer.log());
        }
        get(port, "/").ok()
    });
    assert_ne!(answer.field("generation"), "1", "{answer:?}");
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
}

#[test]
fn a_monitor_killed_by_a_real_time_signal_is_reaped_and_replaced() {
    let mut panzer = Panzer::new(example("server")).count(2).notify().start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let monitor = panzer.monitors()[0];
    send(monitor, libc::SIGRTMIN() + 6);
    panzer.wait_for_line("was killed by SIGRTMIN+6");
    panzer.wait_ready(2);
    eventually(PATIENCE, "generation 2 to answer", || {
        get(port, "/").ok().filter(|r| r.field("generation") == "2")
    });
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
}

#[test]
fn a_worker_killed_by_a_real_time_signal_is_restarted_in_its_slot() {
    let panzer = Panzer::new(example("server")).count(1).notify().start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old = get(port, "/").unwrap().pid();
    send(old, libc::SIGRTMIN() + 6);
    panzer.wait_for_line(&format!("worker 0 (pid {old}) killed by SIGRTMIN+6"));
    let new = eventually(PATIENCE, "the slot's next worker to answer", || {
        get(port, "/").ok().map(|r| r.pid()).filter(|p| *p != old)
    });
    assert!(alive(new));
}

#[test]
fn a_monitor_stopped_by_a_stray_sigterm_during_generation_1_s_start_is_replaced() {
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let mut panzer =
            Panzer::new(example("server")).count(2).notify().env("READY_DELAY_MS", "2000").start();
        let port = panzer.port(0);
        let monitor = eventually(PATIENCE, "the first monitor", || panzer.monitors().first().copied());
        assert!(!panzer.log().contains("generation 1 ready"), "generation 1 was ready before the signal");
        kill(monitor, signal).unwrap();
        let answer = eventually(PATIENCE, "a later generation to answer", || {
            if let Some(status) = panzer.exited() {
                panic!(
                    "{signal}: panzer exited ({status}) instead of replacing the monitor\n{}",
                    panzer.log()
                );
            }
            get(port, "/").ok()
        });
        assert_ne!(answer.field("generation"), "1", "{answer:?}");
        panzer.signal(Signal::SIGTERM);
        assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    }
}

#[test]
fn monitors_are_named_panzer() {
    let panzer = Panzer::new(example("server")).count(1).notify().start();
    panzer.wait_ready(1);
    let monitor = eventually(PATIENCE, "the monitor", || panzer.monitors().first().copied());
    let comm = std::fs::read_to_string(format!("/proc/{monitor}/comm")).unwrap();
    // What `pgrep -x panzer` and `ps -C panzer` match.
    assert_eq!(comm.trim_end(), "panzer", "monitor {monitor} is named {comm:?}");
}

// ---------------------------------------------------------------------------
// Signals

/// The signals main has no use for, each with the names a log line may give it.
fn stray_signals() -> Vec<(i32, Vec<String>)> {
    let named = |signo: i32, names: &[&str]| (signo, names.iter().map(|n| n.to_string()).collect());
    let mut signals = vec![
        named(libc::SIGALRM, &["SIGALRM"]),
        named(libc::SIGVTALRM, &["SIGVTALRM"]),
        named(libc::SIGPROF, &["SIGPROF"]),
        named(libc::SIGIO, &["SIGIO", "SIGPOLL"]),
        named(libc::SIGPWR, &["SIGPWR"]),
        named(libc::SIGSTKFLT, &["SIGSTKFLT"]),
        named(libc::SIGXCPU, &["SIGXCPU"]),
        named(libc::SIGXFSZ, &["SIGXFSZ"]),
        // Fault signals sent with kill(2), not raised by a fault; twice,
        // since a handler that resets itself would only show the second time.
        named(libc::SIGILL, &["SIGILL"]),
        named(libc::SIGTRAP, &["SIGTRAP"]),
        named(libc::SIGABRT, &["SIGABRT", "SIGIOT"]),
        named(libc::SIGFPE, &["SIGFPE"]),
        named(libc::SIGSYS, &["SIGSYS"]),
        named(libc::SIGSEGV, &["SIGSEGV"]),
        named(libc::SIGSEGV, &["SIGSEGV"]),
        named(libc::SIGBUS, &["SIGBUS"]),
        named(libc::SIGBUS, &["SIGBUS"]),
        // The two the C library keeps for itself below SIGRTMIN.
        named(32, &["signal 32"]),
        named(33, &["signal 33"]),
    ];
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    for signo in min..=max {
        let mut names = match signo {
            _ if signo == min => vec!["SIGRTMIN".to_owned()],
            _ if signo == max => vec!["SIGRTMAX".to_owned()],
            _ => vec![],
        };
        names.push(format!("SIGRTMIN+{}", signo - min));
        names.push(format!("SIGRTMAX-{}", max - signo));
        names.push(format!("signal {signo}"));
        signals.push((signo, names));
    }
    // Last: it may mean an upgrade in place, which keeps pid and generation.
    signals.push(named(libc::SIGUSR2, &["SIGUSR2"]));
    for (_, names) in &mut signals {
        let bare: Vec<String> =
            names.iter().filter_map(|n| n.strip_prefix("SIG")).map(String::from).collect();
        names.extend(bare);
    }
    signals
}

#[test]
fn a_stray_signal_does_not_kill_main() {
    let start = || Panzer::new(example("server")).count(2).notify().pid_file().start();
    let mut panzer = start();
    panzer.wait_ready(1);
    let mut port = panzer.port(0);
    let mut workers = distinct_pids(port, 2);
    let mut failures = Vec::new();
    for (signo, names) in stray_signals() {
        let lines_before = panzer.log().lines().count();
        send(panzer.pid, signo);
        let named = eventually(PATIENCE, &format!("main to log {} or die", names[0]), || {
            if !alive(panzer.pid) {
                return Some(false);
            }
            let log = panzer.log();
            let new: Vec<&str> = log.lines().skip(lines_before).collect();
            new.iter().any(|l| names.iter().any(|n| names_signal(l, n))).then_some(true)
        });
        if !named {
            let status = panzer.wait_exit(PATIENCE);
            failures.push(format!("{} killed main ({status})", names[0]));
            // Go on with a fresh panzer, to name every signal that kills.
            panzer = start();
            panzer.wait_ready(1);
            port = panzer.port(0);
            workers = distinct_pids(port, 2);
            continue;
        }
        let r = get(port, "/").unwrap();
        if r.field("generation") != "1" || !workers.contains(&r.pid()) {
            failures.push(format!("after {}, {r:?} answered instead of {workers:?}", names[0]));
        }
    }
    assert!(failures.is_empty(), "{} stray signal(s) disturbed main: {failures:#?}", failures.len());
}

/// `kill(pid, signo)` by number: nix's `Signal` has no realtime signals.
#[allow(unsafe_code)]
fn send(pid: Pid, signo: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; the
    // pid is this test's unreaped child, so it names no other process.
    let result = unsafe { libc::kill(pid.as_raw(), signo) };
    assert_eq!(result, 0, "kill({pid}, {signo}): {}", std::io::Error::last_os_error());
}

/// Whether log `line` names the signal `name` as a word of its own.
fn names_signal(line: &str, name: &str) -> bool {
    line.match_indices(name).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric())
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '+' || c == '-')
    })
}

// ---------------------------------------------------------------------------
// Stopping during a reload

#[test]
fn an_operators_stop_that_cancels_a_queued_reload_is_not_an_error() {
    let dir = TestDir::new("stop-queued");
    let deploy = Deploy::new(&dir);
    let mut panzer = start_deploy(&deploy, "2", &[]);
    panzer.wait_ready(1);
    deploy.set("READY_DELAY_MS=60000");
    let first = panzer.ctl_start(&["reload"]);
    eventually(PATIENCE, "generation 2's monitor", || (panzer.monitors().len() == 2).then_some(()));
    let mut queued = panzer.ctl_start(&["reload"]);
    panzer.wait_for_line("queued");
    assert!(!queued.finished(), "the queued reload was answered before the stop");
    panzer.signal(Signal::SIGTERM);

    let out = queued.answer(PATIENCE);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("stopping"), "{}", out.stderr);
    let out = first.answer(PATIENCE);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    let log = panzer.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("ERROR") && l.contains("panzer is stopping"))
        .collect();
    assert!(errors.is_empty(), "an operator's stop logged as an error: {errors:#?}");
}
