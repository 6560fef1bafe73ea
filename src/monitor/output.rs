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

use crate::logging::{self, LogFormat, Stream, PIPE_BUF};

/// Marks where a line too long for one write was cut.
const CUT: &str = "…";
/// Bytes read from one pipe per turn of the loop, so that one chatty worker
/// cannot starve the rest of it.
const READ_PER_TURN: usize = 64 * 1024;
/// When a worker has exited, or the monitor is about to, at most this much
/// is read from one pipe (a process the worker started may still write).
const DRAIN_LIMIT: usize = 1024 * 1024;

/// How a worker's line is marked as its own.
#[derive(Debug, Clone)]
pub enum Tag {
    /// `g<generation> w<ordinal> ` before the line's bytes, as they are.
    Prefix(Vec<u8>),
    /// `--log-format json`: the line is the `line` field of an object that
    /// names its stream, generation and worker.
    Json { stream: Stream, generation: u32, worker: u32 },
}

impl Tag {
    /// Bytes of a line besides its content: the prefix, or the object
    /// around an empty `line`.
    fn overhead(&self) -> usize {
        match self {
            Tag::Prefix(prefix) => prefix.len(),
            Tag::Json { .. } => self.render(b"").len(),
        }
    }

    /// Bytes one byte of content takes in the line: JSON escapes quotes,
    /// backslashes and control bytes (a byte that is not UTF-8 becomes
    /// U+FFFD, three bytes: [`Tag::render`] cuts such a line further).
    fn cost(&self, byte: u8) -> usize {
        match self {
            Tag::Prefix(_) => 1,
            Tag::Json { .. } => match byte {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
                0..=0x1f => 6,
                _ => 1,
            },
        }
    }

    /// The whole line, newline included. A prefixed line keeps the bytes
    /// as they are (a worker's output need not be text).
    fn render(&self, content: &[u8]) -> Vec<u8> {
        let mut line = match self {
            Tag::Prefix(prefix) => [prefix.as_slice(), content].concat(),
            Tag::Json { stream, generation, worker } => {
                let stream = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                let mut content = String::from_utf8_lossy(content).into_owned();
                loop {
                    let object = logging::WorkerLine {
                        stream,
                        generation: *generation,
                        worker: *worker,
                        line: &content,
                    };
                    let line = serde_json::to_vec(&object).unwrap_or_default();
                    // Bytes that are not UTF-8 grow into U+FFFD, which
                    // [`Tag::cost`] cannot foresee: such a line is cut here.
                    let excess = (line.len() + 1).saturating_sub(PIPE_BUF);
                    if excess == 0 || content.is_empty() {
                        break line;
                    }
                    let mut end = content.len().saturating_sub(excess + CUT.len());
                    while !content.is_char_boundary(end) {
                        end -= 1;
                    }
                    content.truncate(end);
                    content.push_str(CUT);
                }
            }
        };
        line.push(b'\n');
        line
    }
}

/// A worker's byte stream cut into tagged lines. Pure.
#[derive(Debug)]
pub struct Lines {
    tag: Tag,
    /// The most content bytes one line takes ([`Tag::cost`]), worked out
    /// once: the tag's overhead takes a rendering.
    room: usize,
    partial: Vec<u8>,
    /// What the partial line takes in the line ([`Tag::cost`]).
    used: usize,
    /// The partial line continues a line that was cut.
    continued: bool,
}

impl Lines {
    pub fn new(tag: Tag) -> Lines {
        let room = PIPE_BUF - tag.overhead() - 2 * CUT.len() - 1;
        Lines { tag, room, partial: Vec::new(), used: 0, continued: false }
    }

