//! The panzer command line a test runs, built instead of spelled out:
//! `Panzer::new(cmd).count(4).notify().start()` runs
//! `panzer --bind 127.0.0.1:0 --count 4 --ready notify CMD`.
//!
//! The builder only assembles argv: a launcher's own arguments
//! ([`PanzerCommand::via`]), then `--bind` (port 0 on the loopback unless
//! [`PanzerCommand::bind`] or [`PanzerCommand::no_bind`] says otherwise),
//! then the options in the order the test gave them, then the command and
//! its arguments. A test whose point is the command line itself (an odd
//! order, a missing command) gives it whole to [`Panzer::with_args`].

use std::os::fd::OwnedFd;

use super::{Deploy, Panzer};

/// The loopback on port 0: the kernel picks a free port, which panzer logs.
const ANY_PORT: &str = "127.0.0.1:0";

/// A panzer about to start; see the module docs for the argv it builds.
pub struct PanzerCommand {
    program: Option<String>,
    prefix: Vec<String>,
    bind: Option<String>,
    options: Vec<String>,
    command: Vec<String>,
    env: Vec<(String, String)>,
    out: Option<OwnedFd>,
}

impl Panzer {
    /// `panzer --bind 127.0.0.1:0 … COMMAND`, to be shaped and started.
    #[allow(clippy::new_ret_no_self)] // a builder's start, as `Command::new` is
    pub fn new(command: impl Into<String>) -> PanzerCommand {
        PanzerCommand {
            bind: Some(ANY_PORT.to_string()),
            command: vec![command.into()],
            ..PanzerCommand::bare()
        }
    }

    /// `panzer ARGS…`, exactly: no default `--bind`, no command but what
    /// `args` holds.
    pub fn with_args(args: &[&str]) -> PanzerCommand {
        PanzerCommand { options: args.iter().map(|a| a.to_string()).collect(), ..PanzerCommand::bare() }
    }

    /// Starts `program ARGS…`, which must exec panzer in the same process.
    #[allow(dead_code)] // the reload bench's way in; the tests use the builder
    pub fn start_via(program: &str, args: &[&str], env: &[(&str, &str)]) -> Panzer {
        Panzer::with_args(args).via(program, &[]).envs(env).start()
    }
}

impl PanzerCommand {
    fn bare() -> PanzerCommand {
        PanzerCommand {
            program: None,
            prefix: Vec::new(),
            bind: None,
            options: Vec::new(),
            command: Vec::new(),
            env: Vec::new(),
            out: None,
        }
    }

    /// `--bind ADDR` instead of `--bind 127.0.0.1:0`.
    pub fn bind(mut self, addr: impl Into<String>) -> PanzerCommand {
        self.bind = Some(addr.into());
        self
    }

    /// No `--bind` at all (panzer's default, or one given by the
    /// environment or in another place of argv).
    pub fn no_bind(mut self) -> PanzerCommand {
        self.bind = None;
        self
    }

    /// `--admin-bind 127.0.0.1:0`.
    pub fn admin(self) -> PanzerCommand {
        self.args(&["--admin-bind", ANY_PORT])
    }

    /// `--count N`.
    pub fn count(self, n: impl ToString) -> PanzerCommand {
        self.arg("--count").arg(n.to_string())
    }

    /// `--ready MODE` (`notify`, a delay such as `100ms`, …).
    pub fn ready(self, mode: impl Into<String>) -> PanzerCommand {
        self.arg("--ready").arg(mode)
    }

    /// `--ready notify`.
    pub fn notify(self) -> PanzerCommand {
        self.ready("notify")
    }

    /// `--pid-file {dir}/panzer.pid`, where `Panzer::ctl_by_pid_file` looks.
    pub fn pid_file(self) -> PanzerCommand {
        self.args(&["--pid-file", "{dir}/panzer.pid"])
    }

    /// One more option, or an option's value.
    pub fn arg(mut self, arg: impl Into<String>) -> PanzerCommand {
        self.options.push(arg.into());
        self
    }

    /// More options, in this order.
    pub fn args(mut self, args: &[&str]) -> PanzerCommand {
        self.options.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Arguments after the command (the worker's own, or a `--`).
    pub fn command_args(mut self, args: &[&str]) -> PanzerCommand {
        self.command.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `KEY=VALUE` added to panzer's environment.
    pub fn env(mut self, key: &str, value: &str) -> PanzerCommand {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Each of `env` added to panzer's environment.
    pub fn envs(mut self, env: &[(&str, &str)]) -> PanzerCommand {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Runs `program PREFIX… ARGS…` instead of `panzer ARGS…`: a launcher
    /// (or a copied binary) that sets up fds or limits and execs panzer in
    /// the same process; `prefix` is the launcher's own arguments, the
    /// panzer to exec among them.
    pub fn via(mut self, program: impl Into<String>, prefix: &[&str]) -> PanzerCommand {
        self.program = Some(program.into());
        self.prefix = prefix.iter().map(|a| a.to_string()).collect();
        self
    }

    /// panzer's stdout and stderr both on `out` (the write end of a pipe,
    /// say) instead of the log file, which stays empty.
    pub fn writing_to(mut self, out: OwnedFd) -> PanzerCommand {
        self.out = Some(out);
        self
    }

    /// The argv after the program's name.
    fn argv(&self) -> Vec<String> {
        let mut argv = self.prefix.clone();
        if let Some(bind) = &self.bind {
            argv.extend(["--bind".to_string(), bind.clone()]);
        }
        argv.extend(self.options.iter().cloned());
        argv.extend(self.command.iter().cloned());
        argv
    }

    /// Starts it, under a [`Panzer`] guard.
    pub fn start(self) -> Panzer {
        let argv = self.argv();
        let program = self.program.as_deref().unwrap_or(env!("CARGO_BIN_EXE_panzer"));
        Panzer::spawn(program, &argv, &self.env, self.out)
    }
}

/// panzer serving `deploy` with `count` workers, `--ready notify`, a pid
/// file for `panzerctl`, and `extra` options.
pub fn start_deploy(deploy: &Deploy, count: &str, extra: &[&str]) -> Panzer {
    Panzer::new(deploy.path()).count(count).notify().pid_file().args(extra).start()
}
