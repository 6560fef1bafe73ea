//! One of the process's own stdout or stderr, written without ever
//! waiting: [`Target`] is how bytes get there (chosen by what the fd is),
//! [`Queue`] (pure) what waits for room, and [`Sink`] the two together.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::MsgFlags;
use nix::sys::stat::{fstat, SFlag};

/// The most bytes one write to a pipe is guaranteed not to interleave with
/// others' (POSIX `PIPE_BUF`, 4096 on Linux).
pub(crate) const PIPE_BUF: usize = 4096;

/// Bytes of log lines that may wait for room; past it, lines are dropped
/// and counted.
pub(crate) const LOG_BOUND: usize = 64 * 1024;

/// Bytes of forwarded worker lines (`--tag-output`) queued past which the
/// workers' pipes are not read: the workers wait instead.
pub(crate) const HIGH_WATER: usize = 64 * 1024;

/// Fd 1 or 2 itself, with the lifetime of the process.
#[derive(Debug)]
pub(crate) enum Stdio {
    Out(std::io::Stdout),
    Err(std::io::Stderr),
}

impl AsFd for Stdio {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stdio::Out(out) => out.as_fd(),
            Stdio::Err(err) => err.as_fd(),
        }
    }
}

/// How bytes reach fd 1 or 2.
#[derive(Debug)]
pub(crate) enum Target {
    /// A regular file (or anything else that never makes a writer wait),
    /// written as it is: the offset and `O_APPEND` stay the ones shared
    /// with the workers and panzer's parent.
    File(Stdio),
    /// A socket (journald's stream), sent to with `MSG_DONTWAIT`: the flag
    /// is per call, nothing shared changes.
    Socket(Stdio),
    /// A pipe, FIFO or terminal, opened anew through `/proc/self/fd`
    /// (`CLOEXEC`): a description of its own, so `O_NONBLOCK` is this
    /// process's alone.
    Reopened(OwnedFd),
    /// A pipe or terminal that cannot be opened anew (a monitor running as
    /// `--user` on a pipe main's user created; no `/proc`): written only
    /// when poll says there is room, at most [`PIPE_BUF`] bytes at a time.
    /// Only another writer filling the pipe between that poll and the
    /// write can make it wait, and only until the reader reads.
    Shared(Stdio),
    /// Nothing there (fd closed): bytes are dropped.
    Closed,
}

impl Target {
    /// How to write to `stdio` without waiting, never changing what its
    /// description holds.
    pub(crate) fn open(stdio: Stdio) -> Target {
        let Ok(stat) = fstat(stdio.as_fd()) else { return Target::Closed };
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFSOCK => Target::Socket(stdio),
            SFlag::S_IFIFO | SFlag::S_IFCHR => {
                let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
                let path = format!("/proc/self/fd/{}", stdio.as_fd().as_raw_fd());
                match nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()) {
                    Ok(own) => Target::Reopened(own),
                    Err(_) => Target::Shared(stdio),
                }
            }
            _ => Target::File(stdio),
        }
    }

    /// The fd to poll for room, for the targets that can lack it.
    pub(crate) fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Target::Reopened(fd) => Some(fd.as_fd()),
            Target::Socket(fd) | Target::Shared(fd) => Some(fd.as_fd()),
            Target::File(_) | Target::Closed => None,
        }
    }

    /// Writes what it can of `bytes` now; `EAGAIN` when nothing fits.
    fn write(&self, bytes: &[u8]) -> Result<usize, Errno> {
        match self {
            Target::File(fd) => nix::unistd::write(fd, bytes),
            Target::Reopened(fd) => nix::unistd::write(fd, bytes),
            Target::Socket(fd) => nix::sys::socket::send(
                fd.as_fd().as_raw_fd(),
                bytes,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ),
            Target::Shared(fd) => {
                let mut polled = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                nix::poll::poll(&mut polled, PollTimeout::ZERO)?;
                match polled[0].revents() {
                    Some(r) if r.contains(PollFlags::POLLOUT) => {
                        nix::unistd::write(fd, &bytes[..bytes.len().min(PIPE_BUF)])
                    }
                    // The reader is gone: the write says so (EPIPE).
                    Some(r) if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) => {
                        nix::unistd::write(fd, bytes)
                    }
                    _ => Err(Errno::EAGAIN),
                }
            }
            Target::Closed => Ok(bytes.len()),
        }
    }
}

