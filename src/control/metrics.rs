//! [`Status`] as Prometheus text exposition (format 0.0.4), for the admin
//! endpoint's `/metrics` (main) and `panzerctl metrics`: a scrape reads it
//! from the one, node_exporter's textfile collector from a file the other
//! wrote. Pure: a status in, text out.
//!
//! Every metric has `# HELP` and `# TYPE`; label values are escaped; a
//! worker is labelled by generation and slot, never by pid, so the series
//! survive restarts.

use std::fmt::Write;

use super::Status;

/// The whole exposition, one metric family after another, ending in a newline.
pub fn render(status: &Status) -> String {
    let mut out = Exposition::default();
    out.family("panzer_uptime_seconds", "gauge", "Seconds since panzer's main process started.");
    out.sample("panzer_uptime_seconds", &[], status.uptime_s);
    out.family("panzer_workers_configured", "gauge", "Workers per generation (--count, scale).");
    out.sample("panzer_workers_configured", &[], status.count);
    out.family(
        "panzer_ready",
        "gauge",
        "1 while a generation is ready and panzer is not stopping (what /readyz answers), else 0.",
    );
    out.sample("panzer_ready", &[], u8::from(status.ready));
    out.family("panzer_stopping", "gauge", "1 once panzer is stopping, else 0.");
    out.sample("panzer_stopping", &[], u8::from(status.stopping));

    out.family(
        "panzer_current_generation",
        "gauge",
        "The newest generation that serves (ready), or 0 while none does.",
    );
    let current = status.generations.iter().filter(|g| g.state == "ready").map(|g| g.generation).max();
    out.sample("panzer_current_generation", &[], current.unwrap_or(0));

    out.family(
        "panzer_generation_info",
        "gauge",
        "1 for each generation panzer runs, labelled with its state.",
    );
    for g in &status.generations {
        let generation = g.generation.to_string();
        out.sample("panzer_generation_info", &[("generation", &generation), ("state", &g.state)], 1);
    }
    out.family("panzer_workers", "gauge", "Worker processes running, per generation.");
    for g in &status.generations {
        out.sample("panzer_workers", &[("generation", &g.generation.to_string())], g.workers.len());
    }
    out.family("panzer_workers_ready", "gauge", "Workers that are ready, per generation.");
    for g in &status.generations {
        let ready = g.workers.iter().filter(|w| w.ready).count();
        out.sample("panzer_workers_ready", &[("generation", &g.generation.to_string())], ready);
    }

    out.family(
        "panzer_draining_kill_in_seconds",
        "gauge",
        "Seconds until what is left of this draining generation gets SIGKILL.",
    );
    let draining = || status.generations.iter().filter_map(|g| Some((g, g.kill_in_ms?)));
    for (g, ms) in draining() {
        out.sample(
            "panzer_draining_kill_in_seconds",
            &[("generation", &g.generation.to_string())],
            Seconds(ms),
        );
    }
    out.family(
        "panzer_draining_connections",
        "gauge",
        "Client connections the workers of this draining generation still hold (no sample where a worker's \
         cannot be read).",
    );
    for (g, _) in draining() {
        let counts: Option<Vec<u32>> = g.workers.iter().map(|w| w.connections).collect();
        if let Some(counts) = counts {
            let generation = g.generation.to_string();
            out.sample(
                "panzer_draining_connections",
                &[("generation", &generation)],
                counts.iter().sum::<u32>(),
            );
        }
    }

    let workers = || {
        status.generations.iter().flat_map(|g| g.workers.iter().map(move |w| (g.generation.to_string(), w)))
    };
    out.family(
        "panzer_worker_restarts_total",
        "counter",
        "Times the worker in this slot was restarted, in this generation.",
    );
    for (generation, w) in workers() {
        let slot = w.ordinal.to_string();
        out.sample(
            "panzer_worker_restarts_total",
            &[("generation", &generation), ("slot", &slot)],
            w.restarts,
        );
    }
    out.family(
        "panzer_worker_replacements_total",
        "counter",
        "Times the worker in this slot was replaced by supervision (health, memory, age), in this generation.",
    );
    for (generation, w) in workers() {
        let slot = w.ordinal.to_string();
        out.sample(
            "panzer_worker_replacements_total",
            &[("generation", &generation), ("slot", &slot)],
            w.replaced,
        );
    }
    out.family("panzer_worker_ready", "gauge", "1 when the worker in this slot is ready, else 0.");
    for (generation, w) in workers() {
        let slot = w.ordinal.to_string();
        out.sample("panzer_worker_ready", &[("generation", &generation), ("slot", &slot)], u8::from(w.ready));
    }
    out.family(
        "panzer_worker_connections",
        "gauge",
        "Client connections the worker in this slot holds (no sample where they cannot be read).",
    );
    for (generation, w) in workers() {
        let Some(connections) = w.connections else { continue };
        let slot = w.ordinal.to_string();
        out.sample("panzer_worker_connections", &[("generation", &generation), ("slot", &slot)], connections);
    }
    out.family(
        "panzer_worker_resident_memory_bytes",
        "gauge",
        "Resident set size of the worker in this slot.",
    );
    for (generation, w) in workers() {
        let slot = w.ordinal.to_string();
        let labels = [("generation", generation.as_str()), ("slot", slot.as_str())];
        out.sample("panzer_worker_resident_memory_bytes", &labels, w.rss_kib.saturating_mul(1024));
    }
    out.family("panzer_worker_uptime_seconds", "gauge", "Seconds since the worker in this slot started.");
    for (generation, w) in workers() {
        let slot = w.ordinal.to_string();
        out.sample(
            "panzer_worker_uptime_seconds",
            &[("generation", &generation), ("slot", &slot)],
            w.uptime_s,
        );
    }
    out.family(
        "panzer_orphans",
        "gauge",
        "Processes of a generation whose monitor is gone, until they exit.",
    );
    out.sample("panzer_orphans", &[], status.orphans.len());

    out.family("panzer_reloads_total", "counter", "Hot restarts by outcome.");
    out.sample("panzer_reloads_total", &[("outcome", "ok")], status.reloads.ok);
    out.sample("panzer_reloads_total", &[("outcome", "failed")], status.reloads.failed);
    out.family(
        "panzer_last_reload_duration_seconds",
        "gauge",
        "How long the last reload took, from its start to its outcome.",
    );
    if let Some(ms) = status.reloads.last_duration_ms {
        out.sample("panzer_last_reload_duration_seconds", &[], Seconds(ms));
    }
    out.text
}