    /// Takes `bytes`; hands every complete line (tagged, ending in a
    /// newline, at most [`PIPE_BUF`] bytes) to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Vec<u8>)) {
        let room = self.room;
        while !bytes.is_empty() {
            // How much of `bytes` fits, up to a newline.
            let mut taken = 0;
            let mut newline = false;
            for &b in bytes {
                if b == b'\n' {
                    newline = true;
                    break;
                }
                let cost = self.tag.cost(b);
                if self.used + cost > room {
                    break;
                }
                self.used += cost;
                taken += 1;
            }
            self.partial.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if newline {
                bytes = &bytes[1..];
                out(self.line(false));
            } else if !bytes.is_empty() {
                // Too long for one write: cut at a character boundary.
                let keep = char_boundary(&self.partial);
                let rest = self.partial.split_off(keep);
                out(self.line(true));
                self.used = rest.iter().map(|&b| self.tag.cost(b)).sum();
                self.partial = rest;
            }
        }
    }

    /// Hands the partial line, if any, to `out`, as if it had ended.
    pub fn finish(&mut self, out: &mut impl FnMut(Vec<u8>)) {
        if !self.partial.is_empty() || self.continued {
            out(self.line(false));
        }
    }

    /// Content bytes that fit in one line besides tag, markers and newline.
    fn line(&mut self, cut: bool) -> Vec<u8> {
        let mut content = Vec::with_capacity(self.partial.len() + 2 * CUT.len());
        if self.continued {
            content.extend_from_slice(CUT.as_bytes());
        }
        content.append(&mut self.partial);
        if cut {
            content.extend_from_slice(CUT.as_bytes());
        }
        self.used = 0;
        self.continued = cut;
        self.tag.render(&content)
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
    format: LogFormat,
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
    pub fn new(generation: u32, format: LogFormat) -> TaggedOutput {
        TaggedOutput { generation, format, pipes: Vec::new(), next_token: 0 }
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
            let generation = self.generation;
            let tag = match self.format {
                LogFormat::Text => Tag::Prefix(format!("g{generation} w{ordinal} ").into_bytes()),
                LogFormat::Json => Tag::Json { stream, generation, worker: ordinal },
            };
            let lines = Lines::new(tag);
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

    fn prefix(text: &str) -> Tag {
        Tag::Prefix(text.as_bytes().to_vec())
    }

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
        let mut lines = Lines::new(prefix("g2 w1 "));
        let out = run(&mut lines, &[b"hel", b"lo\nwor", b"ld\n\nlast"], false);
        assert_eq!(out, ["g2 w1 hello\n", "g2 w1 world\n", "g2 w1 \n"]);
        assert_eq!(run(&mut lines, &[], true), ["g2 w1 last\n"], "the partial line, at exit");
        assert_eq!(run(&mut lines, &[], true), Vec::<String>::new(), "nothing twice");
    }

    #[test]
    fn a_line_too_long_for_one_write_is_cut_with_a_marker_at_a_character_boundary() {
        let mut lines = Lines::new(prefix("g1 w0 "));
        let long = "é".repeat(5000); // 10 000 bytes
        let out = run(&mut lines, &[long.as_bytes(), b"\n"], false);
        assert_eq!(out.len(), 3, "{:?}", out.iter().map(String::len).collect::<Vec<_>>());
        assert!(out.iter().all(|l| l.len() <= PIPE_BUF && l.starts_with("g1 w0 ") && l.ends_with('\n')));
        assert!(out[0].ends_with("é…\n") && out[1].starts_with("g1 w0 …é") && out[1].ends_with("é…\n"));
        assert!(out[2].starts_with("g1 w0 …é") && out[2].ends_with("é\n"));
        let text: String = out.iter().map(|l| l["g1 w0 ".len()..l.len() - 1].replace(CUT, "")).collect();
        assert_eq!(text, long, "nothing lost but the markers");
        // A line of exactly the room left fits in one write.
        let mut lines = Lines::new(prefix("p "));
        let room = lines.room;
        let out = run(&mut lines, &[&vec![b'x'; room], b"\n"], false);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn json_lines_are_objects_that_fit_one_write_however_much_escaping_they_need() {
        let tag = || Tag::Json { stream: Stream::Stderr, generation: 3, worker: 1 };
        let mut lines = Lines::new(tag());
        let out = run(&mut lines, &[b"say \"hi\"\tthere\n", b"\x01\x02"], true);
        let objects: Vec<serde_json::Value> = out.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            objects[0],
            serde_json::json!({"stream": "stderr", "generation": 3, "worker": 1, "line": "say \"hi\"\tthere"})
        );
        assert_eq!(objects[1]["line"], "\u{1}\u{2}");
        // Quotes double in JSON, control bytes take six: still one write each.
        for filler in [&b"\""[..], b"\x01", "é".as_bytes(), b"x"] {
            let mut lines = Lines::new(tag());
            let long: Vec<u8> = filler.iter().copied().cycle().take(3 * PIPE_BUF).collect();
            let out = run(&mut lines, &[&long, b"\n"], false);
            let mut text = String::new();
            for line in &out {
                assert!(line.len() <= PIPE_BUF && line.ends_with('\n') && line.matches('\n').count() == 1);
                let object: serde_json::Value = serde_json::from_str(line).unwrap();
                text.push_str(&object["line"].as_str().unwrap().replace(CUT, ""));
            }
            assert_eq!(text.as_bytes(), long, "nothing lost but the markers");
            assert!(out[0].len() > PIPE_BUF - 16, "a cut line is as long as it can be: {}", out[0].len());
        }
    }

    #[test]
    fn a_json_line_of_bytes_that_are_not_text_still_fits_one_write() {
        // Each such byte becomes U+FFFD, three bytes, in the object.
        for filler in [&b"\xff"[..], b"\xe9x", b"\x80"] {
            let mut lines = Lines::new(Tag::Json { stream: Stream::Stdout, generation: 1, worker: 0 });
            let long: Vec<u8> = filler.iter().copied().cycle().take(3 * PIPE_BUF).collect();
            let out = run(&mut lines, &[&long, b"\n"], false);
            assert!(!out.is_empty());
            for line in &out {
                assert!(line.len() <= PIPE_BUF, "{} bytes", line.len());
                let object: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(object["line"].as_str().unwrap().contains('\u{fffd}'));
            }
        }
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
