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
/// stops at once, except during the stop delay, where it only skips the
/// delay, as a second `SIGTERM` does.
pub fn command(signal: Signal, interrupts_before: u32, in_stop_delay: bool) -> Option<Command> {
    if signal == Signal::SIGINT && interrupts_before > 0 && !in_stop_delay {
        return Some(Command::StopNow);
    }
    TABLE.iter().find(|(s, _)| *s == signal).map(|(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_interrupt_stops_at_once() {
        assert_eq!(command(Signal::SIGINT, 0, false), Some(Command::Stop));
        assert_eq!(command(Signal::SIGINT, 1, false), Some(Command::StopNow));
        assert_eq!(command(Signal::SIGHUP, 0, false), Some(Command::Reload));
        assert_eq!(command(Signal::SIGCHLD, 0, false), None);
    }

    #[test]
    fn during_the_stop_delay_a_second_interrupt_or_term_only_skips_the_delay_and_quit_stops_at_once() {
        assert_eq!(command(Signal::SIGINT, 1, true), Some(Command::Stop));
        assert_eq!(command(Signal::SIGTERM, 0, true), Some(Command::Stop));
        assert_eq!(command(Signal::SIGQUIT, 0, true), Some(Command::StopNow));
    }
}
