//! `panzerctl metrics`: the status in Prometheus text exposition format,
//! checked line by line against `status --json` on a live panzer.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::harness::*;

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the exposition strictly: every line is a comment (`# HELP name
/// text`, `# TYPE name kind`) or a sample `name{k="v",…} value`, and every
/// sample's name has a TYPE. Panics naming the first line that is neither.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(["counter", "gauge"].contains(&kind), "{line}");
                    assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice: {line}");
                }
                (Some("HELP"), Some(name), Some(help)) if !help.is_empty() => helps.push(name.to_string()),
                _ => panic!("malformed comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = body
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        (k.to_string(), v.unwrap_or_else(|| panic!("unquoted label in {line:?}")).to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        assert!(types.contains_key(name), "{name} has no # TYPE before it");
        assert!(helps.iter().any(|h| h == name), "{name} has no # HELP");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

/// The value of `name` with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let found: Vec<f64> = samples.iter().filter(|s| s.0 == name && s.1 == want).map(|s| s.2).collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

#[test]
fn metrics_match_the_status_after_a_good_and_a_failed_reload() {
    let dir = TestDir::new("metrics-deploy");
    let deploy = Deploy::new(&dir);
    let panzer = Panzer::new(deploy.path()).count(2).notify().pid_file().start();
    panzer.wait_ready(1);
    assert_eq!(panzer.ctl_by_pid_file(&["reload"]).code, 0);
    deploy.set("FAIL_ON_START=1");
    assert_eq!(panzer.ctl_by_pid_file(&["reload"]).code, 1);
    // Once only generation 2 is left, nothing changes but uptimes and RSS.
    let status = eventually(PATIENCE, "only generation 2 in the status", || {
        let out = panzer.ctl_by_pid_file(&["--json", "status"]);
        let reply: Value = serde_json::from_str(&out.stdout).ok()?;
        let status = reply["status"].clone();
        (status["generations"].as_array()?.len() == 1).then_some(status)
    });
    let out = panzer.ctl_by_pid_file(&["metrics"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let samples = parse(&out.stdout);

    let reloads = &status["reloads"];
    assert_eq!(value(&samples, "panzer_reloads_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(value(&samples, "panzer_reloads_total", &[("outcome", "failed")]), 1.0);
    assert_eq!(reloads["ok"], 1);
    assert_eq!(reloads["failed"], 1);
    let duration_ms = reloads["last_duration_ms"].as_u64().expect("last_duration_ms in status");
    let duration = value(&samples, "panzer_last_reload_duration_seconds", &[]);
    assert!((duration * 1000.0 - duration_ms as f64).abs() < 0.5, "{duration} s vs {duration_ms} ms");

    let generation = &status["generations"][0];
    assert_eq!(generation["generation"], 2);
    assert_eq!(value(&samples, "panzer_current_generation", &[]), 2.0);
    assert_eq!(value(&samples, "panzer_workers_configured", &[]), 2.0);
    let workers = generation["workers"].as_array().unwrap();
    let ready = workers.iter().filter(|w| w["ready"] == true).count();
    assert_eq!(value(&samples, "panzer_workers_ready", &[("generation", "2")]), ready as f64);
    assert_eq!(value(&samples, "panzer_workers", &[("generation", "2")]), workers.len() as f64);
    assert_eq!(value(&samples, "panzer_generation_info", &[("generation", "2"), ("state", "ready")]), 1.0);
    for w in workers {
        let slot = w["ordinal"].to_string();
        let labels = [("generation", "2"), ("slot", slot.as_str())];
        assert_eq!(value(&samples, "panzer_worker_restarts_total", &labels), w["restarts"].as_f64().unwrap());
        assert_eq!(value(&samples, "panzer_worker_ready", &labels), 1.0);
        // RSS moves between two requests: it is there, and plausible.
        let rss = value(&samples, "panzer_worker_resident_memory_bytes", &labels);
        assert!(rss > 100.0 * 1024.0 && w["rss_kib"].as_f64().unwrap() > 100.0, "{rss}");
    }
    assert_eq!(samples.iter().filter(|s| s.0 == "panzer_worker_ready").count(), workers.len());
    assert!(value(&samples, "panzer_uptime_seconds", &[]) >= status["uptime_s"].as_f64().unwrap());
}
