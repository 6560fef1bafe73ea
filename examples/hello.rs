//! `hello`: the demo worker for panzer, and the model of a worker that drains
//! well.
//!
//! A complete HTTP/1.1 server in std (plus `listenfd`, `sd-notify` and `nix`).
//! It answers every request with one line naming the process that served it:
//!
//! ```text
//! pid=4242 generation=2 worker=0
//! ```
//!
//! Run it under panzer:
//!
//! ```text
//! cargo build --example hello
//! panzer --bind 127.0.0.1:8080 --count 4 --ready notify target/debug/examples/hello
//! curl http://127.0.0.1:8080/              # pid=… generation=1 worker=3
//! curl http://127.0.0.1:8080/slow?ms=2000  # answers after two seconds (also /slow/2000)
//! ```
//!
//! Without panzer (no `LISTEN_FDS`) it binds `127.0.0.1:$PORT` itself
//! (default 8080; `PORT=0` picks a free port) and says so on stderr.
//!
//! # The worker contract, as code
//!
//! * **Socket**: the listener is fd 3 (`LISTEN_FDS`), taken with `listenfd`;
//!   a TCP or a Unix stream socket.
//! * **Readiness**: `READY=1` goes to `NOTIFY_SOCKET` once the listener is
//!   being served (`sd_notify` does nothing when the variable is unset).
//! * **Drain on SIGTERM or SIGINT**:
//!   1. stop accepting: close this process's copy of the listener (the socket
//!      stays open in panzer and in the next generation, so nothing queued in
//!      the backlog is lost);
//!   2. finish every in-flight request; a request that arrives on a kept-alive
//!      connection from now on is answered with `Connection: close`;
//!   3. leave idle kept-alive connections open for `DRAIN_GRACE_MS` (500)
//!      before closing them, because closing an idle connection at once races
//!      with a client that is sending on it right now; a connection that has
//!      not sent its first request yet is not idle: it gets 10 s to send it;
//!   4. exit 0 once every connection is done.
//!
//! # Knobs (environment, for tests)
//!
//! * `READY_DELAY_MS=N`: wait N ms before accepting and sending `READY=1`.
//! * `FAIL_ON_START=1`: print an error and exit 1 at once.
//! * `DRAIN_GRACE_MS=N`: the idle-connection grace of step 3 (default 500).
//!
//! # Threads and signals
//!
//! The main thread polls two fds: the listener and a signalfd. SIGTERM and
//! SIGINT are blocked before any thread exists, so they reach the process
//! only through that signalfd. Each connection gets a thread that blocks in
//! `read` or `poll`. Nothing wakes up on a timer: idle, the process sleeps.

/// Prints one line on stderr with a single write(2): workers share one log
/// file, and `eprintln!` writes a formatted line piece by piece, so lines
/// from two processes could interleave.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = io::Write::write_all(&mut io::stderr(), line.as_bytes());
    }};
}

use std::env;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{self, ExitCode};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

/// Longest request line or header line accepted, in bytes.
const MAX_LINE: u64 = 8 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 100;
/// After deciding to close, how long to wait for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);
/// Once draining, how long a connection that has not sent its first request
/// yet may still take to send it (at least the drain grace). Such a client
/// connected in order to send one: closing it is a failed request, not the
/// close of an idle connection, and under load the client (or the thread
/// serving it) can easily be held up longer than the grace.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say!("hello: pid {}: {err}", process::id());
            ExitCode::FAILURE
        }
    }
}

