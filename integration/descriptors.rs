//! panzer short of file descriptors (`RLIMIT_NOFILE`): idle control clients
//! never lock the operator out nor make main spin, a count the limit cannot
//! start is refused up front (`--count`, `scale`, `SIGTTIN`), and a worker
//! start that runs out says which limit and what a worker needs.
//!
//! The limit is set with util-linux `prlimit`, which execs panzer in its own
//! process (so the guard's pid is main's), or changed on a running main with
//! `prlimit --pid`.

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

const PANZER: &str = env!("CARGO_BIN_EXE_panzer");

/// A busy loop makes about 100 ticks a second; an idle main next to none.
/// Far below the one, far above the other, whatever else the machine runs.
const IDLE_TICKS: u64 = 25;

/// Starts `panzer` with `RLIMIT_NOFILE` (soft and hard) at `limit`.
fn start_limited(limit: u32, panzer: PanzerCommand) -> Panzer {
    let nofile = format!("--nofile={limit}");
    panzer.via("prlimit", &[&nofile, "--", PANZER]).start()
}

/// Sets `RLIMIT_NOFILE` of the running process `pid` to `limit`.
fn set_limit(pid: Pid, limit: usize) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}"))
        .status()
        .expect("cannot run prlimit");
    assert!(status.success(), "prlimit --pid={pid} --nofile={limit} failed");
}

/// CPU ticks `pid` uses over the next second (a measurement window, not a wait).
fn ticks_over_a_second(pid: Pid) -> u64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    cpu_ticks(pid) - before
}

/// `panzerctl status` on `control`, giving up after 5 s.
fn status_answered(control: &str) -> CtlOutput {
    panzerctl(&["--timeout", "5s", "--control", control, "--json", "status"])
}

