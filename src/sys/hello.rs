//! Library mode's first word, said before the app's `main` runs.
//!
//! `panzer --preload` execs COMMAND as a generation's monitor and must tell
//! soon whether COMMAND is built on `panzer::run` at all: a program that is
//! not never speaks the monitor protocol, and would otherwise be waited on
//! for the whole startup timeout. An app may load for a long while before
//! it calls `panzer::run`, so the word cannot wait for that: the loader
//! runs [`AT_LOAD`] (an `.init_array` entry, as C constructors are) in
//! every program linked with panzer's library, before `main`, and
//! [`say_hello`] decides there whether this process is such a monitor.

use std::io;
use std::os::fd::RawFd;

use crate::protocol::{says_hello, MonitorArgs, Report, MONITOR_ARGS_ENV, STATUS_FD};

/// Run by the loader before `main`.
// SAFETY: an entry of `.init_array` is a plain `extern "C" fn()` the
// loader calls once, with the C library set up (environment, allocator),
// before `main`; `at_load` never unwinds (see there).
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

extern "C" fn at_load() {
    // A panic must not cross into the loader: whatever goes wrong, no word.
    let _ = std::panic::catch_unwind(say_hello);
}

/// Says [`Report::Hello`] on the status channel, if main exec'd this
/// process as a library-mode monitor that should (its [`MONITOR_ARGS_ENV`]
/// asks for protocol 3 on). Runs before the app's `main`: no logging, and
/// nothing is taken (the variable and the fd stay for `panzer::run`).
fn say_hello() {
    let Ok(words) = std::env::var(MONITOR_ARGS_ENV) else { return };
    let Ok(args) = MonitorArgs::from_env(&words) else { return };
    if !says_hello(args.protocol) {
        return;
    }
    if let Ok(bytes) = serde_json::to_vec(&Report::Hello) {
        let _ = send_on_inherited_seqpacket(STATUS_FD, &bytes);
    }
}

/// Sends `bytes` as one message on the inherited fd `fd`, if it is a
/// `SOCK_SEQPACKET` socket (the status channel); never blocks, never
/// raises `SIGPIPE`. Anything else at `fd` is left alone.
fn send_on_inherited_seqpacket(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for writes of the sizes given; a
    // closed or non-socket `fd` only makes the call fail.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    if kind != libc::SOCK_SEQPACKET {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    // SAFETY: `bytes` is valid for reads of its length; `fd` is a socket
    // (checked above) that this call neither closes nor keeps.
    let sent = unsafe {
        libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
