//! Support shared by the process tests (`integration/main.rs`) and the
//! reload bench (`integration/bench_reload.rs`, which includes this file with
//! `#[path]`): the process guard, which runs the real `panzer` binary in a
//! process group of its own, logs to a per-test file, and on drop (even on
//! panic) kills main's group and every process it left, then waits for it;
//! the scratch directory; the /proc table; a small HTTP client; the log,
//! read as it grows.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Generous bound for anything that should take a moment: a busy 2-core CI
/// machine may be slow, but never this slow.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    within(limit, check).unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or gives up with `None` after
/// `limit` (for where a panic would not do, e.g. a drop).
pub fn within<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Path of a built example (`hello`) or fixture (`server`, `probe`, `stubborn`, …).
pub fn example(name: &str) -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_panzer"));
    let path = bin.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: plain `cargo test` builds the examples and fixtures, \
         `cargo test --test integration` alone does not (run `cargo build --examples` first)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A scratch directory for one test, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    /// Kept short: panzer's runtime files (control socket, notify sockets)
    /// go into it through `XDG_RUNTIME_DIR`, and unix socket paths are
    /// limited to 107 bytes; a longer dir would make panzer use /tmp, where a
    /// panzer killed by a test would leave them behind.
    pub fn new(name: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let short: String = name.rsplit('-').next().unwrap_or(name).chars().take(16).collect();
        let path = std::env::temp_dir().join(format!(
            "pzt-{}-{}-{short}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `panzer` and everything it started.
pub struct Panzer {
    child: Child,
    pub pid: Pid,
    pub dir: TestDir,
    log: PathBuf,
    command: String,
    status: Option<ExitStatus>,
}

impl Panzer {
    /// Starts `panzer ARGS…` with `env` added to the environment.
    pub fn start(args: &[&str]) -> Panzer {
        Panzer::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Panzer {
        Panzer::start_via(env!("CARGO_BIN_EXE_panzer"), args, env)
    }

    /// Starts `program ARGS…`, which must exec panzer in the same process
    /// (a launcher that sets up fds first, for example). `{dir}` in an
    /// argument stands for this panzer's own test directory.
    pub fn start_via(program: &str, args: &[&str], env: &[(&str, &str)]) -> Panzer {
        Panzer::spawn(program, args, env, None)
    }

    /// Starts `panzer ARGS…` with its stdout and stderr both on `out` (the
    /// write end of a pipe, say) instead of the log file, which stays empty.
    pub fn start_writing_to(args: &[&str], out: std::os::fd::OwnedFd) -> Panzer {
        Panzer::spawn(env!("CARGO_BIN_EXE_panzer"), args, &[], Some(out))
    }

    fn spawn(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        out: Option<std::os::fd::OwnedFd>,
    ) -> Panzer {
        let name = std::thread::current().name().unwrap_or("test").replace("::", "-");
        let dir = TestDir::new(&name);
        let log = dir.join("panzer.log");
        let file = std::fs::File::create(&log).unwrap();
        let out = out.map_or(file, std::fs::File::from);
        let mut command = Command::new(program);
        command
            .args(args.iter().map(|a| a.replace("{dir}", dir.0.to_str().unwrap())))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("RUST_LOG")
            .env("XDG_RUNTIME_DIR", &dir.0)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        // Registered under the lock across the spawn, so that
        // `kill_every_panzer` (a bench's Ctrl-C) cannot miss it.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        // A binary a test has just copied (an upgrade's install) can be
        // busy for a moment: a process another test forks meanwhile holds
        // the copy's write descriptor until it execs (ETXTBSY).
        let child = eventually(PATIENCE, &format!("{program} not to be busy"), || match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => None,
            spawned => Some(spawned),
        })
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        live.push((Pid::from_raw(child.id() as i32), dir.0.clone()));
        drop(live);
        Panzer {
            pid: Pid::from_raw(child.id() as i32),
            child,
            dir,
            log,
            command: format!("panzer {}", args.join(" ")),
            status: None,
        }
    }

    /// Everything logged so far (panzer's and the workers' stderr/stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log, read as it grows, each line stamped with when it was read.
    pub fn watch_log(&self) -> LogWatch {
        LogWatch::open(&self.log)
    }

    /// Waits for a log line containing `needle`; returns the line.
    pub fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_lines(needle, 1).pop().unwrap()
    }

    /// Waits until `count` log lines contain `needle`; returns them.
    pub fn wait_for_lines(&self, needle: &str, count: usize) -> Vec<String> {
        eventually(PATIENCE, &format!("{count} log line(s) with {needle:?}\n{}", self.describe()), || {
            let lines: Vec<String> =
                self.log().lines().filter(|l| l.contains(needle)).map(String::from).collect();
            (lines.len() >= count).then_some(lines)
        })
    }

    /// The port of the `index`th `listening on` line.
    pub fn port(&self, index: usize) -> u16 {
        let lines = self.wait_for_lines("listening on ", index + 1);
        let addr = lines[index].rsplit("listening on ").next().unwrap().trim();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Waits until generation `k` reported ready.
    pub fn wait_ready(&self, generation: u32) {
        self.wait_for_line(&format!("generation {generation} ready"));
    }

    pub fn signal(&self, signal: Signal) {
        signal::kill(self.pid, signal).unwrap();
    }

    /// main's exit status, if it has exited (without waiting).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.status.or_else(|| exit_status(self.pid))
    }

    /// Waits for main to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let describe = self.describe();
        let pid = self.pid;
        let status = eventually(limit, &format!("panzer to exit\n{describe}"), || exit_status(pid));
        self.status = Some(status);
        status
    }

    /// Pids of every process below main (monitors, workers, their children).
    pub fn descendants(&self) -> Vec<Pid> {
        descendants_of(self.pid)
    }

    /// Pids of the monitors (main's children running `__monitor`).
    pub fn monitors(&self) -> Vec<Pid> {
        let table = process_table();
        table
            .iter()
            .filter(|(_, p)| p.ppid == self.pid && p.cmdline.contains("__monitor"))
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn describe(&self) -> String {
        format!("command: {}\n--- log ---\n{}--- end of log ---", self.command, self.log())
    }
}

impl Drop for Panzer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        // main is not reaped before this point (see `exit_status`), so its
        // pid and group id still name this test's processes, never a
        // recycled one of another test.
        kill_tree(self.pid);
        let child = &mut self.child;
        let _ = eventually(PATIENCE, "panzer to die after SIGKILL", || child.try_wait().ok().flatten());
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|(pid, _)| *pid != self.pid);
    }
}

