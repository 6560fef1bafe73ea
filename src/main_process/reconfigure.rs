//! A reload re-reads the configuration file (`--config`): before the
//! policy hears of the reload, main reads the file again and takes from it
//! what a generation can change ([`crate::config::Config::reloaded`]), so
//! that the generation the reload starts runs with it. A file that does
//! not read fails the reload here, before anything started: the requester
//! is told why, and the serving generation goes on as it was. A reload
//! asked for while one is under way is queued, and its file is read only
//! when it starts ([`Effect::Reread`](super::policy::Effect::Reread)).

use crate::control::server::ClientId;
use crate::control::Reply;
use crate::error::Error;
use crate::main_process::policy::Event;
use crate::main_process::{settings, Main};
use crate::worker;

impl Main {
    /// Before a reload: the configuration file (`--config`) read again, and
    /// what a generation can change taken from it; a changed setting that
    /// needs a restart is said to wait for one. false when the file does
    /// not read: the reload fails (`from` is told why) and the serving
    /// generation goes on as it was.
    pub(super) fn reread_config(&mut self, from: Option<ClientId>) -> bool {
        if self.config.file.is_none() || self.policy.stopping() {
            return true;
        }
        if self.policy.reload_under_way() {
            // Queued behind it: read when it starts, not now.
            self.policy.reread_when_queued_starts();
            return true;
        }
        match self.reread() {
            Ok(()) => true,
            Err(reason) => {
                self.policy.reload_refused(&reason);
                if let Some(client) = from {
                    self.control.reply(client, &Reply::error(reason));
                }
                false
            }
        }
    }

    /// The queued reload of `clients` starts: the file read for it now.
    pub(super) fn reread_for_queued(&mut self, clients: Vec<ClientId>) -> Event {
        Event::Reread { clients, refused: self.reread().err() }
    }

    /// Reads the file again and takes what a generation can change from
    /// it, or says why not (logged as the reload's failure).
    fn reread(&mut self) -> Result<(), String> {
        let reread = self.config.reloaded(&self.argv).and_then(|(config, changes)| {
            let ceiling = settings(&config, self.sockets.len(), self.room()).ceiling;
            let changed = changes.applied.iter().any(|k| k == "count" || k == "tag-output");
            if changed {
                ceiling
                    .check(&format!("count {}", config.count), config.count.into())
                    .map_err(Error::Usage)?;
            }
            // As at start: a COMMAND that cannot run is refused before a generation tries it.
            worker::resolve_command_in(&config.command, config.chdir.as_deref())?;
            if changed {
                // With round-robin, the new generation's slots.
                self.make_room(&format!("count {}", config.count), config.count)?;
            }
            Ok((config, changes))
        });
        let path =
            self.config.file.as_ref().map(|f| f.at_start.path.display().to_string()).unwrap_or_default();
        match reread {
            Err(e) => {
                let reason = e.report();
                log::error!("reload failed: {reason}; the serving generation goes on");
                Err(reason)
            }
            Ok((config, changes)) => {
                if !changes.ignored.is_empty() {
                    log::warn!("{path}: {} changed: ignored until restart", changes.ignored.join(", "));
                }
                if !changes.applied.is_empty() {
                    log::info!(
                        "{path}: {} changed: the new generation starts with it",
                        changes.applied.join(", ")
                    );
                }
                let count = (config.count != self.config.count).then_some(config.count);
                let before = std::mem::replace(&mut self.config, config);
                // The last good one, when a reload before this one has no outcome yet.
                self.config_before.get_or_insert(before);
                self.policy.reconfigure(settings(&self.config, self.sockets.len(), self.room()), count);
                Ok(())
            }
        }
    }
}
