//! Library mode: load once, fork N copies.
//!
//! A Rust server that loads a large read-only state (routing tables,
//! configuration, caches, keys) can load it **once per generation** and let N
//! workers share those pages copy-on-write, instead of loading it N times as
//! N exec'd processes would. The app's `main` loads, then hands a value
//! implementing [`Worker`] to [`run`]:
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//!
//! struct App {
//!     greeting: String, // stands for 500 MB of routing tables
//! }
//!
//! impl panzer::Worker for App {
//!     fn serve(self, listeners: Vec<std::net::TcpListener>) -> ! {
//!         panzer::ready();
//!         for stream in listeners[0].incoming() {
//!             if panzer::draining() {
//!                 break;
//!             }
//!             let Ok(mut stream) = stream else { continue };
//!             let mut line = String::new();
//!             let _ = BufReader::new(&stream).read_line(&mut line);
//!             let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{}\n", self.greeting);
//!         }
//!         panzer::finished() // drained: the process exits 0
//!     }
//! }
//!
//! fn main() {
//!     let app = App { greeting: "hello".into() }; // loaded once per generation
//!     panzer::run(app)
//! }
//! ```
//!
//! ```text
//! panzer --preload --bind 0.0.0.0:8080 --count 8 ./target/release/my_app
//! ```
//!
//! `panzer --preload` execs `my_app` as the **monitor** of each generation.
//! [`run`] speaks the monitor protocol to panzer's main process (the same
//! monitor code as exec mode), forks the workers, restarts them with the same
//! backoff, reports readiness and drains them on order. `kill -USR1`
//! execs the binary now at that path as the next generation's monitor, so a
//! new build is loaded, checked for readiness, rolled back if it fails, and
//! swapped in exactly as in exec mode.
//!
//! # Rules
//!
//! - **Single thread before fork.** `fork()` copies only the calling thread:
//!   a lock another thread held (the allocator's, a runtime's) would stay
//!   locked forever in every worker. [`run`] refuses to fork a process that
//!   runs more than one thread; the generation fails with an error saying
//!   so. Build the async runtime (tokio, …) inside [`Worker::serve`].
//! - **Readiness.** A worker is ready when `serve` calls [`ready`], or, with
//!   the default `--ready auto`, as soon as it is seen accepting.
//! - **Draining.** panzer handles the drain signal (`--drain-signal`, `TERM`
//!   by default) for the worker: [`draining`] turns true and
//!   [`wait_draining`] returns. `serve` should stop accepting, finish what is
//!   in flight and call [`finished`]; the process exits 0 once every copy of
//!   `serve` has. A worker whose `serve` never asked ([`draining`] and
//!   [`wait_draining`] never called) exits at once on the drain signal, as
//!   an exec'd server that does not handle it would.
//! - **What a worker starts with:** default signal dispositions (but
//!   `SIGPIPE` ignored, as every Rust program starts) and an empty signal
//!   mask, only fds 0-2, its listeners and the fds the app opened before
//!   [`run`] (files its preloaded value owns stay its own) open, `PANZER_GENERATION`,
//!   `PANZER_WORKER` and `NOTIFY_SOCKET` set, and its monitor's death as its
//!   parent-death signal.
//!
//! # Threads (hybrid workers)
//!
//! [`Runner::threads`] runs T copies of `serve` in each worker process, each
//! on its own thread with its own copies of the listeners (processes ×
//! threads). `serve` takes the value, so each copy gets a clone of it: that
//! is why `threads` needs the worker to be `Clone + Sync`. Keep what was
//! preloaded behind an `Arc`, and a clone is a pointer: the T copies share
//! the one table. A copy that panics is restarted in its thread with a new
//! clone; a process whose copies panic [`MAX_PANICS`] times within
//! [`PANIC_WINDOW`] exits (status [`PANIC_EXIT`]) and its monitor replaces
//! it. Without `threads`, one copy runs and a panic ends the process (its
//! monitor starts another). Restarting needs `panic = "unwind"` (the
//! default); with `panic = "abort"` a panic ends the process.
//!
//! # Listeners
//!
//! `serve` takes the `--bind` sockets, in order, as the type its impl names:
//! `std::net::TcpListener` (the default: `impl panzer::Worker for App`),
//! `std::os::unix::net::UnixListener`, or [`Listener`] (either kind, with
//! its `--bind NAME=` name: `impl panzer::Worker<panzer::Listener> for App`).
//! A socket of the other kind fails the worker with a message that says so.
//!
//! # Without panzer
//!
//! Run on its own, the same binary serves as one worker on the sockets of
//! `LISTEN_FDS` (systemd socket activation, `systemfd`), or, without them,
//! prints how to start it and exits with status 2.

