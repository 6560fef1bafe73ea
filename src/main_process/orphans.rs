//! Processes of a generation whose monitor is gone. main is child
//! subreaper, so they are main's own children now: main signals them one by
//! one, by pid, never by process group (the group id of a dead monitor may
//! be reused by a new one). Unreaped, a child's pid cannot be reused either.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::sys;

/// What is left of one generation.
struct Group {
    pgid: Pid,
    /// `SIGTERM` has been sent (or the monitor sent it while draining).
    terminated: bool,
    /// When the rest gets `SIGKILL`; set once terminated.
    kill_at: Option<Instant>,
}

#[derive(Default)]
pub struct Orphans {
    groups: Vec<Group>,
}

impl Orphans {
    /// Takes over what is left of group `pgid`, if anything. `terminate`:
    /// `Some(grace)` sends `SIGTERM` now and `SIGKILL` after `grace`;
    /// `None` leaves them serving until [`Orphans::release`]. `exclude`: live
    /// monitors, which may have been given a recycled pid equal to `pgid`.
    pub fn adopt(&mut self, pgid: Pid, terminate: Option<Duration>, exclude: &[Pid]) {
        let members = members(pgid, exclude);
        if members.is_empty() {
            return;
        }
        log::info!("{} process(es) of group {pgid} now belong to main", members.len());
        let mut group = Group { pgid, terminated: false, kill_at: None };
        if let Some(grace) = terminate {
            terminate_group(&mut group, grace, exclude);
        }
        self.groups.push(group);
    }

    /// Takes over a group whose members were already sent `SIGTERM`.
    pub fn adopt_terminated(&mut self, pgid: Pid, kill_at: Instant, exclude: &[Pid]) {
        if !members(pgid, exclude).is_empty() {
            self.groups.push(Group { pgid, terminated: true, kill_at: Some(kill_at) });
        }
    }

    /// Another generation serves now (or panzer stops): orphans that were
    /// left serving get `SIGTERM`, and `SIGKILL` after `grace`.
    pub fn release(&mut self, grace: Duration, exclude: &[Pid]) {
        for group in self.groups.iter_mut().filter(|g| !g.terminated) {
            terminate_group(group, grace, exclude);
        }
    }

    /// `SIGKILL` for every orphan, now.
    pub fn kill_all(&mut self, exclude: &[Pid]) {
        for group in &mut self.groups {
            group.kill_at = Some(Instant::now());
        }
        self.on_timer(Instant::now(), exclude);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.iter().filter_map(|g| g.kill_at).min()
    }

    /// Kills overdue groups and forgets groups with no member left.
    pub fn on_timer(&mut self, now: Instant, exclude: &[Pid]) {
        self.groups.retain(|group| {
            let members = members(group.pgid, exclude);
            if group.kill_at.is_some_and(|at| at <= now) {
                for pid in &members {
                    log::warn!(
                        "pid {pid} (group {}) still running after the graceful timeout: SIGKILL",
                        group.pgid
                    );
                    sys::signal_process(*pid, Signal::SIGKILL);
                }
                return false;
            }
            !members.is_empty()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

fn terminate_group(group: &mut Group, grace: Duration, exclude: &[Pid]) {
    for pid in members(group.pgid, exclude) {
        sys::signal_process(pid, Signal::SIGTERM);
    }
    group.terminated = true;
    group.kill_at = Some(Instant::now() + grace);
}

fn members(pgid: Pid, exclude: &[Pid]) -> Vec<Pid> {
    sys::own_children_in_group(pgid).into_iter().filter(|p| !exclude.contains(p)).collect()
}
