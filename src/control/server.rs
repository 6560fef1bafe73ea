//! The control socket: a Unix stream socket, mode 0600, one JSON request per
//! line in, one JSON reply per line out.
//!
//! Everything is non-blocking and owned by main's loop: a client that sends
//! garbage gets an error and is dropped; one that sends an endless line is
//! cut off at [`MAX_LINE`]; one that connects and says nothing only costs an
//! fd until [`IDLE_TIMEOUT`], or until the cap (at most [`MAX_CLIENTS`],
//! fewer where `RLIMIT_NOFILE` leaves main less room: [`client_cap`]) is
//! reached and it is the one idle the longest; one that stops reading loses
//! its reply. None of them can block main or another client.
//!
//! An accept that fails for lack of descriptors (`EMFILE`, `ENFILE`) never
//! spins: the client idle the longest is dropped to make room, or, when
//! every client waits for a reply (or another error stands in the way), the
//! listener is left out of the poll until a client leaves or
//! [`ACCEPT_PAUSE`] has passed. Connections wait in the backlog meanwhile.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{Reply, Request};
use crate::error::Error;
use crate::log_limit::{suppressed, LogLimit};

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a client may stay connected without a request in progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most clients connected at once; past it the one idle the longest is
/// dropped, so idle clients never lock out the operator.
pub const MAX_CLIENTS: usize = 64;
/// After an accept failed with nothing to give up for it, how long the
/// listener is left out of the poll (unless a client leaves first).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(200);
/// Descriptors kept free for main besides those it holds and a monitor's
/// start: the status channels of three generations (one serving, one
/// starting, one draining) and a read of `/proc`.
const MAIN_SPARE: u64 = 4;

/// The most control clients main keeps under `limit` (`RLIMIT_NOFILE`),
/// holding `held` descriptors besides its clients, with `sockets`
/// listening sockets: what is left once main can still start a monitor
/// (the status channel's pair, the spawn's error pipe, and in the child a
/// copy of its write end, of the channel and of every socket) and keep a
/// few more, between 1 and [`MAX_CLIENTS`].
pub fn client_cap(limit: u64, held: u64, sockets: usize) -> usize {
    (client_room(limit, held, sockets).min(MAX_CLIENTS as u64) as usize).max(1)
}

/// The descriptors left for clients (of the control socket and the admin
/// endpoint together) under `limit`, holding `held` besides them, once main
/// can still start a monitor (see [`client_cap`]).
pub fn client_room(limit: u64, held: u64, sockets: usize) -> u64 {
    let monitor_start = 2 + 2 + 1 + 1 + sockets as u64;
    limit.saturating_sub(held + monitor_start + MAIN_SPARE)
}

/// Identifies a connected client across loop iterations (and across an
/// upgrade of main, which hands clients over with their ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientId(pub(crate) u64);

/// The server as main hands it to its next image on an upgrade: the
/// listener and every client, by fd number, with what each had sent.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    listener: RawFd,
    path: Vec<u8>,
    inode: (u64, u64),
    next_id: u64,
    clients: Vec<SavedClient>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedClient {
    id: ClientId,
    fd: RawFd,
    buffer: Vec<u8>,
    /// Until its idle deadline.
    idle_ms: u64,
    waiting: bool,
    eof: bool,
}

/// What a polled fd of the server belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Listener,
    Client(ClientId),
}

struct Client {
    id: ClientId,
    stream: UnixStream,
    buffer: Vec<u8>,
    idle_deadline: Instant,
    /// A request of this client awaits its reply (e.g. a reload).
    waiting: bool,
    /// The client has shut down its sending side; it may still read replies.
    eof: bool,
}

