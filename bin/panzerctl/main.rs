//! `panzerctl`: see and steer a running panzer through its control socket.
//!
//! ```text
//! panzerctl [--control PATH | --pid-file PATH] [--json] [--timeout D] status [--ready]|reload|stop|scale N|upgrade|metrics|top
//! panzerctl completions bash|zsh|fish|elvish|powershell [panzer|panzerctl]
//! panzerctl man [panzer|panzerctl]
//! ```

mod client;
mod discover;
mod docs;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use panzer::control::{self, metrics, Reply, Request, Status};
use panzer::error::Error;
use panzer::units::CliDuration;

/// Control a running panzer: status, reload, stop, scale, upgrade, metrics, top.
///
/// The options that reach a panzer (--control, --pid-file, --json,
/// --timeout) may stand before or after the subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "panzerctl",
    version = control::version(),
    // Wrapped to the terminal (COLUMNS when it is not one), never wider.
    max_term_width = 100,
    after_help = "Signals, exit codes and files: `panzerctl man panzerctl`, `panzerctl man panzer`, \
                  or docs/src/reference.md."
)]
struct Cli {
    /// panzer's control socket (panzer --control).
    ///
    /// Default: from --pid-file, or the default socket of the one panzer running.
    #[arg(long, global = true, env = "PANZER_CONTROL", value_name = "PATH", conflicts_with = "pid_file")]
    control: Option<PathBuf>,

    /// panzer's pid file (panzer --pid-file).
    ///
    /// The control socket is then the default one for that pid: <pid>.sock in
    /// $XDG_RUNTIME_DIR/panzer, else /run/panzer for root, else $TMPDIR/panzer-<uid>.
    #[arg(long, global = true, env = "PANZER_PID_FILE", value_name = "PATH")]
    pid_file: Option<PathBuf>,

    /// Print the reply as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// How long to wait for a reply (reload waits for its outcome, however long).
    #[arg(long, global = true, default_value = "10s", value_name = "DURATION", value_parser = reply_timeout)]
    timeout: CliDuration,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show every generation and worker.
    Status {
        /// Readiness probe: exit 0 only while a generation is ready and panzer
        /// is not stopping, 1 otherwise.
        ///
        /// Prints one line saying why (`generation 1 starting: 0/4 workers
        /// ready`, `stopping`).
        #[arg(long)]
        ready: bool,
    },
    /// Hot restart; prints the new generation, or why it failed (exit 1).
    Reload,
    /// Stop gracefully.
    Stop,
    /// Run N workers per generation from now on.
    Scale {
        /// Workers per generation (at least 1, as panzer --count).
        #[arg(value_parser = worker_count)]
        count: u32,
    },
    /// Upgrade panzer itself: main re-executes the binary now at its path.
    ///
    /// It keeps its pid, the sockets and the workers. Waits for the outcome;
    /// prints the new version, or why the upgrade failed (exit 1).
    Upgrade,
    /// Print the status in Prometheus text format.
    ///
    /// For node_exporter's textfile collector, or a scrape.
    Metrics,
    /// A live view that refreshes in place; quit with q or Ctrl-C.
    ///
    /// Shows each generation, one row per worker (pid, ready, restarts,
    /// uptime, RSS, client connections), when what is left of a draining
    /// generation gets SIGKILL, and the reloads seen while it runs.
    Top {
        /// How often to refresh.
        #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = refresh_interval)]
        interval: CliDuration,
    },
    /// Print a shell completion script for panzer or panzerctl to stdout.
    ///
    /// For example: panzerctl completions bash panzer > /etc/bash_completion.d/panzer
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
        /// The program to complete.
        #[arg(value_enum, default_value_t = docs::Program::Panzerctl)]
        program: docs::Program,
    },
    /// Print the man page of panzer or panzerctl (roff) to stdout.
    ///
    /// For example: panzerctl man panzer > /usr/local/share/man/man1/panzer.1
    Man {
        /// The program whose page to print.
        #[arg(value_enum, default_value_t = docs::Program::Panzerctl)]
        program: docs::Program,
    },
}