use std::any::Any;
use std::ffi::OsString;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::monitor::{self, ForkedWorker};
use crate::protocol::{MonitorArgs, MONITOR_ARGS_ENV};
use crate::sys;
use crate::worker;

/// The server a worker runs: implemented by the value the app preloads.
/// In a worker process that value is the monitor's memory, shared
/// copy-on-write with every sibling.
///
/// `L` is how `serve` takes the sockets (see [`FromListener`]):
/// `std::net::TcpListener` unless the impl names another.
pub trait Worker<L: FromListener = TcpListener>: Sized + Send + 'static {
    /// Serves on `listeners` (the `--bind` sockets, in order, blocking)
    /// until [`draining`], then calls [`finished`] (or exits the process).
    /// Runs in a forked worker process, on a thread of its own: build the
    /// async runtime here, never before [`run`].
    fn serve(self, listeners: Vec<L>) -> !;
}

/// A type [`Worker::serve`] can take its listeners as.
pub trait FromListener: Sized + Send + 'static {
    /// Converts one socket, or says why it cannot be this type.
    fn from_listener(listener: Listener) -> Result<Self, String>;
}

impl FromListener for Listener {
    fn from_listener(listener: Listener) -> Result<Self, String> {
        Ok(listener)
    }
}

impl FromListener for TcpListener {
    fn from_listener(listener: Listener) -> Result<Self, String> {
        match listener.socket {
            Socket::Tcp(l) => Ok(l),
            Socket::Unix(_) => Err(format!(
                "socket `{}` is a unix socket, and serve takes TcpListeners: take panzer::Listener \
                 (impl panzer::Worker<panzer::Listener>) to serve both kinds",
                listener.name
            )),
        }
    }
}

impl FromListener for UnixListener {
    fn from_listener(listener: Listener) -> Result<Self, String> {
        match listener.socket {
            Socket::Unix(l) => Ok(l),
            Socket::Tcp(_) => Err(format!(
                "socket `{}` is a TCP socket, and serve takes UnixListeners: take panzer::Listener \
                 (impl panzer::Worker<panzer::Listener>) to serve both kinds",
                listener.name
            )),
        }
    }
}

/// A listening socket of one kind.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// One listening socket, with its name (`--bind web=127.0.0.1:8080` names
/// it `web`; an unnamed one is called `unknown`, as systemd does).
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
}

impl Listener {
    /// Wraps a listening socket; the kind is read from the socket itself.
    fn from_fd(fd: OwnedFd, name: &str) -> io::Result<Listener> {
        let family = socket2::SockRef::from(&fd).local_addr()?.family();
        let socket = if family == libc::AF_UNIX as libc::sa_family_t {
            Socket::Unix(UnixListener::from(fd))
        } else {
            Socket::Tcp(TcpListener::from(fd))
        };
        Ok(Listener { name: name.to_string(), socket })
    }

