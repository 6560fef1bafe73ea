//! Processes of a generation whose monitor is gone. main is child
//! subreaper, so the workers are main's own children now, and so are the
//! processes they started once the workers are gone. Workers got their
//! parent-death signal (the drain signal) when the monitor died; main
//! signals the whole group too unless the monitor drained it itself, since a
//! wrapper script's server never had a parent-death signal, and kills what
//! is left at the deadline.
//!
//! They are signalled through their process group (the dead monitor's pid),
//! which also reaches processes that are not main's children (a wrapper
//! script's server whose wrapper still runs), but only while at least one
//! live member is main's child: main does not reap it in between, so the
//! group, and its id, cannot have been reused. An empty group is never
//! signalled: its id may have gone to a new monitor.
//!
//! A generation's keeper (`monitor::keeper`) is in the group too, and
//! becomes main's child when its monitor dies: it pins the group like any
//! member, but is not reported as a leftover. It exits once it is the last
//! of its group, so it never keeps a group here longer than the rest.
//!
//! Membership is read from main's own children list
//! (`/proc/self/task/*/children`), never from a walk of the whole host's
//! `/proc`, and only on `SIGCHLD`, at a deadline, or for `status`.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::sys;

/// `9958, 9960`: pids as a log line names them.
fn plain(pids: &[Pid]) -> String {
    pids.iter().map(Pid::to_string).collect::<Vec<_>>().join(", ")
}

/// What is left of one generation, as an upgrade hands it over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedGroup {
    pgid: i32,
    #[serde(with = "super::policy::clock")]
    kill_at: Instant,
}

/// What is left of one generation.
struct Group {
    pgid: Pid,
    /// When the rest gets `SIGKILL`.
    kill_at: Instant,
}

pub(crate) struct Orphans {
    groups: Vec<Group>,
    /// `--drain-signal`: what the rest of a dead monitor's group gets.
    drain_signal: Signal,
}

impl Orphans {
    pub(crate) fn new(drain_signal: Signal) -> Orphans {
        Orphans { groups: Vec::new(), drain_signal }
    }

    /// Takes over what is left of group `pgid`, if anything: sends it the
    /// drain signal when `terminate`, and `SIGKILL` at `kill_at`. `exclude`:
    /// live monitors, one of which may have been given a pid equal to `pgid`
    /// once that group was empty.
    /// Called while the monitor is an unreaped zombie, which pins its group
    /// id: the group is signalled even if no member is main's child yet (a
    /// wrapper's server is re-parented only once the wrapper has exited).
    pub(crate) fn adopt(&mut self, pgid: Pid, terminate: bool, kill_at: Instant, exclude: &[Pid]) {
        if terminate {
            sys::signal_group(pgid, self.drain_signal);
        }
        let members = without_keepers(members(pgid, exclude));
        if !members.is_empty() {
            let pids = plain(&members);
            log::info!(group = pgid.as_raw(); "main takes over pids {pids} of group {pgid} until they exit");
        }
        self.groups.push(Group { pgid, kill_at });
    }

    /// `SIGKILL` for every orphan, now.
    pub(crate) fn kill_all(&mut self, exclude: &[Pid]) {
        let now = Instant::now();
        for group in &mut self.groups {
            group.kill_at = now;
        }
        self.on_deadline(now, exclude);
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.groups.iter().map(|g| g.kill_at).min()
    }

    /// Kills overdue groups.
    pub(crate) fn on_deadline(&mut self, now: Instant, exclude: &[Pid]) {
        self.groups.retain(|group| {
            if group.kill_at > now {
                return true;
            }
            let members = members(group.pgid, exclude);
            if !members.is_empty() {
                let left = without_keepers(members);
                if !left.is_empty() {
                    log::warn!(
                        group = group.pgid.as_raw();
                        "group {} (pids {}) still running after the graceful timeout: SIGKILL",
                        group.pgid,
                        plain(&left)
                    );
                }
                sys::signal_group(group.pgid, Signal::SIGKILL);
            }
            false
        });
    }

    /// Forgets groups with no member left (after a `SIGCHLD`).
    pub(crate) fn forget_empty(&mut self, exclude: &[Pid]) {
        self.groups.retain(|group| !members(group.pgid, exclude).is_empty());
    }

    /// Every live orphan but the keepers.
    pub(crate) fn pids(&self, exclude: &[Pid]) -> Vec<Pid> {
        if self.groups.is_empty() {
            return Vec::new();
        }
        // One look at main's children for all the groups: this runs for every status.
        without_keepers(
            sys::own_children()
                .into_iter()
                .filter(|(pid, group)| self.groups.iter().any(|g| g.pgid == *group) && !exclude.contains(pid))
                .map(|(pid, _)| pid)
                .collect(),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The groups the next image of main takes over.
    pub(crate) fn save(&self) -> Vec<SavedGroup> {
        self.groups.iter().map(|g| SavedGroup { pgid: g.pgid.as_raw(), kill_at: g.kill_at }).collect()
    }

    /// Takes over the groups a previous image of main saved.
    pub(crate) fn restore(&mut self, saved: &[SavedGroup]) {
        self.groups.extend(saved.iter().map(|g| Group { pgid: Pid::from_raw(g.pgid), kill_at: g.kill_at }));
    }
}

fn members(pgid: Pid, exclude: &[Pid]) -> Vec<Pid> {
    sys::own_children_in_group(pgid).into_iter().filter(|p| !exclude.contains(p)).collect()
}

/// `pids` (main's unreaped children, so their pids are theirs) without the
/// generations' keepers: `panzer __keeper …`.
fn without_keepers(pids: Vec<Pid>) -> Vec<Pid> {
    let is_keeper = |pid: &Pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline.split(|&b| b == 0).nth(1) == Some(crate::monitor::keeper::COMMAND.as_bytes())
        })
    };
    pids.into_iter().filter(|pid| !is_keeper(pid)).collect()
}
