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

// The rooms of library mode: this file is the app's entry (`Worker`,
// `Runner`, `run`, `ready`) and the start of a forked worker; `listener`
// holds the sockets `serve` takes, `drain` what a worker process knows of
// its drain, `threads` a worker process's copies of `serve`, and
// `standalone` the start without panzer. The monitor's side (forking, the
// refusal of threads) is `monitor::fork`.
mod drain;
mod listener;
mod standalone;
mod threads;

use std::net::TcpListener;

use crate::monitor::{self, ForkedWorker};
use crate::notify::{self, Notify};
use crate::protocol::{MonitorArgs, MONITOR_ARGS_ENV};
use crate::worker;
use listener::names;
use standalone::standalone;
use threads::serve_process;

pub use drain::{draining, finished, wait_draining};
pub use listener::{Connection, FromListener, Listener, Socket};
pub use threads::{MAX_PANICS, MAX_THREADS, PANIC_EXIT, PANIC_WINDOW};

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

/// Tells the monitor this worker is ready (`READY=1` on `NOTIFY_SOCKET`).
/// Without a notify socket (run without panzer or systemd) it does nothing.
pub fn ready() {
    if let Some(target) = std::env::var_os(worker::NOTIFY_SOCKET) {
        let _ = notify::send_waiting(&target, &[Notify::Ready]);
    }
}

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