    /// Its name from `--bind NAME=ADDR` (`LISTEN_FDNAMES`), or `unknown`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    pub fn into_socket(self) -> Socket {
        self.socket
    }

    /// The TCP listener, if this is one.
    pub fn tcp(&self) -> Option<&TcpListener> {
        match &self.socket {
            Socket::Tcp(l) => Some(l),
            Socket::Unix(_) => None,
        }
    }

    /// The unix-domain listener, if this is one.
    pub fn unix(&self) -> Option<&UnixListener> {
        match &self.socket {
            Socket::Unix(l) => Some(l),
            Socket::Tcp(_) => None,
        }
    }

    /// Waits for the next connection, or for the drain: `Ok(None)` once this
    /// worker drains (see [`draining`]), so a blocking server can write
    /// `while let Some(conn) = listener.accept()? { … }` and return after.
    /// Several workers wait on one socket; a connection a sibling took first
    /// is waited for again, never blocked on. It makes the socket
    /// non-blocking, for every worker (accepted connections stay blocking).
    pub fn accept(&self) -> io::Result<Option<Connection>> {
        WATCHED.store(true, Ordering::SeqCst);
        match &self.socket {
            Socket::Tcp(l) => l.set_nonblocking(true)?,
            Socket::Unix(l) => l.set_nonblocking(true)?,
        }
        loop {
            if sys::fork::drain_requested() {
                return Ok(None);
            }
            let drain = DRAIN_FD.get();
            let mut fds = vec![(self.as_fd(), false)];
            fds.extend(drain.map(|fd| (fd.as_fd(), false)));
            let ready = sys::poll(&fds, None)?;
            if ready.get(1).copied().unwrap_or(false) {
                return Ok(None);
            }
            if !ready[0] {
                continue;
            }
            let accepted = match &self.socket {
                Socket::Tcp(l) => l.accept().map(|(s, _)| Connection::Tcp(s)),
                Socket::Unix(l) => l.accept().map(|(s, _)| Connection::Unix(s)),
            };
            match accepted {
                Ok(conn) => {
                    conn.set_nonblocking(false)?;
                    return Ok(Some(conn));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Another handle on the same socket (`dup`).
    pub fn try_clone(&self) -> io::Result<Listener> {
        let fd = self.as_fd().try_clone_to_owned()?;
        let socket = match &self.socket {
            Socket::Tcp(_) => Socket::Tcp(TcpListener::from(fd)),
            Socket::Unix(_) => Socket::Unix(UnixListener::from(fd)),
        };
        Ok(Listener { name: self.name.clone(), socket })
    }
}

/// A connection from [`Listener::accept`]: read and write it as a stream.
#[derive(Debug)]
pub enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.set_nonblocking(on),
            Connection::Unix(s) => s.set_nonblocking(on),
        }
    }
}

impl io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.read(buf),
            Connection::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.write(buf),
            Connection::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.flush(),
            Connection::Unix(s) => s.flush(),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Most copies of `serve` per process ([`Runner::threads`]).
pub const MAX_THREADS: usize = 1024;
/// A process whose copies of `serve` panic this many times …
pub const MAX_PANICS: usize = 5;
/// … within this long exits, to be replaced by its monitor.
pub const PANIC_WINDOW: Duration = Duration::from_secs(10);
/// The exit status of a process replaced for its panics (`EX_SOFTWARE`).
pub const PANIC_EXIT: i32 = 70;
/// The first pause before a panicked copy starts again; doubles per panic
/// of that copy, up to [`MAX_RESTART_DELAY`].
const RESTART_DELAY: Duration = Duration::from_millis(50);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(2);
/// Most sockets taken from `LISTEN_FDS` when run without panzer.
const MAX_LISTEN_FDS: usize = 1024;

/// How to run a [`Worker`]: `panzer::Runner::new(app).threads(4).run()`.
/// [`run`] is `Runner::new(app).run()`.
pub struct Runner<W, L = TcpListener> {
    worker: W,
    threads: usize,
    /// Makes each copy's value after the first: set by [`Runner::threads`].
    clone: Option<fn(&W) -> W>,
    listeners: std::marker::PhantomData<fn() -> L>,
}

