//! Shell completions and man pages, generated from the clap definitions of
//! both programs, so they can never disagree with `--help`. They live in
//! panzerctl because panzer's first positional argument is the user's
//! COMMAND: `panzer completions` would run a program called `completions`.
//!
//! A man page is clap_mangen's title, NAME, SYNOPSIS, DESCRIPTION and
//! OPTIONS, then sections written here: panzerctl's subcommands on its own
//! page (clap_mangen would point to a page per subcommand, and there is
//! none), SIGNALS from the one signal table main obeys, EXIT STATUS from the
//! exit codes the program uses, ENVIRONMENT from the options' variables,
//! FILES, EXAMPLES and SEE ALSO.

use std::fmt::Write as _;
use std::io::Write as _;

use clap::{CommandFactory, ValueEnum};
use panzer::control::{signals, Command};
use panzer::error::{Error, EXIT_NOT_READY, EXIT_OSERR, EXIT_USAGE};

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
    std::io::stdout()
        .write_all(ascii(&page(program)).as_bytes())
        // Rust's own words for the error, as this message always had them.
        .map_err(|e| Error::control(format!("cannot write the man page: {e}")))
}

/// The whole man page of `program`, in roff.
fn page(program: Program) -> String {
    let command = program.command();
    let man = clap_mangen::Man::new(command.clone());
    // No hyphenation: the page is full of paths and option names.
    let mut page = mangen(&man, clap_mangen::Man::render_title) + ".nh\n";
    for render in [
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ] {
        page += without_preamble(&mangen(&man, render));
    }
    match program {
        Program::Panzer => {
            page += &signals_section();
            page += &exit_status(&[
                (0, "After a graceful (or immediate) stop."),
                (EXIT_NOT_READY, "Generation 1 never became ready."),
                (EXIT_USAGE, "A usage error, or COMMAND cannot be found or executed."),
                (
                    EXIT_OSERR,
                    "A socket cannot be bound (EX_OSERR), another OS resource failed, or the runtime \
                     directory is not safe to use.",
                ),
            ]);
            page += &environment(&command, PANZER_ENVIRONMENT);
            page += &section("In each worker", WORKER_ENVIRONMENT, "SS");
            page += &section("FILES", PANZER_FILES, "SH");
            page += &examples(PANZER_EXAMPLES);
            page += &see_also("panzerctl");
        }
        Program::Panzerctl => {
            page += &commands_section(&command);
            page += &exit_status(&[
                (0, "The request succeeded (with status \\-\\-ready: a generation is ready)."),
                (
                    1,
                    "panzer could not be reached, its reply says the request failed (a reload or an \
                     upgrade that failed), or status \\-\\-ready while panzer is not ready.",
                ),
                (EXIT_USAGE, "A usage error."),
            ]);
            page += &environment(&command, CONTROL_ENVIRONMENT);
            page += &section("FILES", CONTROL_FILES, "SH");
            page += &examples(PANZERCTL_EXAMPLES);
            page += &see_also("panzer");
        }
    }
    page + without_preamble(&mangen(&man, clap_mangen::Man::render_version_section))
}

/// `page` with every character outside ASCII written as a roff escape
/// (`…` as `\[u2026]`), which groff and mandoc read whatever the locale.
fn ascii(page: &str) -> String {
    page.chars().fold(String::with_capacity(page.len()), |mut out, c| {
        if c.is_ascii() {
            out.push(c);
        } else {
            let _ = write!(out, "\\[u{:04X}]", u32::from(c));
        }
        out
    })
}

