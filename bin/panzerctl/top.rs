//! `panzerctl top`: a live view of a running panzer that refreshes in
//! place, in the manner of `top`, `pm2 monit` or `circus-top`.
//!
//! Two halves, as elsewhere: [`Screen`] turns a status (and the reloads seen
//! so far) into the lines to show, purely; [`run`] owns the terminal. It
//! puts the terminal in raw mode on the alternate screen with the cursor
//! hidden, asks for the status every interval, redraws, and on `q`,
//! Ctrl-C, `SIGTERM`, `SIGHUP` or the end of input restores all of it.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use panzer::control::{GenerationStatus, Request, Status, WorkerStatus};
use panzer::error::Error;

use crate::client;

/// Reloads listed under "last reloads".
const HISTORY: usize = 5;

/// A reload outcome top saw happen (between two refreshes).
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    ok: bool,
    /// How many of that kind happened between the two refreshes.
    count: u64,
    duration_ms: Option<u64>,
    error: Option<String>,
    /// The generation that served after it.
    generation: Option<u32>,
    seen: Instant,
}

/// What top shows, refresh after refresh.
#[derive(Debug, Default)]
pub struct Screen {
    last: Option<Status>,
    error: Option<String>,
    reloads: VecDeque<Outcome>,
}

impl Screen {
    /// Takes the latest status (or why there is none).
    pub fn update(&mut self, now: Instant, status: Result<Status, String>) {
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        self.error = None;
        if let Some(before) = &self.last {
            let (after, before) = (&status.reloads, &before.reloads);
            let new_ok = after.ok.saturating_sub(before.ok);
            let new_failed = after.failed.saturating_sub(before.failed);
            let serving =
                status.generations.iter().filter(|g| g.state == "ready").map(|g| g.generation).max();
            // The duration is the last one's: of whichever kind came last,
            // which one refresh cannot tell apart when both happened.
            for (is_ok, count) in [(false, new_failed), (true, new_ok)] {
                if count > 0 {
                    self.reloads.push_front(Outcome {
                        ok: is_ok,
                        count,
                        duration_ms: status.reloads.last_duration_ms,
                        error: if is_ok { None } else { status.reloads.last_error.clone() },
                        generation: serving,
                        seen: now,
                    });
                }
            }
            self.reloads.truncate(HISTORY);
        }
        self.last = Some(status);
    }

    /// The lines to show on a `columns` × `rows` terminal.
    pub fn lines(&self, now: Instant, columns: usize, rows: usize) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.last {
            None => lines.push("panzer: waiting for the first status".to_string()),
            Some(s) => {
                let sockets: Vec<&str> = s.sockets.iter().map(|x| x.addr.as_str()).collect();
                lines.push(format!(
                    "panzer pid {}  up {}  {} worker(s) per generation  {}",
                    s.pid,
                    age(s.uptime_s),
                    s.count,
                    sockets.join(" ")
                ));
                let mut reloads = format!("reloads: {} ok, {} failed", s.reloads.ok, s.reloads.failed);
                if let Some(ms) = s.reloads.last_duration_ms {
                    reloads += &format!("; the last took {}", millis(ms));
                }
                if !s.orphans.is_empty() {
                    reloads += &format!("; {} orphan(s) draining", s.orphans.len());
                }
                lines.push(reloads);
            }
        }
        if let Some(e) = &self.error {
            lines.push(format!("cannot get the status: {e}"));
        }
        if let Some(s) = &self.last {
            for g in &s.generations {
                lines.push(String::new());
                lines.push(generation_line(g));
                lines.push(worker_row(Table::Top, WORKER_HEADINGS, "LAST EXIT"));
                for w in &g.workers {
                    lines.push(worker_row(Table::Top, worker_cells(w), w.last_exit.as_deref().unwrap_or("")));
                }
            }
        }
        lines.push(String::new());
        lines.push("last reloads".to_string());
        if self.reloads.is_empty() {
            lines.push("  none since top started".to_string());
        }
        for r in &self.reloads {
            let what = match (r.ok, r.count) {
                (true, 1) => "ok".to_string(),
                (false, 1) => "failed".to_string(),
                (true, n) => format!("{n} ok"),
                (false, n) => format!("{n} failed"),
            };
            let mut line = format!(
                "  {:<9} {:>9}  {:>8} ago",
                what,
                r.duration_ms.map(millis).unwrap_or_default(),
                age(now.saturating_duration_since(r.seen).as_secs())
            );
            if let Some(g) = r.generation.filter(|_| r.ok) {
                line += &format!("  generation {g} serves");
            }
            if let Some(e) = &r.error {
                line += &format!("  {e}");
            }
            lines.push(line);
        }
        lines.push(String::new());
        lines.push("q: quit".to_string());
        // What does not fit is cut, never wrapped: a wrapped line would
        // scroll the screen and the refresh would no longer be in place.
        if lines.len() > rows {
            let hidden = lines.len() - rows + 1;
            lines.truncate(rows - 1);
            lines.push(format!("… {hidden} more line(s); enlarge the terminal"));
        }
        lines.into_iter().map(|l| l.chars().take(columns).collect()).collect()
    }
}