impl<L: FromListener, W: Worker<L> + Clone + Sync> Runner<W, L> {
    /// Runs `threads` copies of [`Worker::serve`] in each worker process
    /// (held to 1 ..= [`MAX_THREADS`]), each on a clone of the worker, and
    /// restarts a copy that panics in its thread.
    pub fn threads(mut self, threads: usize) -> Runner<W, L> {
        self.threads = threads.clamp(1, MAX_THREADS);
        self.clone = Some(W::clone);
        self
    }
}

impl<L: FromListener, W: Worker<L>> Runner<W, L> {
    pub fn new(worker: W) -> Runner<W, L> {
        Runner { worker, threads: 1, clone: None, listeners: std::marker::PhantomData }
    }

    /// Becomes this generation's monitor under `panzer --preload`, or serves
    /// as one worker on `LISTEN_FDS` sockets without it. Never returns: the
    /// process exits with the monitor's (or the worker's) status.
    pub fn run(self) -> ! {
        let code = match std::env::var_os(MONITOR_ARGS_ENV) {
            Some(value) => {
                // Workers are forks of this process: they must not see it.
                std::env::remove_var(MONITOR_ARGS_ENV);
                let args = match value.to_str().ok_or_else(|| format!("{MONITOR_ARGS_ENV} is not UTF-8")) {
                    Ok(value) => MonitorArgs::from_env(value),
                    Err(e) => Err(e),
                };
                match args {
                    Ok(args) => {
                        // Called in each forked worker, never in the monitor:
                        // each worker takes its own copy of the runner.
                        let mut runner = Some(self);
                        let start = move |forked| match runner.take() {
                            Some(runner) => in_fork(runner, forked),
                            None => std::process::exit(1),
                        };
                        monitor::run_library(args, Box::new(start))
                    }
                    Err(e) => {
                        eprintln!("panzer::run: {e} (set by `panzer --preload` only)");
                        2
                    }
                }
            }
            None => standalone(self),
        };
        std::process::exit(code)
    }
}

/// Runs `worker` in library mode: `panzer::Runner::new(worker).run()`.
pub fn run<L: FromListener, W: Worker<L>>(worker: W) -> ! {
    Runner::new(worker).run()
}

/// The error of a generation whose monitor runs threads when it should fork.
pub(crate) fn threads_refused(threads: usize) -> String {
    format!(
        "panzer::run: this process runs {threads} threads, and fork() copies only one of them \
         (a lock another thread holds would never be released in the workers). Start no thread \
         before panzer::run: build the async runtime (tokio, …) inside Worker::serve"
    )
}

/// Tells the monitor this worker is ready (`READY=1` on `NOTIFY_SOCKET`).
/// Without a notify socket (run without panzer or systemd) it does nothing.
pub fn ready() {
    let _ = notify(b"READY=1");
}

fn notify(message: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os(worker::NOTIFY_SOCKET) else { return Ok(()) };
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &address)?;
        }
        None => {
            socket.send_to(message, &path)?;
        }
    }
    Ok(())
}

/// Whether this worker has been told to drain (the drain signal arrived).
/// `serve` should then stop accepting, finish what is in flight, and return.
pub fn draining() -> bool {
    WATCHED.store(true, Ordering::SeqCst);
    sys::fork::drain_requested()
}

/// Blocks until this worker is told to drain. For an async runtime:
/// `tokio::task::spawn_blocking(panzer::wait_draining)`.
pub fn wait_draining() {
    WATCHED.store(true, Ordering::SeqCst);
    let (lock, changed) = &DRAIN;
    let mut started = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*started {
        started = changed.wait(started).unwrap_or_else(|e| e.into_inner());
    }
}

