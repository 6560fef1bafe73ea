//! panzer's log: waited on line by line ([`Panzer::wait_for_line`], the
//! ports it reports), or read as it grows with each line stamped with when
//! it was read ([`LogWatch`], what the bench's wall times rest on).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{eventually, Panzer, PATIENCE};

impl Panzer {
    /// Everything logged so far (panzer's and the workers' stderr/stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log, read as it grows, each line stamped with when it was read.
    pub fn watch_log(&self) -> LogWatch {
        LogWatch::open(&self.log)
    }

    /// Waits for a log line containing `needle`; returns the line.
    pub fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_lines(needle, 1).pop().unwrap()
    }

    /// Waits until `count` log lines contain `needle`; returns them.
    pub fn wait_for_lines(&self, needle: &str, count: usize) -> Vec<String> {
        eventually(PATIENCE, &format!("{count} log line(s) with {needle:?}\n{}", self.describe()), || {
            let lines: Vec<String> =
                self.log().lines().filter(|l| l.contains(needle)).map(String::from).collect();
            (lines.len() >= count).then_some(lines)
        })
    }

    /// The port of the `index`th `listening on` line.
    pub fn port(&self, index: usize) -> u16 {
        let lines = self.wait_for_lines("listening on ", index + 1);
        let addr = lines[index].rsplit("listening on ").next().unwrap().trim();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Waits until generation `k` reported ready.
    pub fn wait_ready(&self, generation: u32) {
        self.wait_for_line(&format!("generation {generation} ready"));
    }

    /// The port of the first `admin endpoint on` line (`--admin-bind 127.0.0.1:0`).
    pub fn admin_port(&self) -> u16 {
        let line = self.wait_for_line("admin endpoint on ");
        let addr = line.rsplit("admin endpoint on ").next().unwrap().trim();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// A log file read as it grows, each line stamped with the `Instant` it was
/// read at: a line is seen at most one poll period (250 µs) plus a read
/// after it was written, which is what the bench's wall times rest on.
pub struct LogWatch {
    path: PathBuf,
    file: std::fs::File,
    partial: Vec<u8>,
    /// Every complete line read so far, with when it was read.
    pub lines: Vec<(Instant, String)>,
}

impl LogWatch {
    /// How often the file is read while waiting for a line.
    const POLL: Duration = Duration::from_micros(250);

    pub fn open(path: &Path) -> LogWatch {
        LogWatch {
            path: path.to_owned(),
            file: std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            partial: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Reads whatever was appended since the last call.
    pub fn poll(&mut self) {
        let now = Instant::now();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = self.file.read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.partial.extend_from_slice(&chunk[..n]);
        }
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            self.lines.push((now, text));
        }
    }

    /// Waits for a line at index ≥ `from` that contains `needle`.
    pub fn wait(&mut self, from: usize, needle: &str, limit: Duration) -> Result<(Instant, String), String> {
        self.wait_any(from, &[needle], limit)
    }

    /// Waits for a line at index ≥ `from` that contains any of `needles`.
    pub fn wait_any(
        &mut self,
        from: usize,
        needles: &[&str],
        limit: Duration,
    ) -> Result<(Instant, String), String> {
        let deadline = Instant::now() + limit;
        let mut searched = from;
        loop {
            self.poll();
            if let Some(found) = self.lines[searched.min(self.lines.len())..]
                .iter()
                .find(|(_, l)| needles.iter().any(|n| l.contains(n)))
            {
                return Ok(found.clone());
            }
            searched = searched.max(self.lines.len());
            if Instant::now() > deadline {
                return Err(format!(
                    "no log line with {needles:?} after {limit:?}; whole log kept in {}; last \
                     lines:\n{}",
                    self.keep(),
                    self.tail(15)
                ));
            }
            std::thread::park_timeout(Self::POLL);
        }
    }

    /// Copies the log out of the scratch directory; returns where to.
    pub fn keep(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let kept = std::env::temp_dir().join(format!(
            "panzer-failed-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::copy(&self.path, &kept) {
            Ok(_) => kept.display().to_string(),
            Err(e) => format!("nowhere ({e})"),
        }
    }

    /// The last `n` lines, indented.
    pub fn tail(&mut self, n: usize) -> String {
        self.poll();
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].iter().map(|(_, l)| format!("    {l}\n")).collect()
    }
}
