//! The validated configuration main runs with: defaults filled in, values
//! parsed, nothing left for the event loop to check. The layers it is made
//! of, highest first: the command line, the environment (`PANZER_*`), the
//! configuration file (`--config`, [`file`]), the built-in defaults. A
//! reload re-reads the file and applies what a generation can change
//! ([`Config::reloaded`]).

pub mod file;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::Cli;
use crate::error::Error;
use crate::limits::{CountCeiling, MonitorFds};
use crate::sockets::{BindAddr, BindSpec};
use crate::units::{ReadyMode, ReloadStrategy};
use file::ConfigFile;

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
    /// `--user` and `--group` as given (a name or a number).
    pub user: Option<String>,
    pub group: Option<String>,
    /// `(uid, gid)` for monitors and workers: `user` and `group` looked up
    /// (see [`Config::from_cli`]).
    pub credentials: Option<(u32, u32)>,
    pub log_level: log::LevelFilter,
    /// `--log-format`: text or JSON lines, main's and the monitors'.
    pub log_format: crate::logging::LogFormat,
    pub command: OsString,
    pub args: Vec<OsString>,
    /// Whether TCP sockets panzer binds get `TCP_NODELAY` (`--no-nodelay`).
    pub nodelay: bool,
    /// `--tag-output`: workers' lines prefixed by their monitor.
    pub tag_output: bool,
    /// `--reload-strategy`.
    pub reload_strategy: ReloadStrategy,
    /// `--balance`.
    pub balance: crate::units::Balance,
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
    /// `--check`: validate everything, start nothing.
    pub check: bool,
    /// Under `--check`, what was wrong but did not stop the parse (one
    /// line each): the check reports it among the rest.
    pub deferred: Vec<String>,
    /// `--env` and the file's `env`: set in every worker's environment.
    pub env: Vec<(String, String)>,
    /// `--chdir`, made absolute: where workers start.
    pub chdir: Option<PathBuf>,
    /// `--config`: the file as read at start, and as last applied.
    pub file: Option<Files>,
}

/// The configuration file at start (which the settings that need a restart
/// keep following) and as last applied by a reload.
#[derive(Debug, Clone)]
pub struct Files {
    pub at_start: ConfigFile,
    pub applied: ConfigFile,
    /// What the applied file says, for the next reload to compare with.
    settings: file::Settings,
}

/// Why the command line cannot be turned into a [`Config`].
#[derive(Debug)]
pub enum LoadError {
    /// The command line itself (clap prints its own usage, `--help` included).
    Clap(clap::Error),
    Config(Error),
}

impl From<Error> for LoadError {
    fn from(e: Error) -> LoadError {
        LoadError::Config(e)
    }
}

/// `argv` read leniently, before anything is validated: for the few
/// options that decide how the rest is read.
fn lenient(argv: &[OsString]) -> Option<clap::ArgMatches> {
    Cli::command().ignore_errors(true).try_get_matches_from(argv).ok()
}

/// The `--config` path the command line or `PANZER_CONFIG` names, if any,
/// read before everything else is parsed (the file fills in defaults).
pub fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    lenient(argv)?.get_one::<PathBuf>("config").cloned()
}

/// Whether `argv` asks for `--check`: with it, a configuration that does
/// not parse is one problem reported among the others.
pub fn check_requested(argv: &[OsString]) -> bool {
    lenient(argv).is_some_and(|m| m.get_flag("check"))
}

/// The option keys a generation can change on a reload; every other key
/// that changed waits for a restart.
pub(crate) const RELOADABLE: &[&str] = &[
    "command",
    "env",
    "chdir",
    "count",
    "ready",
    "startup-timeout",
    "graceful-timeout",
    "stop-delay",
    "drain-signal",
    "health-timeout",
    "max-rss",
    "max-age",
    "reload-strategy",
    "canary",
    "tag-output",
];

/// What a reload did with a re-read file: the keys it applies, and those
/// that changed but wait for a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub applied: Vec<String>,
    pub ignored: Vec<String>,
}

impl Config {
    /// The configuration from `argv` (`argv[0]` first) and the environment,
    /// with `--config`'s file read now, without looking anything up on this
    /// system: `credentials` stays `None`. `panzer --check` starts here, so
    /// that a wrong user is one problem among the others.
    pub fn load_unresolved(argv: &[OsString]) -> Result<Config, LoadError> {
        let file = config_path(argv).map(|path| ConfigFile::read(&path, None)).transpose()?;
        Config::with_file(argv, file)
    }