/// Milliseconds printed as seconds, exactly (`1.5`, `0.042`).
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 % 1000 {
            0 => write!(f, "{}", self.0 / 1000),
            ms => write!(f, "{}", format!("{}.{ms:03}", self.0 / 1000).trim_end_matches('0')),
        }
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{GenerationStatus, ReloadStats, WorkerStatus};

    fn status() -> Status {
        let worker = |ordinal, ready, restarts| WorkerStatus {
            ordinal,
            pid: 100 + ordinal as i32,
            ready,
            restarts,
            uptime_s: 7,
            rss_kib: 2048,
            last_exit: None,
            replaced: 0,
            threads: 1,
            connections: Some(ordinal + 2),
        };
        Status {
            pid: 1,
            version: "0.1.0".into(),
            uptime_s: 60,
            count: 2,
            ready: true,
            stopping: false,
            readiness: None,
            sockets: vec![],
            generations: vec![
                GenerationStatus {
                    generation: 3,
                    monitor_pid: 10,
                    state: "draining".into(),
                    kill_in_ms: Some(12_500),
                    workers: vec![worker(0, true, 0), worker(1, true, 0)],
                },
                GenerationStatus {
                    generation: 4,
                    monitor_pid: 11,
                    state: "ready".into(),
                    kill_in_ms: None,
                    workers: vec![worker(0, true, 2), worker(1, false, 0)],
                },
            ],
            orphans: vec![],
            reloads: ReloadStats { ok: 3, failed: 1, last_error: None, last_duration_ms: Some(1500) },
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_carry_generation_and_slot() {
        let text = render(&status());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        }
        for expected in [
            "panzer_current_generation 4",
            "panzer_ready 1",
            "panzer_stopping 0",
            "panzer_workers_ready{generation=\"4\"} 1",
            "panzer_workers_ready{generation=\"3\"} 2",
            "panzer_worker_restarts_total{generation=\"4\",slot=\"0\"} 2",
            "panzer_worker_resident_memory_bytes{generation=\"4\",slot=\"1\"} 2097152",
            "panzer_worker_connections{generation=\"4\",slot=\"1\"} 3",
            "panzer_generation_info{generation=\"3\",state=\"draining\"} 1",
            "panzer_reloads_total{outcome=\"ok\"} 3",
            "panzer_reloads_total{outcome=\"failed\"} 1",
            "panzer_last_reload_duration_seconds 1.5",
        ] {
            assert!(text.lines().any(|l| l == expected), "no line {expected:?} in\n{text}");
        }
    }

    #[test]
    fn a_draining_generation_says_when_it_is_killed_and_the_connections_its_workers_hold() {
        let mut s = status();
        let text = render(&s);
        for expected in [
            "panzer_draining_kill_in_seconds{generation=\"3\"} 12.5",
            "panzer_draining_connections{generation=\"3\"} 5",
        ] {
            assert!(text.lines().any(|l| l == expected), "no line {expected:?} in\n{text}");
        }
        assert!(!text.contains("{generation=\"4\"} 12.5"), "a serving generation is not draining:\n{text}");
        assert!(!text.lines().any(|l| l.starts_with("panzer_draining_connections{generation=\"4\"}")));
        // A count that cannot be read is no sample, never a wrong sum.
        s.generations[0].workers[1].connections = None;
        let text = render(&s);
        assert!(!text.lines().any(|l| l.starts_with("panzer_draining_connections{")), "{text}");
        assert!(text.contains("# TYPE panzer_draining_connections gauge"));
    }

    #[test]
    fn seconds_are_exact_and_label_values_escaped() {
        let shown: Vec<String> =
            [0, 42, 1500, 2000, 61_005].iter().map(|&ms| Seconds(ms).to_string()).collect();
        assert_eq!(shown, ["0", "0.042", "1.5", "2", "61.005"]);
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn no_reload_yet_means_no_duration_sample() {
        let mut s = status();
        s.reloads = ReloadStats::default();
        let text = render(&s);
        assert!(text.contains("# TYPE panzer_last_reload_duration_seconds gauge"));
        assert!(!text.lines().any(|l| l.starts_with("panzer_last_reload_duration_seconds ")));
        assert!(text.contains("panzer_reloads_total{outcome=\"ok\"} 0"));
    }
}