/// Set once `serve` has asked about draining: the drain is then its job.
static WATCHED: AtomicBool = AtomicBool::new(false);
/// Whether the drain has started, for [`wait_draining`].
static DRAIN: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
/// Readable once the drain has started (a pipe written once, never read).
static DRAIN_FD: OnceLock<OwnedFd> = OnceLock::new();

/// In a worker forked by the monitor: its environment and listeners, then serve.
fn in_fork<L: FromListener, W: Worker<L>>(runner: Runner<W, L>, forked: ForkedWorker) -> ! {
    let pid = std::process::id();
    // Single-threaded here (the monitor checked before forking).
    std::env::set_var(worker::GENERATION, forked.generation.to_string());
    std::env::set_var(worker::WORKER, forked.ordinal.to_string());
    std::env::set_var(worker::NOTIFY_SOCKET, &forked.notify_socket);
    if let Some(timeout) = forked.health_timeout {
        std::env::set_var(worker::WATCHDOG_USEC, timeout.as_micros().to_string());
        std::env::set_var(worker::WATCHDOG_PID, pid.to_string());
    }
    let who = format!("worker {} (pid {pid})", forked.ordinal);
    let names = names(&forked.fd_names, forked.sockets.len());
    let listeners = forked.sockets.into_iter().zip(&names).map(|(fd, name)| Listener::from_fd(fd, name));
    match listeners.collect() {
        Ok(listeners) => serve_process(runner, listeners, forked.drain_signal, who),
        Err(e) => {
            eprintln!("panzer: {who}: a listening socket cannot be read: {e}");
            std::process::exit(1)
        }
    }
}

/// `LISTEN_FDNAMES`, one name per socket (`unknown` for a missing one).
fn names(fd_names: &str, count: usize) -> Vec<String> {
    let mut names: Vec<String> = fd_names.split(':').take(count).map(str::to_string).collect();
    names.resize(count, "unknown".to_string());
    names.iter_mut().filter(|n| n.is_empty()).for_each(|n| *n = "unknown".to_string());
    names
}

/// Run without `panzer --preload`: one worker on `LISTEN_FDS` sockets, or
/// how to start it.
fn standalone<L: FromListener, W: Worker<L>>(runner: Runner<W, L>) -> i32 {
    let program = std::env::args_os().next().unwrap_or_else(|| OsString::from("my_app"));
    let program = program.to_string_lossy();
    let for_us =
        std::env::var(worker::LISTEN_PID).is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    let count = std::env::var(worker::LISTEN_FDS).ok().and_then(|n| n.trim().parse::<usize>().ok());
    let count = match count {
        Some(n) if for_us && (1..=MAX_LISTEN_FDS).contains(&n) => n,
        Some(n) if for_us && n > MAX_LISTEN_FDS => {
            eprintln!("{program}: LISTEN_FDS={n}: at most {MAX_LISTEN_FDS} sockets can be passed in");
            return 2;
        }
        _ => {
            eprintln!(
                "{program}: no listening sockets. This server runs under panzer's library mode: \
                 start it with `panzer --preload --bind 127.0.0.1:8080 {program}` (it loads once, \
                 then forks its workers), or pass it sockets with LISTEN_FDS (systemd socket \
                 activation) to run it as a single worker."
            );
            return 2;
        }
    };
    let fd_names = std::env::var(worker::LISTEN_FDNAMES).unwrap_or_default();
    for key in [worker::LISTEN_FDS, worker::LISTEN_PID, worker::LISTEN_FDNAMES] {
        std::env::remove_var(key);
    }
    let names = names(&fd_names, count);
    let mut listeners = Vec::with_capacity(count);
    for (i, name) in names.iter().enumerate() {
        let fd = 3 + i as RawFd;
        match sys::adopt_inherited_fd(fd).and_then(|fd| Listener::from_fd(fd, name)) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                eprintln!("{program}: LISTEN_FDS: fd {fd} is not a listening socket: {e}");
                return 2;
            }
        }
    }
    let who = format!("pid {}", std::process::id());
    serve_process(runner, listeners, Signal::SIGTERM, who)
}

