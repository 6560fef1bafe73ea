//! The load: clients that send `GET /` back to back, on fresh or kept-alive
//! connections, and count what failed and how; one request and its reply;
//! where a failure fell relative to the reloads.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{self, read_response};
use crate::measured::Reload;
use crate::stats::ms;

/// Concurrent load-generating clients.
pub(crate) const CLIENTS: usize = 64;
/// Reloads under load.
pub(crate) const LOADED_RELOADS: u32 = 50;
/// Least time between two reloads under load.
pub(crate) const RELOAD_PACE: Duration = Duration::from_millis(200);

/// Connect, read and write timeout of a client request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// No load thread runs longer than this, whatever happens.
pub(crate) const LOAD_LIMIT: Duration = Duration::from_secs(120);

pub(crate) const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
pub(crate) const REQUEST_KEEP: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// What one client saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    /// Failed on a new connection: connecting, or its first request.
    pub(crate) failed_new: u64,
    /// Failed on a kept-alive connection that had already served a request.
    pub(crate) failed_reused: u64,
    pub(crate) connections: u64,
    /// Responses that said `Connection: close` to a keep-alive request.
    pub(crate) server_closes: u64,
    pub(crate) max_generation: u32,
    kinds: BTreeMap<String, u64>,
    /// The first few failures: when, on a reused connection?, what.
    samples: Vec<(Instant, bool, String)>,
}

impl Tally {
    fn fail(&mut self, reused: bool, what: String) {
        if reused {
            self.failed_reused += 1;
        } else {
            self.failed_new += 1;
        }
        if self.samples.len() < 20 {
            self.samples.push((Instant::now(), reused, what.clone()));
        }
        let conn = if reused { "reused" } else { "new" };
        *self.kinds.entry(format!("{what} ({conn})")).or_insert(0) += 1;
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed_new += other.failed_new;
        self.failed_reused += other.failed_reused;
        self.connections += other.connections;
        self.server_closes += other.server_closes;
        self.max_generation = self.max_generation.max(other.max_generation);
        for (kind, n) in other.kinds {
            *self.kinds.entry(kind).or_insert(0) += n;
        }
        self.samples.extend(other.samples);
    }
}

/// One load-generating client: requests back to back until `stop`.
pub(crate) fn client(
    port: u16,
    keep_alive: bool,
    stop: &AtomicBool,
    served: &AtomicU64,
    hard_stop: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut kept: Option<TcpStream> = None;
    let request = if keep_alive { REQUEST_KEEP } else { REQUEST_CLOSE };
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let reused = kept.is_some();
        let mut stream = match kept.take() {
            Some(stream) => stream,
            None => match connect(port) {
                Ok(stream) => {
                    tally.connections += 1;
                    stream
                }
                Err(e) => {
                    tally.fail(false, format!("connect: {}", kind(&e)));
                    thread::sleep(Duration::from_millis(1)); // no hot loop on a dead port
                    continue;
                }
            },
        };
        match exchange(&mut stream, request) {
            Ok(reply) if reply.status == 200 => {
                tally.ok += 1;
                served.fetch_add(1, Ordering::Relaxed);
                tally.max_generation = tally.max_generation.max(reply.generation);
                if keep_alive {
                    if reply.close {
                        tally.server_closes += 1;
                    } else {
                        kept = Some(stream);
                    }
                }
            }
            Ok(reply) => tally.fail(reused, format!("status {}", reply.status)),
            Err(what) => tally.fail(reused, what),
        }
    }
    tally
}

pub(crate) fn connect(port: u16) -> io::Result<TcpStream> {
    let stream = harness::connect(port)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) close: bool,
    pub(crate) generation: u32,
}

/// Sends `request`, reads one response. The error names the step that
/// failed and how.
pub(crate) fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<Reply, String> {
    stream.write_all(request).map_err(|e| format!("write: {}", kind(&e)))?;
    let response = read_response(stream).map_err(|e| format!("read: {}", kind(&e)))?;
    Ok(Reply {
        status: response.status,
        close: response.closes(),
        generation: response.find("generation").and_then(|g| g.parse().ok()).unwrap_or(0),
    })
}

pub(crate) fn kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".to_owned(),
        io::ErrorKind::UnexpectedEof => e.to_string(),
        k => format!("{k:?}"),
    }
}

/// Where the failures fell relative to the reloads.
pub(crate) fn describe_failures(tally: &Tally, reloads: &[Reload]) -> Vec<String> {
    let mut lines = Vec::new();
    if tally.kinds.is_empty() {
        return lines;
    }
    let kinds: Vec<String> = tally.kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
    lines.push(format!("    failure kinds: {}", kinds.join(", ")));
    let mut phases: BTreeMap<&str, u64> = BTreeMap::new();
    for (at, _, _) in &tally.samples {
        phases.entry(phase(*at, reloads).1).and_modify(|n| *n += 1).or_insert(1);
    }
    let phases: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    lines.push(format!(
        "    of {} sampled failures (each client's first 20): {}",
        tally.samples.len(),
        phases.join(", ")
    ));
    let mut samples: Vec<&(Instant, bool, String)> = tally.samples.iter().collect();
    samples.sort_by_key(|s| s.0);
    for (at, reused, what) in samples.iter().take(8) {
        let (offset, phase) = phase(*at, reloads);
        let conn = if *reused { "reused" } else { "new" };
        lines.push(format!("    e.g. {what} on a {conn} connection, {offset} ({phase})"));
    }
    lines
}

/// Describes `at` as an offset from the latest reload signal before it.
pub(crate) fn phase(at: Instant, reloads: &[Reload]) -> (String, &'static str) {
    let Some((i, r)) = reloads.iter().enumerate().rev().find(|(_, r)| r.signal <= at) else {
        return ("before the first reload".to_owned(), "before any reload");
    };
    let offset = format!("{:.1} ms after SIGUSR1 #{}", ms(at - r.signal), i + 1);
    let phase = if at < r.ready {
        "while the new generation started"
    } else if at < r.stopped {
        "while the old generation drained"
    } else {
        "after the old generation stopped"
    };
    (offset, phase)
}
