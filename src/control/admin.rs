//! The admin endpoint (`--admin-bind`): a small read-only HTTP/1.1 server in
//! main's event loop, for probes and scrapes.
//!
//! | request | answer |
//! |---|---|
//! | `GET /readyz` | 200 while a generation is ready and panzer is not stopping, else 503; the body is the line that says why |
//! | `GET /livez` | 200 `ok` (main's loop runs, or nothing would answer) |
//! | `GET /metrics` | the Prometheus text of `panzerctl metrics` |
//!
//! `HEAD` works for each; another method gets 405 (with `Allow`), another
//! path 404. Nothing here can change panzer: main answers from what it
//! knows, and the answers are all there is.
//!
//! Like the control socket ([`super::server`]), everything is non-blocking
//! and owned by main's loop, and no client can hold it or lock out another.
//! Requests are parsed by `httparse`; a request head longer than
//! [`MAX_REQUEST`] gets 431, anything unparsable 400, and the connection is
//! closed after either. A client has [`CLIENT_TIMEOUT`] to send each
//! request (and to read its answer); past [`MAX_CLIENTS`] connections (or
//! fewer, what `RLIMIT_NOFILE` leaves), the one idle the longest is closed,
//! and so it is when an accept finds no descriptor; with no client to close,
//! the listeners are left out of the poll for a moment, never spun on. An answer that cannot be sent at once
//! waits in the client's buffer while main polls for it to become writable,
//! and the client's next request is read only once the answer is out, so a
//! client that never reads costs one buffer until its deadline. Pipelined
//! requests are answered one per turn of main's loop. Kept-alive
//! connections are the default (HTTP/1.1); `Connection: close` is honoured.
//!
//! The sockets are main's own: `CLOEXEC`, never given to a monitor or a
//! worker, not in `LISTEN_FDS`, not in the status's `sockets`. An upgrade
//! hands them over with every client ([`Server::save`], [`Server::resume`]),
//! so the port never changes and no connection is dropped.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::Socket;

use crate::error::Error;
use crate::log_limit::{suppressed, LogLimit};
use crate::sockets::{self, BindAddr, BindSpec, Listener};
use crate::sys::Interest;

/// Longest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Most header lines in a request.
const MAX_HEADERS: usize = 32;
/// How long a client has to send a whole request, and to take its answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// After an answer that closes the connection, how long main still reads
/// (and drops) what the client sends, so that its unread bytes do not turn
/// the close into a reset that could destroy the answer on its way.
const LINGER: Duration = Duration::from_secs(2);
/// Most clients connected at once (fewer where `RLIMIT_NOFILE` leaves main
/// less room); past it the one idle the longest is closed.
pub const MAX_CLIENTS: usize = 64;
/// After an accept failed with no client to close for it, how long the
/// listeners are left out of the poll (unless a client leaves first).
const ACCEPT_PAUSE: Duration = crate::control::server::ACCEPT_PAUSE;
/// The listen backlog of the admin sockets.
const BACKLOG: i32 = 128;
/// Most bytes read from one client in one turn of main's loop.
const READ_PER_TURN: usize = 64 * 1024;
/// The content type of `/metrics` (Prometheus text exposition 0.0.4).
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

/// What a request asks main for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ready,
    Live,
    Metrics,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        // A query string changes nothing.
        match path.split_once('?').map_or(path, |(path, _)| path) {
            "/readyz" => Some(Route::Ready),
            "/livez" => Some(Route::Live),
            "/metrics" => Some(Route::Metrics),
            _ => None,
        }
    }
}

/// main's answer to a route: 200 (`ok`) or 503, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub body: String,
}

/// What a client's buffered bytes amount to.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// No whole request yet.
    Incomplete,
    /// Send `response` for the first `consumed` bytes; close after it if `close`.
    Respond { consumed: usize, response: Vec<u8>, close: bool },
}

