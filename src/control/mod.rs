//! One control vocabulary: signals, the control socket and `panzerctl` all
//! map onto [`Command`], and main executes commands in one place.

pub(crate) mod admin;
pub mod metrics;
pub mod server;
pub mod signals;

use serde::{Deserialize, Serialize};

/// Something an operator asks main to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Report the state of every generation and worker.
    Status,
    /// Hot restart: a new generation replaces the current one.
    Reload,
    /// Drain every generation, then exit 0.
    Stop,
    /// `SIGKILL` everything and exit.
    StopNow,
    /// Run this many workers per generation.
    Scale(u32),
    /// One worker more (`+1`) or less (`-1`), never below 1.
    ScaleBy(i32),
    /// Re-execute main's binary in place, keeping its pid, the sockets and
    /// the running generations.
    Upgrade,
}

/// This panzer's version: the package version, with a suffix given at build
/// time in `PANZER_VERSION_SUFFIX` (a distribution's patch level, or a
/// test's second build).
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!("{}{}", env!("CARGO_PKG_VERSION"), option_env!("PANZER_VERSION_SUFFIX").unwrap_or(""))
    })
}

/// A request line on the control socket: `{"cmd":"status"}`, …
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status,
    Reload,
    Stop,
    Scale { count: u32 },
    Upgrade,
}

impl Request {
    pub fn command(&self) -> Command {
        match *self {
            Request::Status => Command::Status,
            Request::Reload => Command::Reload,
            Request::Stop => Command::Stop,
            Request::Scale { count } => Command::Scale(count),
            Request::Upgrade => Command::Upgrade,
        }
    }

    /// Parses one request line; the error is what the client is told.
    ///
    /// Strict: a field the command does not take, a field given twice, or an
    /// unknown `cmd` is an error naming it, never ignored (serde's
    /// `deny_unknown_fields` does not reach the unit variants of a tagged enum).
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        const EXPECTED: &str = r#"expected {"cmd":"status|reload|stop|scale|upgrade"}"#;
        let Fields(fields) = serde_json::from_slice(line).map_err(|e| {
            let what = if serde_json::from_slice::<serde_json::Value>(line).is_ok() {
                "unknown request"
            } else {
                "not a JSON object"
            };
            format!("{what}: {e}; {EXPECTED}")
        })?;
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in &fields {
            if seen.contains(&key.as_str()) {
                return Err(format!("unknown request: field {} is given twice", quote(key)));
            }
            seen.push(key);
        }
        let cmd = match fields.iter().find(|(key, _)| key == "cmd").map(|(_, value)| value) {
            Some(serde_json::Value::String(cmd)) => cmd.clone(),
            Some(other) => {
                return Err(format!(
                    "unknown request: \"cmd\" must be a string, not {}; {EXPECTED}",
                    quote(&other.to_string())
                ))
            }
            None => return Err(format!("unknown request: no \"cmd\" field; {EXPECTED}")),
        };
        let takes: &[&str] = match cmd.as_str() {
            "status" | "reload" | "stop" | "upgrade" => &[],
            "scale" => &["count"],
            _ => return Err(format!("unknown request: unknown cmd {}; {EXPECTED}", quote(&cmd))),
        };
        if let Some((field, _)) =
            fields.iter().find(|(key, _)| key != "cmd" && !takes.contains(&key.as_str()))
        {
            let takes = match takes {
                [] => "no other field".to_string(),
                _ => format!(
                    "only {}",
                    takes.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
                ),
            };
            return Err(format!(
                "unknown request: unknown field {} for \"{cmd}\", which takes {takes}",
                quote(field)
            ));
        }
        Ok(match cmd.as_str() {
            "status" => Request::Status,
            "reload" => Request::Reload,
            "stop" => Request::Stop,
            "upgrade" => Request::Upgrade,
            _ => {
                let count = fields.iter().find(|(key, _)| key == "count").map(|(_, value)| value);
                let count = match count {
                    Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| n.to_string()),
                    Some(other) => Err(other.to_string()),
                    None => return Err("scale: the \"count\" field is missing".into()),
                };
                match count {
                    Ok(0) => return Err("scale: count must be at least 1".into()),
                    Ok(n) => Request::Scale { count: crate::limits::check_count(&format!("scale {n}"), n)? },
                    Err(v) => return Err(format!("scale: count must be a whole number, not {}", quote(&v))),
                }
            }
        })
    }
}

