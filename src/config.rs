//! The validated configuration main runs with: defaults filled in, values
//! parsed, nothing left for the event loop to check.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Cli;
use crate::error::Error;
use crate::limits::{CountCeiling, MonitorFds};
use crate::sockets::{BindAddr, BindSpec};
use crate::units::{ReadyMode, ReloadStrategy};

/// Everything main needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub count: u32,
    pub binds: Vec<BindSpec>,
    /// `--admin-bind`: where main serves `/readyz`, `/livez` and `/metrics`.
    pub admin_binds: Vec<BindAddr>,
    pub backlog: i32,
    pub ready: ReadyMode,
    pub startup_timeout: Duration,
    pub graceful_timeout: Duration,
    /// `--stop-delay`: how long a graceful stop keeps serving, not ready, before it drains.
    pub stop_delay: Duration,
    pub control: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// `(uid, gid)` for monitors and workers (`--user`, `--group`).
    pub credentials: Option<(u32, u32)>,
    pub log_level: log::LevelFilter,
    pub command: OsString,
    pub args: Vec<OsString>,
    /// Whether TCP sockets panzer binds get `TCP_NODELAY` (`--no-nodelay`).
    pub nodelay: bool,
    /// `--tag-output`: workers' lines prefixed by their monitor.
    pub tag_output: bool,
    /// `--reload-strategy`.
    pub reload_strategy: ReloadStrategy,
    /// `--canary`.
    pub canary: Option<Duration>,
    /// `--drain-signal`: what a worker gets to drain.
    pub drain_signal: nix::sys::signal::Signal,
    /// `--health-timeout`: longest silence after a `WATCHDOG=1`.
    pub health_timeout: Option<Duration>,
    /// `--max-rss`, in bytes.
    pub max_rss: Option<u64>,
    /// `--max-age`: how long a worker runs before it is replaced.
    pub max_age: Option<Duration>,
    /// `--preload`: COMMAND is the monitor and forks its workers (library mode).
    pub preload: bool,
}

impl Config {
    pub fn from_cli(mut cli: Cli) -> Result<Config, Error> {
        cli.bind = crate::sockets::join_pieces(std::mem::take(&mut cli.bind)).map_err(Error::Usage)?;
        let ceiling = count_ceiling(cli.bind.len(), cli.tag_output, cli.preload);
        let count = match cli.count {
            Some(n) => ceiling.check(&format!("--count {n}"), n.into()).map_err(Error::Usage)?,
            None => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                let what = format!("--count {cpus} (one per CPU, the default)");
                ceiling.check(&what, cpus.min(ceiling.max.max(1)).into()).map_err(Error::Usage)?
            }
        };
        // `panzer [OPTIONS] -- COMMAND [ARGS]`: the command is the first word after `--`.
        let (command, args) = match cli.command {
            Some(command) => (command, cli.args),
            None => {
                let mut args = cli.args.into_iter();
                let command = args.next().ok_or_else(|| Error::Usage("no <COMMAND> to run".into()))?;
                (command, args.collect())
            }
        };
        if command.is_empty() {
            return Err(Error::Usage("the command to run is empty".into()));
        }
        if cli.startup_timeout.0.is_zero() {
            return Err(Error::Usage(
                "--startup-timeout must be longer than 0: no generation could ever be ready".into(),
            ));
        }
        Ok(Config {
            count,
            binds: cli.bind,
            admin_binds: cli.admin_bind,
            backlog: cli.backlog,
            ready: cli.ready,
            startup_timeout: cli.startup_timeout.0,
            graceful_timeout: cli.graceful_timeout.0,
            stop_delay: cli.stop_delay.0,
            control: cli.control,
            pid_file: cli.pid_file,
            credentials: credentials(cli.user.as_deref(), cli.group.as_deref())?,
            log_level: log_level(cli.quiet, cli.verbose),
            command,
            args,
            nodelay: !cli.no_nodelay,
            tag_output: cli.tag_output,
            reload_strategy: cli.reload_strategy,
            canary: cli.canary.map(|c| c.0),
            drain_signal: cli.drain_signal.0,
            health_timeout: positive("--health-timeout", cli.health_timeout)?,
            max_rss: cli.max_rss.map(|size| size.0),
            max_age: positive("--max-age", cli.max_age)?,
            preload: cli.preload,
        })
    }
}

/// An optional duration that must not be zero: a zero health timeout or
/// age would replace every worker as soon as it started.
fn positive(flag: &str, value: Option<crate::units::CliDuration>) -> Result<Option<Duration>, Error> {
    match value {
        Some(d) if d.0.is_zero() => {
            Err(Error::Usage(format!("{flag} must be longer than 0 (leave it out to turn it off)")))
        }
        other => Ok(other.map(|d| d.0)),
    }
}