/// Parses the request at the start of `input` and makes its response,
/// asking `answer` for what a route says. Pure but for `answer`.
fn step(input: &[u8], answer: &mut dyn FnMut(Route) -> Answer) -> Step {
    let refuse = |status: u16, why: &str| Step::Respond {
        consumed: input.len(),
        response: Response::new(status, TEXT_TYPE, format!("{why}\n")).close().bytes(false),
        close: true,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(input) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_REQUEST => n,
        Ok(httparse::Status::Partial) if input.len() < MAX_REQUEST => return Step::Incomplete,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "request header fields too large")
        }
        Err(e) => return refuse(400, &format!("bad request: {e}")),
    };
    let (method, path) = (request.method.unwrap_or(""), request.path.unwrap_or(""));
    let http10 = request.version == Some(0);
    let (mut close_asked, mut keep_alive_asked, mut body) = (false, false, false);
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close_asked |= token.eq_ignore_ascii_case("close");
                keep_alive_asked |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<u64>() {
                Ok(0) => {}
                Ok(_) => body = true,
                Err(_) => return refuse(400, "bad request: invalid Content-Length"),
            }
        }
    }
    // HTTP/1.1 keeps the connection unless asked not to; 1.0 only if asked
    // to. A body is never read: the connection ends after the answer.
    let close = close_asked || (http10 && !keep_alive_asked) || body;
    let head = method == "HEAD";
    let mut response = match Route::of(path) {
        None => Response::new(404, TEXT_TYPE, "not found: try /readyz, /livez or /metrics\n".into()),
        Some(_) if !matches!(method, "GET" | "HEAD") => {
            let mut r = Response::new(405, TEXT_TYPE, "method not allowed: use GET or HEAD\n".into());
            r.allow = true;
            r
        }
        Some(_) if body => Response::new(400, TEXT_TYPE, "bad request: no body is accepted here\n".into()),
        Some(route) => {
            let Answer { ok, body } = answer(route);
            let kind = if route == Route::Metrics { METRICS_TYPE } else { TEXT_TYPE };
            Response::new(if ok { 200 } else { 503 }, kind, body)
        }
    };
    if close {
        response = response.close();
    } else if http10 {
        response.keep_alive = true;
    }
    Step::Respond { consumed, response: response.bytes(head), close }
}

/// One response, before it is written out.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    close: bool,
    keep_alive: bool,
    allow: bool,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: String) -> Response {
        Response { status, content_type, body, close: false, keep_alive: false, allow: false }
    }

    fn close(mut self) -> Response {
        self.close = true;
        self
    }

    /// The bytes on the wire; without the body for a `HEAD`.
    fn bytes(&self, head: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut text = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            text.push_str("Allow: GET, HEAD\r\n");
        }
        if self.close {
            text.push_str("Connection: close\r\n");
        } else if self.keep_alive {
            text.push_str("Connection: keep-alive\r\n");
        }
        text.push_str("\r\n");
        if !head {
            text.push_str(&self.body);
        }
        text.into_bytes()
    }
}

/// What a polled fd of the server belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Listener(usize),
    Client(u64),
}

struct Client {
    id: u64,
    socket: Socket,
    /// Received, not yet answered.
    input: Vec<u8>,
    /// Answered, not yet sent.
    output: Vec<u8>,
    /// Until the next request must be in (or the answer taken).
    deadline: Instant,
    /// Close once `output` is sent.
    close: bool,
    /// `input` may hold another whole request: answered in the next turn
    /// of main's loop (the socket is polled for writing, which an idle one
    /// is at once), so one client's pipelined requests never fill a turn.
    more: bool,
    /// Sending side shut down: reading and dropping until the client closes.
    lingering: bool,
    /// The client has shut down its sending side.
    eof: bool,
}

impl Client {
    /// What the next image of main needs of this client.
    fn save(&self, now: Instant) -> SavedClient {
        SavedClient {
            id: self.id,
            fd: self.socket.as_raw_fd(),
            input: self.input.clone(),
            output: self.output.clone(),
            left_ms: self.deadline.saturating_duration_since(now).as_millis() as u64,
            close: self.close,
            lingering: self.lingering,
            eof: self.eof,
        }
    }