/// `generation 3  draining  monitor pid 42  SIGKILL in 12.5 s  4 connection(s)`:
/// a draining generation says when what is left of it is killed, and how
/// many client connections its workers still hold.
pub fn generation_line(g: &GenerationStatus) -> String {
    let mut line = format!("generation {}  {}  monitor pid {}", g.generation, g.state, g.monitor_pid);
    if let Some(ms) = g.kill_in_ms {
        line += &format!("  SIGKILL in {}", millis(ms));
        let counts: Option<Vec<u32>> = g.workers.iter().map(|w| w.connections).collect();
        if let Some(counts) = counts {
            line += &format!("  {} connection(s)", counts.iter().sum::<u32>());
        }
    }
    line
}

/// A worker's client connections, `-` where they cannot be read.
/// The two tables of workers: `panzerctl status` and `panzerctl top`.
#[derive(Clone, Copy)]
pub enum Table {
    Status,
    Top,
}

/// The headings of the columns both tables have, in order.
pub const WORKER_HEADINGS: [&str; 7] = ["WORKER", "PID", "READY", "RESTARTS", "UPTIME", "RSS", "CONNS"];

/// A worker's cells under [`WORKER_HEADINGS`].
pub fn worker_cells(w: &WorkerStatus) -> [String; 7] {
    [
        w.ordinal.to_string(),
        w.pid.to_string(),
        (if w.ready { "yes" } else { "no" }).to_string(),
        w.restarts.to_string(),
        age(w.uptime_s),
        format!("{:.1} MiB", w.rss_kib as f64 / 1024.0),
        connections(w),
    ]
}

/// One line of a table of workers: the common cells, then the table's own
/// last column.
pub fn worker_row<S: AsRef<str>>(table: Table, cells: [S; 7], last: &str) -> String {
    let [ordinal, pid, ready, restarts, uptime, rss, conns] = cells.map(|c| c.as_ref().to_string());
    match table {
        Table::Status => {
            format!(
                "  {ordinal:<7} {pid:<8} {ready:<6} {restarts:<9} {uptime:<8} {rss:<11} {conns:<6} {last}"
            )
        }
        Table::Top => format!(
            "  {ordinal:<7} {pid:<8} {ready:<6} {restarts:<9} {uptime:<8} {rss:>10}  {conns:>5}  {last}"
        ),
    }
}

pub fn connections(w: &WorkerStatus) -> String {
    w.connections.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// `42s`, `5m3s`, `2h10m`.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// `230 ms`, `1.5 s`.
fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The terminal as top found it; put back on drop, whatever ends top.
struct Terminal {
    saved: Termios,
}

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

impl Terminal {
    fn enter() -> Result<Terminal, Error> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| Error::control_because("cannot read the terminal mode", e))?;
        let mut raw = saved.clone();
        // Keys arrive one by one, unechoed; Ctrl-C arrives as a byte, so it
        // cannot kill top before the terminal is put back, and Ctrl-Z cannot
        // leave a stopped top holding the terminal raw.
        raw.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
        raw.input_flags.remove(InputFlags::IXON | InputFlags::ICRNL);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| Error::control_because("cannot set the terminal mode", e))?;
        let terminal = Terminal { saved };
        write_all(ENTER);
        Ok(terminal)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        write_all(LEAVE);
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn write_all(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Runs top on this process's terminal against the control socket at
/// `path`, refreshing every `interval`; `timeout` bounds each status request.
pub fn run(path: &Path, interval: Duration, timeout: Duration) -> Result<(), Error> {
    let stdin = std::io::stdin();
    if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
        return Err(Error::Usage(
            "top needs a terminal; for a script, use `status --json` or `metrics`".into(),
        ));
    }
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH] {
        mask.add(signal);
    }
    mask.thread_block().map_err(|e| Error::control_because("cannot block signals", e))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::control_because("cannot set up signal handling", e))?;
    let _terminal = Terminal::enter()?;
    let mut screen = Screen::default();
    let mut next_refresh = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_refresh {
            let status = match client::request(path, &Request::Status, Some(timeout)) {
                Ok(reply) => reply.status.ok_or_else(|| reply.error.unwrap_or_else(|| "no status".into())),
                Err(e) => Err(e.report()),
            };
            screen.update(now, status);
            next_refresh = now + interval;
            draw(&screen, now);
        }
        let fds = [(stdin.as_fd(), false), (signals.as_fd(), false)];
        // Rust's own words for the error, "(os error N)" included, as top always said.
        let ready = panzer::for_panzerctl::poll(&fds, Some(next_refresh))
            .map_err(|e| Error::control(format!("poll failed: {e}")))?;
        if ready[1] {
            while let Ok(Some(info)) = signals.read_signal() {
                if info.ssi_signo == Signal::SIGWINCH as u32 {
                    draw(&screen, Instant::now());
                } else {
                    return Ok(());
                }
            }
        }
        if ready[0] {
            let mut keys = [0u8; 64];
            match nix::unistd::read(stdin.as_fd(), &mut keys) {
                // The terminal is gone.
                Ok(0) => return Ok(()),
                // q, Q, Ctrl-C, Ctrl-D.
                Ok(n) if keys[..n].iter().any(|k| matches!(k, b'q' | b'Q' | 0x03 | 0x04)) => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(Error::control_because("cannot read the terminal", e)),
            }
        }
    }
}

