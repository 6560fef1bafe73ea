//! The signal table: which signal means which [`Command`]. The manual's
//! reference (docs/src/reference.md, "Signals") states the same table, and
//! a test below keeps the two in step.

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

    #[test]
    fn the_manuals_signal_table_gives_each_signal_the_meaning_this_table_does() {
        let reference = include_str!("../../docs/src/reference.md");
        let section = reference.split("\n## Signals\n").nth(1).expect("a Signals section");
        let rows: Vec<&str> =
            section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
        for (signal, command) in TABLE {
            let effect = match command {
                Command::Reload => "hot restart",
                Command::Stop => "graceful stop",
                Command::StopNow => "immediate stop",
                Command::ScaleBy(1) => "one worker more",
                Command::ScaleBy(_) => "/ less",
                Command::Upgrade => "upgrade panzer itself",
                Command::Status | Command::Scale(_) => unreachable!("no signal means {command:?}"),
            };
            let name = format!("`{}`", signal.as_str());
            assert!(
                rows.iter().any(|row| {
                    let (signals, meaning) = row.trim_matches('|').split_once('|').unwrap_or_default();
                    signals.contains(&name) && meaning.contains(effect)
                }),
                "docs/src/reference.md: no row gives {name} the meaning {effect:?}"
            );
        }
    }
}
