//! Stopping: a graceful stop first waits out `--stop-delay` while a
//! generation serves (not ready), then stops listening and drains every
//! generation within the graceful timeout, and kills what is left a
//! backstop later; a stop now kills at once. What was asked for and not
//! done yet (a reload, an upgrade) is cancelled.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Cause, Effect, Note, Policy, Say, State, DRAIN_BACKSTOP};
use crate::control::server::ClientId;
use crate::control::Reply;
use crate::units::format_duration;

/// How a stop was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Stop {
    Graceful,
    Now,
}

impl Policy {
    /// `SIGTERM`, `SIGINT`, a control `stop` (graceful), or `SIGQUIT`, a
    /// second `SIGINT` (now). A graceful stop first waits out
    /// `--stop-delay` while a generation serves (not ready: systemd hears
    /// `STOPPING=1` at once); a second graceful stop skips the rest of it.
    pub(super) fn stop(&mut self, now: Instant, how: Stop, out: &mut Vec<Effect>) {
        let already = self.state.stopping;
        if already == Some(Stop::Now) {
            return;
        }
        if already == Some(Stop::Graceful) && how == Stop::Graceful {
            if self.in_stop_delay() {
                out.info("asked again: the rest of the stop delay is skipped");
                self.begin_drain(now, out);
            }
            return;
        }
        let drain_began = already.is_some() && !self.in_stop_delay();
        self.state.stopping = Some(how);
        if already.is_none() {
            out.push(Effect::Systemd(Note::Stopping));
            let delay = self.settings.stop_delay;
            let lame_duck = how == Stop::Graceful && !delay.is_zero() && self.any(|s| s == State::Ready);
            // What was asked for and not done yet is cancelled; a reload
            // under way stops at once, the generation it would replace
            // serves through the delay.
            let mut cancelled: Vec<ClientId> = self.state.queued_reload.take().unwrap_or_default();
            self.reread_queued = false;
            let numbers: Vec<(u32, State)> =
                self.state.generations.iter().map(|g| (g.number, g.state)).collect();
            for (number, state) in numbers {
                match state {
                    State::Delayed(_) => self.remove(number),
                    State::Starting => {
                        if let Some(Cause::Reload(clients)) =
                            self.find(number).map(|g| std::mem::replace(&mut g.cause, Cause::Replacement))
                        {
                            cancelled.extend(clients);
                        }
                        if lame_duck {
                            self.restore_old(number, out);
                            let grace = self.settings.graceful_timeout;
                            self.drain(now, number, State::Draining, grace, out);
                        }
                    }
                    State::Ready | State::Draining | State::Failed => {}
                }
            }
            if !cancelled.is_empty() {
                out.info("a reload waiting to run was cancelled: panzer is stopping");
            }
            if let Some(upgrade) = self.upgrade.take() {
                out.info("the upgrade under way was cancelled: panzer is stopping");
                if upgrade.checking_until.is_some() {
                    out.push(Effect::AbortUpgradeCheck);
                }
                for to in upgrade.clients {
                    out.push(Effect::Reply {
                        to,
                        reply: Reply::error("upgrade cancelled: panzer is stopping"),
                    });
                }
            }
            for to in cancelled {
                out.push(Effect::Reply { to, reply: Reply::error("reload cancelled: panzer is stopping") });
            }
            match how {
                Stop::Graceful if lame_duck => {
                    out.info(format!(
                        "stopping in {} (--stop-delay); serving until then",
                        format_duration(delay)
                    ));
                    self.state.stop_delay_until = Some(now + delay);
                }
                Stop::Graceful => self.begin_drain(now, out),
                Stop::Now => {}
            }
        }
        if how == Stop::Now {
            out.warn("stopping now, killing every worker");
            if !drain_began {
                self.begin_drain(now, out);
            }
            self.kill_everything(out);
        }
    }

    /// A graceful stop drains: nothing new is accepted (the sockets stop
    /// listening), every generation finishes what it has within the
    /// graceful timeout, and what is left then is killed.
    pub(super) fn begin_drain(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.state.stop_delay_until = None;
        // A stop now kills at once: the monitors hear of no grace.
        let grace = match self.state.stopping {
            Some(Stop::Now) => std::time::Duration::ZERO,
            _ => self.settings.graceful_timeout,
        };
        if self.state.stopping == Some(Stop::Graceful) && self.state.exit_code == 0 {
            out.info(format!("stopping gracefully (workers have {} to finish)", format_duration(grace)));
        }
        self.state.stop_deadline = Some(now + grace + DRAIN_BACKSTOP);
        // Before the workers hear of the drain, while they still accept:
        // the backlog is at its shortest, and what it holds is all that is
        // lost (a TCP socket resets it as it stops listening).
        out.push(Effect::Unlisten);
        let numbers: Vec<(u32, State)> = self.state.generations.iter().map(|g| (g.number, g.state)).collect();
        for (number, state) in numbers {
            match state {
                State::Delayed(_) => self.remove(number),
                State::Starting | State::Ready => self.drain(now, number, State::Draining, grace, out),
                State::Draining | State::Failed => {}
            }
        }
    }

    pub(super) fn kill_everything(&mut self, out: &mut Vec<Effect>) {
        for g in &mut self.state.generations {
            g.kill_deadline = None;
            g.act_deadline = None;
            out.push(Effect::KillGroup(g.number));
        }
        out.push(Effect::KillOrphans);
        self.state.stop_deadline = None;
    }
}