/// One part of clap_mangen's page.
fn mangen(
    man: &clap_mangen::Man,
    render: fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> String {
    let mut out = Vec::new();
    render(man, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("clap_mangen writes UTF-8 from UTF-8")
}

/// clap_mangen starts each part with the definition of the apostrophe
/// string (`\*(Aq`); the page needs it once, at its top.
fn without_preamble(part: &str) -> &str {
    let mut rest = part;
    while rest.starts_with(".ie \\n(.g") || rest.starts_with(".el .ds Aq") {
        rest = rest.split_once('\n').map_or("", |(_, after)| after);
    }
    rest
}

/// `text` as a roff text line: backslashes, dashes and apostrophes
/// escaped, and a leading `.` or `'` kept from reading as a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-").replace('\'', "\\*(Aq");
    if escaped.starts_with('.') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", roff(text))
}

/// A section (`SH`) or subsection (`SS`) of tagged paragraphs.
fn section(title: &str, entries: &[(&str, &str)], macro_name: &str) -> String {
    format!(".{macro_name} \"{title}\"\n{}", tagged(entries))
}

/// Tagged paragraphs: each entry is (tag, text), both roff already (they
/// write `\-` for a dash).
fn tagged(entries: &[(&str, &str)]) -> String {
    entries.iter().map(|(tag, text)| format!(".TP\n{tag}\n{text}\n")).collect()
}

/// SIGNALS: the signals main takes as commands, grouped by what they do, in
/// the order of [`signals::TABLE`]; then the signals it handles apart.
fn signals_section() -> String {
    let mut out = String::from(".SH SIGNALS\n");
    let mut rows = signals::TABLE.iter().peekable();
    while let Some((signal, command)) = rows.next() {
        let mut names = vec![bold(signal.as_str())];
        while let Some((next, _)) = rows.next_if(|(_, c)| c == command) {
            names.push(bold(next.as_str()));
        }
        let _ = writeln!(out, ".TP\n{}\n{}", names.join(", "), roff(&effect(*command)));
    }
    out + ".TP\n\\fBSIGCHLD\\fR\nReap; a monitor that died unasked is replaced by a new generation.\n\
           .PP\n\\fBSIGPIPE\\fR is ignored. Any other signal whose default would end main is logged and \
           ignored (a real fault still ends main).\n\
           .PP\nA worker gets the \\fB\\-\\-drain\\-signal\\fR (default \\fBSIGTERM\\fR) when it should \
           drain, and \\fBSIGKILL\\fR once \\fB\\-\\-graceful\\-timeout\\fR has passed.\n"
}

/// What main does on a signal that asks for `command`.
fn effect(command: Command) -> String {
    match command {
        Command::Reload => {
            "Hot restart: start a new generation, and drain the old one once every new worker \
             is ready. If the new generation fails, the old one keeps serving."
                .into()
        }
        Command::Stop => "Graceful stop: report not ready, keep serving for --stop-delay, then drain every \
                          generation and exit 0. A second SIGTERM or SIGINT during the delay skips it; a \
                          second SIGINT after it stops at once."
            .into(),
        Command::StopNow => "Immediate stop: SIGKILL everything and exit.".into(),
        Command::ScaleBy(1) => "One worker more per generation.".into(),
        Command::ScaleBy(-1) => "One worker less per generation (never fewer than 1).".into(),
        Command::ScaleBy(n) => format!("{n:+} workers per generation (never fewer than 1)."),
        Command::Scale(n) => format!("Run {n} workers per generation."),
        Command::Upgrade => {
            "Upgrade panzer itself: main re-executes the binary now at its path, keeping its \
             pid, the sockets and the running workers."
                .into()
        }
        Command::Status => "Report the state of every generation and worker.".into(),
    }
}

fn exit_status(codes: &[(i32, &str)]) -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for (code, when) in codes {
        let _ = writeln!(out, ".TP\n\\fB{code}\\fR\n{when}");
    }
    out
}

/// ENVIRONMENT: each option's variable, as the option's own help names it,
/// then `more` (roff already).
fn environment(command: &clap::Command, more: &[(&str, &str)]) -> String {
    let mut out = String::from(".SH ENVIRONMENT\n");
    for arg in command.get_arguments() {
        let (Some(variable), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
        let _ =
            writeln!(out, ".TP\n{}\nAs {}.", bold(&variable.to_string_lossy()), bold(&format!("--{long}")));
    }
    out + &tagged(more)
}

/// EXAMPLES: what each does, then the command alone on its own line.
fn examples(examples: &[(&str, &str)]) -> String {
    let mut out = String::from(".SH EXAMPLES\n");
    for (what, command) in examples {
        if !what.is_empty() {
            let _ = writeln!(out, ".PP\n{}", roff(what));
        }
        let _ = writeln!(out, ".RS 4\n.nf\n{}\n.fi\n.RE", roff(command));
    }
    out
}

fn see_also(other: &str) -> String {
    format!(
        ".SH \"SEE ALSO\"\n\\fB{other}\\fR(1) (\\fBpanzerctl man {other}\\fR), and the reference chapter \
         of panzer's book, docs/src/reference.md in its source.\n"
    )
}

/// COMMANDS: each panzerctl subcommand on this page, with its arguments
/// and options (the options every subcommand that reaches a panzer takes are
/// under OPTIONS).
fn commands_section(command: &clap::Command) -> String {
    // Built, clap knows which options take a value; it adds `help` too.
    let mut command = command.clone();
    command.build();
    let shared: Vec<&str> = command.get_arguments().map(|a| a.get_id().as_str()).collect();
    let mut out = String::from(".SH COMMANDS\n");
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let own: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !shared.contains(&a.get_id().as_str()))
            .collect();
        let synopsis: Vec<String> = own.iter().map(|a| usage(a)).collect();
        let about = sub.get_long_about().or(sub.get_about()).map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(out, ".TP\n{} {}", bold(sub.get_name()), synopsis.join(" "));
        let _ = writeln!(out, "{}", paragraphs(&about));
        if own.is_empty() {
            continue;
        }
        out += ".RS\n";
        for arg in own {
            let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let mut extra = Vec::new();
            let defaults: Vec<String> =
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            if !defaults.is_empty() && arg.get_action().takes_values() {
                extra.push(format!("[default: {}]", defaults.join(", ")));
            }
            let values: Vec<String> =
                arg.get_possible_values().iter().map(|v| v.get_name().to_owned()).collect();
            if !values.is_empty() && !arg.is_hide_possible_values_set() {
                extra.push(format!("[possible values: {}]", values.join(", ")));
            }
            let text = [help, extra.join(" ")].join(" ");
            let _ = writeln!(out, ".TP\n{}\n{}", usage(arg), paragraphs(text.trim()));
        }
        out += ".RE\n";
    }
    out
}