/// The status object of the panzer listening on `{dir}/ctl.sock`.
fn status(panzer: &Panzer) -> serde_json::Value {
    let out = status_answered(panzer.dir.join("ctl.sock").to_str().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    reply["status"].clone()
}

/// panzer running `command`, its control socket at `{dir}/ctl.sock`.
fn with_control(command: &str) -> PanzerCommand {
    Panzer::new(command).args(&["--control", "{dir}/ctl.sock"])
}

#[test]
fn idle_control_clients_at_a_low_descriptor_limit_never_lock_out_the_operator() {
    let hello = example("hello");
    let panzer = start_limited(24, with_control(&hello).count(1).notify());
    panzer.wait_ready(1);
    let control = panzer.dir.join("ctl.sock");
    // More than main has descriptors left for.
    let idle: Vec<UnixStream> = (0..20).map(|_| UnixStream::connect(&control).unwrap()).collect();
    let out = status_answered(control.to_str().unwrap());
    assert_eq!(out.code, 0, "status got no answer: {}{}", out.stdout, out.stderr);
    let ticks = ticks_over_a_second(panzer.pid);
    assert!(ticks < IDLE_TICKS, "main used {ticks} CPU ticks in a second with idle clients connected");
    let line = panzer.wait_for_line("RLIMIT_NOFILE is 24");
    assert!(line.contains("control"), "{line}");
    drop(idle);
}

#[test]
fn an_accept_out_of_descriptors_drops_the_client_idle_the_longest_instead_of_spinning() {
    let hello = example("hello");
    let panzer = with_control(&hello).count(1).notify().start();
    panzer.wait_ready(1);
    let control = panzer.dir.join("ctl.sock");
    let before = open_fds(panzer.pid).len();
    let idle: Vec<UnixStream> = (0..20).map(|_| UnixStream::connect(&control).unwrap()).collect();
    eventually(PATIENCE, "main to accept 20 idle clients", || {
        (open_fds(panzer.pid).len() >= before + 20).then_some(())
    });
    // No descriptor number left below the limit: the next accept fails
    // with EMFILE until one is freed.
    let open = open_fds(panzer.pid);
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    set_limit(panzer.pid, lowest_free as usize);
    // One more idle client takes the hole a descriptor main had open for
    // a moment may have left below the limit; if there is none, it is the
    // first to find no descriptor.
    let one_more = UnixStream::connect(&control).unwrap();
    let out = status_answered(control.to_str().unwrap());
    assert_eq!(out.code, 0, "status got no answer: {}{}", out.stdout, out.stderr);
    let ticks = ticks_over_a_second(panzer.pid);
    assert!(ticks < IDLE_TICKS, "main used {ticks} CPU ticks in a second after an accept failed");
    let line = panzer.wait_for_line(&format!("RLIMIT_NOFILE is {lowest_free}"));
    assert!(line.contains("too many open files"), "{line}");
    drop((idle, one_more));
}

/// `GET /livez` on the admin endpoint at `port`, with `Connection: close`.
fn livez(port: u16) -> Response {
    get(port, "/livez").unwrap_or_else(|e| panic!("/livez got no answer: {e}"))
}

/// The port of the first `admin endpoint on` line.
fn admin_port(panzer: &Panzer) -> u16 {
    let line = panzer.wait_for_line("admin endpoint on 127.0.0.1:");
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn idle_admin_clients_at_a_low_descriptor_limit_leave_room_for_probes_and_the_operator() {
    let hello = example("hello");
    let panzer = start_limited(24, with_control(&hello).admin().count(1).notify());
    panzer.wait_ready(1);
    let port = admin_port(&panzer);
    let line = panzer.wait_for_line("admin endpoint: at most ");
    assert!(line.contains("RLIMIT_NOFILE is 24"), "{line}");
    // More than main has descriptors left for, on both sockets.
    let control = panzer.dir.join("ctl.sock");
    let idle: Vec<std::net::TcpStream> = (0..20).map(|_| connect(port).unwrap()).collect();
    let idle_control: Vec<UnixStream> = (0..20).map(|_| UnixStream::connect(&control).unwrap()).collect();
    assert_eq!(livez(port).status, 200);
    let out = status_answered(control.to_str().unwrap());
    assert_eq!(out.code, 0, "status got no answer: {}{}", out.stdout, out.stderr);
    let ticks = ticks_over_a_second(panzer.pid);
    assert!(ticks < IDLE_TICKS, "main used {ticks} CPU ticks in a second with idle clients connected");
    // A reload still finds the descriptors to start a monitor.
    let out = panzerctl(&["--control", control.to_str().unwrap(), "reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    drop((idle, idle_control));
}

#[test]
fn an_admin_accept_out_of_descriptors_drops_the_client_idle_the_longest_instead_of_spinning() {
    let hello = example("hello");
    let panzer = with_control(&hello).admin().count(1).notify().start();
    panzer.wait_ready(1);
    let port = admin_port(&panzer);
    let before = open_fds(panzer.pid).len();
    let idle: Vec<std::net::TcpStream> = (0..20).map(|_| connect(port).unwrap()).collect();
    eventually(PATIENCE, "main to accept 20 idle clients", || {
        (open_fds(panzer.pid).len() >= before + 20).then_some(())
    });
    let open = open_fds(panzer.pid);
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    set_limit(panzer.pid, lowest_free as usize);
    let one_more = connect(port).unwrap();
    assert_eq!(livez(port).status, 200);
    let ticks = ticks_over_a_second(panzer.pid);
    assert!(ticks < IDLE_TICKS, "main used {ticks} CPU ticks in a second after an accept failed");
    let line = panzer.wait_for_line(&format!("RLIMIT_NOFILE is {lowest_free}"));
    assert!(line.contains("admin endpoint") && line.contains("too many open files"), "{line}");
    drop((idle, one_more));
}

#[test]
fn a_count_the_descriptor_limit_cannot_start_is_refused_up_front() {
    let hello = example("hello");
    let mut panzer = start_limited(24, Panzer::new(&hello).count(8).arg("--tag-output").notify());
    let status = panzer.wait_exit(PATIENCE);
    let log = panzer.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains("--count 8: at most ") && log.contains("RLIMIT_NOFILE is 24"), "{log}");
    assert!(panzer.descendants().is_empty());
}

/// `N` of the first "at most N workers" in `text`.
fn at_most(text: &str) -> u32 {
    let rest = text.split("at most ").nth(1).unwrap_or_else(|| panic!("no \"at most\" in {text:?}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn scale_and_sigttin_past_the_descriptor_limit_are_refused_with_the_reason() {
    let hello = example("hello");
    let panzer = start_limited(24, with_control(&hello).count(1).arg("--tag-output").notify());
    panzer.wait_ready(1);
    let control = panzer.dir.join("ctl.sock");
    let control = control.to_str().unwrap();
    let out = panzerctl(&["--control", control, "scale", "20"]);
    assert_ne!(out.code, 0, "scale 20 was accepted: {}", out.stdout);
    assert!(
        out.stderr.contains("scale 20: at most ") && out.stderr.contains("RLIMIT_NOFILE is 24"),
        "{}",
        out.stderr
    );
    let max = at_most(&out.stderr);
    assert!((1..20).contains(&max), "{}", out.stderr);

    // The most the limit allows is accepted, and every one of them runs.
    let out = panzerctl(&["--control", control, "scale", &max.to_string()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    eventually(PATIENCE, &format!("{max} ready workers"), || {
        let status = status(&panzer);
        let workers = status["generations"][0]["workers"].as_array()?.clone();
        let ready = workers.iter().filter(|w| w["ready"] == true).count();
        (ready == max as usize).then_some(())
    });

    // One more by signal: refused, with the same reason, in the log.
    panzer.signal(Signal::SIGTTIN);
    let line = panzer.wait_for_line(&format!("scale {}: at most {max} workers", max + 1));
    assert!(line.contains("RLIMIT_NOFILE is 24"), "{line}");
    assert_eq!(status(&panzer)["count"], max);
    assert!(!panzer.log().contains("too many open files"), "{}", panzer.log());
}

#[test]
fn a_worker_start_out_of_descriptors_names_the_limit_and_what_a_worker_needs() {
    // Each worker leaves a process in the background that keeps its output
    // pipes open in the monitor after the worker is gone: every kill costs
    // the monitor two descriptors, until a start no longer fits.
    let script = format!("sleep 1000 & exec {}", example("hello"));
    let panzer = start_limited(
        24,
        with_control("sh").count(1).arg("--tag-output").notify().command_args(&["--", "-c", &script]),
    );
    panzer.wait_ready(1);
    let worker = || {
        let status = status(&panzer);
        let w = &status["generations"][0]["workers"][0];
        (w["ready"] == true).then(|| Pid::from_raw(w["pid"].as_i64().unwrap() as i32))
    };
    let mut line = None;
    for _ in 0..12 {
        let pid = eventually(PATIENCE, "a ready worker", worker);
        kill(pid, Signal::SIGKILL).unwrap();
        line = eventually(PATIENCE, "a new worker, or one that cannot start", || {
            if let Some(line) = panzer.log().lines().find(|l| l.contains("too many open files")) {
                return Some(Some(line.to_string()));
            }
            worker().filter(|&p| p != pid).map(|_| None)
        });
        if line.is_some() {
            break;
        }
    }
    let line = line.expect("every start still fitted after 12 leftover processes");
    let needs = line.split("a worker needs ").nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
    let needs: u32 = needs.parse().unwrap_or_else(|_| panic!("no \"a worker needs N)\" in {line:?}"));
    assert!(
        line.contains(&format!("too many open files (RLIMIT_NOFILE is 24; a worker needs {needs})")),
        "{line}"
    );
    assert!((4..24).contains(&needs), "{line}");
}