/// Subcommands that talk to no panzer: the options that reach one are not
/// theirs (not in their help, not offered by completion).
const OFFLINE: [&str; 2] = ["completions", "man"];

/// panzerctl's command line as clap parses it: [`Cli`], with the global
/// options kept out of the [`OFFLINE`] subcommands. clap copies a global option
/// into every subcommand that has none of that name, so each of those gets a
/// hidden one of its own instead.
fn command() -> clap::Command {
    let cli = Cli::command().mut_args(|a| if a.is_global_set() { a.display_order(100) } else { a });
    let globals = global_args(&cli).map(|a| a.hide(true)).collect::<Vec<_>>();
    OFFLINE.iter().fold(cli, |cli, name| cli.mut_subcommand(name, |sub| sub.args(globals.clone())))
}

/// The same command line as the man page and the completions show it: the
/// global options in every subcommand but the [`OFFLINE`] ones, and nothing
/// hidden there (bash completion would offer a hidden option).
fn documented_command() -> clap::Command {
    let cli = Cli::command();
    let globals = global_args(&cli).collect::<Vec<_>>();
    let names: Vec<String> = cli.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    let cli = cli.mut_args(|a| a.global(false));
    // Every one in turn, which keeps their order.
    names.iter().fold(cli, |cli, name| {
        let online = !OFFLINE.contains(&name.as_str());
        cli.mut_subcommand(name, |sub| if online { sub.args(globals.clone()) } else { sub })
    })
}