/// An argument as a synopsis shows it: `<COUNT>`, `[PROGRAM]`, `[--ready]`,
/// `[--interval <DURATION>]`.
fn usage(arg: &clap::Arg) -> String {
    let value = || {
        let names = arg.get_value_names().map(|n| n.join(" ")).unwrap_or_else(|| arg.get_id().to_string());
        format!("\\fI<{}>\\fR", roff(&names.to_uppercase()))
    };
    match arg.get_long() {
        None if arg.is_required_set() => value(),
        None => format!("[{}]", value()),
        Some(long) if arg.get_action().takes_values() => {
            format!("[{} {}]", bold(&format!("--{long}")), value())
        }
        Some(long) => format!("[{}]", bold(&format!("--{long}"))),
    }
}

/// Help text of several paragraphs, in roff: a blank line between them.
fn paragraphs(text: &str) -> String {
    text.split("\n\n").map(|p| roff(&p.replace('\n', " "))).collect::<Vec<_>>().join("\n.IP\n")
}

/// What else panzer reads from its environment (roff).
const PANZER_ENVIRONMENT: &[(&str, &str)] = &[
    ("\\fBRUST_LOG\\fR", "The log filter (env_logger syntax); it overrides \\fB\\-q\\fR and \\fB\\-v\\fR."),
    (
        "\\fBNOTIFY_SOCKET\\fR",
        "Under systemd (Type=notify): main reports MAINPID, READY=1, RELOADING=1, STOPPING=1 and STATUS \
         there. Workers never see it.",
    ),
    ("\\fBWATCHDOG_USEC\\fR", "Under systemd: main sends WATCHDOG=1 at half this interval."),
    (
        "\\fBLISTEN_FDS\\fR, \\fBLISTEN_PID\\fR, \\fBLISTEN_FDNAMES\\fR",
        "Socket activation: main adopts the sockets systemd passes instead of binding \\fB\\-\\-bind\\fR \
         addresses.",
    ),
    ("\\fBXDG_RUNTIME_DIR\\fR, \\fBTMPDIR\\fR", "Where the private runtime directory is (see FILES)."),
];

/// What every worker finds in its environment (roff).
const WORKER_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "\\fBLISTEN_FDS\\fR, \\fBLISTEN_PID\\fR, \\fBLISTEN_FDNAMES\\fR",
        "The listening sockets at fd 3, 4, \\&... in \\fB\\-\\-bind\\fR order (systemd's socket \
         activation convention); LISTEN_PID is the worker's own pid.",
    ),
    (
        "\\fBNOTIFY_SOCKET\\fR",
        "The monitor's socket for READY=1, WATCHDOG=1, STATUS= and STOPPING=1 (sd_notify format).",
    ),
    ("\\fBPANZER_GENERATION\\fR", "The worker's generation: 1, 2, \\&..."),
    ("\\fBPANZER_WORKER\\fR", "The worker's ordinal, 0 to N\\-1, the same across restarts of its slot."),
    (
        "\\fBEINHORN_FD_COUNT\\fR, \\fBEINHORN_FD_\\fR\\fIn\\fR, \\fBSERVER_STARTER_PORT\\fR, \
         \\fBSERVER_STARTER_GENERATION\\fR",
        "The same sockets in einhorn's and Server::Starter's conventions.",
    ),
    (
        "\\fBWATCHDOG_USEC\\fR, \\fBWATCHDOG_PID\\fR",
        "With \\fB\\-\\-health\\-timeout\\fR: the timeout, and the worker's own pid.",
    ),
];

