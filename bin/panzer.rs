//! `panzer`: parse the command line, then run main — or, as the hidden
//! `panzer __monitor …` that main starts, a monitor.

use clap::Parser;

use panzer::cli::Cli;
use panzer::config::Config;
use panzer::monitor;
use panzer::protocol::MonitorArgs;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "__monitor") {
        let args = MonitorArgs::parse_from(std::env::args_os().skip(1));
        std::process::exit(monitor::run(args));
    }
    let config = match Config::from_cli(Cli::parse()) {
        Ok(config) => config,
        Err(e) => fail(e),
    };
    panzer::logging::init(config.log_level, None);
    match panzer::main_process::run(config) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(e),
    }
}

fn fail(e: panzer::error::Error) -> ! {
    eprintln!("panzer: {}", e.report());
    std::process::exit(e.exit_code())
}
