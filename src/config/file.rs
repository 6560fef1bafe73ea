//! The configuration file (`--config FILE`, `PANZER_CONFIG`): a TOML table
//! whose keys are the long options, spelled as on the command line without
//! the leading dashes (`graceful-timeout`, never `graceful_timeout`), plus
//! `command` (an array: COMMAND and its arguments) and `env` (a table).
//!
//! There is no second list of keys to keep in step with [`Cli`]: a key is
//! valid when clap knows a long option of that name, and each value goes
//! through that option's own value parser, so the file accepts exactly what
//! the command line does. The file's values then become the options'
//! defaults, which is what puts them below the command line and the
//! environment and above the built-in defaults.
//!
//! The file is read with a size ceiling, must be a regular file, and, when a
//! reload reads it again, must still belong to the owner it had at start:
//! a symlink swapped meanwhile cannot make main (perhaps root) read, and
//! quote in an error, a file of someone else's.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command, CommandFactory};

use crate::cli::Cli;
use crate::error::Error;

/// The most bytes of configuration panzer reads.
pub const MAX_FILE: u64 = 1 << 20;

/// Options that make no sense in the file: the file itself, `--check`
/// (a file that says it would only ever check), and clap's own.
const NOT_KEYS: &[&str] = &["config", "check", "help", "version"];

/// A configuration file as read: its path, its owner, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// The owner's uid when it was first read: a re-read insists on it.
    pub owner: u32,
    pub text: String,
}

impl ConfigFile {
    /// Reads `path`: a regular file of at most [`MAX_FILE`] bytes, owned by
    /// `owner` when that is given (a re-read), else by anyone (the first read).
    pub fn read(path: &Path, owner: Option<u32>) -> Result<ConfigFile, Error> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let fail = |why: String| Error::Usage(format!("--config {}: {why}", path.display()));
        // Non-blocking: a FIFO put in its place must not hang main.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| fail(crate::error::describe(&e)))?;
        let meta = file.metadata().map_err(|e| fail(crate::error::describe(&e)))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        if let Some(owner) = owner.filter(|&o| o != meta.uid()) {
            return Err(fail(format!("now owned by uid {}, not uid {owner} as at start", meta.uid())));
        }
        // root's panzer runs the file's command, and its `user`, as it says:
        // a file another user may change is theirs to run anything as root.
        let me = nix::unistd::geteuid();
        if me.is_root() {
            if meta.uid() != 0 {
                return Err(fail(format!(
                    "owned by uid {}, not root, whose panzer runs what it says; make root its owner",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(fail(format!(
                    "writable by other users (mode {:04o}), and root's panzer runs what it says; \
                     chmod go-w it",
                    meta.mode() & 0o7777
                )));
            }
        }
        if meta.len() > MAX_FILE {
            return Err(fail(format!("larger than {} KiB", MAX_FILE >> 10)));
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| fail(crate::error::describe(&e)))?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(fail(format!("larger than {} KiB", MAX_FILE >> 10)));
        }
        let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
        Ok(ConfigFile { path: path.to_path_buf(), owner: meta.uid(), text })
    }
}

/// What a file says, checked key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// By key (the long option): the option's id, and the values as the
    /// command line would spell them.
    pub options: BTreeMap<String, (String, Vec<String>)>,
    /// `command = [...]`: COMMAND and its arguments.
    pub command: Option<Vec<OsString>>,
    /// `env = { ... }`, in the file's order.
    pub env: Vec<(String, String)>,
}

/// `FILE:LINE: KEY: why`.
fn at(file: &ConfigFile, span: Range<usize>, key: &str, why: impl std::fmt::Display) -> Error {
    let line = file.text[..span.start.min(file.text.len())].matches('\n').count() + 1;
    Error::Usage(format!("{}:{line}: {key}: {why}", file.path.display()))
}

