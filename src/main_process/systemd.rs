//! main's side of sd_notify: what systemd (or any supervisor that sets
//! `NOTIFY_SOCKET`) hears. `MAINPID=` and `READY=1` once generation 1 is
//! ready, `RELOADING=1` then `READY=1` around a reload, `STOPPING=1`,
//! `STATUS=` lines, and `WATCHDOG=1` every half `WATCHDOG_USEC` when set.
//! Workers never see this socket: [`crate::worker::inherited_env`] drops it.

use std::time::{Duration, Instant};

use crate::notify::{self, Notify};

pub struct Systemd {
    socket: String,
    watchdog: Option<Duration>,
    next_ping: Option<Instant>,
    ready_sent: bool,
}

impl Systemd {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`; `None`
    /// when panzer does not run under a notify-aware supervisor.
    pub fn from_env() -> Option<Systemd> {
        let socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty())?;
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec) / 2);
        Some(Systemd { socket, watchdog, next_ping: watchdog.map(|d| Instant::now() + d), ready_sent: false })
    }

    /// After an upgrade: whether the previous image had said `READY=1`
    /// (and `MAINPID=`, which stays the same).
    pub fn resumed(mut self, ready_sent: bool) -> Systemd {
        self.ready_sent = ready_sent;
        self
    }

    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    fn send(&self, messages: &[Notify]) {
        if let Err(e) = notify::send_to(&self.socket, messages) {
            log::warn!("cannot notify {}: {e}", self.socket);
        }
    }

    /// A generation is ready: the first time, the service is up.
    pub fn ready(&mut self, status: String) {
        let mut messages = Vec::new();
        if !self.ready_sent {
            self.ready_sent = true;
            messages.push(Notify::MainPid(std::process::id()));
        }
        messages.push(Notify::Ready);
        messages.push(Notify::Status(status));
        self.send(&messages);
    }

    pub fn reloading(&self) {
        self.send(&[Notify::Reloading { monotonic_usec: crate::sys::monotonic_usec() }]);
    }

    pub fn stopping(&self) {
        self.send(&[Notify::Stopping, Notify::Status("stopping".into())]);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_ping
    }

    /// Sends `WATCHDOG=1` when due.
    pub fn on_timer(&mut self, now: Instant) {
        if let (Some(at), Some(every)) = (self.next_ping, self.watchdog) {
            if at <= now {
                self.send(&[Notify::Watchdog]);
                self.next_ping = Some(now + every);
            }
        }
    }
}
