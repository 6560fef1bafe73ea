//! The documentation a user reads: help, shell completions and man pages,
//! as `--help`, `panzerctl completions` and `panzerctl man` print them for
//! both programs;
//! and the manual in `docs/` (an mdBook that also reads as plain Markdown):
//! its reference names every option `--help` lists, with the same
//! environment variable and default; its table of contents links every
//! page; every relative link in it and in the README resolves; the README
//! keeps its two set-up commands and the guarantees the book repeats.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

#[test]
fn the_bash_completion_of_panzer_offers_its_options_and_is_valid_bash() {
    let out = panzerctl(&["completions", "bash", "panzer"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for option in ["--count", "--graceful-timeout", "--bind", "--ready"] {
        assert!(out.stdout.contains(option), "no {option} in\n{}", out.stdout);
    }
    assert!(out.stdout.contains("complete ") && out.stdout.contains("panzer"), "{}", out.stdout);
    let dir = TestDir::new("completion");
    let script = dir.join("panzer.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    // Sourced into a shell, it registers a completion for panzer.
    let sourced = std::process::Command::new("bash")
        .args(["-c", &format!("source {} && complete -p panzer", script.display())])
        .output()
        .unwrap();
    assert!(sourced.status.success(), "{}", String::from_utf8_lossy(&sourced.stderr));
}

#[test]
fn completions_cover_panzerctl_and_the_other_shells() {
    let bash = panzerctl(&["completions", "bash"]);
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    for word in ["status", "reload", "metrics", "top", "--pid-file"] {
        assert!(bash.stdout.contains(word), "no {word} in panzerctl's completion");
    }
    for shell in ["zsh", "fish"] {
        let out = panzerctl(&["completions", shell, "panzer"]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("graceful-timeout"), "{shell}:\n{}", out.stdout);
    }
    let out = panzerctl(&["completions", "tcsh"]);
    assert_eq!(out.code, 2, "an unknown shell is a usage error");
}

#[test]
fn the_man_pages_are_roff_naming_every_option() {
    let out = panzerctl(&["man", "panzer"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let page = out.stdout;
    assert!(page.contains(".TH panzer 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"] {
        assert!(page.contains(section), "no {section} in\n{page}");
    }
    // roff escapes the dashes of options.
    for option in ["count", "bind", "graceful\\-timeout", "startup\\-timeout", "pid\\-file"] {
        assert!(page.contains(&format!("\\fB\\-\\-{option}\\fR")), "no --{option} in\n{page}");
    }
    assert!(page.contains("PANZER_GRACEFUL_TIMEOUT"), "the environment variables are named");
    let out = panzerctl(&["man"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains(".TH panzerctl 1") && out.stdout.contains("metrics"), "{}", out.stdout);
    // man itself can format it, when it is installed.
    if std::process::Command::new("man").arg("--version").output().is_ok() {
        let dir = TestDir::new("man");
        let file = dir.join("panzer.1");
        std::fs::write(&file, &page).unwrap();
        let shown =
            std::process::Command::new("man").arg("-l").arg(&file).env("MANPAGER", "cat").output().unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.status.success() && text.contains("--graceful-timeout"), "{text}");
    }
}

/// What `program ARGS…` prints to a pipe with `COLUMNS` set, as help sees
/// a terminal of that width.
fn help(program: &str, args: &[&str], columns: &str) -> String {
    let exe = match program {
        "panzer" => env!("CARGO_BIN_EXE_panzer"),
        _ => env!("CARGO_BIN_EXE_panzerctl"),
    };
    let out = std::process::Command::new(exe).args(args).env("COLUMNS", columns).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The help screens a user reads.
const HELP_SCREENS: &[(&str, &[&str])] = &[
    ("panzer", &["--help"]),
    ("panzer", &["-h"]),
    ("panzerctl", &["--help"]),
    ("panzerctl", &["-h"]),
    ("panzerctl", &["status", "--help"]),
    ("panzerctl", &["completions", "--help"]),
];

#[test]
fn help_fits_80_columns_without_breaking_a_word() {
    let wide = help("panzer", &["--help"], "200");
    assert!(wide.lines().any(|l| l.chars().count() > 80), "not wrapped to a wide terminal:\n{wide}");
    for (program, args) in HELP_SCREENS {
        let narrow = help(program, args, "80");
        for line in narrow.lines() {
            assert!(line.chars().count() <= 80, "{program} {args:?}: a line over 80 columns:\n{line}");
        }
        // Wrapping only moves words: the same words, in the same order, as
        // on a wide terminal.
        let wide = help(program, args, "200");
        let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(&narrow), words(&wide), "{program} {args:?}: a word broken at 80 columns");
        for line in wide.lines() {
            assert!(line.chars().count() <= 100, "{program} {args:?}: wider than 100 columns:\n{line}");
        }
    }
}

/// `text` with its whitespace made single spaces (wrapping undone).
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The environment variables help names (`[env: PANZER_COUNT=]`).
fn env_vars(help: &str) -> Vec<String> {
    flat(help).split("[env: ").skip(1).map(|rest| rest.split('=').next().unwrap().to_owned()).collect()
}

#[test]
fn short_help_is_a_summary_and_both_say_where_signals_and_exit_codes_are() {
    for program in ["panzer", "panzerctl"] {
        let short = help(program, &["-h"], "80");
        let long = help(program, &["--help"], "80");
        assert!(
            short.lines().count() * 3 < long.lines().count() * 2,
            "{program} -h is not a summary: {} lines, --help {}",
            short.lines().count(),
            long.lines().count()
        );
        for text in [&short, &long] {
            let text = flat(text);
            assert!(text.contains("Signals, exit codes"), "{program}: {text}");
            assert!(
                text.contains("`panzerctl man panzer") && text.contains("docs/src/reference.md"),
                "{text}"
            );
        }
        // Every option still shows its environment variable, in both.
        assert_eq!(env_vars(&short), env_vars(&long), "{program}");
    }
    let vars = env_vars(&help("panzer", &["-h"], "80"));
    for var in ["PANZER_COUNT", "PANZER_BIND", "PANZER_READY", "PANZER_DRAIN_SIGNAL", "PANZER_PRELOAD"] {
        assert!(vars.contains(&var.to_string()), "{var} not in {vars:?}");
    }
    // -h gives each option its first sentence; --help the rest as well.
    let short = flat(&help("panzer", &["-h"], "80"));
    assert!(short.contains("Workers per generation. Default: the number of CPUs"), "{short}");
    assert!(!short.contains("RLIMIT_NOFILE"), "{short}");
    assert!(flat(&help("panzer", &["--help"], "80")).contains("RLIMIT_NOFILE"));
}

/// `page` (roff) as text: fonts dropped, escapes undone.
fn plain(page: &str) -> String {
    page.replace("\\fB", "").replace("\\fI", "").replace("\\fR", "").replace("\\-", "-").replace("\\&", "")
}

/// Every `name(N)` reference in `text`.
fn page_references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices('(') {
        let after = &text[at..];
        if after.len() < 3 || !after.as_bytes()[1].is_ascii_digit() || after.as_bytes()[2] != b')' {
            continue;
        }
        let before = &text[..at];
        let start =
            before.rfind(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).map_or(0, |i| i + 1);
        if start < at {
            found.push(text[start..at + 3].to_owned());
        }
    }
    found
}

/// The section of `page` (roff) headed `title`, up to the next one.
fn man_section<'a>(page: &'a str, title: &str) -> &'a str {
    let start = page
        .find(&format!(".SH {title}\n"))
        .or_else(|| page.find(&format!(".SH \"{title}\"\n")))
        .unwrap_or_else(|| panic!("no {title} section in\n{page}"));
    let rest = &page[start + 4..];
    &rest[..rest.find("\n.SH ").unwrap_or(rest.len())]
}

#[test]
fn the_man_pages_document_signals_exit_status_environment_files_and_examples() {
    for program in ["panzer", "panzerctl"] {
        let out = panzerctl(&["man", program]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let page = out.stdout;
        for title in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"] {
            man_section(&page, title);
        }
        let files = plain(man_section(&page, "FILES"));
        assert!(files.contains("$XDG_RUNTIME_DIR/panzer/") && files.contains("/run/panzer/"), "{files}");
        // Each example is a line of its own, in a no-fill block.
        let examples = man_section(&page, "EXAMPLES");
        let commands: Vec<&str> =
            examples.split(".nf\n").skip(1).map(|block| block.split("\n.fi").next().unwrap()).collect();
        assert!(commands.len() >= 5, "{examples}");
        for command in &commands {
            assert!(!command.contains('\n'), "two examples on one line: {command}");
            assert!(command.starts_with("panzer") || command.starts_with("kill"), "{command}");
        }
        // No page is named that does not exist: only the two `panzerctl man`
        // prints.
        for reference in page_references(&plain(&page)) {
            assert!(reference == "panzer(1)" || reference == "panzerctl(1)", "{program}: {reference}");
        }
        assert!(!page.contains("panzerctl\\-status"), "{page}");
        // man itself formats it, when it is installed: the examples come out
        // one per line.
        if std::process::Command::new("man").arg("--version").output().is_ok() {
            let dir = TestDir::new("man-sections");
            let file = dir.join(&format!("{program}.1"));
            std::fs::write(&file, &page).unwrap();
            let shown = std::process::Command::new("man")
                .arg("-l")
                .arg(&file)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&shown.stdout);
            assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
            for heading in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
                assert!(text.lines().any(|l| l == heading), "no {heading} in\n{text}");
            }
            for command in &commands {
                let command = plain(command);
                assert!(text.lines().any(|l| l.trim() == command), "`{command}` not a line of\n{text}");
            }
        }
    }
    // panzer's signals are main's own table, every one of them.
    let page = panzerctl(&["man", "panzer"]).stdout;
    let signals = plain(man_section(&page, "SIGNALS"));
    for signal in
        ["SIGUSR1", "SIGHUP", "SIGTERM", "SIGINT", "SIGQUIT", "SIGTTIN", "SIGTTOU", "SIGUSR2", "SIGCHLD"]
    {
        assert!(signals.contains(signal), "no {signal} in\n{signals}");
    }
    let exits = plain(man_section(&page, "EXIT STATUS"));
    for code in ["0", "1", "2", "71"] {
        assert!(exits.contains(&format!(".TP\n{code}\n")), "no exit status {code} in\n{exits}");
    }
    let environment = plain(man_section(&page, "ENVIRONMENT"));
    for var in ["PANZER_COUNT", "PANZER_GRACEFUL_TIMEOUT", "RUST_LOG", "PANZER_GENERATION", "LISTEN_FDS"] {
        assert!(environment.contains(var), "no {var} in\n{environment}");
    }
    // panzerctl's subcommands are on its own page.
    let page = panzerctl(&["man", "panzerctl"]).stdout;
    let commands = plain(man_section(&page, "COMMANDS"));
    for command in ["status [--ready]", "scale <COUNT>", "top [--interval <DURATION>]", "completions <SHELL>"]
    {
        assert!(commands.contains(command), "no {command} in\n{commands}");
    }
}

#[test]
fn panzerctl_takes_its_options_after_the_subcommand_too() {
    let panzer = Panzer::new(example("server")).count(1).notify().pid_file().start();
    panzer.wait_ready(1);
    let line = panzer.wait_for_line("control socket at ");
    let control = line.rsplit("control socket at ").next().unwrap().trim().to_string();

    let out = panzerctl(&["status", "--control", &control]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(&format!("panzer pid {}", panzer.pid)), "{}", out.stdout);

    let out = panzer.ctl_by_pid_file(&["status", "--json", "--timeout", "5s"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["status"]["pid"], panzer.pid.as_raw());

    let pid_file = panzer.dir.join("panzer.pid");
    let out = panzer.ctl(&["metrics", "--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("panzer_workers"), "{}", out.stdout);

    // Before the subcommand, as always.
    assert_eq!(panzer.status()["pid"], panzer.pid.as_raw());
    let out = panzerctl(&["--control", &control, "--timeout", "5s", "scale", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Still one socket at a time, wherever they stand.
    let pid_file = pid_file.to_str().unwrap();
    for args in [
        ["--control", &control, "status", "--pid-file", pid_file],
        ["--pid-file", pid_file, "status", "--control", &control],
        ["status", "--control", &control, "--pid-file", pid_file],
    ] {
        let out = panzerctl(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains("cannot be used with"), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn completions_and_man_take_no_option_meant_for_a_panzer_and_scale_says_what_count_is() {
    for subcommand in ["completions", "man"] {
        let out = panzerctl(&[subcommand, "--help"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        for option in ["--json", "--control", "--pid-file", "--timeout"] {
            assert!(!out.stdout.contains(option), "{subcommand} offers {option}:\n{}", out.stdout);
        }
    }
    let out = panzerctl(&["scale", "--help"]);
    assert!(flat(&out.stdout).contains("<COUNT> Workers per generation"), "{}", out.stdout);
}

/// What bash completes for `words` (the last one being completed), with the
/// completion script `panzerctl completions bash PROGRAM` prints.
fn bash_completes(program: &str, words: &[&str]) -> Vec<String> {
    let script = panzerctl(&["completions", "bash", program]).stdout;
    let dir = TestDir::new("bash-completion");
    let file = dir.join("completion.bash");
    std::fs::write(&file, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let current = words.last().unwrap();
    let previous = words[words.len() - 2];
    // Called as bash calls it: COMP_WORDS and COMP_CWORD set, then the
    // function with the command, the word under the cursor and the one
    // before it.
    let driver = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_{program} {program} '{current}' '{previous}' 2>/dev/null\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        words.len() - 1,
    );
    let out = std::process::Command::new("bash").args(["--norc", "-c", &driver]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_option_values() {
    assert_eq!(bash_completes("panzer", &["panzer", "--ready", ""]), ["auto", "notify", "accepting"]);
    assert_eq!(bash_completes("panzer", &["panzer", "--reload-strategy", ""]), ["all", "rolling"]);
    assert_eq!(bash_completes("panzer", &["panzer", "--drain-signal", "US"]), ["USR1", "USR2"]);
    assert!(bash_completes("panzer", &["panzer", "--drain-signal", ""]).contains(&"TERM".to_string()));
    let shells = bash_completes("panzerctl", &["panzerctl", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.contains(&shell.to_string()), "{shells:?}");
    }
    assert!(bash_completes("panzerctl", &["panzerctl", "completions", "bash", ""]).contains(&"panzer".into()));
    assert_eq!(bash_completes("panzerctl", &["panzerctl", "man", "panzerc"]), ["panzerctl"]);
    // Options go where they are taken.
    let status = bash_completes("panzerctl", &["panzerctl", "status", "--"]);
    for option in ["--ready", "--control", "--pid-file", "--json", "--timeout"] {
        assert!(status.contains(&option.to_string()), "{option} not in {status:?}");
    }
    assert_eq!(bash_completes("panzerctl", &["panzerctl", "man", "--"]), ["--help"]);
}

#[test]
fn a_duration_still_sets_ready_and_a_rolling_step_the_strategy() {
    let panzer = Panzer::new(example("server"))
        .count(1)
        .ready("300ms")
        .args(&["--reload-strategy", "rolling:1"])
        .start();
    let line = panzer.wait_for_line("generation 1 ready");
    assert!(line.contains("alive"), "{line}");
}

/// The repository's root, where README.md and docs/ are.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// `program ARGS… --help`, run without any `PANZER_*` variable (clap shows
/// a variable's value beside its name when it is set).
fn help_without_env(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args).arg("--help");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PANZER_") {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One option as `--help` lists it: its long name, and the environment
/// variable and default clap shows beside it.
#[derive(Debug)]
struct HelpOption {
    long: String,
    env: Option<String>,
    default: Option<String>,
}

/// The options of a `--help` text. An option starts on a line indented at
/// most 6 columns with a `-`; the lines below it, indented deeper (a long
/// description, or a wrapped one), belong to it.
fn options_of(help: &str) -> Vec<HelpOption> {
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        if (1..=6).contains(&indent) && line.trim_start().starts_with('-') {
            entries.push(line.trim().to_string());
        } else if indent > 6 {
            if let Some(entry) = entries.last_mut() {
                entry.push(' ');
                entry.push_str(line.trim());
            }
        }
    }
    let between = |text: &str, open: &str, close: char| {
        text.find(open).map(|at| text[at + open.len()..].split(close).next().unwrap_or("").trim().to_string())
    };
    entries
        .iter()
        .filter_map(|entry| {
            let long = long_options(entry).into_iter().next()?;
            Some(HelpOption {
                long,
                env: between(entry, "[env: ", '='),
                default: between(entry, "[default: ", ']'),
            })
        })
        .collect()
}

/// The long options (`--name`) a text names, in order.
fn long_options(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let name: String =
            rest[at + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let before = rest[..at].chars().last();
        if !name.is_empty() && name.starts_with(|c: char| c.is_ascii_lowercase()) && before != Some('-') {
            found.push(name.clone());
        }
        rest = &rest[at + 2 + name.len()..];
    }
    found
}

/// Whether `text` names `--long` itself, not a longer option it begins.
fn names(text: &str, long: &str) -> bool {
    long_options(text).iter().any(|name| name == long)
}

/// The rows of the first table under `heading` in `markdown`, each split
/// into its cells.
fn table_under(markdown: &str, heading: &str) -> Vec<Vec<String>> {
    let start = markdown.find(heading).unwrap_or_else(|| panic!("no {heading:?}"));
    let section = &markdown[start + heading.len()..];
    let end = section.find("\n## ").unwrap_or(section.len());
    section[..end]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|row| row.trim_matches('|').split('|').map(|cell| cell.trim().to_string()).collect())
        .collect()
}

/// Checks that every option of `helps` has a row in `table` (first cell:
/// the option) that names its environment variable (second cell) and its
/// default (third cell); and that a row names no `PANZER_` variable that
/// `--help` does not show.
fn check_options(program: &str, helps: &[String], table: &[Vec<String>]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for option in helps.iter().flat_map(|help| options_of(help)) {
        if !seen.insert(option.long.clone()) {
            continue;
        }
        let Some(row) = table.iter().find(|row| names(&row[0], &option.long)) else {
            problems.push(format!("{program} --{}: no row in docs/src/reference.md", option.long));
            continue;
        };
        let cell = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
        match &option.env {
            Some(env) if !cell(1).contains(env.as_str()) => problems.push(format!(
                "{program} --{}: --help says [env: {env}], the reference says {:?}",
                option.long,
                cell(1)
            )),
            None if cell(1).contains("PANZER_") => problems.push(format!(
                "{program} --{}: the reference names {:?}, --help shows no variable",
                option.long,
                cell(1)
            )),
            _ => {}
        }
        if let Some(default) = &option.default {
            if !cell(2).contains(default.as_str()) {
                problems.push(format!(
                    "{program} --{}: --help says [default: {default}], the reference says {:?}",
                    option.long,
                    cell(2)
                ));
            }
        }
    }
    problems
}

#[test]
fn the_reference_names_every_option_of_panzer_and_panzerctl_with_its_variable_and_default() {
    let reference = read("docs/src/reference.md");
    let panzer = env!("CARGO_BIN_EXE_panzer");
    let panzerctl = env!("CARGO_BIN_EXE_panzerctl");
    let panzer_help = vec![help_without_env(panzer, &[])];
    assert!(options_of(&panzer_help[0]).len() > 20, "too few options read from\n{}", panzer_help[0]);
    let mut problems =
        check_options("panzer", &panzer_help, &table_under(&reference, "## panzer's command line"));
    // panzerctl's own options, then each subcommand's.
    let top = help_without_env(panzerctl, &[]);
    let mut ctl_help = vec![top.clone()];
    let commands: Vec<String> = top
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .filter(|command| command != "help")
        .collect();
    assert!(commands.len() >= 9, "too few subcommands read from\n{top}");
    for command in &commands {
        ctl_help.push(help_without_env(panzerctl, &[command]));
        assert!(
            reference.contains(&format!("`{command}")),
            "panzerctl {command}: not in docs/src/reference.md"
        );
    }
    problems.extend(check_options(
        "panzerctl",
        &ctl_help,
        &table_under(&reference, "## panzerctl's command line"),
    ));
    assert!(
        problems.is_empty(),
        "docs/src/reference.md is out of step with --help:\n{}",
        problems.join("\n")
    );
}

/// The Markdown files of the manual, relative to the repository's root.
fn book_pages() -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(root().join("docs/src"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/src/{name}"))
        .collect();
    pages.sort();
    pages
}

/// The lines of `text` outside fenced code blocks (fences excluded).
fn outside_code(text: &str) -> Vec<&str> {
    let mut in_fence = false;
    text.lines()
        .filter(|line| {
            let fence = line.trim_start().starts_with("```");
            in_fence ^= fence;
            !fence && !in_fence
        })
        .collect()
}

/// The targets of the Markdown links in `text`, outside code.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in outside_code(text) {
        // Drop inline code spans: what is between backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let target: String = rest[at + 2..].chars().take_while(|c| *c != ')').collect();
            targets.push(target.clone());
            rest = &rest[at + 2 + target.len()..];
        }
    }
    targets
}

/// The anchors of a Markdown file's headings, as a forge and mdBook make
/// them: lower case, punctuation dropped, spaces as dashes; a repeated one
/// gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in outside_code(text).into_iter().filter(|line| line.starts_with('#')) {
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c.to_ascii_lowercase() })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while found.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        found.insert(unique);
    }
    found
}

#[test]
fn the_books_contents_link_every_page_and_every_page_exists() {
    let summary = read("docs/src/SUMMARY.md");
    let listed: BTreeSet<String> = links(&summary).iter().map(|page| format!("docs/src/{page}")).collect();
    for page in &listed {
        assert!(root().join(page).is_file(), "SUMMARY.md links {page}, which does not exist");
    }
    for page in book_pages() {
        if page != "docs/src/SUMMARY.md" {
            assert!(listed.contains(&page), "SUMMARY.md does not link {page}");
        }
    }
    assert!(read("docs/book.toml").contains("src = \"src\""), "docs/book.toml names the source folder");
}

#[test]
fn every_relative_link_of_the_readme_and_the_book_resolves_to_a_file_and_a_heading() {
    let mut files = vec!["README.md".to_string(), "CHANGELOG.md".to_string()];
    files.extend(book_pages());
    let mut broken = Vec::new();
    for file in &files {
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        for target in links(&read(file)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved: PathBuf = if path.is_empty() { PathBuf::from(file) } else { dir.join(path) };
            let on_disk = root().join(&resolved);
            if !on_disk.exists() {
                broken.push(format!("{file}: {target}: no {}", resolved.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let text = std::fs::read_to_string(&on_disk).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{file}: {target}: no heading #{anchor} in {}", resolved.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `text` without its link targets, its lines joined: what a reader reads.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        out.push_str(&rest[..at + 1]);
        rest = &rest[at + 2..];
        rest = &rest[rest.find(')').map_or(rest.len(), |end| end + 1)..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_readme_keeps_its_guarantees_word_for_word_in_the_book_and_its_two_set_up_commands() {
    let readme = read("README.md");
    let heading = "## What panzer guarantees\n";
    let start = readme.find(heading).expect("the README says what panzer guarantees") + heading.len();
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let book = read("docs/src/guarantees.md");
    let book = book.strip_prefix("# What panzer guarantees\n").expect("guarantees.md starts with its title");
    assert_eq!(prose(section), prose(book), "README.md and docs/src/guarantees.md say different things");

    // The first block: exactly two commands. The first builds and serves the
    // example in the background, so that the second, the tests (what .ci/run
    // runs), is reached.
    let block = readme.split("```sh\n").nth(1).expect("a ```sh block").split("```").next().unwrap();
    let commands: Vec<&str> =
        block.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    assert_eq!(commands.len(), 2, "{block}");
    assert!(commands[0].contains("--bin panzer") && commands[0].ends_with(" &"), "{}", commands[0]);
    assert_eq!(commands[1], "cargo test");
    assert!(read(".ci/run").contains("\ncargo test "), ".ci/run runs the README's test command");
    assert!(readme.lines().count() <= 260, "the README is a map: the manual is in docs/");
}
