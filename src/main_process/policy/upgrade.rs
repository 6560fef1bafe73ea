//! An upgrade of panzer itself, as the policy runs it: a request waits for
//! a reload under way, later ones join it, the new binary's check is
//! bounded, and whoever asked hears the outcome (from the next image when
//! it works). Handing the state over and the `execve` are the loop's.

use std::time::{Duration, Instant};

use super::{Effect, Note, Policy, Say, State};
use crate::control::server::ClientId;
use crate::control::Reply;

/// How long the new binary may take to prove it runs before an upgrade fails.
pub const UPGRADE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// An upgrade of panzer itself under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upgrade {
    /// Who asked (every request coalesced into this one).
    pub(super) clients: Vec<ClientId>,
    /// While the new binary's check runs: when it has failed.
    pub(super) checking_until: Option<Instant>,
}

impl Policy {
    /// `SIGUSR2` or a control `upgrade`. A request during an upgrade joins
    /// it and gets the same answer; an upgrade asked for during a reload
    /// waits for the reload's outcome (see [`Policy::start_upgrade_check`]).
    pub(super) fn upgrade(&mut self, from: Option<ClientId>, out: &mut Vec<Effect>) {
        if self.state.stopping.is_some() {
            out.info("upgrade refused: panzer is stopping");
            if let Some(to) = from {
                out.push(Effect::Reply { to, reply: Reply::error("panzer is stopping") });
            }
            return;
        }
        match &mut self.upgrade {
            Some(upgrade) => {
                out.info("upgrade request joins the upgrade under way");
                upgrade.clients.extend(from);
            }
            None => {
                if self.reload_under_way() {
                    out.info("upgrade waits for the reload under way");
                }
                self.upgrade = Some(Upgrade { clients: from.into_iter().collect(), checking_until: None });
            }
        }
    }

    /// A generation is starting (a reload, or a replacement): an upgrade waits.
    pub fn reload_under_way(&self) -> bool {
        self.any(|s| matches!(s, State::Starting | State::Delayed(_)))
    }

    /// Starts the check of the new binary for a waiting upgrade, once no
    /// reload is under way. systemd hears `RELOADING=1` now, `READY=1` from
    /// the next image (or when the upgrade fails).
    pub(super) fn start_upgrade_check(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.state.stopping.is_some() || self.reload_under_way() {
            return;
        }
        let Some(upgrade) = self.upgrade.as_mut().filter(|u| u.checking_until.is_none()) else { return };
        upgrade.checking_until = Some(now + UPGRADE_CHECK_TIMEOUT);
        out.push(Effect::Systemd(Note::Reloading));
        out.push(Effect::CheckUpgrade);
    }

    pub(super) fn upgrade_checked(&mut self, result: Result<(), String>, out: &mut Vec<Effect>) {
        if !self.upgrade.as_ref().is_some_and(|u| u.checking_until.is_some()) {
            // Cancelled meanwhile (a stop): the answer no longer matters.
            return;
        }
        if result.is_ok() && self.reload_under_way() {
            // A reload asked for during the check: the next image could not
            // take over its rollback or its deadlines, so the upgrade waits
            // for its outcome and checks again then.
            out.info("upgrade waits for the reload under way");
            if let Some(upgrade) = &mut self.upgrade {
                upgrade.checking_until = None;
            }
            return;
        }
        let clients = self.upgrade.take().map(|u| u.clients).unwrap_or_default();
        match result {
            Ok(()) => out.push(Effect::Exec { answer: clients }),
            Err(reason) => self.upgrade_failed(clients, &reason, out),
        }
    }

    /// The old image goes on serving; whoever asked hears why.
    pub(super) fn upgrade_failed(&mut self, clients: Vec<ClientId>, reason: &str, out: &mut Vec<Effect>) {
        out.error(format!("upgrade failed: {reason}; this panzer goes on running"));
        if self.state.stopping.is_none() && !self.reload_under_way() {
            out.push(Effect::Systemd(Note::Ready(format!("upgrade failed: {reason}"))));
        }
        for to in clients {
            out.push(Effect::Reply { to, reply: Reply::error(reason) });
        }
    }

    /// This image took the state over: the upgrade is done. Generations
    /// whose monitors this image cannot talk to are replaced by a reload.
    pub(super) fn resumed(
        &mut self,
        now: Instant,
        clients: Vec<ClientId>,
        pid: u32,
        version: String,
        stale: Vec<u32>,
        out: &mut Vec<Effect>,
    ) {
        for to in clients {
            let reply = Reply { pid: Some(pid), version: Some(version.clone()), ..Reply::ok() };
            out.push(Effect::Reply { to, reply });
        }
        if self.state.stopping.is_some() {
            return;
        }
        if !self.reload_under_way() {
            out.push(Effect::Systemd(Note::Ready(format!("upgraded to panzer {version}"))));
        }
        if !stale.is_empty() {
            let stale: Vec<String> = stale.iter().map(u32::to_string).collect();
            out.warn(format!(
                "generation(s) {} speak a protocol this panzer cannot: a hot restart replaces them",
                stale.join(", ")
            ));
            self.reload(now, None, out);
        }
    }
}
