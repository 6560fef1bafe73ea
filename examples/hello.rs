//! `hello`: the smallest server that keeps panzer's worker contract. Copy it.
//!
//! ```text
//! cargo build --release --examples
//! panzer --bind 127.0.0.1:8080 --count 4 --ready notify target/release/examples/hello
//! curl 127.0.0.1:8080     # pid=4242 generation=1 worker=3
//! ```
//!
//! The contract, as this file follows it:
//!
//! 1. **Socket**: take the listener at fd 3 (`LISTEN_FDS`, via `listenfd`).
//!    Without panzer, bind `127.0.0.1:$PORT` (default 8080) instead.
//! 2. **Ready**: send `READY=1` to `NOTIFY_SOCKET` once serving (`--ready notify`).
//! 3. **Drain on SIGTERM** (or SIGINT):
//!    - stop accepting: close this process's copy of the listener; the socket
//!      stays open in panzer, so connections wait in its backlog;
//!    - finish the requests in flight, and answer any request on a kept-alive
//!      connection with `Connection: close`;
//!    - keep an idle kept-alive connection open for `DRAIN_GRACE_MS` (500)
//!      before closing it, because its client may be sending right now; one
//!      that has not sent its first request yet gets 10 s;
//!    - exit 0 once every connection is done.
//!
//! One thread polls the listener and a signalfd; each connection gets a
//! thread. A plain HTTP/1.1 subset: every request is answered as a GET
//! without a body.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

/// Set once the drain has started; `wake` polls readable from then on.
struct Drain {
    started: OnceLock<Instant>,
    wake: OwnedFd,
    grace: Duration,
}

fn main() {
    // One line that says what went wrong, as a server's log should.
    if let Err(e) = run() {
        log(format!("{e}"));
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    // Block the drain signals before any thread exists; read them from a fd.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    let signals = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)?;

    let listener = match listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        Some(listener) => listener,
        None => {
            let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
            let listener = TcpListener::bind(("127.0.0.1", port))?;
            log(format!("listening on {}", listener.local_addr()?));
            listener
        }
    };
    // Never stuck in accept(2) when a sibling worker took the connection.
    listener.set_nonblocking(true)?;

    let var = |name| std::env::var(name).unwrap_or_else(|_| "-".into());
    let body = format!(
        "pid={} generation={} worker={}\n",
        std::process::id(),
        var("PANZER_GENERATION"),
        var("PANZER_WORKER")
    );
    let body: Arc<str> = body.into();
    let (wake, wake_on_drop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let grace = var("DRAIN_GRACE_MS").parse().unwrap_or(500);
    let drain = Arc::new(Drain { started: OnceLock::new(), wake, grace: Duration::from_millis(grace) });

    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
    log(format!("pid {} serving", std::process::id()));
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue; // EINTR
        }
        if fds[1].any() == Some(true) {
            break;
        }
        while let Ok((stream, _)) = listener.accept() {
            let (body, drain) = (body.clone(), drain.clone());
            connections.push(thread::spawn(move || serve(stream, &body, &drain)));
        }
        connections.retain(|c| !c.is_finished());
    }

    log(format!("pid {} draining", std::process::id()));
    drop(listener);
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    let _ = drain.started.set(Instant::now());
    drop(wake_on_drop); // wakes every connection waiting for a request
    for connection in connections {
        let _ = connection.join();
    }
    log(format!("pid {} exiting", std::process::id()));
    Ok(())
}

/// Serves one connection until either side wants it closed.
fn serve(stream: TcpStream, body: &str, drain: &Drain) {
    let mut reader = BufReader::new(stream);
    let mut fresh = true;
    while wait_for_request(&reader, drain, fresh) {
        fresh = false;
        let Some(asked_to_close) = read_head(&mut reader) else { return };
        // Checked after the work, so a request in flight when the drain
        // started also learns that this connection is done.
        let close = asked_to_close || drain.started.get().is_some();
        let connection = if close { "close" } else { "keep-alive" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() || close {
            break;
        }
    }
    // Close gently: FIN first, then read what the client still sends, so the
    // kernel does not answer unread input with a reset that eats the response.
    let mut stream = reader.into_inner();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = io::copy(&mut stream, &mut io::sink());
}

/// Waits until a request starts to arrive. False when the connection is
/// idle past the drain grace.
fn wait_for_request(reader: &BufReader<TcpStream>, drain: &Drain, fresh: bool) -> bool {
    if !reader.buffer().is_empty() {
        return true; // pipelined
    }
    let grace = if fresh { drain.grace.max(Duration::from_secs(10)) } else { drain.grace };
    loop {
        let started = drain.started.get();
        let timeout = match started {
            None => PollTimeout::NONE,
            Some(at) => {
                (*at + grace).saturating_duration_since(Instant::now()).try_into().unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN),
            PollFd::new(drain.wake.as_fd(), PollFlags::POLLIN),
        ];
        // Once draining, the wake pipe is always readable: watch the socket only.
        let watched = if started.is_some() { 1 } else { 2 };
        match poll(&mut fds[..watched], timeout) {
            Ok(_) if fds[0].any() == Some(true) => return true,
            Ok(0) if started.is_some() => return false,
            _ => continue, // the drain started, or EINTR
        }
    }
}

/// Reads a request line and its headers; `Some(close)` says whether the
/// client asked to close the connection, `None` that it closed it.
fn read_head(reader: &mut impl BufRead) -> Option<bool> {
    let mut line = String::new();
    let mut close = None; // known once the request line is in
    loop {
        line.clear();
        if Read::take(&mut *reader, 8192).read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim().to_ascii_lowercase();
        match close {
            None if line.is_empty() => {} // blank lines may precede a request
            None => close = Some(line.ends_with("http/1.0")), // 1.0 closes by default
            Some(_) if line.is_empty() => return close,
            Some(_) => {
                if let Some(value) = line.strip_prefix("connection:") {
                    close = Some(value.contains("close"));
                }
            }
        }
    }
}

/// One line on stderr in one write, so workers sharing a log never interleave.
fn log(line: String) {
    let _ = io::stderr().write_all(format!("hello: {line}\n").as_bytes());
}