fn run() -> io::Result<()> {
    let pid = process::id();
    if env::var_os("FAIL_ON_START").is_some_and(|v| v == "1") {
        say!("hello: pid {pid} failing on start (FAIL_ON_START=1)");
        process::exit(1);
    }

    // Before any thread exists: block SIGTERM and SIGINT so that every thread
    // inherits the mask, and receive them from a signalfd the main loop polls.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

    let listener = Listener::take()?;
    // A nonblocking accept lets this process lose the race for a connection to
    // a sibling worker without getting stuck in accept(2), where it could not
    // see SIGTERM. Note that O_NONBLOCK lives on the socket's open file
    // description, so every process holding the socket sees it.
    listener.set_nonblocking()?;

    // The readiness delay is a poll on the signalfd, so SIGTERM still ends it.
    let ready_delay = env_millis("READY_DELAY_MS", 0);
    if !ready_delay.is_zero() && wait_for_signal(&signals, ready_delay)? {
        say!("hello: pid {pid} draining");
        say!("hello: pid {pid} exiting");
        return Ok(());
    }

    let (wake_rx, wake_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let shared = Arc::new(Shared {
        body: format!(
            "pid={pid} generation={} worker={}\n",
            env_or_dash("PANZER_GENERATION"),
            env_or_dash("PANZER_WORKER"),
        ),
        grace: env_millis("DRAIN_GRACE_MS", 500),
        drain_started: OnceLock::new(),
        drain_wake: wake_rx,
        live: Mutex::new(0),
        all_done: Condvar::new(),
    });

    say!("hello: worker {} pid {pid} serving", env_or_dash("PANZER_WORKER"));
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);

    // The accept loop: sleep until a connection or a signal arrives.
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            result => result?,
        };
        if fired(&fds[1]) && signals.read_signal()?.is_some() {
            break;
        }
        if fired(&fds[0]) {
            listener.accept_pending(&shared);
        }
    }

    // Drain, step by step (see the crate docs).
    say!("hello: pid {pid} draining");
    drop(listener); // 1. stop accepting
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    // 2. and 3.: from now on every response closes its connection, and idle
    // connections get the grace period. Closing the pipe's write end wakes
    // every connection thread waiting in poll.
    let _ = shared.drain_started.set(Instant::now());
    drop(wake_tx);
    // 4. wait for the last connection, then exit.
    let live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
    drop(shared.all_done.wait_while(live, |live| *live > 0));
    say!("hello: pid {pid} exiting");
    Ok(())
}

/// State shared by the main thread and the connection threads.
struct Shared {
    /// The response body, the same for every request.
    body: String,
    /// How long idle connections stay open once draining has started.
    grace: Duration,
    /// Set once, when draining starts.
    drain_started: OnceLock<Instant>,
    /// Read end of a pipe whose write end is closed when draining starts:
    /// from then on it polls readable (EOF) for everyone, forever.
    drain_wake: OwnedFd,
    /// Number of open connections, and its signal for reaching zero.
    live: Mutex<usize>,
    all_done: Condvar,
}

impl Shared {
    fn draining(&self) -> bool {
        self.drain_started.get().is_some()
    }
}

/// Counts one open connection for as long as it lives (also on panic).
struct LiveConnection(Arc<Shared>);

impl LiveConnection {
    fn new(shared: &Arc<Shared>) -> Self {
        *shared.live.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        LiveConnection(Arc::clone(shared))
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        let mut live = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
        *live -= 1;
        if *live == 0 {
            self.0.all_done.notify_all();
        }
    }
}