/// A line waiting for room.
#[derive(Debug)]
struct Waiting {
    bytes: Vec<u8>,
    /// One of panzer's own log lines (droppable), not a worker's.
    log: bool,
}

/// Lines waiting for room, in order; log lines bounded by [`LOG_BOUND`],
/// forwarded worker lines by the caller through [`Queue::forward_full`].
/// Pure: writes go through the function given to [`Queue::flush`].
#[derive(Debug, Default)]
pub(crate) struct Queue {
    lines: VecDeque<Waiting>,
    /// Bytes of the front line already written.
    written: usize,
    log_bytes: usize,
    forwarded_bytes: usize,
    /// Log lines dropped since the last count was logged.
    dropped: u64,
    /// The target failed for good (its reader is gone): everything is dropped.
    broken: bool,
}

impl Queue {
    /// Queues one of panzer's own log lines, unless the log lines waiting
    /// are at the bound, or lines were dropped and the count of them is
    /// not logged yet: then it is dropped and counted. `forced`: the count
    /// itself, queued whatever the bound.
    pub(crate) fn push_log(&mut self, line: Vec<u8>, forced: bool) {
        if self.broken {
            return;
        }
        let over = self.log_bytes > 0 && self.log_bytes + line.len() > LOG_BOUND;
        if !forced && (self.dropped > 0 || over) {
            self.dropped += 1;
            return;
        }
        self.log_bytes += line.len();
        self.lines.push_back(Waiting { bytes: line, log: true });
    }

    /// Queues a worker's line (never dropped while the target works).
    pub(crate) fn push_forwarded(&mut self, line: Vec<u8>) {
        if self.broken {
            return;
        }
        self.forwarded_bytes += line.len();
        self.lines.push_back(Waiting { bytes: line, log: false });
    }

    /// Whether the workers' pipes feeding this queue should wait.
    pub(crate) fn forward_full(&self) -> bool {
        self.forwarded_bytes >= HIGH_WATER
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Writes lines with `write` until it would block or none is left.
    pub(crate) fn flush(&mut self, mut write: impl FnMut(&[u8]) -> Result<usize, Errno>) {
        while let Some(front) = self.lines.front() {
            match write(&front.bytes[self.written..]) {
                Ok(n) if self.written + n >= front.bytes.len() => {
                    self.written = 0;
                    self.pop(false);
                }
                Ok(n) => self.written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // The reader is gone, or the fd broke, for good: what would
                // have been written is lost, as with a blocking write.
                Err(Errno::EPIPE | Errno::EBADF | Errno::ECONNRESET | Errno::ENOTCONN | Errno::EINVAL) => {
                    self.broken = true;
                    self.lines.clear();
                    (self.written, self.log_bytes, self.forwarded_bytes) = (0, 0, 0);
                    return;
                }
                // A full disk, say: this line is lost (and counted), the
                // next may go through.
                Err(_) => {
                    self.written = 0;
                    self.pop(true);
                }
            }
        }
    }

    fn pop(&mut self, lost: bool) {
        if let Some(line) = self.lines.pop_front() {
            match line.log {
                true => self.log_bytes -= line.bytes.len(),
                false => self.forwarded_bytes -= line.bytes.len(),
            }
            if lost && line.log {
                self.dropped += 1;
            }
        }
    }

    /// The number of lines dropped, once it is time to log it: the log
    /// lines waiting are down to half the bound (writing works again), so
    /// the count goes where the lines are missing. Resets the count.
    pub(crate) fn take_dropped(&mut self) -> Option<u64> {
        if self.dropped == 0 || self.broken || self.log_bytes > LOG_BOUND / 2 {
            return None;
        }
        Some(std::mem::take(&mut self.dropped))
    }
}

/// A target, opened when first written to, and the lines waiting for it.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) target: &'static OnceLock<Target>,
    /// How to get the target's fd for [`Target::open`].
    pub(crate) stdio: fn() -> Stdio,
    pub(crate) queue: Queue,
}

