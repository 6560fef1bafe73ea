//! The value grammar of the command line: durations (`250ms`, `10s`, `1m30s`, `1d`),
//! the `--ready` mode, sizes (`512M`, `2G`) and signal names (`TERM`, `USR2`). Pure parsing and printing, shared by the flags
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

/// How new connections of a `--bind` reach the workers (`--balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// One socket per address, shared by every worker: the kernel wakes
    /// whichever worker waits.
    #[default]
    Shared,
    /// One `SO_REUSEPORT` socket per worker slot, and new connections
    /// handed to the slots in rotation in turn.
    RoundRobin,
}

impl std::str::FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(Balance::Shared),
            "round-robin" => Ok(Balance::RoundRobin),
            _ => Err(format!("invalid balance mode '{s}': expected 'shared' or 'round-robin'")),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Balance::Shared => write!(f, "shared"),
            Balance::RoundRobin => write!(f, "round-robin"),
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

/// A duration as the command line spells it: `250ms`, `10s`, `2m`, `1h`,
/// `1d`, `1m30s`; a bare number is seconds.
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

/// The longest duration accepted, in seconds (about 31 years).
const DURATION_CEILING_SECS: f64 = 1e9;

/// `250ms`, `10s`, `2m`, `1h`, `1d`, or several of them from the largest
/// unit down (`1m30s`, `1h 30m`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: [(&str, f64); 5] = [("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)];
    let s = s.trim();
    let bad =
        || format!("invalid duration '{s}': expected a number with a unit, such as 250ms, 10s, 1m30s or 1d");
    let mut rest = s;
    let mut seconds = 0.0;
    // Units must come from the largest down: the index of the next allowed.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let after = after.trim_start();
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            // A bare number is seconds, alone only.
            "" if seconds == 0.0 && next_unit == 0 && after.is_empty() => 1.0,
            _ => {
                let found = UNITS[next_unit..].iter().position(|(name, _)| *name == unit).ok_or_else(bad)?;
                next_unit += found + 1;
                UNITS[next_unit - 1].1
            }
        };
        seconds += value * scale;
        rest = after.trim_start();
    }
    if rest.len() == s.len() {
        return Err(bad());
    }
    if !seconds.is_finite() || seconds > DURATION_CEILING_SECS {
        return Err(format!("invalid duration '{s}': out of range, at most {DURATION_CEILING_SECS}s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A size as the command line spells it: `900K`, `512M`, `2G`, `1T`
/// (powers of 1024; `KiB`, `MB` and the like read the same), or a bare
/// number of bytes. At least 1 byte and at most [`SIZE_CEILING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliSize(pub u64);

/// The largest size accepted: 64 TiB, more memory than any host has.
pub const SIZE_CEILING: u64 = 64 << 40;

impl std::str::FromStr for CliSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(CliSize)
    }
}

impl std::fmt::Display for CliSize {
    /// Bytes, so that the monitor's argv reads back exactly.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("invalid size '{s}': expected a number with a unit, such as 900K, 512M or 2G");
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix("IB").or_else(|| unit.strip_suffix('B')).unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes > SIZE_CEILING as f64 {
        return Err(format!("invalid size '{s}': at most 64T"));
    }
    if bytes < 1.0 {
        return Err(format!("invalid size '{s}': must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

/// `512.0 MiB`, `2.0 GiB`: for log lines.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A signal as the command line names it: `TERM`, `SIGTERM`, `term` or
/// `15`. `KILL` and `STOP` cannot be caught, and `CHLD` is the monitor's
/// own, so none of them can ask a worker to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliSignal(pub nix::sys::signal::Signal);

impl std::str::FromStr for CliSignal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use nix::sys::signal::Signal;
        let text = s.trim();
        let signal = match text.parse::<i32>() {
            Ok(number) => Signal::try_from(number).ok(),
            Err(_) => {
                let upper = text.to_ascii_uppercase();
                let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
                name.parse::<Signal>().ok()
            }
        };
        let Some(signal) = signal else {
            return Err(format!(
                "invalid signal '{s}': expected a name such as TERM, QUIT, USR2 or INT, or a number"
            ));
        };
        match signal {
            Signal::SIGKILL | Signal::SIGSTOP => Err(format!(
                "{} cannot be a drain signal: a process can neither catch nor ignore it (panzer sends SIGKILL \
                 itself after --graceful-timeout)",
                signal.as_str()
            )),
            Signal::SIGCHLD => Err("SIGCHLD cannot be a drain signal: it is how the monitor learns a worker exited".into()),
            _ => Ok(CliSignal(signal)),
        }
    }
}

impl std::fmt::Display for CliSignal {
    /// The bare name (`TERM`), which parses back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_str().trim_start_matches("SIG"))
    }
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
    fn sizes_read_like_the_docs() {
        assert_eq!(parse_size("900K"), Ok(900 * 1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512mb"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").unwrap_err().starts_with("invalid size '12X'"));
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn sizes_have_a_floor_and_a_ceiling() {
        assert_eq!(parse_size("64T"), Ok(SIZE_CEILING));
        assert_eq!(parse_size("65T").unwrap_err(), "invalid size '65T': at most 64T");
        assert!(parse_size("99999999999999999999999G").is_err());
        assert_eq!(parse_size("0M").unwrap_err(), "invalid size '0M': must be at least 1 byte");
    }

    #[test]
    fn sizes_print_for_people_and_read_back_exactly() {
        assert_eq!(format_size(512 << 20), "512.0 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10), "10 B");
        let size: CliSize = "900K".parse().unwrap();
        assert_eq!(size.to_string().parse::<CliSize>(), Ok(size));
    }

    #[test]
    fn signals_read_by_name_with_or_without_sig_or_by_number() {
        use nix::sys::signal::Signal;
        for text in ["TERM", "SIGTERM", "term", "15"] {
            assert_eq!(text.parse(), Ok(CliSignal(Signal::SIGTERM)), "{text}");
        }
        assert_eq!("USR2".parse(), Ok(CliSignal(Signal::SIGUSR2)));
        assert_eq!("QUIT".parse(), Ok(CliSignal(Signal::SIGQUIT)));
        assert_eq!("INT".parse(), Ok(CliSignal(Signal::SIGINT)));
        assert_eq!(CliSignal(Signal::SIGUSR2).to_string(), "USR2");
    }

    #[test]
    fn signals_that_cannot_ask_for_a_drain_are_refused_with_the_reason() {
        assert!("KILL".parse::<CliSignal>().unwrap_err().contains("can neither catch nor ignore"));
        assert!("9".parse::<CliSignal>().unwrap_err().contains("SIGKILL cannot be a drain signal"));
        assert!("SIGSTOP".parse::<CliSignal>().unwrap_err().contains("SIGSTOP cannot be a drain signal"));
        assert!("CHLD".parse::<CliSignal>().is_err());
        assert!("BOGUS".parse::<CliSignal>().unwrap_err().starts_with("invalid signal 'BOGUS'"));
        assert!("0".parse::<CliSignal>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_size_or_a_clear_error(s in proptest::prelude::any::<String>()) {
            if let Err(e) = parse_size(&s) {
                proptest::prop_assert!(e.starts_with("invalid size"), "{e}");
            }
        }
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
    fn durations_read_compound_forms_and_days() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
        for bad in ["30s1m", "1m1m", "1m30", "1x", "1 2s", "s"] {
            assert!(
                parse_duration(bad).unwrap_err().starts_with(&format!("invalid duration '{bad}'")),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_out_of_range_duration_says_the_range() {
        assert_eq!(
            parse_duration("99999999999s").unwrap_err(),
            "invalid duration '99999999999s': out of range, at most 1000000000s"
        );
        assert!(parse_duration("11575d").unwrap_err().contains("out of range"));
        assert!(parse_duration("11574d").is_ok());
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
        fn duration_like_text_never_panics(s in " ?([0-9.]{0,12}(ms|s|m|h|d|x|µs|)? ?){0,3}") {
            match parse_duration(&s) {
                Ok(d) => proptest::prop_assert!(d <= Duration::from_secs(1_000_000_000)),
                Err(e) => proptest::prop_assert!(e.starts_with("invalid duration"), "{e}"),
            }
        }
    }
}