/// The panzers running now (main's pid, scratch directory).
static LIVE: Mutex<Vec<(Pid, PathBuf)>> = Mutex::new(Vec::new());

/// `SIGKILL` for `root`, every process below it, and their process groups
/// (generations first, by group: that also reaches a worker forked after the
/// list was taken, which would otherwise outlive both its SIGKILLed monitor
/// and main). Never this process's own group.
pub fn kill_tree(root: Pid) {
    let table = process_table();
    let left = descendants_of(root);
    let own_group = nix::unistd::getpgrp();
    let groups: HashSet<Pid> =
        left.iter().filter_map(|p| table.get(p)).map(|p| p.pgid).filter(|g| *g != own_group).collect();
    for group in groups {
        let _ = signal::killpg(group, Signal::SIGKILL);
    }
    if root != own_group {
        let _ = signal::killpg(root, Signal::SIGKILL);
    }
    let _ = signal::kill(root, Signal::SIGKILL);
    for pid in left {
        let _ = signal::kill(pid, Signal::SIGKILL);
    }
}

/// Kills every panzer still running and removes its scratch directory: for
/// a signal handler of a program about to exit (the bench's Ctrl-C). The
/// guards' own drops never run after it.
pub fn kill_every_panzer() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (pid, dir) in live.iter() {
        kill_tree(*pid);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// main's exit status once it has exited, without reaping it: a zombie's
/// pid cannot be reused, so the guard can still signal its group safely.
fn exit_status(pid: Pid) -> Option<ExitStatus> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    use std::os::unix::process::ExitStatusExt;
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(ExitStatus::from_raw(signal as i32)),
        Ok(_) => None,
        // A signal nix has no name for (a realtime one) killed it: the
        // zombie's wait status is the last field of its /proc stat.
        Err(_) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            let status = (fields.first() == Some(&"Z")).then(|| fields.last()?.trim().parse().ok())??;
            Some(ExitStatus::from_raw(status))
        }
    }
}