/// Copies of `cli`'s global options, each to be given to one subcommand
/// (listed after the subcommand's own options).
fn global_args(cli: &clap::Command) -> impl Iterator<Item = clap::Arg> + '_ {
    cli.get_arguments().filter(|a| a.is_global_set()).map(|a| a.clone().global(false).display_order(100))
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    // clap checks conflicts within each level: --control before the
    // subcommand and --pid-file after it (or the other way) meet only here.
    if matches.contains_id("control") && matches.contains_id("pid_file") {
        command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "the argument '--control <PATH>' cannot be used with '--pid-file <PATH>'",
            )
            .exit();
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("panzerctl: {}", e.report());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, Error> {
    // These need no panzer.
    match cli.command {
        Cmd::Completions { shell, program } => {
            docs::completions(shell, program);
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Man { program } => return docs::man(program).map(|()| ExitCode::SUCCESS),
        _ => {}
    }
    let path = socket_path(cli)?;
    let (request, timeout) = match cli.command {
        Cmd::Status { .. } | Cmd::Metrics => (Request::Status, Some(cli.timeout.0)),
        Cmd::Reload => (Request::Reload, None),
        // main bounds it: a reload under way, then a check of a few seconds.
        Cmd::Upgrade => (Request::Upgrade, None),
        Cmd::Stop => (Request::Stop, Some(cli.timeout.0)),
        Cmd::Scale { count } => (Request::Scale { count }, Some(cli.timeout.0)),
        Cmd::Top { interval } => {
            return top::run(&path, interval.0, cli.timeout.0).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Completions { .. } | Cmd::Man { .. } => unreachable!("handled above"),
    };
    let reply = client::request(&path, &request, timeout)?;
    if let (Cmd::Metrics, Some(status)) = (&cli.command, &reply.status) {
        print!("{}", metrics::render(status));
        return Ok(ExitCode::SUCCESS);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reply).map_err(|e| Error::control(e.to_string()))?);
    }
    if let (Cmd::Status { ready: true }, Some(status)) = (&cli.command, &reply.status) {
        return probe(status, cli.json);
    }
    if !reply.ok {
        let what = match request {
            Request::Reload => "reload failed: ",
            Request::Upgrade => "upgrade failed: ",
            _ => "",
        };
        return Err(Error::control(format!(
            "{what}{}",
            reply.error.unwrap_or_else(|| "unknown error".into())
        )));
    }
    if !cli.json {
        print_human(&request, &reply);
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --ready`: the readiness line (unless the JSON was printed), and
/// exit 0 exactly when `ready` is true.
fn probe(status: &Status, json: bool) -> Result<ExitCode, Error> {
    let Some(line) = &status.readiness else {
        return Err(Error::control(format!(
            "panzer {} does not report its readiness; upgrade it",
            status.version
        )));
    };
    if !json {
        println!("{line}");
    }
    Ok(if status.ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn socket_path(cli: &Cli) -> Result<PathBuf, Error> {
    if let Some(path) = &cli.control {
        return Ok(path.clone());
    }
    let Some(pid_file) = &cli.pid_file else {
        return discover::discover();
    };
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| Error::os(format!("cannot read pid file {}", pid_file.display()), e))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| Error::control(format!("pid file {} does not hold a pid", pid_file.display())))?;
    discover::trusted_default_path(pid)
}

fn print_human(request: &Request, reply: &Reply) {
    match request {
        Request::Status => {
            if let Some(status) = &reply.status {
                print!("{}", status_table(status));
            }
        }
        Request::Reload => println!("reloaded: generation {} serves", reply.generation.unwrap_or(0)),
        Request::Stop => println!("panzer is stopping"),
        Request::Upgrade => println!(
            "upgraded: panzer {} runs as pid {}",
            reply.version.as_deref().unwrap_or("?"),
            reply.pid.unwrap_or(0)
        ),
        Request::Scale { .. } => {
            println!("panzer now runs {} worker(s) per generation", reply.count.unwrap_or(0))
        }
    }
}

fn status_table(s: &Status) -> String {
    let version = if s.version.is_empty() { String::new() } else { format!(", version {}", s.version) };
    let mut out = format!(
        "panzer pid {}, up {}, {} worker(s) per generation{version}\n",
        s.pid,
        age(s.uptime_s),
        s.count
    );
    for socket in &s.sockets {
        out += &format!("socket {} {}\n", socket.name, socket.addr);
    }
    if let Some(line) = &s.readiness {
        out += &format!("{}: {line}\n", if s.ready { "ready" } else { "not ready" });
    }
    out += &format!("reloads: {} ok, {} failed", s.reloads.ok, s.reloads.failed);
    if let Some(error) = &s.reloads.last_error {
        out += &format!(" (last error: {error})");
    }
    out += "\n";
    for g in &s.generations {
        out += &format!("\n{}\n", top::generation_line(g));
        out += &top::worker_row(top::Table::Status, top::WORKER_HEADINGS, "THREADS");
        out += "\n";
        for w in &g.workers {
            out += &top::worker_row(top::Table::Status, top::worker_cells(w), &w.threads.to_string());
            out += "\n";
        }
    }
    out
}

use top::age;

/// `top --interval`: at least [`MIN_INTERVAL`], as each refresh costs main
/// a read of /proc for every worker.
fn refresh_interval(text: &str) -> Result<CliDuration, String> {
    let interval: CliDuration = text.parse()?;
    if interval.0 < MIN_INTERVAL {
        return Err(format!("refreshes are at least {}ms apart", MIN_INTERVAL.as_millis()));
    }
    Ok(interval)
}

/// The shortest `top --interval`.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// `--timeout`: more than nothing.
fn reply_timeout(text: &str) -> Result<CliDuration, String> {
    let timeout: CliDuration = text.parse()?;
    if timeout.0.is_zero() {
        return Err("a reply cannot be waited for 0s".into());
    }
    Ok(timeout)
}

/// `scale`'s COUNT: a whole number, at least 1. Its ceiling (4096, or what
/// the limits of panzer's user allow) is panzer's to check: it answers with
/// the limit that applies.
fn worker_count(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("workers per generation are at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number of workers")),
    }
}
