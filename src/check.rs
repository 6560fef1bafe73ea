//! `panzer --check`: what a start would refuse, found without starting, as
//! `nginx -t` and `gunicorn --check-config` do it.
//!
//! It works from the [`Config`] a start would run with, so whatever the
//! configuration is read from, the check covers it. Each check is the very
//! function the start path calls, or the read-only half of it (the half
//! that creates, binds or removes is left out): COMMAND and its `#!`
//! interpreters (`worker::resolve_program`), `--user` and `--group`
//! (`Config::resolve_credentials`), the pid file's place
//! (`pid_file::check_place`), the runtime directory
//! (`runtime_dir::check_private_dir`, `check_shared_dir`), and each unix
//! socket's path (`sockets::check_unix_path`). Every problem is printed, one
//! line each, and the exit status is 2; with none, one line says the
//! configuration is OK, and the exit status is 0.
//!
//! Nothing is bound, started, created or removed. So an address or a pid
//! file that the running instance holds is not a problem: the check is
//! typically run beside it, before a restart. A TCP address is bound only
//! by a start.

use std::path::PathBuf;

use crate::config::Config;
use crate::error::{Error, EXIT_USAGE};
use crate::main_process::pid_file;
use crate::sockets::{self, BindAddr};
use crate::{runtime_dir, worker};

/// Checks what a start with `parsed` would need; prints the problems (or
/// the confirmation) on stderr, as `nginx -t` does; returns the exit status.
pub fn run(parsed: Result<Config, Error>) -> i32 {
    let (lines, code) = match parsed.map(|config| (check(&config), config)) {
        Ok((Ok(confirmation), config)) => {
            // `-q` leaves only the problems, as `nginx -t -q` does.
            let quiet = config.log_level < log::LevelFilter::Info;
            (if quiet { Vec::new() } else { vec![confirmation] }, 0)
        }
        Ok((Err(problems), _)) => (report(&problems), EXIT_USAGE),
        Err(problem) => (report(&[problem]), EXIT_USAGE),
    };
    if !lines.is_empty() {
        let text: Vec<String> = lines.iter().map(|line| format!("panzer: {line}")).collect();
        crate::logging::exit_message(&text.join("\n"));
    }
    code
}

