//! The documentation a user reads: shell completions and man pages, as
//! `panzerctl completions` and `panzerctl man` print them for both programs;
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

/// The repository's root, where README.md and docs/ are.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// `program ARGS… --help`, run without any `PANZER_*` variable (clap shows
/// a variable's value beside its name when it is set).
fn help(program: &str, args: &[&str]) -> String {
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
    let panzer_help = vec![help(panzer, &[])];
    assert!(options_of(&panzer_help[0]).len() > 20, "too few options read from\n{}", panzer_help[0]);
    let mut problems =
        check_options("panzer", &panzer_help, &table_under(&reference, "## panzer's command line"));
    // panzerctl's own options, then each subcommand's.
    let top = help(panzerctl, &[]);
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
        ctl_help.push(help(panzerctl, &[command]));
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