/// A JSON object's fields in order, duplicates kept, so that none is
/// silently dropped.
struct Fields(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// `s` quoted for an error message: escaped, and cut short when long.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}…", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// `panzer` status, as the `status` reply carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The version of the panzer image running as main (it changes with an upgrade).
    #[serde(default)]
    pub version: String,
    pub uptime_s: u64,
    pub count: u32,
    /// A generation is ready and panzer is not stopping: what a readiness
    /// probe wants (`panzerctl status --ready`, the admin endpoint's `/readyz`).
    #[serde(default)]
    pub ready: bool,
    /// A stop (graceful or not) has been taken.
    #[serde(default)]
    pub stopping: bool,
    /// One line that says why panzer is ready or not
    /// (`generation 1 starting: 0/4 workers ready`, `stopping`); absent
    /// from a panzer too old to tell.
    #[serde(default)]
    pub readiness: Option<String>,
    pub sockets: Vec<SocketStatus>,
    pub generations: Vec<GenerationStatus>,
    /// Processes of a generation whose monitor is gone, until they exit.
    #[serde(default)]
    pub orphans: Vec<i32>,
    pub reloads: ReloadStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketStatus {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub generation: u32,
    pub monitor_pid: i32,
    pub state: String,
    /// For a draining generation: in how many milliseconds what is left of
    /// it gets `SIGKILL` (0 once due). `null` for the others.
    #[serde(default)]
    pub kill_in_ms: Option<u64>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub ordinal: u32,
    pub pid: i32,
    pub ready: bool,
    pub restarts: u32,
    pub uptime_s: u64,
    pub rss_kib: u64,
    /// How the previous worker of this slot ended, if one did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Times this slot's worker was replaced by supervision
    /// (`--health-timeout`, `--max-rss`, `--max-age`); not in `restarts`.
    #[serde(default)]
    pub replaced: u32,
    /// Threads the worker process runs now (library mode's `.threads(T)`
    /// shows as T copies of `serve` plus the thread that watches them).
    #[serde(default)]
    pub threads: u32,
    /// The client connections the worker holds: established connections it
    /// accepted (see `main_process::connections`). `null` where that cannot
    /// be read.
    #[serde(default)]
    pub connections: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadStats {
    pub ok: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    /// How long the last reload took, from the start of its generation to
    /// its outcome (ready, or failed), in milliseconds.
    #[serde(default)]
    pub last_duration_ms: Option<u64>,
}

/// A reply line: `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// After an upgrade: main's pid (the same as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// After an upgrade: the version now running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply { ok: true, ..Reply::default() }
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(message.into()), ..Reply::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_the_documented_lines() {
        assert_eq!(Request::parse(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(Request::parse(br#"{"cmd":"upgrade"}"#), Ok(Request::Upgrade));
        assert_eq!(Request::parse(br#"{"cmd":"scale","count":3}"#), Ok(Request::Scale { count: 3 }));
        assert!(Request::parse(br#"{"cmd":"scale","count":0}"#).unwrap_err().contains("at least 1"));
        assert!(Request::parse(br#"{"cmd":"explode"}"#).unwrap_err().starts_with("unknown request"));
        assert!(Request::parse(b"garbage").unwrap_err().starts_with("not a JSON object"));
    }

    #[test]
    fn unknown_fields_are_refused_for_every_command_naming_the_field() {
        for (line, culprit) in [
            (r#"{"cmd":"reload","dry_run":true}"#, "\"dry_run\""),
            (r#"{"cmd":"stop","now":true}"#, "\"now\""),
            (r#"{"cmd":"status","x":null}"#, "\"x\""),
            (r#"{"cmd":"scale","count":2,"by":1}"#, "\"by\""),
            (r#"{"cmd":"stop","cmd":"reload"}"#, "\"cmd\" is given twice"),
            (r#"{"cmd":7}"#, "must be a string"),
            (r#"{"count":2}"#, "no \"cmd\""),
        ] {
            let err = Request::parse(line.as_bytes()).unwrap_err();
            assert!(err.starts_with("unknown request: ") && err.contains(culprit), "{line}: {err}");
        }
        let err = Request::parse(br#"{"cmd":"stop","now":true}"#).unwrap_err();
        assert_eq!(err, r#"unknown request: unknown field "now" for "stop", which takes no other field"#);
    }

    #[test]
    fn scale_is_held_to_the_count_ceiling() {
        let max = crate::limits::max_count();
        let at_most = format!(r#"{{"cmd":"scale","count":{max}}}"#);
        assert_eq!(Request::parse(at_most.as_bytes()), Ok(Request::Scale { count: max }));
        let err = Request::parse(br#"{"cmd":"scale","count":100000}"#).unwrap_err();
        assert!(err.starts_with(&format!("scale 100000: at most {max} workers")), "{err}");
        let err = Request::parse(br#"{"cmd":"scale","count":4294967296}"#).unwrap_err();
        assert!(err.starts_with("scale 4294967296: at most"), "{err}");
        let err = Request::parse(br#"{"cmd":"scale","count":-1}"#).unwrap_err();
        assert_eq!(err, "scale: count must be a whole number, not \"-1\"");
        let err = Request::parse(br#"{"cmd":"scale"}"#).unwrap_err();
        assert!(err.contains("\"count\" field is missing"), "{err}");
    }

    #[test]
    fn long_names_are_cut_short_in_errors() {
        let line = format!(r#"{{"cmd":"{}"}}"#, "x".repeat(100_000));
        let err = Request::parse(line.as_bytes()).unwrap_err();
        assert!(err.len() < 300, "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_line_parses_or_gets_a_one_line_error(line in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Err(e) = Request::parse(&line) {
                proptest::prop_assert!(!e.is_empty() && !e.contains('\n'), "{e:?}");
            }
        }

        #[test]
        fn any_object_is_accepted_only_with_the_documented_fields(
            fields in proptest::collection::vec(
                (
                    proptest::prop_oneof!["cmd", "count", "dry_run", "now", ".{0,8}"],
                    proptest::prop_oneof![
                        "\"(status|reload|stop|scale|upgrade|explode|)\"",
                        "-?[0-9]{1,12}",
                        "true|null|\\[\\]|\\{\\}|1e400|0.5",
                    ],
                ),
                0..4,
            )
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap())).collect();
            let line = format!("{{{}}}", body.join(","));
            match Request::parse(line.as_bytes()) {
                Ok(request) => {
                    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                    let expected: &[&str] = match request {
                        Request::Scale { .. } => &["cmd", "count"],
                        _ => &["cmd"],
                    };
                    proptest::prop_assert_eq!(keys.len(), expected.len(), "{}", line);
                    proptest::prop_assert!(keys.iter().all(|k| expected.contains(k)), "{}", line);
                }
                Err(e) => proptest::prop_assert!(!e.is_empty() && !e.contains('\n'), "{e:?}"),
            }
        }
    }

    #[test]
    fn replies_carry_only_what_they_say() {
        let text = serde_json::to_string(&Reply { generation: Some(3), ..Reply::ok() }).unwrap();
        assert_eq!(text, r#"{"ok":true,"generation":3}"#);
        let text = serde_json::to_string(&Reply::error("no")).unwrap();
        assert_eq!(text, r#"{"ok":false,"error":"no"}"#);
    }
}