impl Client {
    /// What the next image of main needs of this client.
    fn save(&self, now: Instant) -> SavedClient {
        SavedClient {
            id: self.id,
            fd: self.stream.as_raw_fd(),
            buffer: self.buffer.clone(),
            idle_ms: self.idle_deadline.saturating_duration_since(now).as_millis() as u64,
            waiting: self.waiting,
            eof: self.eof,
        }
    }
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
    clients: Vec<Client>,
    next_id: u64,
    allowed_uid: u32,
    /// Refused clients are logged at most once a second per uid.
    refusals: LogLimit<u32>,
    /// [`MAX_CLIENTS`], or what `RLIMIT_NOFILE` (the second) leaves room for.
    max_clients: (usize, Option<u64>),
    /// While an accept cannot succeed: until when the listener is not
    /// polled, and how many clients there were then (one fewer resumes it).
    paused: Option<(Instant, usize)>,
    /// Dropped clients and failed accepts: a line a second of each.
    trouble: LogLimit<&'static str>,
}

impl Server {
    /// Binds `path` (mode 0600). A stale socket (nobody listening) is
    /// replaced; a live one, or a file that is not a socket, is an error.
    pub fn bind(path: &Path) -> Result<Server, Error> {
        let in_use = |why: &str| Error::InUse(format!("cannot use control socket {}: {why}", path.display()));
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(in_use("a file that is not a socket is in the way"))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(in_use("a running panzer already listens there")),
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            },
            Err(_) => {}
        }
        let fail = |e: io::Error| Error::os(format!("cannot bind control socket {}", path.display()), e);
        let listener = UnixListener::bind(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        let meta = std::fs::symlink_metadata(path).map_err(fail)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            clients: Vec::new(),
            next_id: 0,
            allowed_uid: nix::unistd::geteuid().as_raw(),
            refusals: LogLimit::new(Duration::from_secs(1)),
            max_clients: (MAX_CLIENTS, None),
            paused: None,
            trouble: LogLimit::new(Duration::from_secs(1)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the next image of main needs (see [`Server::resume`]).
    pub fn save(&self, now: Instant) -> Saved {
        Saved {
            listener: self.listener.as_raw_fd(),
            path: self.path.as_os_str().as_bytes().to_vec(),
            inode: self.inode,
            next_id: self.next_id,
            clients: self.clients.iter().map(|c| c.save(now)).collect(),
        }
    }

    /// The listener and every client: the fds an upgrade passes on.
    pub fn handover_fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd()).chain(self.clients.iter().map(|c| c.stream.as_fd())).collect()
    }

    /// The server a previous image of main saved, its fds taken over with
    /// `adopt` (which makes them `CLOEXEC` again). Same path, same clients
    /// with the same ids, same requests half read.
    pub fn resume(
        saved: &Saved,
        now: Instant,
        mut adopt: impl FnMut(RawFd) -> Result<OwnedFd, Error>,
    ) -> Result<Server, Error> {
        let listener = UnixListener::from(adopt(saved.listener)?);
        let mut clients = Vec::with_capacity(saved.clients.len());
        for c in &saved.clients {
            clients.push(Client {
                id: c.id,
                stream: UnixStream::from(adopt(c.fd)?),
                buffer: c.buffer.clone(),
                idle_deadline: now + Duration::from_millis(c.idle_ms.min(IDLE_TIMEOUT.as_millis() as u64)),
                waiting: c.waiting,
                eof: c.eof,
            });
        }
        Ok(Server {
            listener,
            path: PathBuf::from(std::ffi::OsString::from_vec(saved.path.clone())),
            inode: saved.inode,
            clients,
            next_id: saved.next_id,
            allowed_uid: nix::unistd::geteuid().as_raw(),
            refusals: LogLimit::new(Duration::from_secs(1)),
            max_clients: (MAX_CLIENTS, None),
            paused: None,
            trouble: LogLimit::new(Duration::from_secs(1)),
        })
    }

    /// Holds the clients to `max` (see [`client_cap`]), which `RLIMIT_NOFILE`
    /// at `limit` set.
    pub fn set_max_clients(&mut self, max: usize, limit: u64) {
        self.max_clients = (max.clamp(1, MAX_CLIENTS), (max < MAX_CLIENTS).then_some(limit));
    }

    /// How many clients are connected.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// The listener (unless accepting is paused) and every client still
    /// sending: the fds main polls.
    pub fn fds(&self) -> Vec<(Token, BorrowedFd<'_>)> {
        let listener = self.paused.is_none().then_some((Token::Listener, self.listener.as_fd()));
        listener.into_iter().chain(self.sending().map(|c| (Token::Client(c.id), c.stream.as_fd()))).collect()
    }

    fn sending(&self) -> impl Iterator<Item = &Client> {
        self.clients.iter().filter(|c| !c.eof)
    }

    /// The earliest idle deadline of a client, or the end of a pause.
    pub fn next_deadline(&self) -> Option<Instant> {
        let idle = self.clients.iter().filter(|c| !c.waiting).map(|c| c.idle_deadline);
        idle.chain(self.paused.map(|(until, _)| until)).min()
    }

    /// Drops clients idle past their deadline; polls the listener again
    /// once a client has left or the pause is over.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|c| c.waiting || c.idle_deadline > now);
        if self.paused.is_some_and(|(until, clients)| now >= until || self.clients.len() < clients) {
            self.paused = None;
        }
    }

    /// Handles the fds of [`Server::fds`] that polled ready. Returns the
    /// valid requests read; invalid ones are answered and their clients
    /// dropped here.
    pub fn on_ready(&mut self, ready: &[Token]) -> Vec<(ClientId, Request)> {
        let mut requests = Vec::new();
        for token in ready {
            if let Token::Client(id) = token {
                self.read_client(*id, &mut requests);
            }
        }
        if ready.contains(&Token::Listener) {
            self.accept_all();
        }
        requests
    }

    fn accept_all(&mut self) {
        // A client was dropped for the descriptor the last accept lacked.
        let mut made_room = false;
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // That connection is gone; the next may be fine.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    let out_of_fds = crate::limits::out_of_fds(&e);
                    let why = crate::limits::explain(&e, false, None);
                    if out_of_fds && !made_room && self.drop_oldest_idle("panzer has no descriptor left") {
                        made_room = true;
                        self.log_trouble("accept", || {
                            format!(
                                "control: cannot accept a client: {why}: dropped the client idle the longest"
                            )
                        });
                        continue;
                    }
                    // Readable again at once, and failing again: not until
                    // something has changed.
                    self.paused = Some((Instant::now() + ACCEPT_PAUSE, self.clients.len()));
                    let all_wait =
                        if out_of_fds && !made_room { ", and every client waits for a reply" } else { "" };
                    self.log_trouble("accept", || {
                        format!(
                            "control: cannot accept a client: {why}{all_wait}: trying again in {} ms",
                            ACCEPT_PAUSE.as_millis()
                        )
                    });
                    return;
                }
            };
            made_room = false;
            let refuse = |stream: &UnixStream, why: &str| {
                let _ = stream.set_nonblocking(true);
                let _ = write_reply(stream, &Reply::error(why));
            };
            match getsockopt(&stream, PeerCredentials) {
                Ok(creds) if creds.uid() == 0 || creds.uid() == self.allowed_uid => {}
                Ok(creds) => {
                    if let Some(n) = self.refusals.check(&creds.uid(), Instant::now()) {
                        log::warn!("control: refused a client with uid {}{}", creds.uid(), suppressed(n));
                    }
                    refuse(&stream, "permission denied: only panzer's own user or root may control it");
                    continue;
                }
                Err(_) => continue,
            }
            let (max, limit) = self.max_clients;
            if self.clients.len() >= max {
                if !self.drop_oldest_idle("too many control clients, and this one was idle") {
                    refuse(&stream, "too many control clients, all waiting for a reply");
                    continue;
                }
                let why = match limit {
                    Some(limit) => format!(" (what RLIMIT_NOFILE, {limit}, leaves room for)"),
                    None => String::new(),
                };
                self.log_trouble("full", || {
                    format!("control: {max} clients at most{why}: dropped the client idle the longest")
                });
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            self.clients.push(Client {
                id: ClientId(self.next_id),
                stream,
                buffer: Vec::new(),
                idle_deadline: Instant::now() + IDLE_TIMEOUT,
                waiting: false,
                eof: false,
            });
        }
    }

    /// Makes room for a new client: drops the one idle the longest (a
    /// client waiting for a reply is never dropped), telling it `why`.
    /// False if all wait.
    fn drop_oldest_idle(&mut self, why: &str) -> bool {
        let oldest =
            self.clients.iter().enumerate().filter(|(_, c)| !c.waiting).min_by_key(|(_, c)| c.idle_deadline);
        let Some((index, _)) = oldest else {
            return false;
        };
        let client = self.clients.remove(index);
        let _ = write_reply(&client.stream, &Reply::error(format!("dropped: {why}")));
        true
    }

    /// Logs the line `line` makes, at most once a second for each `kind`.
    fn log_trouble(&mut self, kind: &'static str, line: impl FnOnce() -> String) {
        if let Some(n) = self.trouble.check(&kind, Instant::now()) {
            log::warn!("{}{}", line(), suppressed(n));
        }
    }

    fn read_client(&mut self, id: ClientId, requests: &mut Vec<(ClientId, Request)>) {
        let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match client.stream.read(&mut chunk) {
                Ok(0) => {
                    client.eof = true;
                    break;
                }
                Ok(n) => client.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    client.eof = true;
                    break;
                }
            }
            if client.buffer.len() > MAX_LINE {
                break;
            }
        }
        let before = requests.len();
        let mut drop_client = false;
        while let Some(end) = client.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = client.buffer.drain(..=end).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            match Request::parse(line) {
                Ok(request) => {
                    client.idle_deadline = Instant::now() + IDLE_TIMEOUT;
                    requests.push((id, request));
                }
                Err(message) => {
                    let _ = write_reply(&client.stream, &Reply::error(message));
                    drop_client = true;
                    break;
                }
            }
        }
        if client.buffer.len() > MAX_LINE {
            let _ =
                write_reply(&client.stream, &Reply::error(format!("request longer than {MAX_LINE} bytes")));
            drop_client = true;
        }
        // A client that has finished sending stays only to get its replies.
        if client.eof && !client.waiting && requests.len() == before {
            drop_client = true;
        }
        if drop_client {
            self.clients.retain(|c| c.id != id);
        }
    }

    /// Marks `id` as waiting for a reply that comes later (a reload, an upgrade).
    pub fn hold(&mut self, id: ClientId) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            c.waiting = true;
        }
    }

    /// Sends `reply` to `id`. A client that cannot take it at once is dropped.
    pub fn reply(&mut self, id: ClientId, reply: &Reply) {
        let Some(index) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let client = &mut self.clients[index];
        client.waiting = false;
        client.idle_deadline = Instant::now() + IDLE_TIMEOUT;
        if write_reply(&client.stream, reply).is_err() || client.eof {
            self.clients.remove(index);
        }
    }
}

/// Writes one reply line without blocking; the whole line or an error.
fn write_reply(mut stream: &UnixStream, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    let written = stream.write(&line)?;
    if written < line.len() {
        return Err(io::Error::from(io::ErrorKind::WouldBlock));
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_cap_leaves_main_room_to_start_a_monitor_and_stays_between_1_and_64() {
        // 24, holding 0-2, its signalfd, the control socket, one listening
        // socket and a stray inherited fd: 7 for a monitor's start, 4 spare.
        assert_eq!(client_cap(24, 7, 1), 6);
        assert_eq!(client_cap(1024, 7, 1), MAX_CLIENTS);
        assert_eq!(client_cap(12, 7, 1), 1, "the operator can always connect");
        assert_eq!(client_cap(0, 7, 1), 1);
        assert_eq!(client_cap(64, 7, 4), 64 - 7 - 10 - 4);
    }
}
