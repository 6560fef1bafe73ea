//! The scenarios, one file per scenario or per family, and their table:
//! what `cargo bench --bench reload -- NAME…` runs, in this order (each
//! is described in `main.rs`'s docs).

mod balance;
mod bare;
mod failures;
mod idle;
mod latency;
mod preload;
mod staged;
mod start;
mod tail;
mod upgrade;

use crate::bench::{Bench, Outcome, WORKERS};

use balance::balance;
use failures::failures;
use idle::{idle_cpu, memory};
use latency::{reload_auto, reload_latency};
use preload::preload;
use staged::staged;
use start::start_64;
use tail::{reload_tail, reload_tail_bare};
use upgrade::upgrade;

/// A scenario: the name the command line filters on, and what runs it.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) run: fn(&Bench) -> Outcome,
}

/// Every scenario, in the order they run.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario { name: "failures-fresh", run: |b| failures(b, false) },
    Scenario { name: "failures-keepalive", run: |b| failures(b, true) },
    Scenario { name: "reload-latency", run: reload_latency },
    Scenario { name: "reload-auto", run: reload_auto },
    Scenario { name: "reload-tail-fresh", run: |b| reload_tail(b, "reload-tail-fresh", false, "notify") },
    Scenario {
        name: "reload-tail-keepalive",
        run: |b| reload_tail(b, "reload-tail-keepalive", true, "notify"),
    },
    Scenario { name: "reload-tail-auto", run: |b| reload_tail(b, "reload-tail-auto", false, "auto") },
    Scenario { name: "reload-tail-bare", run: reload_tail_bare },
    Scenario { name: "memory", run: memory },
    Scenario { name: "idle-cpu", run: idle_cpu },
    Scenario { name: "start-64", run: start_64 },
    Scenario {
        name: "staged-rolling",
        run: |b| staged(b, "rolling", &["--reload-strategy", "rolling:1"], 1),
    },
    Scenario { name: "staged-canary", run: |b| staged(b, "canary", &["--canary", "200ms"], WORKERS) },
    Scenario { name: "upgrade", run: upgrade },
    Scenario { name: "preload", run: preload },
    Scenario { name: "balance", run: balance },
];