    fn new(id: u64, socket: Socket, now: Instant) -> Client {
        Client {
            id,
            socket,
            input: Vec::new(),
            output: Vec::new(),
            deadline: now + CLIENT_TIMEOUT,
            close: false,
            more: false,
            lingering: false,
            eof: false,
        }
    }

    /// Does what can be done without blocking: sends, reads, answers one
    /// request. False when the client is done with.
    fn turn(&mut self, now: Instant, answer: &mut dyn FnMut(Route) -> Answer) -> bool {
        if !self.send() {
            return false;
        }
        if !self.output.is_empty() {
            return true;
        }
        if self.lingering {
            return self.drop_input();
        }
        if !self.receive() {
            return false;
        }
        self.more = false;
        if !self.close {
            if let Step::Respond { consumed, response, close } = step(&self.input, answer) {
                self.input.drain(..consumed.min(self.input.len()));
                self.output = response;
                self.close = close;
                self.more = !self.input.is_empty();
                self.deadline = now + CLIENT_TIMEOUT;
                if !self.send() {
                    return false;
                }
                if !self.output.is_empty() {
                    return true;
                }
            }
        }
        if self.close {
            return self.linger(now);
        }
        // A client that has stopped sending gets no more answers than it asked.
        self.more || !self.eof
    }

    /// What main polls this client for.
    fn interest(&self) -> Interest {
        if self.output.is_empty() && !self.more {
            Interest::Read
        } else {
            Interest::Write
        }
    }

    /// Sends what is buffered, as far as the socket takes it. False on error.
    fn send(&mut self) -> bool {
        while !self.output.is_empty() {
            match self.socket.send_with_flags(&self.output, libc::MSG_NOSIGNAL) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
            }
        }
        true
    }

    /// Reads what has come, up to a little past [`MAX_REQUEST`] buffered.
    /// False on error.
    fn receive(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        while !self.eof && self.input.len() <= MAX_REQUEST {
            match (&self.socket).read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
            }
        }
        true
    }

    /// Starts the close after an answer: no more sending, and the client's
    /// leftovers are read and dropped until it closes or [`LINGER`] passes.
    fn linger(&mut self, now: Instant) -> bool {
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
        self.lingering = true;
        self.input = Vec::new();
        self.deadline = self.deadline.min(now + LINGER);
        !self.eof && self.drop_input()
    }

    /// Reads and drops, a bounded amount per turn. False once the client closed.
    fn drop_input(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let mut read = 0;
        while read < READ_PER_TURN {
            match (&self.socket).read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
            }
        }
        true
    }
}

/// The admin endpoint: its listeners and clients. Empty without `--admin-bind`.
pub struct Server {
    listeners: Vec<Listener>,
    clients: Vec<Client>,
    next_id: u64,
    /// [`MAX_CLIENTS`], or what `RLIMIT_NOFILE` (the second) leaves room for.
    max_clients: (usize, Option<u64>),
    /// While an accept cannot succeed: until when the listeners are not
    /// polled, and how many clients there were then (one fewer resumes them).
    paused: Option<(Instant, usize)>,
    /// Clients closed to make room, failed accepts: a line a second of each.
    trouble: LogLimit<&'static str>,
}

impl Default for Server {
    fn default() -> Server {
        Server {
            listeners: Vec::new(),
            clients: Vec::new(),
            next_id: 0,
            max_clients: (MAX_CLIENTS, None),
            paused: None,
            trouble: LogLimit::new(Duration::from_secs(1)),
        }
    }
}

/// The endpoint as main hands it to its next image on an upgrade.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    listeners: Vec<SavedListener>,
    next_id: u64,
    clients: Vec<SavedClient>,
}