/// The listening socket: panzer passes TCP or Unix stream sockets.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Takes the socket at fd 3 (`LISTEN_FDS`), or binds one if none was passed.
    fn take() -> io::Result<Listener> {
        let mut passed = listenfd::ListenFd::from_env();
        if passed.len() > 0 {
            if let Ok(Some(tcp)) = passed.take_tcp_listener(0) {
                return Ok(Listener::Tcp(tcp));
            }
            return match passed.take_unix_listener(0)? {
                Some(unix) => Ok(Listener::Unix(unix)),
                None => Err(io::Error::other("fd 3 was already taken")),
            };
        }
        let port = env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
        let tcp = TcpListener::bind(("127.0.0.1", port.parse().unwrap_or(8080)))?;
        say!("hello: no socket passed (LISTEN_FDS unset), listening on {}", tcp.local_addr()?);
        Ok(Listener::Tcp(tcp))
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    /// Accepts every queued connection, one thread each.
    fn accept_pending(&self, shared: &Arc<Shared>) {
        match self {
            Listener::Tcp(l) => accept_pending(shared, || {
                let (stream, _) = l.accept()?;
                stream.set_nodelay(true)?;
                Ok(stream)
            }),
            Listener::Unix(l) => accept_pending(shared, || Ok(l.accept()?.0)),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

/// What a connection thread needs from its stream.
trait Stream: Read + Write + AsFd + Send + 'static {
    /// Sends FIN: "no more responses on this connection".
    fn close_write(&self);
}

impl Stream for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Stream for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

fn accept_pending<S: Stream>(shared: &Arc<Shared>, accept: impl Fn() -> io::Result<S>) {
    loop {
        // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux:
        // each connection thread blocks on its own socket.
        let stream = match accept() {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // queue empty
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                // E.g. EMFILE: the connection stays queued and the listener
                // stays readable; back off instead of spinning on it.
                say!("hello: pid {}: accept: {e}", process::id());
                thread::sleep(Duration::from_millis(100));
                return;
            }
        };
        // The counter goes up before the thread starts, so the drain can
        // never see zero while a connection is on its way to its thread.
        let live = LiveConnection::new(shared);
        let spawned = thread::Builder::new().name("connection".into()).spawn(move || serve(stream, &live.0));
        if let Err(e) = spawned {
            say!("hello: pid {}: cannot start a thread: {e}", process::id());
        }
    }
}

/// One connection: requests until either side wants to close.
fn serve<S: Stream>(stream: S, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    let mut fresh = true; // no request served yet
    loop {
        if !wait_for_request(&reader, shared, fresh) {
            break; // idle when the drain grace ran out
        }
        fresh = false;
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return, // the client closed the connection
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let _ = respond(reader.get_mut(), "400 Bad Request", "bad request\n", true, false);
                break;
            }
            Err(_) => return,
        };
        if let Some(delay) = slow_delay(&request.target) {
            thread::sleep(delay);
        }
        // Checked after the work, so a request in flight when SIGTERM
        // arrived also tells its client that this connection is done.
        let close = request.close || shared.draining();
        let head_only = request.method == "HEAD";
        let sent = respond(reader.get_mut(), "200 OK", &shared.body, close, head_only);
        if sent.is_err() || close {
            break;
        }
    }
    linger(reader.into_inner());
}

/// Waits until the next request starts to arrive (or the client closes).
/// Returns false when the connection should be closed as idle: draining has
/// started, its grace period is over (`FIRST_REQUEST_GRACE` for a `fresh`
/// connection, which has not sent a request yet), and no request has arrived.
fn wait_for_request<S: Stream>(reader: &BufReader<S>, shared: &Shared, fresh: bool) -> bool {
    if !reader.buffer().is_empty() {
        return true; // a pipelined request is already here
    }
    let grace = if fresh { shared.grace.max(FIRST_REQUEST_GRACE) } else { shared.grace };
    loop {
        // Even past the deadline, look once more without waiting: this thread
        // may only now be running (a loaded machine), and a request that is
        // already in the socket must be answered, not discarded.
        let started = shared.drain_started.get();
        let (timeout, last_look) = match started {
            None => (PollTimeout::NONE, false),
            Some(started) => match (*started + grace).checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => (poll_timeout(left), false),
                _ => (PollTimeout::ZERO, true),
            },
        };
        let mut fds = [
            PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN),
            PollFd::new(shared.drain_wake.as_fd(), PollFlags::POLLIN),
        ];
        // Once draining, the wake pipe is always readable: leave it out. The
        // same snapshot as the timeout: draining may start in between, and an
        // unbounded poll without the wake pipe would never see it.
        let watched = if started.is_some() { 1 } else { 2 };
        match poll(&mut fds[..watched], timeout) {
            Ok(_) if fired(&fds[0]) => return true,
            Ok(0) if last_look => return false, // the grace period is over
            // Timed out (recompute, then the last look), or draining started.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The parts of a request this server looks at.
struct Request {
    method: String,
    target: String,
    /// The client asked to close the connection after this response.
    close: bool,
}

/// Reads one request: request line, headers, and body (discarded).
/// `Ok(None)` means the client closed the connection before a new request;
/// `InvalidData` errors mean a malformed request.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = match read_line(reader)? {
        Some(line) => line,
        None => return Ok(None),
    };
    while line.is_empty() {
        // A client may send empty lines between requests (RFC 9112 §2.2).
        line = match read_line(reader)? {
            Some(line) => line,
            None => return Ok(None),
        };
    }
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad("malformed request line"));
    };
    let mut request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        close: match version {
            "HTTP/1.1" => false,
            "HTTP/1.0" => true, // HTTP/1.0 closes unless it asks for keep-alive
            _ => return Err(bad("unsupported HTTP version")),
        },
    };

    let mut content_length = 0;
    let mut chunked = false;
    for _ in 0..=MAX_HEADERS {
        let line = read_line(reader)?.ok_or_else(eof)?;
        if line.is_empty() {
            if chunked {
                skip_chunked_body(reader)?;
            } else {
                skip(reader, content_length)?;
            }
            return Ok(Some(request));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad("malformed header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    request.close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    request.close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| bad("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        }
    }
    Err(bad("too many headers"))
}

