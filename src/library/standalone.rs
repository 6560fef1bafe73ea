//! Without panzer: the same binary run on its own serves as one worker on
//! the sockets of `LISTEN_FDS` (systemd socket activation, `systemfd`), or,
//! without them, says how to start it and exits with status 2.

use std::ffi::OsString;

use nix::sys::signal::Signal;

use super::listener::{names, FromListener, Listener};
use super::threads::serve_process;
use super::{Runner, Worker};
use crate::sockets::Passed;
use crate::sys;
use crate::worker;

/// Run without `panzer --preload`: one worker on `LISTEN_FDS` sockets, or
/// how to start it.
pub(super) fn standalone<L: FromListener, W: Worker<L>>(runner: Runner<W, L>) -> i32 {
    let program = std::env::args_os().next().unwrap_or_else(|| OsString::from("my_app"));
    let program = program.to_string_lossy();
    let passed = match Passed::from_env() {
        Ok(Some(passed)) => passed,
        Err(e) => {
            eprintln!("{program}: {}", e.report());
            return 2;
        }
        Ok(None) => {
            eprintln!(
                "{program}: no listening sockets. This server runs under panzer's library mode: \
                 start it with `panzer --preload --bind 127.0.0.1:8080 {program}` (it loads once, \
                 then forks its workers), or pass it sockets with LISTEN_FDS (systemd socket \
                 activation) to run it as a single worker."
            );
            return 2;
        }
    };
    for key in [worker::LISTEN_FDS, worker::LISTEN_PID, worker::LISTEN_FDNAMES] {
        std::env::remove_var(key);
    }
    let names = names(&passed.names, passed.count);
    let mut listeners = Vec::with_capacity(passed.count);
    for (fd, name) in passed.fds().zip(&names) {
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