/// Parses and checks `file`: every key an option (or `command`, `env`),
/// every value one that option accepts.
pub fn parse(file: &ConfigFile) -> Result<Settings, Error> {
    type Table = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
    let table: Table = toml::from_str(&file.text).map_err(|e| {
        // The message alone, without the quoted source line.
        let line =
            e.span().map_or(1, |s| file.text[..s.start.min(file.text.len())].matches('\n').count() + 1);
        let message: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        Error::Usage(format!("{}:{line}: {}", file.path.display(), message.join("; ")))
    })?;
    let command = Cli::command();
    let mut settings = Settings::default();
    for (key, value) in &table {
        let (name, span) = (key.get_ref().as_str(), value.span());
        let wrong = |what: &str| at(file, span.clone(), name, format!("expected {what}"));
        match name {
            "command" => {
                let words = strings(value.get_ref()).filter(|w| !w.is_empty()).ok_or_else(|| {
                    wrong(
                        "a non-empty array of strings, COMMAND first: [\"./my_server\", \"--port\", \"80\"]",
                    )
                })?;
                if words[0].is_empty() {
                    return Err(at(file, span, name, "the command is empty"));
                }
                settings.command = Some(words.into_iter().map(OsString::from).collect());
            }
            "env" => {
                let table =
                    value.get_ref().as_table().ok_or_else(|| wrong("a table: { KEY = \"value\" }"))?;
                for (k, v) in table {
                    let v = v.as_str().ok_or_else(|| wrong("string values: { KEY = \"value\" }"))?;
                    let pair = crate::worker::env_var(&format!("{k}={v}"))
                        .map_err(|e| at(file, span.clone(), name, e))?;
                    settings.env.push(pair);
                }
            }
            _ => {
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(name) && !NOT_KEYS.contains(&name))
                    .ok_or_else(|| unknown(file, key, &command))?;
                let words = words(arg, value.get_ref()).map_err(wrong)?;
                check(arg, name, &words).map_err(|e| at(file, span.clone(), name, reason(&e)))?;
                settings.options.insert(name.to_string(), (arg.get_id().to_string(), words));
            }
        }
    }
    Ok(settings)
}

/// An unknown key, with the option it was probably meant to be.
fn unknown(file: &ConfigFile, key: &toml::Spanned<String>, command: &Command) -> Error {
    let name = key.get_ref();
    let dashed = name.replace('_', "-");
    let hint = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .find(|long| *long == dashed && !NOT_KEYS.contains(long))
        .map_or(String::new(), |long| format!(" (keys are spelled as the options are: {long})"));
    at(file, key.span(), name, format!("unknown key{hint}"))
}

/// Runs `words` through the option's own value parser, alone: a command
/// of just that option, so nothing else of the command line interferes.
fn check(arg: &clap::Arg, long: &str, words: &[String]) -> Result<(), clap::Error> {
    if !matches!(arg.get_action(), ArgAction::Set | ArgAction::Append) {
        return Ok(()); // Flags and counts: their TOML type is all there is to check.
    }
    let alone = clap::Arg::new(arg.get_id().clone())
        .long(long.to_string())
        .value_name(arg.get_value_names().and_then(|n| n.first().cloned()).unwrap_or_else(|| "VALUE".into()))
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Append);
    let argv = words.iter().map(|w| format!("--{long}={w}"));
    Command::new("panzer").no_binary_name(true).arg(alone).try_get_matches_from(argv).map(|_| ())
}

/// The value as the words the option would get on the command line; the
/// error says what the option expects instead.
fn words(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<String>, &'static str> {
    use std::any::TypeId;
    use toml::Value;
    // An option whose values are whole numbers takes TOML integers
    // (`count = 8`); every other one takes strings (`graceful-timeout =
    // "10s"`): `count = "8"` or `count = 8.0` is a wrong type, not a guess.
    let kind = arg.get_value_parser().type_id();
    let numeric = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
    ]
    .iter()
    .any(|id| kind == *id);
    let scalar = |value: &Value| match value {
        Value::String(s) if !numeric => Some(s.clone()),
        Value::Integer(n) if numeric => Some(n.to_string()),
        _ => None,
    };
    let (one, many) =
        if numeric { ("an integer", "an array of integers") } else { ("a string", "an array of strings") };
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            Value::Boolean(b) => Ok(vec![b.to_string()]),
            _ => Err("true or false"),
        },
        ArgAction::Count => match value {
            Value::Integer(n) if (0..=u8::MAX as i64).contains(n) => Ok(vec![n.to_string()]),
            _ => Err("a number from 0 to 255"),
        },
        ArgAction::Append => match value {
            Value::Array(items) => items.iter().map(scalar).collect::<Option<_>>().ok_or(many),
            other => scalar(other).map(|s| vec![s]).ok_or(many),
        },
        _ => scalar(value).map(|s| vec![s]).ok_or(one),
    }
}