pub struct ProcInfo {
    pub ppid: Pid,
    pub pgid: Pid,
    pub cmdline: String,
}

/// Every process on the machine: pid → parent, group, command line.
pub fn process_table() -> HashMap<Pid, ProcInfo> {
    let mut table = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.len() < 3 || fields[0] == "Z" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        table.insert(
            Pid::from_raw(pid),
            ProcInfo {
                ppid: Pid::from_raw(fields[1].parse().unwrap_or(0)),
                pgid: Pid::from_raw(fields[2].parse().unwrap_or(0)),
                cmdline,
            },
        );
    }
    table
}

/// Every live (non-zombie) process below `root`.
pub fn descendants_of(root: Pid) -> Vec<Pid> {
    let table = process_table();
    let mut found: HashSet<Pid> = HashSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, info) in &table {
            if info.ppid == parent && found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found.into_iter().collect()
}

/// `pids` without the generations' keepers (`panzer __keeper`, one per
/// generation, in its process group) and without any that ended since
/// `pids` was read: a keeper outlives its monitor by a moment, and one that
/// exits between the two reads of the process table is gone, not a stranger.
pub fn without_keepers(pids: Vec<Pid>) -> Vec<Pid> {
    let table = process_table();
    pids.into_iter().filter(|p| table.get(p).is_some_and(|p| !p.cmdline.contains("__keeper"))).collect()
}

/// The live children of `parent`.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    process_table().into_iter().filter(|(_, p)| p.ppid == parent).map(|(pid, _)| pid).collect()
}