impl Saved {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedListener {
    fd: RawFd,
    /// The `--admin-bind` value, and the address actually bound.
    addr: String,
    local: String,
    /// A unix socket file main created: `(path, dev, inode)`.
    created: Option<(Vec<u8>, u64, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedClient {
    id: u64,
    fd: RawFd,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Until its deadline.
    left_ms: u64,
    close: bool,
    lingering: bool,
    eof: bool,
}

impl Server {
    /// Binds every address (`CLOEXEC`, non-blocking). On error, what was
    /// bound so far is closed again.
    pub fn bind(addrs: &[BindAddr]) -> Result<Server, Error> {
        let mut server = Server::default();
        for addr in addrs {
            let fail = |source| Error::AdminBind { addr: addr.to_string(), source };
            let spec = BindSpec::new(None, addr.clone());
            let listener = sockets::bind(&spec, BACKLOG, true).map_err(|e| match e {
                Error::Bind { source, .. } => fail(source),
                other => other,
            })?;
            listener.socket().set_nonblocking(true).map_err(fail)?;
            server.listeners.push(listener);
        }
        Ok(server)
    }

    /// Whether there is an endpoint at all (`--admin-bind` given).
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// How many clients are connected.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Holds the clients to `max` (at least 1, at most [`MAX_CLIENTS`]):
    /// what `RLIMIT_NOFILE`, `limit`, leaves room for.
    pub fn set_max_clients(&mut self, max: usize, limit: u64) {
        self.max_clients = (max.clamp(1, MAX_CLIENTS), (max < MAX_CLIENTS).then_some(limit));
    }

    /// The addresses bound, with their real ports.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.listeners.iter().map(|l| l.local.as_str())
    }

    /// The fds main polls (the listeners unless accepting is paused), each
    /// for what it waits for.
    pub fn fds(&self) -> Vec<(Token, BorrowedFd<'_>, Interest)> {
        let listening = if self.paused.is_none() { &self.listeners[..] } else { &[] };
        let listeners =
            listening.iter().enumerate().map(|(i, l)| (Token::Listener(i), l.fd(), Interest::Read));
        let clients = self.clients.iter().map(|c| (Token::Client(c.id), c.socket.as_fd(), c.interest()));
        listeners.chain(clients).collect()
    }

    /// The earliest client deadline, or the end of a pause in accepting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.deadline).chain(self.paused.map(|(until, _)| until)).min()
    }

