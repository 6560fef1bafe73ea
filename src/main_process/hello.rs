//! Library mode: is COMMAND built on `panzer::run` at all? `panzer
//! --preload` execs COMMAND as each generation's monitor, and an app built
//! on `panzer::run` says [`Report::Hello`] before its own `main` runs
//! (`sys::hello`). A monitor main has heard nothing from within
//! [`HELLO_WITHIN`], or that exits without a word, is some other program:
//! its generation fails at once with a reason that says so, instead of
//! after the whole startup timeout, and the program is ended.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::policy::Event;
use super::Main;
use crate::protocol::Report;
use crate::sys;

/// How long a library-mode monitor has to say its first word.
pub(super) const HELLO_WITHIN: Duration = Duration::from_secs(2);

impl Main {
    /// When the first library-mode monitor not heard from yet gives up.
    pub(super) fn hello_deadline(&self) -> Option<Instant> {
        self.monitors.values().filter_map(|m| m.hello_by).min()
    }

    /// Fails the generation of each monitor still silent at its deadline
    /// and ends the program with everything it started.
    pub(super) fn on_hello_deadline(&mut self, now: Instant) {
        let silent: Vec<u32> = self
            .monitors
            .iter()
            .filter(|(_, m)| m.hello_by.is_some_and(|at| at <= now))
            .map(|(&g, _)| g)
            .collect();
        for generation in silent {
            let Some(monitor) = self.monitors.get_mut(&generation) else { continue };
            monitor.hello_by = None;
            let pid = monitor.pid;
            let why = format!("it did not speak the monitor protocol within {}s", HELLO_WITHIN.as_secs());
            self.not_built_on_run(generation, &why);
            // Our unreaped child leads its own group: the ids are its own.
            sys::signal_group(pid, Signal::SIGKILL);
        }
    }

    /// The monitor of `generation` exited (`how`); said before its exit
    /// is, if it never spoke.
    pub(super) fn on_exit_unheard(&mut self, generation: u32, how: &sys::ChildExit) {
        let Some(monitor) = self.monitors.get_mut(&generation) else { return };
        if monitor.hello_by.take().is_some() {
            let how = match how {
                sys::ChildExit::Exited(_) => how.to_string(),
                sys::ChildExit::Killed { .. } => format!("was {how}"),
            };
            self.not_built_on_run(generation, &format!("it {how} without speaking the monitor protocol"));
        }
    }

    fn not_built_on_run(&mut self, generation: u32, why: &str) {
        let command = self.config.command.to_string_lossy();
        let reason = format!("{command} is not built on panzer::run (library mode): {why}");
        self.dispatch(Event::Report { generation, report: Report::GenerationFailed { reason } });
    }
}