/// The most workers a generation can run with `sockets` listening sockets
/// under this process's limits: `limits::max_count`, or lower where
/// `RLIMIT_NOFILE` leaves a monitor room for fewer (see [`MonitorFds`]).
pub fn count_ceiling(sockets: usize, tag_output: bool, preload: bool) -> CountCeiling {
    let sockets = sockets.min(u32::MAX as usize) as u32;
    CountCeiling::now(Some(MonitorFds { sockets, tag_output, library: preload }))
}

/// Resolves `--user` and `--group` to `(uid, gid)`; `None` when neither is given.
fn credentials(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, Error> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, primary_gid) = match user {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                Err(_) => User::from_name(name),
            };
            match (found, name.parse::<u32>()) {
                (Ok(Some(u)), _) => (u.uid.as_raw(), u.gid.as_raw()),
                // A bare uid with no passwd entry (containers): its own number as gid.
                (_, Ok(uid)) => (uid, uid),
                _ => return Err(Error::Usage(format!("--user {name}: no such user"))),
            }
        }
        None => (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
    };
    let gid = match group {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(name),
            };
            match (found, name.parse::<u32>()) {
                (Ok(Some(g)), _) => g.gid.as_raw(),
                (_, Ok(gid)) => gid,
                _ => return Err(Error::Usage(format!("--group {name}: no such group"))),
            }
        }
        None => primary_gid,
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Usage("--user and --group need panzer to run as root".into()));
    }
    Ok(Some((uid, gid)))
}

/// `-q` and `-v` (repeatable) around the default `info`.
pub fn log_level(quiet: u8, verbose: u8) -> log::LevelFilter {
    use log::LevelFilter::*;
    let levels = [Off, Error, Warn, Info, Debug, Trace];
    let index = (3 + verbose as i32 - quiet as i32).clamp(0, 5) as usize;
    levels[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_of(argv: &[&str]) -> (OsString, Vec<OsString>) {
        use clap::Parser;
        let config = Config::from_cli(Cli::try_parse_from(argv).unwrap()).unwrap();
        (config.command, config.args)
    }

    #[test]
    fn the_command_stands_before_the_double_dash_or_first_after_it() {
        let expected = (OsString::from("./srv"), vec![OsString::from("--port"), OsString::from("1")]);
        assert_eq!(command_of(&["panzer", "./srv", "--count", "2", "--", "--port", "1"]), expected);
        assert_eq!(command_of(&["panzer", "--count", "2", "--", "./srv", "--port", "1"]), expected);
        assert_eq!(command_of(&["panzer", "--", "./srv"]), (OsString::from("./srv"), vec![]));
    }

    #[test]
    fn no_command_anywhere_is_a_usage_error() {
        use clap::Parser;
        assert!(Cli::try_parse_from(["panzer", "--count", "2"]).is_err());
        assert!(Cli::try_parse_from(["panzer", "--count", "2", "--"]).is_err());
    }

    #[test]
    fn quiet_and_verbose_move_around_info() {
        assert_eq!(log_level(0, 0), log::LevelFilter::Info);
        assert_eq!(log_level(1, 0), log::LevelFilter::Warn);
        assert_eq!(log_level(0, 2), log::LevelFilter::Trace);
        assert_eq!(log_level(9, 0), log::LevelFilter::Off);
    }

    #[test]
    fn supervision_options_are_off_by_default_and_term_drains() {
        let config =
            Config::from_cli(<Cli as clap::Parser>::try_parse_from(["panzer", "./srv"]).unwrap()).unwrap();
        assert_eq!(config.drain_signal, nix::sys::signal::Signal::SIGTERM);
        assert_eq!((config.health_timeout, config.max_rss, config.max_age), (None, None, None));
    }

    #[test]
    fn supervision_options_read_signals_sizes_and_durations() {
        let argv = ["panzer", "--drain-signal", "USR2", "--health-timeout", "3s", "--max-rss", "512M"];
        let argv = argv.into_iter().chain(["--max-age", "1h", "./srv"]);
        let config = Config::from_cli(<Cli as clap::Parser>::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(config.drain_signal, nix::sys::signal::Signal::SIGUSR2);
        assert_eq!(config.health_timeout, Some(Duration::from_secs(3)));
        assert_eq!(config.max_rss, Some(512 << 20));
        assert_eq!(config.max_age, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn a_kill_drain_signal_or_a_zero_max_age_is_a_usage_error() {
        use clap::Parser;
        let err = Cli::try_parse_from(["panzer", "--drain-signal", "KILL", "./srv"]).unwrap_err();
        assert!(err.to_string().contains("SIGKILL cannot be a drain signal"), "{err}");
        let cli = Cli::try_parse_from(["panzer", "--max-age", "0s", "./srv"]).unwrap();
        let Err(Error::Usage(message)) = Config::from_cli(cli) else { panic!("accepted --max-age 0s") };
        assert!(message.starts_with("--max-age must be longer than 0"), "{message}");
    }
}
