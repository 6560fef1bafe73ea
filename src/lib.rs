//! # panzer: theory of operation
//!
//! panzer runs N copies of a network server on sockets it binds once, and
//! replaces them with fresh copies without refusing a connection.
//!
//! ```text
//! panzer (main)               owns the listening sockets, for its whole life
//!  ├─ monitor, generation 1   keeps N workers alive; reports over a status channel
//!  │   ├─ worker 0            the user's command, sockets at fd 3…
//!  │   └─ worker N-1
//!  └─ monitor, generation 2   only during a hot restart
//! ```
//!
//! - **main** ([`main_process`]) parses the command line, binds the sockets,
//!   and never runs user code. A hot restart starts generation k+1 beside k;
//!   when every new worker is ready, k drains. The listening sockets stay
//!   open in main throughout, so a connection that arrives between
//!   generations waits in the kernel's backlog instead of being refused.
//!   Every decision of main is made by one pure state machine
//!   (`main_process::policy`); the loop around it only polls and acts.
//! - **monitor** ([`monitor`]) is `panzer __monitor …`: main execs its own
//!   binary (`/proc/self/exe`) rather than forking itself, so the monitor
//!   starts from a clean, small address space, and its configuration is
//!   plain argv that `ps` shows. It leads a process group that its workers
//!   join: the group is the generation, and one `killpg` reaches all of it.
//! - **worker** (`worker`) is the user's command, spawned by the code in
//!   `sys::spawn`, the only code between `fork` and `exec`.
//!
//! **Library mode** ([`library`], `panzer --preload`): for a Rust server
//! built on this crate, main execs the app itself as each generation's
//! monitor; the app loads its data once, and [`run`] speaks the monitor
//! protocol (the same [`monitor`] loop) and *forks* the workers, which share
//! the loaded pages copy-on-write and call [`Worker::serve`]. A fork without
//! exec is sound only in a single-threaded process, so [`run`] refuses to
//! fork when the app has started threads.
//!
//! Who owns which fd: main owns the sockets (`CLOEXEC`), its signalfd, the
//! control socket and the admin endpoint's sockets (`--admin-bind`, which
//! never leave main but across its own upgrade), and one end of each
//! monitor's status channel ([`protocol`], which both roles
//! import and neither role imports the other). A monitor gets the
//! other end at fd 3 and the sockets at 4…, takes them over (`CLOEXEC` again)
//! and owns its `NOTIFY_SOCKET` (`notify`). A worker gets exactly 0, 1, 2
//! and the sockets at 3…. A monitor inherits main's `RLIMIT_NOFILE`, so
//! main counts what a monitor holds and what a worker start needs (`limits`)
//! and refuses a count the limit cannot start.
//!
//! Lifetimes: nothing outlives panzer, whichever process is killed first.
//! main is child subreaper, so descendants whose monitor died come back to
//! it. Workers get their monitor's death as a parent-death signal (the drain
//! signal) and drain while main starts a replacement; main sends the same
//! signal to the rest of the dead monitor's group (a wrapper's server) and
//! `SIGKILL` after the graceful timeout. Monitors get main's death as a
//! parent-death signal (and see their status channel close): they drain
//! their workers and close their copies of the sockets. A parent-death
//! signal fires again at each re-parenting, so a worker whose monitor and
//! main both died still hears it. Only a worker that ignores it outlives
//! `kill -9` of main.
//!
//! Never signalling a recycled pid: every process panzer signals is its own
//! unreaped child (a monitor's workers; main's monitors and adopted orphans),
//! or the process group of a monitor that is alive or still a zombie main has
//! not reaped yet (`sys::peek_exited_child` looks without reaping). Until it
//! is reaped, a child's pid, and so its group id, cannot be reused. That gives
//! the guarantee pidfds give, on every kernel, so panzer does not use pidfds.
//! What a dead monitor left behind is signalled through its group only while
//! a live member of it is main's unreaped child; an emptied group's id may
//! have gone to a new monitor ([`main_process`]'s `orphans`).
//!
//! Memory: what main and a monitor cost is their own allocations (about
//! 0.2 MiB each, flat across reloads) plus the file pages they map. The
//! kernel maps a file 64 KiB around each page an instruction needs, so a
//! process that has run its start-up code maps most of its 1.1 MiB binary
//! and 1.2 MiB of the C library: 5.3 MiB RSS for the pair (PSS 1.5), though
//! the idle loop runs a small part of it. Measured with the `memory` bench
//! scenario (main + monitor, 4 workers, once both sleep):
//!
//! | build | RSS | PSS |
//! |---|---|---|
//! | dynamic (`cargo install --path .`), as before | 5.26 MiB | 1.50 MiB |
//! | static glibc (`-C target-feature=+crt-static`) | 3.98 MiB | 2.15 MiB |
//! | dynamic, dropping code pages when quiet (kept) | 2.14 MiB | 1.02 MiB |
//! | static, dropping code pages when quiet | 1.82 MiB | 1.16 MiB |
//!
//! So both loops drop the read-only file pages they mapped once they have
//! been quiet for 250 ms (`sys::resident`): the pages stay in the page
//! cache, and whatever runs next maps back in with a minor fault. The kernel
//! may drop such clean pages from a process at any time under memory
//! pressure; panzer only does it early, and never touches a mapping that
//! holds private copies. Static linking gains nothing on top of that (its
//! pages are shared by main and monitor alone, where the C library's are
//! shared with every process) and cannot be the default of `cargo install`
//! (`crt-static` for the host breaks proc-macro crates). A monitor forked
//! from main instead of exec'd would still fault in the code it runs, and
//! would inherit main's fds and state, which exec keeps out of it.

pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod library;
pub(crate) mod limits;
pub(crate) mod log_limit;
pub mod logging;
pub mod main_process;
pub mod monitor;
pub(crate) mod notify;
pub mod protocol;
pub(crate) mod runtime_dir;
pub(crate) mod sockets;
pub(crate) mod sys;
pub mod units;
pub(crate) mod worker;

pub use library::{
    draining, finished, ready, run, wait_draining, Connection, FromListener, Listener, Runner, Socket, Worker,
};
