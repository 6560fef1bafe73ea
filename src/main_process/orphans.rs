//! Processes of a generation whose monitor is gone. main is child
//! subreaper, so the workers are main's own children now, and so are the
//! processes they started once the workers are gone.
//!
//! They are signalled through their process group (the dead monitor's pid),
//! which also reaches processes that are not main's children (a wrapper
//! script's server whose wrapper still runs), but only while at least one
//! live member is main's child: main does not reap it in between, so the
//! group, and its id, cannot have been reused. An empty group is never
//! signalled: its id may have gone to a new monitor.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::sys;

/// What to do with what a monitor left behind.
pub enum Left {
    /// Its workers serve until [`Orphans::release`].
    Serving,
    /// `SIGTERM` now, `SIGKILL` after this grace.
    Terminate(Duration),
    /// Already told to stop (the monitor drained them): `SIGKILL` at this time.
    Terminated(Instant),
}

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
    /// Takes over what is left of group `pgid`, if anything. `exclude`:
    /// live monitors, one of which may have been given a pid equal to `pgid`
    /// once that group was empty.
    pub fn adopt(&mut self, pgid: Pid, now: Left, exclude: &[Pid]) {
        let members = members(pgid, exclude);
        if members.is_empty() {
            return;
        }
        log::info!("main takes over pids {members:?} of group {pgid}");
        let mut group = Group { pgid, terminated: false, kill_at: None };
        match now {
            Left::Serving => {}
            Left::Terminate(grace) => terminate_group(&mut group, grace, exclude),
            Left::Terminated(kill_at) => {
                group.terminated = true;
                group.kill_at = Some(kill_at);
            }
        }
        self.groups.push(group);
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
                if !members.is_empty() {
                    log::warn!(
                        "group {} (pids {members:?}) still running after the graceful timeout: SIGKILL",
                        group.pgid
                    );
                    sys::signal_group(group.pgid, Signal::SIGKILL);
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
    if !members(group.pgid, exclude).is_empty() {
        sys::signal_group(group.pgid, Signal::SIGTERM);
    }
    group.terminated = true;
    group.kill_at = Some(Instant::now() + grace);
}

fn members(pgid: Pid, exclude: &[Pid]) -> Vec<Pid> {
    sys::own_children_in_group(pgid).into_iter().filter(|p| !exclude.contains(p)).collect()
}
