//! `--tag-output`: every line a worker writes to stdout or stderr comes out
//! of the monitor's own stdout or stderr prefixed with `g<generation>
//! w<ordinal> `, whole, with one `write` per line.
//!
//! Each worker gets a pipe for fd 1 and one for fd 2 (created `CLOEXEC`
//! here, put in place by the spawn plan). The monitor's loop polls their
//! read ends and this module turns bytes into lines ([`Lines`], pure); the
//! lines go to [`crate::logging`], which writes the monitor's own stdout and
//! stderr (its log lines too) without ever waiting. A line is at most
//! [`PIPE_BUF`] bytes with its prefix, so a write of it to a pipe is atomic
//! even when other processes (main, another monitor) write to the same
//! pipe; a longer one is cut, with a `…` where it was cut. A partial line
//! waits for its newline, and is flushed when its worker exits.
//!
//! The monitor never blocks on output: lines that cannot be written now
//! wait, and while too many wait for a stream (64 KiB) the pipes feeding it
//! are not read, so a worker writing faster than panzer's stdout drains
//! waits in its own `write`, as it would with the fd inherited; reading
//! resumes once the loop has written them out.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};

use crate::logging::{self, Stream, PIPE_BUF};

/// Marks where a line too long for one write was cut.
const CUT: &str = "…";
/// Bytes read from one pipe per turn of the loop, so that one chatty worker
/// cannot starve the rest of it.
const READ_PER_TURN: usize = 64 * 1024;
/// When a worker has exited, or the monitor is about to, at most this much
/// is read from one pipe (a process the worker started may still write).
const DRAIN_LIMIT: usize = 1024 * 1024;

/// A worker's byte stream cut into prefixed lines. Pure.
#[derive(Debug)]
pub struct Lines {
    prefix: Vec<u8>,
    partial: Vec<u8>,
    /// The partial line continues a line that was cut.
    continued: bool,
}

impl Lines {
    pub fn new(prefix: String) -> Lines {
        Lines { prefix: prefix.into_bytes(), partial: Vec::new(), continued: false }
    }

    /// Takes `bytes`; hands every complete line (prefixed, ending in a
    /// newline, at most [`PIPE_BUF`] bytes) to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Vec<u8>)) {
        while !bytes.is_empty() {
            let room = self.room().saturating_sub(self.partial.len());
            let take = bytes.len().min(room + 1);
            match bytes[..take].iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.partial.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    out(self.line(false));
                }
                None if take > room => {
                    // Too long for one write: cut at a character boundary.
                    self.partial.extend_from_slice(&bytes[..room]);
                    bytes = &bytes[room..];
                    let keep = char_boundary(&self.partial);
                    let rest = self.partial.split_off(keep);
                    out(self.line(true));
                    self.partial = rest;
                }
                None => {
                    self.partial.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Hands the partial line, if any, to `out`, as if it had ended.
    pub fn finish(&mut self, out: &mut impl FnMut(Vec<u8>)) {
        if !self.partial.is_empty() || self.continued {
            out(self.line(false));
        }
    }

    /// Content bytes that fit in one line besides prefix, markers and newline.
    fn room(&self) -> usize {
        PIPE_BUF - self.prefix.len() - 2 * CUT.len() - 1
    }

    fn line(&mut self, cut: bool) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.prefix.len() + self.partial.len() + 2 * CUT.len() + 1);
        line.extend_from_slice(&self.prefix);
        if self.continued {
            line.extend_from_slice(CUT.as_bytes());
        }
        line.append(&mut self.partial);
        if cut {
            line.extend_from_slice(CUT.as_bytes());
        }
        line.push(b'\n');
        self.continued = cut;
        line
    }
}

/// Where to cut `bytes` so that no UTF-8 character is split: the end, or
/// the start of a character cut short at the end (text that is not UTF-8
/// is cut anywhere).
fn char_boundary(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 != 0x80 {
            // The lead byte of the last character: does it fit?
            let width = match b {
                b if b < 0x80 => 1,
                b if b >= 0xF0 => 4,
                b if b >= 0xE0 => 3,
                b if b >= 0xC0 => 2,
                _ => 1,
            };
            return if width > back && len - back > 0 { len - back } else { len };
        }
    }
    len
}

/// What a poll result of [`TaggedOutput::fds`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The read end of a worker's pipe.
    Pipe(u64),
}

/// The read end of one worker's stdout or stderr pipe.
#[derive(Debug)]
struct Pipe {
    token: u64,
    pid: i32,
    stream: Stream,
    fd: OwnedFd,
    lines: Lines,
}

/// Tagged output of one generation's workers.
#[derive(Debug)]
pub struct TaggedOutput {
    generation: u32,
    pipes: Vec<Pipe>,
    next_token: u64,
}

/// The write ends a new worker gets as fd 1 and 2.
pub struct WorkerEnds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    read: [OwnedFd; 2],
}

impl TaggedOutput {
    pub fn new(generation: u32) -> TaggedOutput {
        TaggedOutput { generation, pipes: Vec::new(), next_token: 0 }
    }

