//! The status channel between main and one monitor.
//!
//! A `SOCK_SEQPACKET` socketpair: each message is one packet holding one JSON
//! object, so framing is the kernel's job and a message is never split. The
//! monitor's end sits at fd 3 when it starts. The message set is small and
//! fixed, so that a later "preload" monitor (the user's own binary) can speak
//! it:
//!
//! monitor → main: [`Report`] — worker started / ready / exited, generation
//! ready / failed. main → monitor: [`Order`] — drain, scale.
//!
//! When main dies the monitor sees end-of-file and kills its generation; when
//! the monitor dies main sees it through `SIGCHLD`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest message either side sends; a status report of a big generation
/// stays far below this.
const MAX_MESSAGE: usize = 16 * 1024;

/// What a monitor tells main.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Report {
    /// A worker process was started in slot `ordinal`.
    WorkerStarted { ordinal: u32, pid: i32 },
    /// The worker in slot `ordinal` became ready (`--ready`).
    WorkerReady { ordinal: u32, pid: i32 },
    /// The worker in slot `ordinal` exited; `how` is human-readable.
    WorkerExited { ordinal: u32, pid: i32, how: String },
    /// Every slot has had a ready worker: the generation can take over.
    GenerationReady { workers: u32, elapsed_ms: u64 },
    /// The generation cannot become ready; the monitor is stopping it.
    GenerationFailed { reason: String },
    /// A worker sent `STATUS=…` through the notify socket.
    WorkerStatus { ordinal: u32, text: String },
}

/// What main tells a monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Order {
    /// Stop the generation: `SIGTERM` the workers, `SIGKILL` after the
    /// graceful timeout, then exit.
    Drain,
    /// Run `count` workers from now on.
    Scale { count: u32 },
}

/// One end of a status channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// What a read from the channel produced.
pub enum Received<T> {
    Messages(Vec<T>),
    /// The other side is gone (after any messages already queued).
    Closed(Vec<T>),
}

impl Channel {
    /// A connected pair, both ends `CLOEXEC` and non-blocking.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an inherited end (the monitor's fd 3), made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Channel { fd })
    }

    /// Sends one message. Never blocks: a peer that stopped reading long
    /// enough to fill the socket buffer loses the message, and the error says so.
    pub fn send<T: Serialize>(&self, message: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        loop {
            match socket::send(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &bytes,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Every message waiting now. Malformed packets are logged and skipped.
    pub fn receive<T: DeserializeOwned>(&self) -> Received<T> {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match socket::recv(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Received::Closed(messages),
                Ok(n) => match serde_json::from_slice(&buf[..n]) {
                    Ok(message) => messages.push(message),
                    Err(e) => log::warn!("ignoring malformed status message: {e}"),
                },
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Received::Messages(messages),
                Err(_) => return Received::Closed(messages),
            }
        }
    }

    /// The underlying fd, to poll or to pass to a child.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_the_pair_one_packet_each() {
        let (main, monitor) = Channel::pair().unwrap();
        monitor.send(&Report::WorkerStarted { ordinal: 1, pid: 42 }).unwrap();
        monitor.send(&Report::GenerationReady { workers: 2, elapsed_ms: 7 }).unwrap();
        let Received::Messages(got) = main.receive::<Report>() else { panic!("channel closed") };
        assert_eq!(
            got,
            vec![
                Report::WorkerStarted { ordinal: 1, pid: 42 },
                Report::GenerationReady { workers: 2, elapsed_ms: 7 }
            ]
        );
        drop(monitor);
        assert!(matches!(main.receive::<Report>(), Received::Closed(v) if v.is_empty()));
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let text = serde_json::to_string(&Order::Scale { count: 3 }).unwrap();
        assert_eq!(text, r#"{"msg":"scale","count":3}"#);
    }
}
