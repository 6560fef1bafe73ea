//! panzer's stdout and stderr on a pipe that nobody reads (a stuck log
//! shipper): main and the monitors never wait on their own log lines, so
//! reloads, replacements and stops go on; the lines that could not wait are
//! counted, and the count is logged once the pipe drains.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

/// The read end of the pipe panzer writes to, held open and not read until
/// a test says so.
struct StuckPipe {
    read: File,
    /// The same pipe opened anew, non-blocking: the test's own way to see
    /// (and fill) the room left, without touching what panzer holds.
    probe: File,
    /// What has been drained so far.
    text: String,
}

impl StuckPipe {
    /// The pipe, and the write end for panzer's stdout and stderr.
    fn new() -> (StuckPipe, OwnedFd) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        // The read end is this test's alone.
        nix::fcntl::fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let path = format!("/proc/self/fd/{}", read.as_raw_fd());
        let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let probe = nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()).unwrap();
        (StuckPipe { read: read.into(), probe: probe.into(), text: String::new() }, write)
    }

    /// Whether a writer would have to wait.
    fn is_full(&self) -> bool {
        let mut fds = [PollFd::new(self.probe.as_fd(), PollFlags::POLLOUT)];
        nix::poll::poll(&mut fds, PollTimeout::ZERO).unwrap();
        !fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLOUT))
    }

    /// Fills what room is left with whole lines of the test's own.
    fn fill(&mut self) {
        let line = [b"filler line written by the test\n".as_slice(); 64].concat();
        while self.probe.write(&line).is_ok() {}
    }

    /// Reads what is in the pipe now; returns the complete lines read.
    fn drain(&mut self) -> &str {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = self.read.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        &self.text
    }
}

/// Whether `O_NONBLOCK` is set on what fd `fd` of `pid` refers to (`None`:
/// the process has just exited).
fn nonblocking(pid: Pid, fd: i32) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    Some(i32::from_str_radix(flags, 8).unwrap() & libc::O_NONBLOCK != 0)
}

/// The current generation's workers from `panzerctl status --json`
/// (ordinal, pid), once it is ready with `count` of them.
fn ready_workers(panzer: &Panzer, generation: u64, count: usize) -> Vec<(u64, Pid)> {
    eventually(PATIENCE, &format!("generation {generation} ready with {count} workers"), || {
        // Not answered yet at startup: no control socket.
        let out = panzer.ctl(&["--json", "status"]);
        let status = &serde_json::from_str::<serde_json::Value>(&out.stdout).ok()?["status"];
        let current = status["generations"].as_array()?.iter().find(|g| g["generation"] == generation)?;
        let workers: Vec<(u64, Pid)> = current["workers"]
            .as_array()?
            .iter()
            .map(|w| (w["ordinal"].as_u64().unwrap(), Pid::from_raw(w["pid"].as_i64().unwrap() as i32)))
            .collect();
        (current["state"] == "ready" && workers.len() == count).then_some(workers)
    })
}

/// What each worker writes, over and over.
const FLOOD: &str = "line written by a worker that floods its output";

/// Workers that write as fast as they can, with panzer's output on a pipe
/// nobody reads: main answers a reload, replaces a killed worker and stops
/// on `SIGTERM`, as if the pipe were read.
fn a_flood_into_a_pipe_nobody_reads_stops_nothing(tag_output: bool) {
    let (mut pipe, out) = StuckPipe::new();
    let mut command =
        Panzer::new("sh").no_bind().count(2).ready("100ms").args(&["--graceful-timeout", "10s"]).pid_file();
    if tag_output {
        command = command.arg("--tag-output");
    }
    let flood = format!("exec yes {FLOOD}");
    let mut panzer = command.command_args(&["--", "-c", &flood]).writing_to(out).start();
    eventually(PATIENCE, "the pipe to fill up", || pipe.is_full().then_some(()));
    ready_workers(&panzer, 1, 2);
    // Full and staying full: the workers write more than anyone reads.
    assert!(pipe.is_full());

    let reload = panzer.ctl_start(&["reload"]);
    let answer = reload.wait(Duration::from_secs(5)).expect("`panzerctl reload` got no answer within 5 s");
    assert_eq!(answer.code, 0, "{}{}", answer.stdout, answer.stderr);
    let workers = ready_workers(&panzer, 2, 2);

    let (ordinal, killed) = workers[0];
    nix::sys::signal::kill(killed, Signal::SIGKILL).unwrap();
    eventually(PATIENCE, &format!("a worker in slot {ordinal} instead of pid {killed}"), || {
        let now = ready_workers(&panzer, 2, 2);
        now.iter().any(|&(o, pid)| o == ordinal && pid != killed).then_some(())
    });

    // panzer's own stdout and stderr are shared with whoever started it
    // (and, without --tag-output, with every worker): never made non-blocking.
    let monitors = panzer.monitors();
    assert!(!monitors.is_empty());
    for pid in monitors.into_iter().chain([panzer.pid]) {
        for fd in [1, 2] {
            assert_ne!(nonblocking(pid, fd), Some(true), "O_NONBLOCK set on fd {fd} of pid {pid}");
        }
    }

    panzer.signal(Signal::SIGTERM);
    let status = panzer.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
    if tag_output {
        // Lines from workers, monitors and main only ever come whole.
        for line in pipe.drain().lines() {
            let worker = line.split_once(' ').is_some_and(|(_, rest)| rest == format!("w0 {FLOOD}"))
                || line.split_once(' ').is_some_and(|(_, rest)| rest == format!("w1 {FLOOD}"));
            let panzer = line.split_whitespace().nth(2).is_some_and(|tag| tag.starts_with("panzer["));
            assert!(worker || panzer, "{line:?}");
        }
    }
}