/// An array of strings.
fn strings(value: &toml::Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// What clap says is wrong with a value, on one line, without its "error: ".
pub(super) fn reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid value").trim_start_matches("error: ");
    // "…were not provided:" goes on with what was not, one per line.
    match first.strip_suffix(':') {
        Some(head) => {
            let named: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
            format!("{head}: {}", named.join(", "))
        }
        None => first.to_string(),
    }
}

impl Settings {
    /// The command line's parser with the file's values as the defaults.
    pub fn apply(&self, mut command: Command) -> Command {
        for (id, words) in self.options.values() {
            let words = words.clone();
            command = command.mut_arg(id.as_str(), move |arg| arg.default_values(words));
        }
        if self.command.is_some() {
            // COMMAND may now come from the file.
            command = command.mut_arg("command", |arg| {
                arg.required(false).required_unless_present(clap::builder::Resettable::Reset)
            });
        }
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn file(text: &str) -> ConfigFile {
        ConfigFile { path: "panzer.toml".into(), owner: 0, text: text.to_string() }
    }

    fn refused(text: &str) -> String {
        match parse(&file(text)) {
            Err(Error::Usage(message)) => message,
            other => panic!("{text:?} accepted: {other:?}"),
        }
    }

    fn config(argv: &[&str], text: &str) -> Config {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        Config::with_file(&argv, Some(file(text))).unwrap()
    }

    #[test]
    fn every_long_option_is_a_key_with_its_own_parser() {
        let text = "count = 2\nbind = [\"127.0.0.1:0\"]\nready = \"notify\"\ngraceful-timeout = \"10s\"\n\
                    tag-output = true\nmax-rss = \"512M\"\ncommand = [\"./srv\", \"--port\", \"80\"]\n\
                    env = { A = \"1\" }\nchdir = \"/\"\n";
        let config = config(&["panzer"], text);
        assert_eq!(config.count, 2);
        assert_eq!(config.ready, crate::units::ReadyMode::Notify);
        assert_eq!(config.graceful_timeout, std::time::Duration::from_secs(10));
        assert!(config.tag_output);
        assert_eq!(config.max_rss, Some(512 << 20));
        assert_eq!((config.command.to_str(), config.args.len()), (Some("./srv"), 2));
        assert_eq!(config.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(config.chdir.as_deref(), Some(Path::new("/")));
        assert_eq!(config.binds.len(), 1);
    }

    #[test]
    fn the_command_line_wins_and_its_command_replaces_the_files_whole() {
        let text = "count = 2\ncommand = [\"./srv\", \"--port\", \"80\"]\nenv = { A = \"1\", B = \"2\" }\n";
        let config = config(&["panzer", "--count", "3", "--env", "A=9", "./other"], text);
        assert_eq!(config.count, 3);
        assert_eq!((config.command.to_str(), config.args.len()), (Some("./other"), 0));
        assert_eq!(config.env, [("B".to_string(), "2".to_string()), ("A".to_string(), "9".to_string())]);
    }

    #[test]
    fn a_bad_key_type_or_value_names_the_line_and_the_key() {
        assert_eq!(refused("\nfoo = 1\n"), "panzer.toml:2: foo: unknown key");
        assert!(refused("max_age = \"1h\"")
            .ends_with("unknown key (keys are spelled as the options are: max-age)"));
        assert_eq!(refused("config = \"x\""), "panzer.toml:1: config: unknown key");
        assert_eq!(refused("preload = 1"), "panzer.toml:1: preload: expected true or false");
        assert_eq!(refused("count = [1]"), "panzer.toml:1: count: expected an integer");
        assert_eq!(refused("count = \"3\""), "panzer.toml:1: count: expected an integer");
        assert_eq!(refused("max-age = 3600"), "panzer.toml:1: max-age: expected a string");
        assert!(refused("count = 0").starts_with("panzer.toml:1: count: invalid value '0'"));
        assert!(refused("env = { \"\" = \"x\" }").contains("env: =x: the variable's name is empty"));
        assert!(refused("count = ").starts_with("panzer.toml:1: "));
    }

    #[test]
    fn a_reload_applies_what_a_generation_can_change_and_names_the_rest() {
        let before = config(&["panzer"], "count = 1\nbacklog = 10\ncommand = [\"./a\"]\n");
        let after = config(&["panzer"], "count = 2\nbacklog = 20\ncommand = [\"./b\"]\nmax-age = \"1h\"\n");
        let (applied, changes) = before.apply(after);
        assert_eq!(changes.applied, ["command", "count", "max-age"]);
        assert_eq!(changes.ignored, ["backlog"]);
        assert_eq!((applied.count, applied.backlog, applied.command.to_str()), (2, 10, Some("./b")));
        // Still ignored on the next reload, while it still differs.
        let again = config(&["panzer"], "count = 2\nbacklog = 20\ncommand = [\"./b\"]\nmax-age = \"1h\"\n");
        let (_, changes) = applied.apply(again);
        assert_eq!((changes.applied.len(), changes.ignored), (0, vec!["backlog".to_string()]));
    }

    #[test]
    fn every_key_a_reload_applies_reaches_the_configuration() {
        // One change per key; a key added to the list needs one here.
        let changes = [
            ("command", "command = [\"./a\"]", "command = [\"./b\"]"),
            ("env", "env = { A = \"1\" }", "env = { A = \"2\" }"),
            ("chdir", "chdir = \"/\"", "chdir = \"/tmp\""),
            ("count", "count = 1", "count = 2"),
            ("ready", "ready = \"notify\"", "ready = \"accepting\""),
            ("startup-timeout", "startup-timeout = \"10s\"", "startup-timeout = \"20s\""),
            ("graceful-timeout", "graceful-timeout = \"10s\"", "graceful-timeout = \"20s\""),
            ("stop-delay", "stop-delay = \"1s\"", "stop-delay = \"2s\""),
            ("drain-signal", "drain-signal = \"TERM\"", "drain-signal = \"INT\""),
            ("health-timeout", "health-timeout = \"10s\"", "health-timeout = \"20s\""),
            ("max-rss", "max-rss = \"100M\"", "max-rss = \"200M\""),
            ("max-age", "max-age = \"1h\"", "max-age = \"2h\""),
            ("reload-strategy", "reload-strategy = \"all\"", "reload-strategy = \"rolling\""),
            ("canary", "canary = \"1s\"", "canary = \"2s\""),
            ("tag-output", "tag-output = false", "tag-output = true"),
        ];
        let keys: Vec<&str> = changes.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(keys, crate::config::RELOADABLE);
        let shown = |mut c: Config| {
            c.file = None;
            format!("{c:?}")
        };
        for (key, from, to) in changes {
            let with = |line: &str| {
                let command = if key == "command" { String::new() } else { "command = [\"./a\"]\n".into() };
                config(&["panzer"], &format!("{command}{line}\n"))
            };
            let (before, after) = (with(from), with(to));
            let (applied, changes) = before.clone().apply(after.clone());
            assert_eq!(changes.applied, [key], "{key}");
            assert_ne!(shown(applied.clone()), shown(before), "{key}: the change was not applied");
            assert_eq!(shown(applied), shown(after), "{key}");
        }
    }

    #[test]
    fn a_key_the_command_line_overrides_is_no_change_of_the_file() {
        let before = config(&["panzer", "--backlog", "5"], "backlog = 10\ncommand = [\"./a\"]\n");
        let after = config(&["panzer", "--backlog", "5"], "backlog = 20\ncommand = [\"./a\"]\n");
        assert_eq!(before.apply(after).1, crate::config::Changes::default());
    }
}