    /// Two pipes for a worker about to start; every end `CLOEXEC`, the
    /// read ends non-blocking.
    pub fn pipes() -> std::io::Result<WorkerEnds> {
        let (out_read, stdout) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_read, stderr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        for fd in [&out_read, &err_read] {
            nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(WorkerEnds { stdout, stderr, read: [out_read, err_read] })
    }

    /// The worker `pid` in slot `ordinal` started with `ends`: read them.
    pub fn started(&mut self, pid: i32, ordinal: u32, ends: WorkerEnds) {
        let WorkerEnds { read: [out, err], .. } = ends;
        for (stream, fd) in [(Stream::Stdout, out), (Stream::Stderr, err)] {
            self.next_token += 1;
            let lines = Lines::new(format!("g{} w{ordinal} ", self.generation));
            self.pipes.push(Pipe { token: self.next_token, pid, stream, fd, lines });
        }
    }

    /// What to poll: the pipes whose stream has room for more lines. (The
    /// streams themselves are polled for room through
    /// [`logging::waiting_fds`].)
    pub fn fds(&self) -> Vec<(Token, BorrowedFd<'_>)> {
        let full = [Stream::Stdout, Stream::Stderr].map(logging::forward_full);
        self.pipes
            .iter()
            .filter(|p| !full[p.stream as usize])
            .map(|p| (Token::Pipe(p.token), p.fd.as_fd()))
            .collect()
    }

    /// Reads what the poll found ready, and writes what it can.
    pub fn on_ready(&mut self, ready: &[Token]) {
        for Token::Pipe(token) in ready {
            if let Some(index) = self.pipes.iter().position(|p| p.token == *token) {
                self.read(index, READ_PER_TURN, false);
            }
        }
        logging::flush();
    }

    /// Worker `pid` has exited: what it wrote is in its pipes; its last,
    /// unfinished line is written out now. A pipe stays open while a
    /// process it started still holds the write end.
    pub fn worker_exited(&mut self, pid: i32) {
        let mut index = 0;
        while index < self.pipes.len() {
            if self.pipes[index].pid != pid {
                index += 1;
                continue;
            }
            if self.read(index, DRAIN_LIMIT, true) {
                continue;
            }
            let pipe = &mut self.pipes[index];
            let stream = pipe.stream;
            pipe.lines.finish(&mut |line| logging::forward(stream, line));
            index += 1;
        }
        logging::flush();
    }

    /// The monitor is about to exit: everything read (the monitor's
    /// [`logging::finish`] writes it out).
    pub fn finish(&mut self) {
        while !self.pipes.is_empty() {
            if !self.read(0, DRAIN_LIMIT, true) {
                let Pipe { stream, mut lines, .. } = self.pipes.remove(0);
                lines.finish(&mut |line| logging::forward(stream, line));
            }
        }
    }

    /// Reads pipe `index` until it is empty, `limit` bytes were read, or
    /// (unless `draining`) its stream has enough waiting. At end of file
    /// the pipe is removed (its partial line written) and `true` returned.
    fn read(&mut self, index: usize, limit: usize, draining: bool) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        let pipe = &mut self.pipes[index];
        let stream = pipe.stream;
        let mut forward = |line| logging::forward(stream, line);
        loop {
            if total >= limit || (!draining && logging::forward_full(stream)) {
                return false;
            }
            match nix::unistd::read(pipe.fd.as_fd(), &mut buf) {
                Ok(0) => {
                    pipe.lines.finish(&mut forward);
                    self.pipes.remove(index);
                    return true;
                }
                Ok(n) => {
                    total += n;
                    pipe.lines.push(&buf[..n], &mut forward);
                }
                Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &mut Lines, chunks: &[&[u8]], finish: bool) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, &mut |l| out.push(l));
        }
        if finish {
            lines.finish(&mut |l| out.push(l));
        }
        out.into_iter().map(|l| String::from_utf8(l).unwrap()).collect()
    }

    #[test]
    fn lines_are_prefixed_and_whole_however_the_bytes_arrive() {
        let mut lines = Lines::new("g2 w1 ".into());
        let out = run(&mut lines, &[b"hel", b"lo\nwor", b"ld\n\nlast"], false);
        assert_eq!(out, ["g2 w1 hello\n", "g2 w1 world\n", "g2 w1 \n"]);
        assert_eq!(run(&mut lines, &[], true), ["g2 w1 last\n"], "the partial line, at exit");
        assert_eq!(run(&mut lines, &[], true), Vec::<String>::new(), "nothing twice");
    }

    #[test]
    fn a_line_too_long_for_one_write_is_cut_with_a_marker_at_a_character_boundary() {
        let mut lines = Lines::new("g1 w0 ".into());
        let long = "é".repeat(5000); // 10 000 bytes
        let out = run(&mut lines, &[long.as_bytes(), b"\n"], false);
        assert_eq!(out.len(), 3, "{:?}", out.iter().map(String::len).collect::<Vec<_>>());
        assert!(out.iter().all(|l| l.len() <= PIPE_BUF && l.starts_with("g1 w0 ") && l.ends_with('\n')));
        assert!(out[0].ends_with("é…\n") && out[1].starts_with("g1 w0 …é") && out[1].ends_with("é…\n"));
        assert!(out[2].starts_with("g1 w0 …é") && out[2].ends_with("é\n"));
        let text: String = out.iter().map(|l| l["g1 w0 ".len()..l.len() - 1].replace(CUT, "")).collect();
        assert_eq!(text, long, "nothing lost but the markers");
        // A line of exactly the room left fits in one write.
        let mut lines = Lines::new("p ".into());
        let room = lines.room();
        let out = run(&mut lines, &[&vec![b'x'; room], b"\n"], false);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn character_boundaries_never_split_utf8() {
        assert_eq!(char_boundary(b"abc"), 3);
        assert_eq!(char_boundary("aé".as_bytes()), 3);
        assert_eq!(char_boundary(&"aé".as_bytes()[..2]), 1);
        assert_eq!(char_boundary(&"a€".as_bytes()[..3]), 1);
        assert_eq!(char_boundary(&[0x80, 0x80, 0x80, 0x80]), 4, "not UTF-8: anywhere");
    }
}
