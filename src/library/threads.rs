//! A worker process: `threads` copies of `serve` ([`Runner::threads`]),
//! each on its own thread with its own copies of the listeners, restarted
//! in its thread after a panic; the process's main thread watches them and
//! the drain, and ends the process when they are done or panic too often.

use std::any::Any;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::drain;
use super::listener::{FromListener, Listener};
use super::{Runner, Worker};
use crate::sys;

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

/// What a copy of `serve` tells the process's main thread.
enum Event {
    /// The copy called [`finished`](super::finished), or cannot go on.
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

/// A worker process: `threads` copies of `serve`, each restarted in its
/// thread when it panics (if the worker can be cloned); the main thread
/// watches the copies and the drain.
pub(super) fn serve_process<L: FromListener, W: Worker<L>>(
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
    let (events, received) = mpsc::channel::<Event>();
    // What `finished` does: tell the main thread, and wake it.
    let report = Mutex::new((events.clone(), finished_wake));
    let report = Box::new(move || {
        let (events, wake) = &*report.lock().unwrap_or_else(|e| e.into_inner());
        let _ = events.send(Event::Finished);
        let _ = nix::unistd::write(wake, &[1]);
    });
    let drain = match drain::Drain::set_up(report) {
        Ok(drain) => drain,
        Err(e) => fail("cannot create a pipe", e.into()),
    };
    let listeners = Arc::new(listeners);
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
            if !drain.start() {
                // serve never asked: the drain signal's default action.
                std::process::exit(0);
            }
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
            .map(|l| l.try_clone().map_err(|e| format!("cannot copy socket `{}`: {e}", l.name())))
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