    /// The configuration from `argv`, the environment and `file` as given
    /// (a re-read, or the text an upgrade handed over); `credentials` stays
    /// `None`.
    pub fn with_file(argv: &[OsString], file: Option<ConfigFile>) -> Result<Config, LoadError> {
        let settings = file.as_ref().map(file::parse).transpose()?.unwrap_or_default();
        let matches = settings.apply(Cli::command()).try_get_matches_from(argv).map_err(LoadError::Clap)?;
        let cli = Cli::from_arg_matches(&matches).map_err(LoadError::Clap)?;
        // Only what the file says and nothing above it overrides counts as the file's.
        let mut effective = settings.clone();
        effective
            .options
            .retain(|_, (id, _)| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue));
        let mut config = Config::from_layers(cli, &settings)?;
        config.file = file.map(|f| Files { at_start: f.clone(), applied: f, settings: effective });
        Ok(config)
    }

    /// main's configuration after a reload re-read the file: the keys a
    /// generation can change are taken from the file as it is now; every
    /// other key keeps its value until a restart. `argv` is main's command
    /// line. Without `--config`, nothing changes.
    pub fn reloaded(&self, argv: &[OsString]) -> Result<(Config, Changes), Error> {
        let Some(files) = &self.file else { return Ok((self.clone(), Changes::default())) };
        let reread = ConfigFile::read(&files.at_start.path, Some(files.at_start.owner))?;
        let new = match Config::with_file(argv, Some(reread)) {
            Ok(new) => new,
            Err(LoadError::Config(e)) => return Err(e),
            Err(LoadError::Clap(e)) => {
                let path = files.at_start.path.display();
                return Err(Error::Usage(format!("{path}: {}", file::reason(&e))));
            }
        };
        Ok(self.apply(new))
    }

    /// This configuration with what a generation can change taken from
    /// `new` (built from the same command line and a newer file).
    pub fn apply(&self, new: Config) -> (Config, Changes) {
        let (Some(old_files), Some(new_files)) = (&self.file, new.file.clone()) else {
            return (self.clone(), Changes::default());
        };
        let (old, now) = (&old_files.settings, &new_files.settings);
        let mut keys: Vec<&String> = old.options.keys().chain(now.options.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut changes = Changes::default();
        let mut settings = old.clone();
        for key in keys {
            if old.options.get(key).map(|o| &o.1) == now.options.get(key).map(|o| &o.1) {
                continue;
            }
            if RELOADABLE.contains(&key.as_str()) {
                changes.applied.push(key.clone());
                match now.options.get(key) {
                    Some(value) => settings.options.insert(key.clone(), value.clone()),
                    None => settings.options.remove(key),
                };
            } else {
                changes.ignored.push(key.clone());
            }
        }
        if old.command != now.command {
            changes.applied.push("command".into());
        }
        if old.env != now.env {
            changes.applied.push("env".into());
        }
        settings.command = now.command.clone();
        settings.env = now.env.clone();
        changes.applied.sort();
        let mut config = self.clone();
        config.count = new.count;
        config.command = new.command;
        config.args = new.args;
        config.env = new.env;
        config.chdir = new.chdir;
        config.ready = new.ready;
        config.startup_timeout = new.startup_timeout;
        config.graceful_timeout = new.graceful_timeout;
        config.stop_delay = new.stop_delay;
        config.drain_signal = new.drain_signal;
        config.health_timeout = new.health_timeout;
        config.max_rss = new.max_rss;
        config.max_age = new.max_age;
        config.reload_strategy = new.reload_strategy;
        config.canary = new.canary;
        config.tag_output = new.tag_output;
        config.file =
            Some(Files { at_start: old_files.at_start.clone(), applied: new_files.applied, settings });
        (config, changes)
    }
}

impl Config {
    /// From the command line alone (no file), nothing looked up.
    pub fn parse(cli: Cli) -> Result<Config, Error> {
        Config::from_layers(cli, &file::Settings::default())
    }

    /// [`Config::parse`], then `--user` and `--group` looked up.
    #[cfg(test)]
    pub fn from_cli(cli: Cli) -> Result<Config, Error> {
        let mut config = Config::parse(cli)?;
        config.credentials = config.resolve_credentials()?;
        Ok(config)
    }

