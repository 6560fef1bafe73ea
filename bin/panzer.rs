//! `panzer`: parse the command line, then run main (or only check what it
//! would need: `--check`) — or, as the hidden
//! `panzer __monitor …` that main starts, a monitor; as `panzer __keeper …`
//! that a monitor starts, the keeper of its generation's process group; or,
//! during an upgrade, the check of a new binary (`__upgrade-check FD`) and
//! main resumed in place (with `PANZER_RESUME_FD` set, or `__resume FD`
//! from an older image).

use clap::Parser;

use panzer::config::{Config, LoadError};
use panzer::protocol::MonitorArgs;
use panzer::{main_process, monitor};

fn main() {
    // An upgrade: main re-executed in place with its own command line. The
    // variable goes before anything could pass it on.
    if let Some(fd) = std::env::var_os(main_process::RESUME_ENV) {
        std::env::remove_var(main_process::RESUME_ENV);
        exit(main_process::resume(&fd));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "__monitor") {
        let args = MonitorArgs::parse_from(std::env::args_os().skip(1));
        std::process::exit(monitor::run(args));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == monitor::keeper::COMMAND) {
        let args = monitor::keeper::KeeperArgs::parse_from(std::env::args_os().skip(1));
        std::process::exit(monitor::keeper::run(args));
    }
    // An upgrade: the check of this binary, then main re-executed in place.
    let hidden = |command: &str| std::env::args_os().nth(1).is_some_and(|a| a == command);
    let fd = || std::env::args_os().nth(2).unwrap_or_default();
    if hidden(main_process::CHECK_COMMAND) {
        std::process::exit(main_process::check_upgrade(&fd()));
    }
    if hidden(main_process::RESUME_COMMAND) {
        exit(main_process::resume(&fd()));
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config = match Config::load_unresolved(&argv) {
        Ok(config) if config.check => std::process::exit(panzer::check::run(Ok(config))),
        Ok(mut config) => match config.resolve_credentials() {
            Ok(credentials) => {
                config.credentials = credentials;
                Ok(config)
            }
            Err(e) => Err(LoadError::Config(e)),
        },
        Err(LoadError::Config(e)) if panzer::config::check_requested(&argv) => {
            std::process::exit(panzer::check::run(Err(e)))
        }
        Err(e) => Err(e),
    };
    let config = match config {
        Ok(config) => config,
        Err(LoadError::Clap(e)) => e.exit(),
        Err(LoadError::Config(e)) => fail(e),
    };
    panzer::logging::init(config.log_level, config.log_format, None);
    exit(panzer::main_process::run(config));
}

/// main's end, started or resumed: its exit status, or the error that ended it.
fn exit(main: Result<i32, panzer::error::Error>) -> ! {
    match main {
        Ok(code) => {
            panzer::logging::finish();
            std::process::exit(code)
        }
        Err(e) => fail(e),
    }
}

fn fail(e: panzer::error::Error) -> ! {
    // Never waiting long on a stderr nobody reads.
    panzer::logging::exit_error(&e.report());
    std::process::exit(e.exit_code())
}