/// What else panzerctl reads from its environment (roff).
const CONTROL_ENVIRONMENT: &[(&str, &str)] = &[(
    "\\fBXDG_RUNTIME_DIR\\fR, \\fBTMPDIR\\fR",
    "Where the private runtime directory is, in which panzerctl looks for the control socket (see FILES).",
)];

/// The runtime directory and what panzer keeps there (roff).
const PANZER_FILES: &[(&str, &str)] = &[
    (
        "\\fI$XDG_RUNTIME_DIR\\fR\\fB/panzer/\\fR",
        "The private runtime directory (mode 0700), when XDG_RUNTIME_DIR is the user's own; else \
         \\fB/run/panzer/\\fR for root; else \\fI$TMPDIR\\fR\\fB/panzer\\-\\fR\\fIuid\\fR\\fB/\\fR. panzer \
         refuses it unless it is a real directory owned by its uid with no access for others, and \
         removes the entries of panzers no longer running.",
    ),
    (
        "\\fIpid\\fR\\fB.sock\\fR",
        "In the runtime directory: the control socket of main \\fIpid\\fR (mode 0600), unless \
         \\fB\\-\\-control\\fR names another path.",
    ),
    ("\\fIpid\\fR\\fB.d/\\fR", "In the runtime directory: the monitors' notify sockets."),
    (
        "\\fB\\-\\-pid\\-file\\fR \\fIPATH\\fR",
        "main's pid, written when it starts (created new, then renamed into place) and removed when it \
         exits.",
    ),
];

/// Where panzerctl finds panzer (roff).
const CONTROL_FILES: &[(&str, &str)] = &[(
    "\\fI$XDG_RUNTIME_DIR\\fR\\fB/panzer/\\fR\\fIpid\\fR\\fB.sock\\fR",
    "The default control socket of the panzer whose main is \\fIpid\\fR, in the private runtime directory \
     (else \\fB/run/panzer/\\fR for root, else \\fI$TMPDIR\\fR\\fB/panzer\\-\\fR\\fIuid\\fR\\fB/\\fR). \
     Without \\fB\\-\\-control\\fR or \\fB\\-\\-pid\\-file\\fR, panzerctl talks to the one panzer running \
     there, and names them all if there are several.",
)];

const PANZER_EXAMPLES: &[(&str, &str)] = &[
    ("Run four copies of a server on port 8080:", "panzer --bind 127.0.0.1:8080 --count 4 ./my_server"),
    (
        "The same, with arguments for the server after --:",
        "panzer --bind 127.0.0.1:8080 --count 4 -- ./my_server --verbose",
    ),
    (
        "Bind port 80 as root, run the workers as www-data, write a pid file:",
        "panzer --bind 0.0.0.0:80 --user www-data --pid-file /run/app.pid ./my_server",
    ),
    ("Hot restart after deploying a new build:", "kill -USR1 $(cat /run/app.pid)"),
    ("The same, waiting for the outcome:", "panzerctl --pid-file /run/app.pid reload"),
    (
        "Replace one worker at a time, after a canary served for 30 seconds:",
        "panzer --bind 127.0.0.1:8080 --reload-strategy rolling --canary 30s ./my_server",
    ),
    ("Library mode: load once, fork the workers:", "panzer --preload --bind 127.0.0.1:8080 ./my_app"),
];

const PANZERCTL_EXAMPLES: &[(&str, &str)] = &[
    ("Every generation and worker of the one panzer running:", "panzerctl status"),
    (
        "A readiness probe of the panzer whose pid file is /run/app.pid:",
        "panzerctl status --ready --pid-file /run/app.pid",
    ),
    ("Hot restart, and wait for the outcome:", "panzerctl reload"),
    ("Eight workers per generation from now on:", "panzerctl scale 8"),
    ("The status as JSON, from a given control socket:", "panzerctl status --json --control /run/app.sock"),
    (
        "Install the bash completion and the man page of panzer:",
        "panzerctl completions bash panzer > /etc/bash_completion.d/panzer",
    ),
    ("", "panzerctl man panzer > /usr/local/share/man/man1/panzer.1"),
];