/// One frame, written at once: home, each line cleared to its end, and
/// everything below the last line cleared.
fn draw(screen: &Screen, now: Instant) {
    let stdout = std::io::stdout();
    let (columns, rows) = terminal_size(stdout.as_fd()).unwrap_or((80, 24));
    let lines = screen.lines(now, columns.into(), rows.max(2).into());
    let mut frame = String::from("\x1b[H");
    frame += &lines.join("\x1b[K\r\n");
    frame += "\x1b[K\x1b[J";
    write_all(&frame);
}

fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    panzer::for_panzerctl::terminal_size(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use panzer::control::{GenerationStatus, ReloadStats, WorkerStatus};

    fn status(ok: u64, failed: u64) -> Status {
        Status {
            pid: 42,
            version: "0.1.0".into(),
            uptime_s: 125,
            count: 1,
            ready: true,
            stopping: false,
            readiness: None,
            sockets: vec![],
            generations: vec![GenerationStatus {
                generation: 1 + ok as u32,
                monitor_pid: 43,
                state: "ready".into(),
                kill_in_ms: None,
                workers: vec![WorkerStatus {
                    ordinal: 0,
                    pid: 44,
                    ready: true,
                    restarts: 2,
                    uptime_s: 3,
                    rss_kib: 1536,
                    last_exit: Some("exited with status 1".into()),
                    replaced: 0,
                    threads: 1,
                    connections: Some(0),
                }],
            }],
            orphans: vec![],
            reloads: ReloadStats {
                ok,
                failed,
                last_error: (failed > 0).then(|| "worker 0 crashed".to_string()),
                last_duration_ms: (ok + failed > 0).then_some(1500),
            },
        }
    }

    #[test]
    fn a_frame_shows_every_worker_and_the_reloads_seen_while_running() {
        let now = Instant::now();
        let mut screen = Screen::default();
        screen.update(now, Ok(status(0, 0)));
        screen.update(now, Ok(status(1, 0)));
        screen.update(now + Duration::from_secs(2), Ok(status(1, 1)));
        let lines = screen.lines(now + Duration::from_secs(3), 200, 50);
        let text = lines.join("\n");
        assert!(lines[0].starts_with("panzer pid 42  up 2m5s  1 worker(s) per generation"), "{text}");
        assert!(text.contains("reloads: 1 ok, 1 failed; the last took 1.5 s"), "{text}");
        assert!(
            lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["0", "44", "yes", "2", "3s", "1.5", "MiB", "0", "exited", "with", "status", "1"]),
            "{text}"
        );
        let reloads: Vec<&String> = lines.iter().skip_while(|l| *l != "last reloads").skip(1).collect();
        assert!(reloads[0].starts_with("  failed") && reloads[0].ends_with("worker 0 crashed"), "{text}");
        assert!(
            reloads[1].starts_with("  ok") && reloads[1].contains("3s ago  generation 2 serves"),
            "{text}"
        );
    }

    #[test]
    fn a_draining_generation_shows_when_it_is_killed_and_each_worker_s_connections() {
        let now = Instant::now();
        let mut draining = status(0, 0);
        let g = &mut draining.generations[0];
        g.state = "draining".into();
        g.kill_in_ms = Some(12_345);
        g.workers[0].connections = Some(3);
        let mut unknown = g.workers[0].clone();
        (unknown.ordinal, unknown.pid, unknown.connections) = (1, 45, None);
        g.workers.push(unknown);
        let mut screen = Screen::default();
        screen.update(now, Ok(draining.clone()));
        let lines = screen.lines(now, 200, 50);
        let text = lines.join("\n");
        assert!(text.contains("generation 1  draining  monitor pid 43  SIGKILL in 12.3 s\n"), "{text}");
        assert!(lines.iter().any(|l| l.contains("CONNS")), "{text}");
        let row = |pid: &str| {
            let row = lines.iter().find(|l| l.split_whitespace().nth(1) == Some(pid)).unwrap();
            row.split_whitespace().nth(7).unwrap().to_string()
        };
        assert_eq!((row("44"), row("45")), ("3".to_string(), "-".to_string()), "{text}");
        // Known for every worker, the generation's total is shown too.
        draining.generations[0].workers.truncate(1);
        screen.update(now, Ok(draining));
        let text = screen.lines(now, 200, 50).join("\n");
        assert!(text.contains("SIGKILL in 12.3 s  3 connection(s)"), "{text}");
    }

    #[test]
    fn a_small_terminal_cuts_lines_instead_of_wrapping_them() {
        let now = Instant::now();
        let mut screen = Screen::default();
        screen.update(now, Ok(status(0, 0)));
        screen.update(now, Err("cannot connect".into()));
        let lines = screen.lines(now, 20, 5);
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert!(lines[2].starts_with("cannot get the sta"), "{lines:?}");
        assert!(lines[4].starts_with("… "), "{lines:?}");
    }
}
