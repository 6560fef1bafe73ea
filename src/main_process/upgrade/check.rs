//! The check of the new binary, both sides of it. Before main becomes the
//! binary now at its path, it runs that binary as `panzer __upgrade-check 3`
//! with the state it would hand over at fd 3 ([`Main::start_check`]), and
//! reads the verdict when the child exits ([`Main::on_check_exit`]). In the
//! child, [`check`] reads the state and the command line in it, as the
//! resumed main would: a binary that cannot (not panzer, a newer state
//! format than it knows, a flag it lacks) fails the upgrade before anything
//! is handed over, and the old image goes on running.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::handover::{read_state, FORMAT};
use super::CHECK_COMMAND;
use crate::error::Error;
use crate::main_process::policy::Event;
use crate::main_process::Main;
use crate::sys::{self, spawn::ExecPlan};
use crate::worker;

/// The fd at which the check child finds the state.
const CHECK_FD: RawFd = 3;

/// A check child under way.
pub(in crate::main_process) struct Check {
    pid: Pid,
    /// Its stdout and stderr (non-blocking read end of a pipe).
    output: OwnedFd,
}

impl Main {
    /// `Effect::CheckUpgrade`: starts `panzer __upgrade-check` from the
    /// binary now at main's path, with the state at fd 3.
    pub(in crate::main_process) fn start_check(&mut self) -> Option<Event> {
        let exe = self.exe.display().to_string();
        log::info!("upgrade: checking the binary at {exe}");
        match self.spawn_check(&exe) {
            Ok(check) => {
                self.check = Some(check);
                None
            }
            Err(e) => Some(Event::UpgradeChecked(Err(e.report()))),
        }
    }

    fn spawn_check(&self, exe: &str) -> Result<Check, Error> {
        let memfd = self.seal_state(&[])?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .and_then(|(read, write)| {
                let flags = nix::fcntl::OFlag::O_NONBLOCK;
                nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(flags))?;
                Ok((read, write))
            })
            .map_err(|e| Error::os(format!("cannot start the check of {exe}"), e))?;
        let argv = ["panzer".into(), OsString::from(CHECK_COMMAND), CHECK_FD.to_string().into()];
        let fds = [memfd.as_raw_fd()];
        let out = write.as_raw_fd();
        let plan = ExecPlan::new(self.exe.as_os_str(), &argv, worker::inherited_env());
        let pid = plan
            .map_err(sys::spawn::SpawnError::Exec)
            .and_then(|plan| {
                plan.with_fds(&fds)
                    .with_stdout_stderr(out, out)
                    .with_new_process_group()
                    .with_parent_death_signal(Signal::SIGKILL)
                    .spawn()
            })
            .map_err(|e| Error::Command {
                command: format!("the new binary {exe}"),
                reason: e.to_string(),
            })?;
        Ok(Check { pid, output: read })
    }

    /// `Effect::AbortUpgradeCheck`.
    pub(in crate::main_process) fn abort_check(&mut self) {
        if let Some(check) = self.check.take() {
            // Our unreaped child leads its own group: neither id can have
            // been reused. The group takes whatever it started along.
            sys::signal_group(check.pid, Signal::SIGKILL);
        }
    }

    /// The check child `pid` has exited (not reaped yet): reaps it and
    /// acts on its verdict. Reaped first, since a passed check leads to the
    /// exec, and the next image would not know this zombie.
    pub(in crate::main_process) fn on_check_exit(&mut self, pid: Pid, exit: sys::ChildExit) -> bool {
        if !self.check.as_ref().is_some_and(|c| c.pid == pid) {
            return false;
        }
        let Some(check) = self.check.take() else { return false };
        // Anything it left running in its group (not reaped yet, so the
        // group id is still its own) ends with it.
        sys::signal_group(check.pid, Signal::SIGKILL);
        sys::reap(check.pid);
        let mut output = Vec::new();
        let _ = std::fs::File::from(check.output).take(64 * 1024).read_to_end(&mut output);
        let output = String::from_utf8_lossy(&output);
        let last = output.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
        let last: String = last.chars().take(300).collect();
        let exe = self.exe.display();
        let how = match exit {
            sys::ChildExit::Killed { .. } => format!("was {exit}"),
            sys::ChildExit::Exited(_) => exit.to_string(),
        };
        let result = match exit {
            sys::ChildExit::Exited(0) => {
                let first = output.lines().next().unwrap_or("").trim();
                log::info!("upgrade: {exe} passed its check ({first})");
                Ok(())
            }
            _ if last.is_empty() => Err(format!("the new binary {exe} failed its check: it {how}")),
            _ => Err(format!("the new binary {exe} failed its check: it {how} ({last})")),
        };
        self.dispatch(Event::UpgradeChecked(result));
        true
    }
}

/// `panzer __upgrade-check FD`: what the new binary runs before main execs
/// it. Reads the state at `fd` and the command line in it; prints this
/// version on success. Returns the exit status.
pub fn check(fd: &OsStr) -> i32 {
    match read_state(fd).and_then(|h| h.config().map(|_| h)) {
        Ok(handover) => {
            println!(
                "panzer {} (reads state format {FORMAT}, given {})",
                crate::control::version(),
                handover.format
            );
            0
        }
        Err(e) => {
            eprintln!("panzer {}: {}", crate::control::version(), e.report());
            1
        }
    }
}
