//! What the monitor does with its workers' sd_notify messages: which
//! worker each one counts for (the sender, or the nearest worker above it),
//! and what it changes: readiness, the watchdog, a debug line. The socket
//! itself is `notify_socket`.

use std::time::Instant;

use nix::unistd::Pid;

use super::{accepting, Monitor};
use crate::logging::of_worker;
use crate::notify::Notify;
use crate::sys;

/// Most parent links followed to attribute a notify message to a worker.
const MAX_ANCESTRY: usize = 64;

impl Monitor {
    pub(super) fn on_notify(&mut self) {
        for (sender, result) in self.notify.receive() {
            let Some((ordinal, pid)) = self.attribute(sender) else {
                // While draining, a worker that just exited may still be
                // heard from (STOPPING=1): not worth an info line.
                let level = if self.pool.is_draining() { log::Level::Debug } else { log::Level::Info };
                if let Some(n) = self.strangers.check(&sender, Instant::now()) {
                    let more = crate::log_limit::suppressed(n);
                    log::log!(
                        level,
                        "ignoring notify message from pid {sender}: neither a worker of generation {} \
                         nor a descendant of one{more}",
                        self.args.generation
                    );
                }
                continue;
            };
            let messages = match result {
                Ok(messages) => messages,
                Err(_) => {
                    if let Some(n) = self.notify_warnings.check(&ordinal, Instant::now()) {
                        let more = crate::log_limit::suppressed(n);
                        let line = "sent a notify message that is not text; dropped";
                        of_worker!(warn, ordinal, pid; "worker {ordinal} (pid {pid}) {line}{more}");
                    }
                    continue;
                }
            };
            for message in messages {
                match message {
                    // With --ready DURATION or accepting, READY=1 does not count.
                    Notify::Ready if self.readiness.counts_notify() => {
                        self.worker_ready(pid, accepting::Reason::Notify)
                    }
                    Notify::Ready => {}
                    // Worker text stays here: it never travels to main.
                    Notify::Status(text) => {
                        of_worker!(debug, ordinal, pid; "worker {ordinal} (pid {pid}) status: {text}")
                    }
                    Notify::Stopping => {
                        of_worker!(debug, ordinal, pid; "worker {ordinal} (pid {pid}) is stopping")
                    }
                    Notify::Watchdog => self.pool.watchdog(pid, Instant::now()),
                    Notify::MainPid(_) | Notify::Reloading { .. } => {}
                }
            }
        }
    }

    /// The worker a notify message from `sender` counts for: `sender`
    /// itself, or the nearest worker above it (its parent chain in
    /// `/proc`, at most [`MAX_ANCESTRY`] links), as systemd's
    /// `NotifyAccess=all` within the worker's subtree. `(ordinal, worker pid)`.
    fn attribute(&self, sender: i32) -> Option<(u32, i32)> {
        let me = nix::unistd::getpid();
        let mut pid = Pid::from_raw(sender);
        for _ in 0..MAX_ANCESTRY {
            if let Some(ordinal) = self.pool.ordinal_of(pid.as_raw()) {
                return Some((ordinal, pid.as_raw()));
            }
            let (parent, _) = sys::parent_and_group(pid)?;
            if parent == me || parent.as_raw() <= 1 {
                return None;
            }
            pid = parent;
        }
        None
    }
}
