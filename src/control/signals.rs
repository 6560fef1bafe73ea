//! The signal table: which signal means which [`Command`]. The README's
//! "Signals" section states the same table.

use nix::sys::signal::Signal;

use super::Command;

/// Signals main takes as commands (`SIGCHLD` is handled apart).
pub const TABLE: &[(Signal, Command)] = &[
    (Signal::SIGUSR1, Command::Reload),
    (Signal::SIGHUP, Command::Reload),
    (Signal::SIGTERM, Command::Stop),
    (Signal::SIGINT, Command::Stop),
    (Signal::SIGQUIT, Command::StopNow),
    (Signal::SIGTTIN, Command::ScaleBy(1)),
    (Signal::SIGTTOU, Command::ScaleBy(-1)),
    (Signal::SIGUSR2, Command::Upgrade),
];

/// The command for `signal`. A second `SIGINT` (`interrupts_before` > 0)
/// stops at once.
pub fn command(signal: Signal, interrupts_before: u32) -> Option<Command> {
    if signal == Signal::SIGINT && interrupts_before > 0 {
        return Some(Command::StopNow);
    }
    TABLE.iter().find(|(s, _)| *s == signal).map(|(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_interrupt_stops_at_once() {
        assert_eq!(command(Signal::SIGINT, 0), Some(Command::Stop));
        assert_eq!(command(Signal::SIGINT, 1), Some(Command::StopNow));
        assert_eq!(command(Signal::SIGHUP, 0), Some(Command::Reload));
        assert_eq!(command(Signal::SIGCHLD, 0), None);
    }
}
