//! `--log-format json`: each log line one JSON object, for a log shipper
//! (Loki, Elasticsearch, a cloud logger) to read without a pattern.
//!
//! A line of panzer's own is `{"ts", "level", "pid", "generation" (a
//! monitor's and its keeper's), "role" (the keeper's), "msg", …}` followed
//! by the record's key-values (`log::info!(worker = 3, worker_pid = 1234;
//! "…")`): the same words as the text line, plus what they are about as
//! fields a query can filter on. A worker's line under `--tag-output` is
//! `{"stream", "generation", "worker", "line"}`.
//!
//! Everything goes through `serde_json`, never a string built by hand, so
//! whatever a message or a worker's line holds (quotes, control bytes,
//! newlines) comes out escaped, one object per line.

use std::fmt;

use log::kv::{Key, Value, VisitSource};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// Who writes: the process and, for a monitor or its keeper, its generation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub(super) pid: u32,
    pub(super) generation: Option<u32>,
    pub(super) keeper: bool,
}

impl Origin {
    /// The text format's tag: `panzer[4242]`, `panzer[4242 gen 3]`,
    /// `panzer[4242 gen 3 keeper]`.
    pub(super) fn tag(&self) -> String {
        let pid = self.pid;
        match (self.generation, self.keeper) {
            (None, _) => format!("panzer[{pid}]"),
            (Some(k), false) => format!("panzer[{pid} gen {k}]"),
            (Some(k), true) => format!("panzer[{pid} gen {k} keeper]"),
        }
    }
}

/// The keys panzer sets itself: a record's field of the same name is left
/// out rather than written twice. (main has no generation of its own: a
/// line of main's about one names it in the field.)
const RESERVED: [&str; 5] = ["ts", "level", "pid", "role", "msg"];

/// One of panzer's own log lines, as a JSON object.
pub(super) struct Line<'a> {
    pub(super) ts: &'a dyn fmt::Display,
    pub(super) level: log::Level,
    pub(super) origin: &'a Origin,
    pub(super) msg: &'a fmt::Arguments<'a>,
    pub(super) fields: &'a dyn log::kv::Source,
}

impl Serialize for Line<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = Fields(Vec::new());
        if let Some(generation) = self.origin.generation {
            fields.0.push(("generation".to_string(), generation.into()));
        }
        // A field that cannot be read is left out; the message still goes.
        let _ = self.fields.visit(&mut fields);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("ts", &Text(self.ts))?;
        map.serialize_entry("level", &self.level.as_str().to_ascii_lowercase())?;
        map.serialize_entry("pid", &self.origin.pid)?;
        let mut fields = fields.0.iter();
        if self.origin.generation.is_some() {
            // The process's own, first of the fields.
            if let Some((key, value)) = fields.next() {
                map.serialize_entry(key, value)?;
            }
        }
        if self.origin.keeper {
            map.serialize_entry("role", "keeper")?;
        }
        map.serialize_entry("msg", &Text(self.msg))?;
        for (key, value) in fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Serializes as the string its `Display` writes, without an allocation.
struct Text<'a, T: fmt::Display + ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> Serialize for Text<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// A record's key-values, as JSON values: numbers stay numbers.
struct Fields(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        if RESERVED.contains(&key) || self.0.iter().any(|(k, _)| k == key) {
            return Ok(());
        }
        self.0.push((key.to_string(), json_value(&value)));
        Ok(())
    }
}

fn json_value(value: &Value<'_>) -> serde_json::Value {
    if let Some(n) = value.to_u64() {
        return n.into();
    }
    if let Some(n) = value.to_i64() {
        return n.into();
    }
    if let Some(b) = value.to_bool() {
        return b.into();
    }
    if let Some(s) = value.to_borrowed_str() {
        return s.into();
    }
    match value.to_f64().and_then(serde_json::Number::from_f64) {
        Some(n) => n.into(),
        None => value.to_string().into(),
    }
}

/// A worker's line under `--tag-output`, as a JSON object.
#[derive(Debug, Serialize)]
pub(crate) struct WorkerLine<'a> {
    pub(crate) stream: &'static str,
    pub(crate) generation: u32,
    pub(crate) worker: u32,
    pub(crate) line: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(
        level: log::Level,
        origin: &Origin,
        msg: fmt::Arguments<'_>,
        fields: &[(&str, Value)],
    ) -> String {
        let ts = "2026-01-02T03:04:05.678Z";
        serde_json::to_string(&Line { ts: &ts, level, origin, msg: &msg, fields: &fields }).unwrap()
    }

    #[test]
    fn a_line_is_one_object_with_the_origin_first_then_the_fields() {
        let origin = Origin { pid: 42, generation: Some(3), keeper: false };
        let fields = [("worker", Value::from(1u32)), ("worker_pid", Value::from(4242i32))];
        let line = render(log::Level::Info, &origin, format_args!("worker {} started", 1), &fields);
        assert_eq!(
            line,
            r#"{"ts":"2026-01-02T03:04:05.678Z","level":"info","pid":42,"generation":3,"msg":"worker 1 started","worker":1,"worker_pid":4242}"#
        );
    }

    #[test]
    fn whatever_a_message_holds_is_escaped_and_reserved_keys_are_never_written_twice() {
        let origin = Origin { pid: 7, generation: None, keeper: false };
        let fields = [("msg", Value::from("x")), ("status", Value::from("killed by \"SIGKILL\""))];
        let line = render(log::Level::Warn, &origin, format_args!("a \"quote\"\nand a newline"), &fields);
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["msg"], "a \"quote\"\nand a newline");
        assert_eq!(value["status"], "killed by \"SIGKILL\"");
        assert_eq!(value["level"], "warn");
        assert!(value.get("generation").is_none(), "main has no generation: {line}");
        assert_eq!(line.matches("\"msg\"").count(), 1, "{line}");
    }

    #[test]
    fn a_line_of_mains_about_a_generation_names_it_and_a_monitors_own_generation_wins() {
        let main = Origin { pid: 7, generation: None, keeper: false };
        let line = render(
            log::Level::Info,
            &main,
            format_args!("generation 4 stopped"),
            &[("generation", Value::from(4u32))],
        );
        assert!(line.ends_with(r#""msg":"generation 4 stopped","generation":4}"#), "{line}");
        let monitor = Origin { pid: 8, generation: Some(2), keeper: false };
        let line =
            render(log::Level::Info, &monitor, format_args!("x"), &[("generation", Value::from(4u32))]);
        assert!(line.contains(r#""pid":8,"generation":2,"msg":"x"}"#), "{line}");
    }

    #[test]
    fn the_keeper_says_so_and_the_text_tags_stay_as_they_were() {
        let keeper = Origin { pid: 9, generation: Some(2), keeper: true };
        let line = render(log::Level::Error, &keeper, format_args!("gone"), &[]);
        assert!(line.contains(r#""generation":2,"role":"keeper","msg":"gone""#), "{line}");
        assert_eq!(keeper.tag(), "panzer[9 gen 2 keeper]");
        assert_eq!(Origin { keeper: false, ..keeper }.tag(), "panzer[9 gen 2]");
        assert_eq!(Origin { generation: None, ..keeper }.tag(), "panzer[9]");
    }
}