impl Sink {
    fn target(&self) -> &'static Target {
        self.target.get_or_init(|| Target::open((self.stdio)()))
    }

    pub(crate) fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let target = self.target();
        self.queue.flush(|bytes| target.write(bytes));
    }

    /// The fd to poll for room while lines wait.
    pub(crate) fn waiting_fd(&self) -> Option<BorrowedFd<'static>> {
        if self.queue.is_empty() || self.queue.broken {
            return None;
        }
        self.target().poll_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Vec<u8> {
        let mut line = vec![b'x'; n - 1];
        line.push(b'\n');
        line
    }

    /// A writer with `room` bytes left, keeping what it took.
    fn writer<'a>(
        room: &'a mut usize,
        out: &'a mut Vec<u8>,
    ) -> impl FnMut(&[u8]) -> Result<usize, Errno> + 'a {
        move |bytes| {
            let n = bytes.len().min(*room);
            if n == 0 {
                return Err(Errno::EAGAIN);
            }
            *room -= n;
            out.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
    }

    #[test]
    fn log_lines_past_the_bound_are_dropped_and_counted_until_half_of_it_is_written() {
        let mut queue = Queue::default();
        let per = LOG_BOUND / 8;
        for _ in 0..8 {
            queue.push_log(line(per), false);
        }
        assert_eq!(queue.take_dropped(), None);
        for _ in 0..5 {
            queue.push_log(line(per), false);
        }
        let (mut room, mut out) = (3 * per, Vec::new());
        queue.flush(writer(&mut room, &mut out));
        assert_eq!(queue.take_dropped(), None, "5 of 8 still wait: over half the bound");
        queue.push_log(line(per), false);
        let (mut room, mut out) = (per, Vec::new());
        queue.flush(writer(&mut room, &mut out));
        assert_eq!(queue.take_dropped(), Some(6), "4 of 8 wait: the count is due, once");
        assert_eq!(queue.take_dropped(), None);
        queue.push_log(line(per), false);
        assert_eq!(queue.lines.len(), 5, "lines are queued again");
    }

    #[test]
    fn the_count_goes_in_whatever_the_bound() {
        let mut queue = Queue::default();
        for _ in 0..3 {
            queue.push_log(line(LOG_BOUND / 2), false);
        }
        assert_eq!(queue.dropped, 1);
        queue.push_log(line(100), true);
        assert_eq!(queue.lines.len(), 3);
    }

    #[test]
    fn a_line_written_in_parts_comes_out_whole_and_in_order() {
        let mut queue = Queue::default();
        queue.push_log(b"one\n".to_vec(), false);
        queue.push_forwarded(b"g1 w0 two\n".to_vec());
        let mut out = Vec::new();
        for room in [2, 0, 5, 100] {
            let mut room = room;
            queue.flush(writer(&mut room, &mut out));
        }
        assert_eq!(out, b"one\ng1 w0 two\n");
        assert!(queue.is_empty() && queue.log_bytes == 0 && queue.forwarded_bytes == 0);
    }

    #[test]
    fn worker_lines_are_never_dropped_but_say_when_to_stop_reading() {
        let mut queue = Queue::default();
        for _ in 0..HIGH_WATER / 1000 + 1 {
            queue.push_forwarded(line(1000));
        }
        assert!(queue.forward_full());
        assert_eq!(queue.dropped, 0);
        // Log lines still have their own room.
        queue.push_log(line(100), false);
        assert_eq!(queue.dropped, 0);
    }

    #[test]
    fn a_reader_gone_for_good_drops_everything_silently_and_a_full_disk_one_line_at_a_time() {
        let mut queue = Queue::default();
        queue.push_log(line(10), false);
        queue.push_forwarded(line(10));
        queue.flush(|_| Err(Errno::ENOSPC));
        assert!(queue.is_empty());
        assert_eq!(queue.dropped, 1, "only log lines are counted");
        assert_eq!(queue.take_dropped(), Some(1));
        queue.push_log(line(10), false);
        queue.flush(|_| Err(Errno::EPIPE));
        queue.push_log(line(10), false);
        assert!(queue.is_empty() && queue.take_dropped().is_none());
    }
}
