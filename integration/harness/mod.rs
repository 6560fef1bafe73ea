//! Support shared by the process tests (`integration/main.rs`) and the
//! reload bench (which includes this folder with `#[path]`), one room per
//! concern:
//!
//! - `guard`: the process guard. [`Panzer`] runs the real `panzer` binary in
//!   a process group of its own, logs to a per-test file, and on drop (even
//!   on panic) kills main's group and every process it left, then waits for
//!   it.
//! - `command`: the builder of a panzer command line,
//!   `Panzer::new(cmd).count(4).notify().start()`, with `--bind 127.0.0.1:0`
//!   unless a test says otherwise.
//! - `procfs`: the `/proc` table: descendants, liveness, environment, fds.
//! - `http`: a small HTTP client and a load of back-to-back clients.
//! - `ctl`: `panzerctl`, run to completion or in the background.
//! - `log_watch`: panzer's log, waited on line by line or read as it grows.
//! - `fixtures`: fixture paths, the per-test scratch directory, a swappable
//!   deploy script and a gated worker.
//!
//! Everything is re-exported here: a test file says `use crate::harness::*`.

use std::time::{Duration, Instant};

mod command;
mod ctl;
mod fixtures;
mod guard;
mod http;
mod log_watch;
mod procfs;

pub use command::*;
pub use ctl::*;
pub use fixtures::*;
pub use guard::*;
pub use http::*;
#[allow(unused_imports)] // `LogWatch` is named only by the reload bench
pub use log_watch::*;
pub use procfs::*;

/// Generous bound for anything that should take a moment: a busy 2-core CI
/// machine may be slow, but never this slow.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    within(limit, check).unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or gives up with `None` after
/// `limit` (for where a panic would not do, e.g. a drop).
pub fn within<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::park_timeout(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