/// One line per problem, then how many.
fn report(problems: &[Error]) -> Vec<String> {
    let count = match problems.len() {
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    let mut lines: Vec<String> = problems.iter().map(Error::report).collect();
    lines.push(format!("configuration check failed: {count}"));
    lines
}

/// Every problem a start with `config` would meet before its first worker,
/// in the order a start meets them; or the line that confirms there is none.
pub fn check(config: &Config) -> Result<String, Vec<Error>> {
    let mut problems: Vec<Error> = config.deferred.iter().map(|line| Error::Usage(line.clone())).collect();
    let program =
        worker::resolve_program(&config.command, config.chdir.as_deref()).map_err(|e| problems.push(e)).ok();
    problems.extend(config.credential_problems());
    // `#!/usr/bin/env python3`: env finds python3 in the worker's PATH.
    if let Some(name) = program.as_ref().and_then(worker::env_program) {
        let path = match config.env.iter().rev().find(|(key, _)| key == "PATH") {
            Some((_, value)) => std::ffi::OsString::from(value),
            None => std::env::var_os("PATH").unwrap_or_default(),
        };
        if let Err(why) = worker::find_in(&name, &path) {
            let env = program.as_ref().and_then(|p| p.interpreters.last()).map(|p| p.display().to_string());
            problems.push(Error::Command {
                command: config.command.to_string_lossy().into_owned(),
                reason: format!(
                    "its interpreter {} (through {}, from its #! line): {why}",
                    name.to_string_lossy(),
                    env.unwrap_or_default()
                ),
            });
        }
    }
    // Sockets from systemd count as given, read as a start reads them.
    let adopted = sockets::Passed::from_env().unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    let adopted = adopted.is_some();
    if let Err(e) = config.check_preload_sockets(adopted) {
        problems.push(e);
    }
    for spec in &config.binds {
        if let Err(e) = sockets::owner_ids(spec) {
            problems.push(e);
        }
    }
    if let Some(path) = &config.pid_file {
        if let Err(e) = pid_file::check_place(path) {
            problems.push(e);
        }
    }
    // The private directory holds the default control socket and, unless
    // monitors run as another user, their notify sockets; with `--user`,
    // theirs go to a directory made in the temp dir.
    let other_user = config.user.is_some() || config.group.is_some();
    if config.control.is_none() || !other_user {
        if let Err(e) = runtime_dir::check_private_dir() {
            problems.push(e);
        }
    }
    if other_user {
        if let Err(e) = runtime_dir::check_shared_dir() {
            problems.push(e);
        }
    }
    let control = config.control.iter().map(|path| ("--control", path.display().to_string(), path));
    fn unix<'a>(flag: &'static str, addr: &'a BindAddr) -> Option<(&'static str, String, &'a PathBuf)> {
        match addr {
            BindAddr::Unix(path) => Some((flag, addr.to_string(), path)),
            BindAddr::Inet(_) => None,
        }
    }
    let binds = config.binds.iter().filter_map(|spec| unix("--bind", &spec.addr));
    let admin = config.admin_binds.iter().filter_map(|addr| unix("--admin-bind", addr));
    for (flag, shown, path) in control.chain(binds).chain(admin) {
        if let Err(why) = sockets::check_unix_path(path) {
            problems.push(Error::Usage(format!("{flag} {shown}: {why}")));
        }
    }
    if config.balance == crate::units::Balance::RoundRobin {
        let refused = crate::main_process::balance::refuse(&config.binds, adopted);
        if let Err(e) = refused.and_then(|()| crate::main_process::balance::probe()) {
            problems.push(e);
        }
    }
    match program {
        Some(program) if problems.is_empty() => Ok(confirmation(config, &program)),
        _ => Err(problems),
    }
}

/// `configuration OK: /srv/app.py (interpreter /usr/bin/python3), 4 workers`.
fn confirmation(config: &Config, program: &worker::Program) -> String {
    let mut line = format!("configuration OK: {}", program.path.display());
    if program.path.as_os_str() != config.command {
        line = format!("configuration OK: {} ({})", config.command.to_string_lossy(), program.path.display());
    }
    let interpreters: Vec<String> = program.interpreters.iter().map(|p| p.display().to_string()).collect();
    match interpreters.len() {
        0 => {}
        1 => line.push_str(&format!(" (interpreter {})", interpreters[0])),
        _ => line.push_str(&format!(" (interpreters {})", interpreters.join(", "))),
    }
    let workers = if config.count == 1 { "worker" } else { "workers" };
    line.push_str(&format!(", {} {workers}", config.count));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> Config {
        use clap::Parser;
        Config::parse(crate::cli::Cli::try_parse_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn a_command_found_in_path_is_confirmed_with_where_it_was_found() {
        let line = check(&config(&["panzer", "--count", "1", "sh"])).unwrap();
        assert!(line.starts_with("configuration OK: sh (/"), "{line}");
        assert!(line.ends_with("sh), 1 worker"), "{line}");
    }

    #[test]
    fn every_problem_is_kept_and_counted() {
        let argv = ["panzer", "--bind", "unix:/no/such/dir/a.sock", "--control", "/no/such/c.sock"];
        let problems = check(&config(&[&argv[..], &["./no-such-server"]].concat())).unwrap_err();
        let lines = report(&problems);
        // (The runtime directory is this machine's: whatever it says of it comes between.)
        for expected in [
            "cannot run ./no-such-server: no such file or directory",
            "--control /no/such/c.sock: its directory /no/such: no such file or directory",
            "--bind unix:/no/such/dir/a.sock: its directory /no/such/dir: no such file or directory",
        ] {
            assert!(lines.iter().any(|line| line == expected), "{expected} missing from {lines:?}");
        }
        assert_eq!(
            lines.last().unwrap(),
            &format!("configuration check failed: {} problems", problems.len())
        );
    }
}
