//! The process guard: [`Panzer`] is a running `panzer` and everything it
//! started. It runs in a process group of its own and logs to a file in its
//! own scratch directory; on drop, even on panic, it kills main's group,
//! every process below main and their groups, then waits for main. main is
//! left unreaped until then, so its pid and group id can never name a
//! recycled process of another test.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::{descendants_of, eventually, process_table, TestDir, PATIENCE};

/// A running `panzer` and everything it started.
pub struct Panzer {
    child: Child,
    pub pid: Pid,
    pub dir: TestDir,
    pub(super) log: PathBuf,
    command: String,
    status: Option<ExitStatus>,
}

impl Panzer {
    /// Starts `program ARGS…` with `env` added to the environment, its
    /// output on `out` or else on the log file; `{dir}` in an argument
    /// stands for this panzer's own test directory. `PanzerCommand::start` is
    /// the way in.
    pub(super) fn spawn(
        program: &str,
        args: &[String],
        env: &[(String, String)],
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
            .envs(env.iter().map(|(k, v)| (k, v)))
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

    pub(super) fn describe(&self) -> String {
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
#[allow(dead_code)] // the reload bench's Ctrl-C
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