/// What a copy of `serve` tells the process's main thread.
enum Event {
    /// The copy called [`finished`], or cannot go on.
    Finished,
    Panicked {
        copy: usize,
        text: String,
    },
    /// It cannot be restarted (the worker is not `Clone`).
    CannotRestart {
        text: String,
    },
    Failed(String),
}

/// Where [`finished`] reports to, in a worker process.
static FINISHED: OnceLock<Mutex<(mpsc::Sender<Event>, OwnedFd)>> = OnceLock::new();

/// Says that this copy of `serve` has drained: once every copy has, the
/// worker process exits 0. Until then the calling thread waits. Outside a
/// worker (no `serve` running under [`run`]) it exits the process at once.
pub fn finished() -> ! {
    match FINISHED.get() {
        Some(report) => {
            let (events, wake) = &*report.lock().unwrap_or_else(|e| e.into_inner());
            let _ = events.send(Event::Finished);
            let _ = nix::unistd::write(wake, &[1]);
        }
        None => std::process::exit(0),
    }
    loop {
        std::thread::park();
    }
}

/// A worker process: `threads` copies of `serve`, each restarted in its
/// thread when it panics (if the worker can be cloned); the main thread
/// watches the copies and the drain.
fn serve_process<L: FromListener, W: Worker<L>>(
    runner: Runner<W, L>,
    listeners: Vec<Listener>,
    drain_signal: Signal,
    who: String,
) -> ! {
    let fail = |what: &str, e: io::Error| -> ! {
        eprintln!("panzer: {who}: {what}: {e}");
        std::process::exit(1)
    };
    let (wake_read, wake_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => fail("cannot create a pipe", e.into()),
    };
    let nonblocking = nix::fcntl::OFlag::O_NONBLOCK;
    if let Err(e) = nix::fcntl::fcntl(&wake_write, nix::fcntl::FcntlArg::F_SETFL(nonblocking)) {
        fail("cannot set up the drain pipe", e.into());
    }
    let copies_wake = match wake_write.try_clone() {
        Ok(fd) => Arc::new(fd),
        Err(e) => fail("cannot set up the drain pipe", e),
    };
    let finished_wake = match wake_write.try_clone() {
        Ok(fd) => fd,
        Err(e) => fail("cannot set up the drain pipe", e),
    };
    if let Err(e) = sys::fork::on_drain_signal(drain_signal, wake_write) {
        fail("cannot handle the drain signal", e);
    }
    let (drain_read, drain_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => fail("cannot create a pipe", e.into()),
    };
    let _ = DRAIN_FD.set(drain_read);
    let listeners = Arc::new(listeners);
    let (events, received) = mpsc::channel::<Event>();
    let _ = FINISHED.set(Mutex::new((events.clone(), finished_wake)));
    let Runner { worker, threads, clone, .. } = runner;
    // The value each start of a copy serves with: a clone of the worker
    // after Runner::threads, else the worker itself, once (one copy, which
    // cannot start again after a panic).
    let original = Arc::new(Mutex::new(Some(worker)));
    let restartable = clone.is_some();
    for copy in 0..threads {
        let original = Arc::clone(&original);
        let listeners = Arc::clone(&listeners);
        let events = events.clone();
        let wake = Arc::clone(&copies_wake);
        let take = move || -> Option<W> {
            let mut held = original.lock().unwrap_or_else(|e| e.into_inner());
            match clone {
                Some(clone) => held.as_ref().map(clone),
                None => held.take(),
            }
        };
        let spawned = std::thread::Builder::new().name(format!("serve-{copy}")).spawn(move || {
            let event = run_copy(&take, restartable, copy, &listeners, &|event| {
                let _ = events.send(event);
                let _ = nix::unistd::write(&*wake, &[1]);
            });
            let _ = events.send(event);
            let _ = nix::unistd::write(&*wake, &[1]);
        });
        if let Err(e) = spawned {
            fail("cannot start a thread for serve", e);
        }
    }
    drop(events);

    let mut live = threads;
    let mut drain_seen = false;
    let mut panics: Vec<Instant> = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(&wake_read, &mut buf) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => fail("cannot read the drain pipe", e.into()),
        }
        if sys::fork::drain_requested() && !drain_seen {
            drain_seen = true;
            if !WATCHED.load(Ordering::SeqCst) {
                // serve never asked: the drain signal's default action.
                std::process::exit(0);
            }
            let (lock, changed) = &DRAIN;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            changed.notify_all();
            let _ = nix::unistd::write(&drain_write, &[1]);
        }
        while let Ok(event) = received.try_recv() {
            match event {
                Event::Finished => {
                    live -= 1;
                    if live == 0 {
                        std::process::exit(0);
                    }
                }
                Event::Failed(e) => {
                    eprintln!("panzer: {who}: {e}");
                    std::process::exit(1)
                }
                Event::CannotRestart { text } => {
                    eprintln!(
                        "panzer: {who}: serve panicked ({text}); exiting, so that its monitor \
                         starts another process (with Runner::threads, a copy that panics is \
                         restarted in its thread)"
                    );
                    std::process::exit(PANIC_EXIT);
                }
                Event::Panicked { copy, text } => {
                    let now = Instant::now();
                    panics.retain(|at| now.duration_since(*at) < PANIC_WINDOW);
                    panics.push(now);
                    if panics.len() >= MAX_PANICS {
                        eprintln!(
                            "panzer: {who}: serve panicked {} times within {}s (last: {text}): \
                             exiting, so that its monitor replaces this process",
                            panics.len(),
                            PANIC_WINDOW.as_secs()
                        );
                        std::process::exit(PANIC_EXIT);
                    }
                    eprintln!(
                        "panzer: {who}: serve copy {copy} panicked ({text}); restarting it in its thread"
                    );
                }
            }
        }
    }
}