/// Whether `pid` is alive and not a zombie.
pub fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').is_some_and(|i| !stat[i + 2..].starts_with('Z')),
        Err(_) => false,
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    /// The value of `key=` in the one-line body (`pid=12 generation=1 worker=0`).
    pub fn field(&self, key: &str) -> String {
        self.find(key).unwrap_or_else(|| panic!("no {key}= in body {:?}", self.body))
    }

    /// The value of `key=` in the body, if there is one.
    pub fn find(&self, key: &str) -> Option<String> {
        self.body.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(String::from))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.field("pid").parse().unwrap())
    }

    /// Whether the server said `Connection: close`.
    pub fn closes(&self) -> bool {
        header(&self.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A connection to 127.0.0.1:`port`; connecting, reads and writes time out after
/// [`PATIENCE`], so a hung server fails a test instead of hanging it.
pub fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET path` on a fresh connection to 127.0.0.1:`port`, `Connection: close`.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    request(connect(port)?, path)
}

/// `GET path` with `Connection: close` on an open connection (TCP or unix).
pub fn request<S: Read + Write>(mut stream: S, path: &str) -> std::io::Result<Response> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    read_response(&mut stream)
}

/// Reads one response (with Content-Length) from `stream`. An end of stream
/// is an `UnexpectedEof` error that says whether any byte had come.
pub fn read_response(stream: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let mut head_end = None;
    loop {
        // The server sends nothing unasked, so a read never takes bytes of
        // a later response.
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                let what = if buf.is_empty() { "EOF before any response byte" } else { "EOF mid-response" };
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
        let Some(end) = head_end else { continue };
        let headers = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = header(&headers, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if buf.len() < end + length {
            continue;
        }
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {headers:?}")))?;
        let body = String::from_utf8_lossy(&buf[end..end + length]).into_owned();
        return Ok(Response { status, headers, body });
    }
}

/// The value of header `name` (any case) in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A request in flight: a kept-alive connection whose first answer proved a
/// worker accepted it, now waiting for `GET /slow?ms=MS`. Returns the
/// connection (read the slow answer with [`read_response`]) and the pid
/// that serves it.
pub fn slow_request_in_flight(port: u16, ms: u32) -> (TcpStream, Pid) {
    let mut stream = connect(port).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let server = read_response(&mut stream).unwrap().pid();
    write!(stream, "GET /slow?ms={ms} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    (stream, server)
}

/// Sends requests until `n` distinct worker pids have answered.
pub fn distinct_pids(port: u16, n: usize) -> HashSet<Pid> {
    let mut seen = HashSet::new();
    eventually(PATIENCE, &format!("{n} distinct workers to answer"), || {
        if let Ok(r) = get(port, "/") {
            seen.insert(r.pid());
        }
        (seen.len() >= n).then(|| seen.clone())
    })
}

/// The environment of `pid` as a map.
pub fn environ(pid: Pid) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The fd numbers `pid` has open, sorted.
pub fn open_fds(pid: Pid) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

/// What fd `fd` of `pid` points at (`socket:[123]`, `/dev/null`, …).
pub fn fd_target(pid: Pid, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// CPU ticks (utime + stime) that `pid` has used.
pub fn cpu_ticks(pid: Pid) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

/// A server script whose content a test can swap, as a deploy would.
pub struct Deploy(pub PathBuf);

impl Deploy {
    pub fn new(dir: &TestDir) -> Deploy {
        let deploy = Deploy(dir.join("server.sh"));
        deploy.set("");
        deploy
    }

    /// Installs a server that runs the `server` fixture with `env` (e.g. `FAIL_ON_START=1`).
    pub fn set(&self, env: &str) {
        self.set_fixture("server", env);
    }

    /// Installs a server that runs the fixture `fixture` with `env`.
    pub fn set_fixture(&self, fixture: &str, env: &str) {
        let tmp = self.0.with_extension("new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{env} exec {} \"$@\"\n", example(fixture))).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

/// What `panzerctl` printed and how it exited.
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `panzerctl ARGS…` to completion (it bounds its own waits, except
/// `reload`, which main answers by `--startup-timeout`).
pub fn panzerctl(args: &[&str]) -> CtlOutput {
    panzerctl_as(None, args, &[])
}

impl Panzer {
    /// Runs `panzerctl ARGS…` in this panzer's environment (its
    /// `XDG_RUNTIME_DIR`, where the default control socket lives).
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        panzerctl_as(None, args, &[("XDG_RUNTIME_DIR", self.dir.0.to_str().unwrap())])
    }

    /// `panzerctl status --json`'s status object.
    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["--json", "status"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        reply["status"].clone()
    }

    /// Runs `panzerctl --pid-file {dir}/panzer.pid ARGS…`, for a panzer
    /// started with `--pid-file {dir}/panzer.pid`, once that file exists.
    pub fn ctl_by_pid_file(&self, args: &[&str]) -> CtlOutput {
        let pid_file = self.pid_file();
        let mut all = vec!["--pid-file", &pid_file];
        all.extend_from_slice(args);
        self.ctl(&all)
    }

    /// Starts `panzerctl --pid-file {dir}/panzer.pid ARGS…` (see
    /// [`Panzer::ctl_by_pid_file`]) and returns without waiting for it.
    pub fn ctl_start(&self, args: &[&str]) -> CtlRun {
        let child = Command::new(env!("CARGO_BIN_EXE_panzerctl"))
            .arg("--pid-file")
            .arg(self.pid_file())
            .args(args)
            .env_remove("PANZER_CONTROL")
            .env_remove("PANZER_PID_FILE")
            .env("XDG_RUNTIME_DIR", &self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run panzerctl");
        CtlRun { child, what: format!("panzerctl {}", args.join(" ")) }
    }

    fn pid_file(&self) -> String {
        let pid_file = self.dir.join("panzer.pid");
        eventually(PATIENCE, "the pid file", || pid_file.exists().then_some(()));
        pid_file.to_string_lossy().into_owned()
    }
}

/// A `panzerctl` started with [`Panzer::ctl_start`]; killed on drop.
pub struct CtlRun {
    child: Child,
    what: String,
}

impl CtlRun {
    /// Whether it has exited.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What it printed and how it exited, or `None` if it is still running
    /// after `limit` (it is killed then).
    pub fn wait(mut self, limit: Duration) -> Option<CtlOutput> {
        let child = &mut self.child;
        let status = within(limit, || child.try_wait().ok().flatten())?;
        fn read(pipe: Option<impl Read>) -> String {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        }
        let stdout = read(self.child.stdout.take());
        let stderr = read(self.child.stderr.take());
        Some(CtlOutput { code: status.code().unwrap_or(-1), stdout, stderr })
    }

    /// [`CtlRun::wait`], panicking after `limit`.
    pub fn answer(self, limit: Duration) -> CtlOutput {
        let what = self.what.clone();
        self.wait(limit).unwrap_or_else(|| panic!("`{what}` got no answer within {limit:?}"))
    }
}

impl Drop for CtlRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let child = &mut self.child;
        let _ = within(PATIENCE, || child.try_wait().ok().flatten());
    }
}

/// Runs `panzerctl` as another uid (through `setpriv`), or as ourselves.
pub fn panzerctl_as(uid: Option<u32>, args: &[&str], env: &[(&str, &str)]) -> CtlOutput {
    let exe = env!("CARGO_BIN_EXE_panzerctl");
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), exe.into()]);
            c
        }
        None => Command::new(exe),
    };
    let output = command
        .args(args)
        .env_remove("PANZER_CONTROL")
        .env_remove("PANZER_PID_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run panzerctl");
    CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A log file read as it grows, each line stamped with the `Instant` it was
/// read at: a line is seen at most one poll period (250 µs) plus a read
/// after it was written, which is what the bench's wall times rest on.
pub struct LogWatch {
    path: PathBuf,
    file: std::fs::File,
    partial: Vec<u8>,
    /// Every complete line read so far, with when it was read.
    pub lines: Vec<(Instant, String)>,
}

impl LogWatch {
    /// How often the file is read while waiting for a line.
    const POLL: Duration = Duration::from_micros(250);

    pub fn open(path: &Path) -> LogWatch {
        LogWatch {
            path: path.to_owned(),
            file: std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            partial: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Reads whatever was appended since the last call.
    pub fn poll(&mut self) {
        let now = Instant::now();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = self.file.read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.partial.extend_from_slice(&chunk[..n]);
        }
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            self.lines.push((now, text));
        }
    }

    /// Waits for a line at index ≥ `from` that contains `needle`.
    pub fn wait(&mut self, from: usize, needle: &str, limit: Duration) -> Result<(Instant, String), String> {
        self.wait_any(from, &[needle], limit)
    }

    /// Waits for a line at index ≥ `from` that contains any of `needles`.
    pub fn wait_any(
        &mut self,
        from: usize,
        needles: &[&str],
        limit: Duration,
    ) -> Result<(Instant, String), String> {
        let deadline = Instant::now() + limit;
        let mut searched = from;
        loop {
            self.poll();
            if let Some(found) = self.lines[searched.min(self.lines.len())..]
                .iter()
                .find(|(_, l)| needles.iter().any(|n| l.contains(n)))
            {
                return Ok(found.clone());
            }
            searched = searched.max(self.lines.len());
            if Instant::now() > deadline {
                return Err(format!(
                    "no log line with {needles:?} after {limit:?}; whole log kept in {}; last \
                     lines:\n{}",
                    self.keep(),
                    self.tail(15)
                ));
            }
            std::thread::park_timeout(Self::POLL);
        }
    }

    /// Copies the log out of the scratch directory; returns where to.
    pub fn keep(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let kept = std::env::temp_dir().join(format!(
            "panzer-failed-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::copy(&self.path, &kept) {
            Ok(_) => kept.display().to_string(),
            Err(e) => format!("nowhere ({e})"),
        }
    }

    /// The last `n` lines, indented.
    pub fn tail(&mut self, n: usize) -> String {
        self.poll();
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].iter().map(|(_, l)| format!("    {l}\n")).collect()
    }
}

/// Clients that each send `GET path` on fresh connections, back to back,
/// until stopped (at most `MAX` requests each, and never past `LIMIT`).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Answers by generation.
    generations: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub const MAX: u32 = 5_000;
    pub const LIMIT: Duration = Duration::from_secs(120);

    pub fn start(port: u16, clients: usize, path: &'static str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let generations = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, generations) = (stop.clone(), ok.clone(), generations.clone());
                std::thread::spawn(move || {
                    let until = Instant::now() + Load::LIMIT;
                    let mut failures = Vec::new();
                    for _ in 0..Load::MAX {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > until {
                            break;
                        }
                        match get(port, path) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let generation = r.find("generation").unwrap_or_default();
                                *generations.lock().unwrap().entry(generation).or_insert(0) += 1;
                            }
                            Ok(r) => failures.push(format!("status {}", r.status)),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, generations, clients }
    }

    /// Waits until `n` more requests were answered.
    pub fn wait_for(&self, n: u32) {
        let target = self.ok.load(std::sync::atomic::Ordering::Relaxed) + n;
        eventually(PATIENCE, &format!("{n} more answers"), || {
            (self.ok.load(std::sync::atomic::Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the clients; returns every failure they saw, and how many
    /// answers each generation gave.
    pub fn finish(self) -> (Vec<String>, std::collections::BTreeMap<String, u32>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let failures = self.clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
        let generations = self.generations.lock().unwrap().clone();
        (failures, generations)
    }
}

/// panzer serving `deploy` with `count` workers, `--ready notify`, a pid
/// file for `panzerctl`, and `extra` options.
pub fn start_deploy(deploy: &Deploy, count: &str, extra: &[&str]) -> Panzer {
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--count",
        count,
        "--ready",
        "notify",
        "--pid-file",
        "{dir}/panzer.pid",
    ];
    args.extend_from_slice(extra);
    args.push(deploy.path());
    Panzer::start(&args)
}

/// A worker script that waits for a file before it runs the `server`
/// fixture: under `--ready notify` its generation stays `starting`, with no
/// worker ready, until [`Gate::open`].
pub struct Gate {
    dir: TestDir,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = TestDir::new("gate");
        let script = dir.join("gated.sh");
        let file = dir.join("open");
        let text = format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.02; done\nexec {} \"$@\"\n",
            file.display(),
            example("server")
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Gate { dir }
    }

    /// The script to run as COMMAND.
    pub fn path(&self) -> String {
        self.dir.join("gated.sh").to_string_lossy().into_owned()
    }

    /// Lets every worker, waiting or yet to start, run the server.
    pub fn open(&self) {
        std::fs::write(self.dir.join("open"), "").unwrap();
    }
}

impl Panzer {
    /// The port of the first `admin endpoint on` line (`--admin-bind 127.0.0.1:0`).
    pub fn admin_port(&self) -> u16 {
        let line = self.wait_for_line("admin endpoint on ");
        let addr = line.rsplit("admin endpoint on ").next().unwrap().trim();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}
