//! The staged reload: `--reload-strategy rolling:K` replaces the serving
//! generation K workers at a time, `--canary D` first runs one new worker
//! beside it for D. The new generation grows a step at a time, the old one
//! retires as many workers, and never more than K workers above the count
//! are alive; a step that fails gives the old generation its count back.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::clock;
use super::{millis, Effect, Policy, Say, State};
use crate::protocol::Order;
use crate::units::{format_duration, ReloadStrategy};

/// A reload that replaces the serving generation a few workers at a time
/// (`--reload-strategy rolling:K`) or after a canary (`--canary D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Roll {
    /// The generation being replaced (gone if its monitor died meanwhile).
    pub(super) old: Option<u32>,
    pub(super) phase: Phase,
}

/// Where a staged reload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Phase {
    /// One new worker runs; once it is ready, it must stay so until then.
    Canary(#[serde(with = "clock::option")] Option<Instant>),
    /// The new generation runs `count` slots; waiting for all to be ready.
    Surge,
    /// The old generation was scaled down; waiting for its retired
    /// workers to be gone, so no more than K extra are ever alive.
    Retire,
}

impl Policy {
    /// Moves a staged reload on as far as its workers allow: a canary that
    /// stayed ready for its soak, a batch of new workers all ready (then
    /// as many old ones retire), retired workers gone (then the next batch
    /// starts). Never more than K workers above the count are alive.
    pub(super) fn advance(&mut self, now: Instant, number: u32, out: &mut Vec<Effect>) {
        let n = self.state.count;
        loop {
            let Some(g) = self.state.generations.iter().find(|g| g.number == number) else { return };
            let Some(roll) = g.roll.filter(|_| g.state == State::Starting) else { return };
            let (ready, count) = (g.ready_workers(), g.count);
            let old = roll.old.and_then(|o| {
                self.state.generations.iter().find(|g| g.number == o && g.state == State::Ready)
            });
            let old = old.map(|o| (o.number, o.count, o.alive_workers()));
            let (phase, grow_to) = match roll.phase {
                Phase::Canary(None) if ready >= 1 => {
                    let soak = self.settings.canary.unwrap_or_default();
                    out.info(format!("generation {number}: the canary is ready; it serves beside the old generation for {}",
                        format_duration(soak))).about(number);
                    (Phase::Canary(Some(now + soak)), None)
                }
                Phase::Canary(Some(until)) if until <= now && ready >= 1 => {
                    out.info(format!("generation {number}: the canary stayed ready; the reload goes on"))
                        .about(number);
                    self.after_batch(number, count, old.map(|o| o.0), out)
                }
                Phase::Surge if ready >= count && count >= n => {
                    let took = now.saturating_duration_since(g.started);
                    out.info(format!("generation {number} ready: {n}/{n} workers in {} ms", millis(took)))
                        .about(number);
                    return self.ready(now, number, n, out);
                }
                Phase::Surge if ready >= count => self.after_batch(number, count, old.map(|o| o.0), out),
                Phase::Retire if old.map_or(true, |(_, target, alive)| alive <= target) => {
                    let k = match self.settings.strategy {
                        ReloadStrategy::Rolling(k) => k,
                        ReloadStrategy::All => n,
                    };
                    (Phase::Surge, Some(n.min(count + k)))
                }
                _ => return,
            };
            let timeout = self.settings.startup_timeout;
            let Some(g) = self.find(number) else { return };
            g.roll = Some(Roll { phase, ..roll });
            if let Some(target) = grow_to.filter(|&t| t > g.count) {
                out.info(format!("generation {number}: starting {} more worker(s)", target - g.count))
                    .about(number);
                g.count = target;
                // Each step gets the whole startup timeout.
                g.startup_deadline = Some(now + timeout);
                out.push(Effect::Order { generation: number, order: Order::Scale { count: target } });
            }
        }
    }

    /// A batch of new workers (or the canary) is ready: with a rolling
    /// strategy as many old workers retire; otherwise the new generation
    /// grows to the full count. Returns the next phase, and the count the
    /// new generation grows to now, if it does.
    fn after_batch(
        &mut self,
        number: u32,
        count: u32,
        old: Option<u32>,
        out: &mut Vec<Effect>,
    ) -> (Phase, Option<u32>) {
        let n = self.state.count;
        let target = n.saturating_sub(count);
        match (self.settings.strategy, old) {
            (ReloadStrategy::Rolling(_), Some(old)) if target > 0 => {
                // Only ever fewer: a scale-up meanwhile waits for the takeover.
                if let Some(g) = self.find(old).filter(|g| g.count > target) {
                    out.info(format!(
                        "generation {old}: retiring {} worker(s) for the new ones",
                        g.count.saturating_sub(target)
                    ))
                    .about(old);
                    g.count = target;
                    out.push(Effect::Order { generation: old, order: Order::Scale { count: target } });
                }
                (Phase::Retire, None)
            }
            _ => {
                let _ = number;
                (Phase::Surge, Some(n))
            }
        }
    }

    /// A staged reload that stops gives the old generation back its full
    /// count (the retired slots start again from COMMAND as it is now).
    pub(super) fn restore_old(&mut self, number: u32, out: &mut Vec<Effect>) {
        let count = self.state.count;
        let old = self.find(number).and_then(|g| g.roll.take()).and_then(|r| r.old);
        if let Some(old) =
            old.and_then(|o| self.find(o)).filter(|o| o.state == State::Ready && o.count != count)
        {
            old.count = count;
            let order = Order::Scale { count };
            out.info(format!("generation {} goes back to {count} worker(s)", old.number)).about(old.number);
            out.push(Effect::Order { generation: old.number, order });
        }
    }
}