    /// From the command line, with what the file says where clap has no
    /// place for it: `command` and `env`.
    fn from_layers(mut cli: Cli, file: &file::Settings) -> Result<Config, Error> {
        cli.bind = crate::sockets::join_pieces(std::mem::take(&mut cli.bind)).map_err(Error::Usage)?;
        let round_robin = cli.balance == crate::units::Balance::RoundRobin;
        let ceiling = count_ceiling(cli.bind.len(), cli.tag_output, cli.preload, round_robin);
        let count = match cli.count {
            Some(n) => ceiling.check(&format!("--count {n}"), n.into()).map_err(Error::Usage)?,
            None => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                let what = format!("--count {cpus} (one per CPU, the default)");
                ceiling.check(&what, cpus.min(ceiling.max.max(1)).into()).map_err(Error::Usage)?
            }
        };
        // `panzer [OPTIONS] -- COMMAND [ARGS]`: the command is the first word after `--`.
        // A COMMAND on the command line replaces the file's whole.
        let from_file = file.command.as_ref().filter(|_| cli.command.is_none() && cli.args.is_empty());
        let (command, args) = match (cli.command, from_file) {
            (Some(command), _) => (command, cli.args),
            (None, Some(words)) => (words[0].clone(), words[1..].to_vec()),
            (None, None) => {
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
        // The file's `env`, then `--env` (which wins for the same KEY).
        let mut env: Vec<(String, String)> = Vec::new();
        for (key, value) in file.env.iter().chain(&cli.env) {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        // `--check` goes on past a bad DIR, to report the rest too.
        let mut deferred = Vec::new();
        let chdir = match cli.chdir.as_deref().map(work_dir).transpose() {
            Ok(dir) => dir,
            Err(e) if cli.check => {
                deferred.push(e.report());
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Config {
            env,
            chdir,
            deferred,
            file: None,
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
            user: cli.user,
            group: cli.group,
            credentials: None,
            log_level: log_level(cli.quiet, cli.verbose),
            log_format: cli.log_format,
            command,
            args,
            nodelay: !cli.no_nodelay,
            tag_output: cli.tag_output,
            reload_strategy: cli.reload_strategy,
            balance: cli.balance,
            canary: cli.canary.map(|c| c.0),
            drain_signal: cli.drain_signal.0,
            health_timeout: positive("--health-timeout", cli.health_timeout)?,
            max_rss: cli.max_rss.map(|size| size.0),
            max_age: positive("--max-age", cli.max_age)?,
            preload: cli.preload,
            check: cli.check,
        })
    }

    /// `--preload` needs a socket: every library-mode worker serves on one.
    /// `adopted`: whether systemd passed sockets in.
    pub fn check_preload_sockets(&self, adopted: bool) -> Result<(), Error> {
        if self.preload && self.binds.is_empty() && !adopted {
            return Err(Error::Usage(
                "--preload needs a listening socket: every library-mode worker serves on one; give --bind ADDR \
                 (or sockets from systemd)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What is wrong with `--user` and `--group`, each on its own (a wrong
    /// user does not hide a wrong group): what `panzer --check` reports.
    pub fn credential_problems(&self) -> Vec<Error> {
        match (self.user.as_deref(), self.group.as_deref()) {
            (Some(user), Some(group)) => {
                let mut problems: Vec<Error> =
                    [credentials(Some(user), None), credentials(None, Some(group))]
                        .into_iter()
                        .filter_map(Result::err)
                        .collect();
                // "need panzer to run as root" is said once.
                problems.dedup_by(|a, b| a.report() == b.report());
                problems
            }
            (user, group) => credentials(user, group).err().into_iter().collect(),
        }
    }

    /// `(uid, gid)` for `--user` and `--group`; `None` when neither is
    /// given. An unknown name, or either without root, is an error.
    pub fn resolve_credentials(&self) -> Result<Option<(u32, u32)>, Error> {
        credentials(self.user.as_deref(), self.group.as_deref())
    }
}

/// `--chdir DIR`, checked and made absolute (main's own working directory
/// never changes, so a relative DIR means the same place for every start).
fn work_dir(dir: &std::path::Path) -> Result<PathBuf, Error> {
    let absolute = std::path::absolute(dir)
        .map_err(|e| Error::Usage(format!("--chdir {}: {}", dir.display(), crate::error::describe(&e))))?;
    match std::fs::metadata(&absolute) {
        Ok(meta) if meta.is_dir() => Ok(absolute),
        Ok(_) => Err(Error::Usage(format!("--chdir {}: not a directory", dir.display()))),
        Err(e) => Err(Error::Usage(format!("--chdir {}: {}", dir.display(), crate::error::describe(&e)))),
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
/// (with `round_robin`, that many per worker) under this process's limits:
/// `limits::max_count`, or lower where `RLIMIT_NOFILE` leaves a monitor
/// room for fewer (see [`MonitorFds`]).
pub fn count_ceiling(sockets: usize, tag_output: bool, preload: bool, round_robin: bool) -> CountCeiling {
    let sockets = sockets.min(u32::MAX as usize) as u32;
    CountCeiling::now(Some(MonitorFds { sockets, tag_output, library: preload, round_robin }))
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

    use clap::Parser;

    #[test]
    fn every_key_a_reload_applies_is_an_option_or_command_or_env() {
        let command = Cli::command();
        for key in RELOADABLE.iter().filter(|k| !["command", "env"].contains(k)) {
            assert!(command.get_arguments().any(|a| a.get_long() == Some(key)), "{key}");
        }
    }

    #[test]
    fn env_and_chdir_are_checked() {
        assert!(crate::worker::env_var("A").unwrap_err().contains("expected KEY=VALUE"));
        assert!(crate::worker::env_var("PANZER_WORKER=1").unwrap_err().contains("panzer sets PANZER_*"));
        assert_eq!(crate::worker::env_var("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        let cli = Cli::try_parse_from(["panzer", "--chdir", "/no/such", "./srv"]).unwrap();
        let Err(Error::Usage(message)) = Config::from_cli(cli) else { panic!("accepted a missing --chdir") };
        assert_eq!(message, "--chdir /no/such: no such file or directory");
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