#[test]
fn workers_flooding_tagged_output_into_a_pipe_nobody_reads_stop_nothing() {
    a_flood_into_a_pipe_nobody_reads_stops_nothing(true);
}

#[test]
fn workers_flooding_a_shared_pipe_nobody_reads_stop_nothing() {
    a_flood_into_a_pipe_nobody_reads_stops_nothing(false);
}

/// `kill(pid, signo)` by number: nix's `Signal` has no real-time signals.
#[allow(unsafe_code)]
fn send(pid: Pid, signo: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; the
    // pid is this test's unreaped child, so it names no other process.
    match unsafe { libc::kill(pid.as_raw(), signo) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether any signal is still pending for `pid` (process-wide).
fn signals_pending(pid: Pid) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| l.strip_prefix("ShdPnd:").or_else(|| l.strip_prefix("SigPnd:")))
        .any(|mask| u64::from_str_radix(mask.trim(), 16) != Ok(0))
}

#[test]
fn log_lines_dropped_while_stderr_is_stuck_are_counted_once_it_drains() {
    log_lines_dropped_are_counted(false);
}

#[test]
fn with_json_logs_the_count_of_dropped_lines_is_an_object_too() {
    log_lines_dropped_are_counted(true);
}

/// The count of what main could not write, once the pipe drains: in the
/// text format, or (`json`) as `--log-format json` objects.
fn log_lines_dropped_are_counted(json: bool) {
    // Each stray real-time signal is one warning line of main's, and each
    // is queued on its own (real-time signals are not merged).
    const SIGNALS: usize = 3000;
    let (mut pipe, out) = StuckPipe::new();
    let format = if json { "json" } else { "text" };
    let panzer = Panzer::new("sh")
        .no_bind()
        .count(1)
        .ready("100ms")
        .args(&["--log-format", format])
        .command_args(&["--", "-c", "exec sleep 1000"])
        .writing_to(out)
        .start();
    ready_workers(&panzer, 1, 1);
    pipe.fill();
    assert!(pipe.is_full());

    let signo = libc::SIGRTMIN() + 1;
    for _ in 0..SIGNALS {
        // EAGAIN: the queue of pending signals is full; main empties it.
        eventually(PATIENCE, "room for one more queued signal", || send(panzer.pid, signo).ok());
    }
    eventually(PATIENCE, "main to take every signal", || (!signals_pending(panzer.pid)).then_some(()));
    // It still answers, while its lines wait or are dropped.
    ready_workers(&panzer, 1, 1);

    let marker = " log lines dropped: stderr was not writable";
    let text = eventually(PATIENCE, "the count of dropped lines", || {
        let text = pipe.drain();
        text.lines().any(|l| l.contains(marker)).then(|| text.to_string())
    });
    let marker_lines: Vec<&str> = text.lines().filter(|l| l.contains(marker)).collect();
    assert_eq!(marker_lines.len(), 1, "one count for one stall: {marker_lines:?}");
    let marker_line = marker_lines[0];
    let count: usize = if json {
        let object: serde_json::Value = serde_json::from_str(marker_line).unwrap();
        assert_eq!(
            (&object["level"], &object["pid"]),
            (&"warn".into(), &panzer.pid.as_raw().into()),
            "{object}"
        );
        let count = object["dropped"].as_u64().unwrap_or_else(|| panic!("{object}"));
        assert_eq!(object["msg"], format!("{count}{marker}"), "{object}");
        count as usize
    } else {
        assert!(marker_line.contains(&format!(" WARN  panzer[{}]: ", panzer.pid)), "{marker_line}");
        marker_line.strip_suffix(marker).unwrap().rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Every line is either written or counted.
    let ignoring = if json { "\"ignoring SIGRTMIN+1 " } else { ": ignoring SIGRTMIN+1 " };
    let written = eventually(PATIENCE, "every queued line to be written", || {
        let written = pipe.drain().lines().filter(|l| l.contains(ignoring)).count();
        (written + count == SIGNALS).then_some(written)
    });
    assert!(written > 0 && count > 0, "written {written}, dropped {count}");
    // Whole lines only: nothing cut or merged.
    for line in pipe.drain().lines() {
        let whole = line == "filler line written by the test"
            || match json {
                true => serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
                false => line.split_whitespace().nth(2).is_some_and(|tag| tag.starts_with("panzer[")),
            };
        assert!(whole, "{line:?}");
    }
}