/// One copy of `serve`, started again after each panic while a value to
/// serve with can be had. Returns the event that ends it.
fn run_copy<L: FromListener, W: Worker<L>>(
    take: &dyn Fn() -> Option<W>,
    restartable: bool,
    copy: usize,
    listeners: &[Listener],
    report: &dyn Fn(Event),
) -> Event {
    let mut delay = RESTART_DELAY;
    loop {
        let own: Result<Vec<L>, String> = listeners
            .iter()
            .map(|l| l.try_clone().map_err(|e| format!("cannot copy socket `{}`: {e}", l.name)))
            .map(|l| l.and_then(L::from_listener))
            .collect();
        let own = match own {
            Ok(own) => own,
            Err(e) => return Event::Failed(e),
        };
        let Some(worker) = take() else {
            return Event::Failed("serve has no value to run with".to_string());
        };
        // serve never returns: it ends the process, calls finished (which
        // never returns either), or panics.
        let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(move || worker.serve(own))) else {
            return Event::Finished;
        };
        let text = panic_text(&*payload);
        if !restartable {
            return Event::CannotRestart { text };
        }
        report(Event::Panicked { copy, text });
        if sys::fork::drain_requested() {
            return Event::Finished;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-text panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_gets_a_name() {
        assert_eq!(names("web:admin", 2), ["web", "admin"]);
        assert_eq!(names("web::x", 3), ["web", "unknown", "x"]);
        assert_eq!(names("", 2), ["unknown", "unknown"]);
    }

    #[test]
    fn the_refusal_says_where_the_runtime_belongs() {
        let text = threads_refused(3);
        assert!(text.contains("3 threads"), "{text}");
        assert!(text.contains("build the async runtime (tokio, …) inside Worker::serve"), "{text}");
    }
}