/// Reads one CRLF- (or LF-) terminated line, without its terminator.
/// `None` at end of stream; `InvalidData` when too long or not UTF-8.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    let n = Read::take(&mut *reader, MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(if n as u64 == MAX_LINE { bad("line too long") } else { eof() });
    }
    line.pop();
    if line.ends_with('\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Reads and discards exactly `len` bytes.
fn skip(reader: &mut impl BufRead, len: u64) -> io::Result<()> {
    let skipped = io::copy(&mut Read::take(&mut *reader, len), &mut io::sink())?;
    if skipped < len {
        return Err(eof());
    }
    Ok(())
}

/// Reads and discards a `Transfer-Encoding: chunked` body and its trailers.
fn skip_chunked_body(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let line = read_line(reader)?.ok_or_else(eof)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            while !read_line(reader)?.ok_or_else(eof)?.is_empty() {}
            return Ok(());
        }
        skip(reader, size)?;
        if !read_line(reader)?.ok_or_else(eof)?.is_empty() {
            return Err(bad("chunk longer than its size"));
        }
    }
}

/// `/slow?ms=N` and `/slow/N` ask for an answer after N milliseconds.
fn slow_delay(target: &str) -> Option<Duration> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let ms = if path == "/slow" {
        query.split('&').find_map(|pair| pair.strip_prefix("ms="))?
    } else {
        path.strip_prefix("/slow/")?
    };
    ms.parse().ok().map(Duration::from_millis)
}

/// Writes a complete response in one write; a response to HEAD has headers only.
fn respond(
    stream: &mut impl Write,
    status: &str,
    body: &str,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    let length = body.len();
    let body = if head_only { "" } else { body };
    let response = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: {length}\r\n\
         Connection: {connection}\r\n\
         \r\n\
         {body}"
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Closes the connection gently: send FIN, then discard what the client may
/// still send until it closes too (or `LINGER` passes). Closing a socket with
/// unread input makes the kernel send RST, which can destroy the response
/// the client has not read yet.
fn linger<S: Stream>(mut stream: S) {
    stream.close_write();
    let deadline = Instant::now() + LINGER;
    let mut buf = [0; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits up to `timeout` for SIGTERM or SIGINT; true if one arrived.
fn wait_for_signal(signals: &SignalFd, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) => return Ok(false),
            Err(Errno::EINTR) => continue,
            result => result?,
        };
        if signals.read_signal()?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A poll timeout that does not wake before `left` has passed (poll counts
/// whole milliseconds), capped at poll's maximum.
fn poll_timeout(left: Duration) -> PollTimeout {
    PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
}

/// Did poll report anything (input, hang-up, error) on this fd?
fn fired(fd: &PollFd) -> bool {
    fd.any().unwrap_or(true)
}

fn env_or_dash(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| "-".to_owned())
}

fn env_millis(name: &str, default: u64) -> Duration {
    let ms = env::var(name).ok().and_then(|v| v.trim().parse().ok());
    Duration::from_millis(ms.unwrap_or(default))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn eof() -> io::Error {
    io::ErrorKind::UnexpectedEof.into()
}
