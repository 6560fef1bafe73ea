//! Shell completions and man pages, generated from the clap definitions of
//! both programs, so they can never disagree with `--help`. They live in
//! panzerctl because panzer's first positional argument is the user's
//! COMMAND: `panzer completions` would run a program called `completions`.

use clap::{CommandFactory, ValueEnum};
use panzer::error::Error;

/// Which program a script or page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Program {
    Panzer,
    Panzerctl,
}

impl Program {
    fn command(self) -> clap::Command {
        match self {
            Program::Panzer => panzer::cli::Cli::command(),
            Program::Panzerctl => super::documented_command(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Program::Panzer => "panzer",
            Program::Panzerctl => "panzerctl",
        }
    }
}

pub fn completions(shell: clap_complete::Shell, program: Program) {
    let mut command = program.command();
    clap_complete::generate(shell, &mut command, program.name(), &mut std::io::stdout());
}

pub fn man(program: Program) -> Result<(), Error> {
    clap_mangen::Man::new(program.command())
        .render(&mut std::io::stdout())
        // Rust's own words for the error, as this message always had them.
        .map_err(|e| Error::control(format!("cannot write the man page: {e}")))
}
