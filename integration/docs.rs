//! Shell completions and man pages, as `panzerctl completions` and
//! `panzerctl man` print them for both programs.

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
