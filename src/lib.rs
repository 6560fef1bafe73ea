//! # panzer: theory of operation
//!
//! panzer runs N copies of a network server on sockets it binds once, and
//! replaces them with fresh copies without refusing a connection.
//!
//! ```text
//! panzer (main)               owns the listening sockets, for its whole life
//!  ├─ monitor, generation 1   keeps N workers alive; reports over a status channel
//!  │   ├─ keeper              ends what is left of the generation's group if the monitor dies
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
//!   (`main_process::policy`), which logs nothing itself: what it wants
//!   said is one more effect; the loop around it only polls and acts.
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
//! protocol (the same [`monitor`] loop, whose side of it is `monitor::fork`)
//! and *forks* the workers, which share
//! the loaded pages copy-on-write and call [`Worker::serve`]. A fork without
//! exec is sound only in a single-threaded process, so [`run`] refuses to
//! fork when the app has started threads.
//!
//! ## Where things live
//!
//! One room per concept; imports run one way, downwards in this list:
//!
//! ```text
//! bin/panzer.rs            dispatch: main, or a hidden role (__monitor, __keeper, upgrade)
//! bin/panzerctl/           the control client: status, top, metrics, discovery, man pages
//! check                    `panzer --check`: what a start would refuse, found without starting
//! main_process/            main's loop: polls and carries out what the policy decides
//!   policy/                the pure machine: generations, the staged roll, the upgrade, the stop
//!   upgrade/               main replacing its own binary: check, state hand-over, resume
//!   balance                `--balance round-robin`: a socket per slot, which slots are in rotation
//!   connections, hello, leftovers, orphans, pid_file, reconfigure, systemd
//! control/                 the control socket, the admin endpoint, the signal table, metrics
//! library/                 library mode: Worker, run, Listener, drain, threads, standalone
//! monitor/                 a generation: the pool of workers, notify messages, output, keeper, library forks
//! cli, config/             the command line, the --config file, and what they become
//! logging, sockets, worker, notify, limits
//! protocol                 what main and a monitor say to each other, and the limits both keep
//! sys/                     every unsafe call, each with its SAFETY comment (reuseport: the BPF program)
//! error, units             one error type with its cause chain; durations and sizes
//! ```
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
//! and refuses a count the limit cannot start. main and each monitor also
//! write their own stdout and stderr through private copies (`CLOEXEC`,
//! non-blocking where that can be made theirs alone: [`logging`]), never
//! waiting on a reader.
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
//! A worker's own descendants need more: a wrapper's background child
//! (`sh -c 'sidecar & exec ./server'`) inherits the listening socket and
//! has no parent-death signal, and when main and its monitor die together
//! nobody is left to signal the group. So each generation has a keeper
//! (`monitor::keeper`): a tiny process the monitor execs first
//! (`panzer __keeper`), in the monitor's process group, which the workers
//! and what they start share (a non-interactive `sh` keeps its background
//! jobs in its own group). It sleeps on a pipe only the monitor writes to.
//! When that pipe closes (the monitor is gone, however it died), it sends
//! the drain signal to the group (unless the monitor drained it, and wrote
//! its grace to the pipe), waits until it is the last of the group or the
//! drain's deadline has passed, and then `SIGKILL`s the group, itself
//! included. It ignores every other signal, the drain signal the monitor
//! sends to its group included. Being a member, it pins the group's id, so
//! that signal can never reach a later process. Workers see nothing of it:
//! their `getpid()` is the pid `ps`, `panzerctl status` and panzer's log
//! show. Library mode has no keeper: its app is the monitor and is not
//! panzer's binary.
//!
//! What this does not reach: a process that left the group (`setsid`, a
//! daemonizing sidecar). For that, every process panzer starts carries
//! `PANZER_INSTANCE=<main pid>:<start time>`, and a bind that fails with
//! "address in use" ends the processes of the workers' user that hold a
//! clashing listening socket and carry the marker of a main that is gone,
//! says so, and binds again (`main_process`'s `leftovers`). Such a process
//! whose panzer is never started again on that address lives on.
//!
//! The other candidates: a PID namespace per generation (with
//! `CAP_SYS_ADMIN`), whose init's exit makes the kernel kill everything in
//! it, would also catch a process that left the group, but changes what a
//! worker is: its `getpid()` is the namespace's number (2, 3, …), while
//! `ps`, `panzerctl status` and panzer's log show the host's. A server's
//! log ("Booting worker with pid: 3") and pid file then name a different
//! process on the host, and an operator running as root who acts on them
//! (`kill 3`) signals an unrelated one. Workers must keep their host pid.
//! A cgroup with `cgroup.kill` needs a delegated cgroup v2 subtree and a
//! living agent to write it (a dead panzer cannot), and where a manager
//! delegates one (systemd) it already ends the unit's whole cgroup when the
//! unit stops or main dies (`KillMode=control-group`).
//!
//! A drain has its bounds even when a monitor is alive but does not run
//! (stopped, stuck in the kernel): a monitor reports that it has signalled
//! its workers, and one that has not within a second of main's order is
//! not waited for. main sends the drain signal to the generation's group
//! itself (pinned by the monitor, its unreaped child) and `SIGKILL` when
//! the grace ends, instead of a backstop later.
//!
//! Never signalling a recycled pid: every process panzer signals is its own
//! unreaped child (a monitor's workers; main's monitors and adopted orphans),
//! or the process group of a monitor that is alive or still a zombie main has
//! not reaped yet (`sys::peek_exited_child` looks without reaping). Until it
//! is reaped, a child's pid, and so its group id, cannot be reused. That gives
//! the guarantee pidfds give, on every kernel, so panzer does not use pidfds
//! for them; only a dead panzer's leftovers, which are nobody's children
//! here, are signalled through pidfds.
//! What a dead monitor left behind is signalled through its group only while
//! a live member of it is main's unreaped child; an emptied group's id may
//! have gone to a new monitor ([`main_process`]'s `orphans`).
//! A keeper signals its own group: as a live member it keeps the group's id
//! from being reused.
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
//! would inherit main's fds and state, which exec keeps out of it. A
//! generation's keeper drops its code pages as soon as it has started,
//! since it sleeps until its monitor drains or dies: 1.1 MiB RSS, 0.46 MiB
//! PSS (release build).

// The roles and what they share. `bin/panzer.rs` and `bin/panzerctl/` are
// crates of their own and reach these, so they are public, but hidden: a
// library-mode user's documentation shows the library's API alone.
#[doc(hidden)]
pub mod check;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod control;
#[doc(hidden)]
pub mod error;
pub mod library;
pub(crate) mod limits;
pub(crate) mod log_limit;
#[doc(hidden)]
pub mod logging;
#[doc(hidden)]
pub mod main_process;
#[doc(hidden)]
pub mod monitor;
pub(crate) mod notify;
#[doc(hidden)]
pub mod protocol;
pub(crate) mod runtime_dir;
pub(crate) mod sockets;
pub(crate) mod sys;
#[doc(hidden)]
pub mod units;
pub(crate) mod worker;

/// What `panzerctl`, a crate of its own that may not use `unsafe`, borrows
/// from `sys` and `runtime_dir`. Not part of the library's API.
#[doc(hidden)]
pub mod for_panzerctl {
    pub use crate::runtime_dir::{pid_is_running, private_dir};
    pub use crate::sys::{poll, terminal_size, Interest};
}

pub use library::{
    draining, finished, ready, run, wait_draining, Connection, FromListener, Listener, Runner, Socket, Worker,
};
