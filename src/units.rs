//! The value grammar of the command line: durations (`250ms`, `10s`, `2m`)
//! and the `--ready` mode. Pure parsing and printing, shared by the flags
//! ([`crate::cli`]), the validated config, the monitor's argv and the logs.

use std::time::Duration;

/// When a worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyMode {
    /// When it sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// When it is seen accepting on a listening socket (read from `/proc`).
    Accepting,
    /// When it has stayed alive this long.
    After(Duration),
    /// `READY=1` or accepting, whichever comes first; alive 1 s for a
    /// worker whose accepting cannot be seen. The default.
    Auto,
}

impl std::str::FromStr for ReadyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "notify" => return Ok(ReadyMode::Notify),
            "accepting" => return Ok(ReadyMode::Accepting),
            "auto" => return Ok(ReadyMode::Auto),
            _ => {}
        }
        parse_duration(s).map(ReadyMode::After).map_err(|_| {
            format!(
                "invalid ready mode '{s}': expected 'auto', 'notify', 'accepting' or a duration such as 1s"
            )
        })
    }
}

impl std::fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyMode::Notify => write!(f, "notify"),
            ReadyMode::Accepting => write!(f, "accepting"),
            ReadyMode::Auto => write!(f, "auto"),
            ReadyMode::After(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// How a reload replaces the serving generation (`--reload-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadStrategy {
    /// Start N new workers, then drain the N old ones: room for 2N.
    All,
    /// At most K workers above the count at any time: K new ones start,
    /// and once they are ready K old ones drain, and so on.
    Rolling(u32),
}

/// The largest K of `rolling:K`: more is the same as `all`.
const MAX_ROLLING: u32 = 4096;

impl std::str::FromStr for ReloadStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid reload strategy '{s}': expected 'all', 'rolling' or 'rolling:K' (K from 1 to {MAX_ROLLING})")
        };
        match s.split_once(':') {
            None if s == "all" => Ok(ReloadStrategy::All),
            None if s == "rolling" => Ok(ReloadStrategy::Rolling(1)),
            Some(("rolling", k)) => match k.parse::<u32>() {
                Ok(k) if (1..=MAX_ROLLING).contains(&k) => Ok(ReloadStrategy::Rolling(k)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for ReloadStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadStrategy::All => write!(f, "all"),
            ReloadStrategy::Rolling(k) => write!(f, "rolling:{k}"),
        }
    }
}

/// A duration as the command line spells it: `250ms`, `10s`, `2m`, `1h`;
/// a bare number is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliDuration(pub Duration);

impl std::str::FromStr for CliDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(CliDuration)
    }
}

/// `250ms`, `1.5s`, `2m`: short, for log lines.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 120_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m", d.as_secs() / 60)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || format!("invalid duration '{s}': expected a number with a unit, such as 250ms, 10s or 2m");
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_strategies_read_all_rolling_and_rolling_k() {
        assert_eq!("all".parse(), Ok(ReloadStrategy::All));
        assert_eq!("rolling".parse(), Ok(ReloadStrategy::Rolling(1)));
        assert_eq!("rolling:3".parse(), Ok(ReloadStrategy::Rolling(3)));
        for bad in ["rolling:0", "rolling:", "rolling:x", "rolling:99999", "some", "all:2", ""] {
            let e = bad.parse::<ReloadStrategy>().unwrap_err();
            assert!(e.starts_with("invalid reload strategy"), "{bad}: {e}");
        }
        assert_eq!(ReloadStrategy::Rolling(2).to_string(), "rolling:2");
    }

    #[test]
    fn durations_read_like_the_docs() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ready_mode_is_auto_notify_accepting_or_a_duration() {
        assert_eq!("notify".parse(), Ok(ReadyMode::Notify));
        assert_eq!("accepting".parse(), Ok(ReadyMode::Accepting));
        assert_eq!("auto".parse(), Ok(ReadyMode::Auto));
        for mode in ["auto", "notify", "accepting", "250ms"] {
            assert_eq!(mode.parse::<ReadyMode>().unwrap().to_string(), mode, "read back by the monitor");
        }
        assert_eq!("1s".parse(), Ok(ReadyMode::After(Duration::from_secs(1))));
        assert!("soon".parse::<ReadyMode>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_duration_or_a_clear_error(s in proptest::prelude::any::<String>()) {
            if let Err(e) = parse_duration(&s) {
                proptest::prop_assert!(e.starts_with("invalid duration"), "{e}");
            }
        }

        #[test]
        fn duration_like_text_never_panics(s in " ?[0-9.]{0,30}(ms|s|m|h|x|µs|)? ?") {
            match parse_duration(&s) {
                Ok(d) => proptest::prop_assert!(d <= Duration::from_secs(1_000_000_000)),
                Err(e) => proptest::prop_assert!(e.starts_with("invalid duration"), "{e}"),
            }
        }
    }
}