    /// Closes the clients past their deadline; polls the listeners again
    /// once a pause is over (or a client has left since).
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|c| c.deadline > now);
        if self.paused.is_some_and(|(until, clients)| now >= until || self.clients.len() < clients) {
            self.paused = None;
        }
    }

    /// Handles the fds of [`Server::fds`] that polled ready, asking
    /// `answer` for what each route says.
    pub fn on_ready(&mut self, ready: &[Token], now: Instant, answer: &mut dyn FnMut(Route) -> Answer) {
        for token in ready {
            match *token {
                Token::Client(id) => {
                    if let Some(index) = self.clients.iter().position(|c| c.id == id) {
                        if !self.clients[index].turn(now, answer) {
                            self.clients.remove(index);
                        }
                    }
                }
                Token::Listener(index) => self.accept(index, now),
            }
        }
    }

    /// Accepts what is pending on listener `index` (a bounded number per
    /// turn: the rest wait for the next). An accept that finds no
    /// descriptor closes the client idle the longest and tries again; with
    /// none to close, or another error, accepting pauses.
    fn accept(&mut self, index: usize, now: Instant) {
        // A client was closed for the descriptor the last accept lacked.
        let mut made_room = false;
        for _ in 0..MAX_CLIENTS {
            if self.paused.is_some() {
                return;
            }
            let Some(listener) = self.listeners.get(index) else { return };
            let socket = match listener.socket().accept() {
                Ok((socket, _)) => socket,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // That connection is gone; the next may be fine.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    let why = crate::limits::explain(&e, false, None);
                    if crate::limits::out_of_fds(&e) && !made_room && self.drop_oldest() {
                        made_room = true;
                        self.log_trouble("accept", now, || {
                            format!("admin endpoint: cannot accept a client: {why}: closed the client idle the longest")
                        });
                        continue;
                    }
                    // Readable again at once, and failing again: not until
                    // something has changed.
                    self.paused = Some((now + ACCEPT_PAUSE, self.clients.len()));
                    self.log_trouble("accept", now, || {
                        format!(
                            "admin endpoint: cannot accept a client: {why}: trying again in {} ms",
                            ACCEPT_PAUSE.as_millis()
                        )
                    });
                    return;
                }
            };
            made_room = false;
            if socket.set_nonblocking(true).is_err() {
                continue;
            }
            let (max, limit) = self.max_clients;
            if self.clients.len() >= max && self.drop_oldest() {
                let why = match limit {
                    Some(limit) => format!(" (what RLIMIT_NOFILE, {limit}, leaves room for)"),
                    None => String::new(),
                };
                self.log_trouble("full", now, || {
                    format!("admin endpoint: {max} clients at most{why}: closed the one idle the longest")
                });
            }
            self.next_id += 1;
            self.clients.push(Client::new(self.next_id, socket, now));
        }
    }

    /// Makes room: closes the client idle the longest (the earliest
    /// deadline). False if there is none.
    fn drop_oldest(&mut self) -> bool {
        let oldest = self.clients.iter().enumerate().min_by_key(|(_, c)| c.deadline).map(|(i, _)| i);
        oldest.map(|index| self.clients.remove(index)).is_some()
    }

    /// Logs the line `line` makes, at most once a second for each `kind`.
    fn log_trouble(&mut self, kind: &'static str, now: Instant, line: impl FnOnce() -> String) {
        if let Some(n) = self.trouble.check(&kind, now) {
            log::warn!("{}{}", line(), suppressed(n));
        }
    }

    /// What the next image of main needs (see [`Server::resume`]).
    pub fn save(&self, now: Instant) -> Saved {
        Saved {
            listeners: self
                .listeners
                .iter()
                .map(|l| SavedListener {
                    fd: l.fd().as_raw_fd(),
                    addr: l.spec.addr.to_string(),
                    local: l.local.clone(),
                    created: l
                        .created()
                        .map(|(path, dev, ino)| (path.as_os_str().as_bytes().to_vec(), *dev, *ino)),
                })
                .collect(),
            next_id: self.next_id,
            clients: self.clients.iter().map(|c| c.save(now)).collect(),
        }
    }

    /// The listeners and every client: the fds an upgrade passes on.
    pub fn handover_fds(&self) -> Vec<BorrowedFd<'_>> {
        let listeners = self.listeners.iter().map(Listener::fd);
        listeners.chain(self.clients.iter().map(|c| c.socket.as_fd())).collect()
    }

    /// The endpoint a previous image of main saved, its fds taken over with
    /// `adopt` (which makes them `CLOEXEC` again): the same sockets, the
    /// same clients with what they had sent and what they had still to get.
    pub fn resume(
        saved: &Saved,
        now: Instant,
        mut adopt: impl FnMut(RawFd) -> Result<OwnedFd, Error>,
    ) -> Result<Server, Error> {
        let mut server = Server { next_id: saved.next_id, ..Server::default() };
        for l in &saved.listeners {
            let addr: BindAddr = l.addr.parse().map_err(Error::Usage)?;
            let created = l.created.as_ref().map(|(path, dev, ino)| {
                (PathBuf::from(std::ffi::OsString::from_vec(path.clone())), *dev, *ino)
            });
            let listener =
                Listener::resume(adopt(l.fd)?, BindSpec::new(None, addr), l.local.clone(), created, false);
            // O_NONBLOCK lives on the open file, which the exec kept; set anyway.
            let _ = listener.socket().set_nonblocking(true);
            server.listeners.push(listener);
        }
        for c in &saved.clients {
            let left = Duration::from_millis(c.left_ms).min(CLIENT_TIMEOUT);
            server.clients.push(Client {
                id: c.id,
                socket: Socket::from(adopt(c.fd)?),
                input: c.input.clone(),
                output: c.output.clone(),
                deadline: now + left,
                close: c.close,
                more: !c.input.is_empty(),
                lingering: c.lingering,
                eof: c.eof,
            });
        }
        Ok(server)
    }
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
