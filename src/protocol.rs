//! The protocol between main and a monitor: how a monitor is started (its
//! command line and fd layout) and what the two say over the status channel.
//! Both roles import it, and library mode speaks it from the user's own
//! binary; neither role imports the other.
//!
//! **Start.** main runs `panzer __monitor [`MonitorArgs`]` in a process group of
//! its own, with the monitor's end of the status channel at fd
//! [`STATUS_FD`] and the listening sockets at [`FIRST_SOCKET_FD`]….
//!
//! **Channel.** A `SOCK_SEQPACKET` socketpair: each message is one packet
//! holding one JSON object, so framing is the kernel's job and a message is
//! never split. monitor → main: [`Report`] (worker started / ready / exited,
//! generation ready / failed, draining). main → monitor: [`Order`] (drain, scale).
//!
//! The channel is lossless: a message that cannot be sent now waits in the
//! sender's outbox and goes out when the socket is writable (the loops poll
//! for that while [`Channel::wants_write`]). The outbox is bounded by what
//! the messages are, never by dropping: orders coalesce (a newer scale
//! replaces a queued one, a second drain adds nothing), and reports come
//! from process events that restart backoff already paces. Nothing a worker
//! sends (`STATUS=` text, say) travels on it.
//!
//! When main dies the monitor sees end-of-file (and its parent-death
//! signal); when the monitor dies main sees it through `SIGCHLD`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::units::{CliDuration, CliSignal, CliSize, ReadyMode};

/// The version of this protocol: the messages below, their fields and
/// meaning. A change a peer of the previous version would misread takes
/// the next number. main records the version each monitor was started
/// with; a main re-executed by an upgrade keeps talking to monitors of a
/// version from [`OLDEST_SPOKEN`] on in their version, and replaces the
/// generations of any other by an ordinary hot restart. A monitor speaks
/// main's version: it sends only the reports that version has.
///
/// - 1: the first.
/// - 2: [`Report::Draining`], so that main can tell a monitor that does
///   not act on a drain order (stopped, stuck in the kernel) and signal the
///   generation itself.
/// - 3: [`Report::Hello`], which a library-mode app sends as it starts, so
///   that main can tell a program not built on `panzer::run` at once.
/// - 4: [`Order::Slot`], which hands a running monitor a new round-robin
///   slot's sockets, so that it can scale above the count it started with.
pub const VERSION: u32 = 4;
/// The oldest monitor version this main still speaks to.
pub const OLDEST_SPOKEN: u32 = 1;
/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// The version main starts a monitor with: the lowest that has what the
/// run uses ([`Order::Slot`] for round-robin), so that a library-mode app
/// built on an older panzer runs as long as it can.
pub fn needed(round_robin: bool) -> u32 {
    if round_robin {
        4
    } else {
        3
    }
}

/// Whether this main can keep a monitor started with protocol `version`.
pub fn speaks(version: u32) -> bool {
    (OLDEST_SPOKEN..=VERSION).contains(&version)
}

/// Whether a monitor of protocol `version` takes new round-robin slots
/// ([`Order::Slot`]) while it runs.
pub fn takes_slots(version: u32) -> bool {
    version >= 4
}

/// Whether a library-mode app started with protocol `version` says
/// [`Report::Hello`] as it starts; main waits for that only from those.
pub fn says_hello(version: u32) -> bool {
    version >= 3
}

/// Whether a monitor of protocol `version` says when it has acted on a
/// drain ([`Report::Draining`]); main waits for that only from those.
pub fn reports_draining(version: u32) -> bool {
    version >= 2
}

/// The fd at which a monitor finds its end of the status channel.
pub const STATUS_FD: RawFd = 3;
/// The fd of the first listening socket in a monitor.
pub const FIRST_SOCKET_FD: RawFd = 4;

// Limits both roles apply, each on its side of a generation's life: the
// monitor to its workers, main to its generations. Defined once here.

/// At most this long for the workers of a generation that failed to become
/// ready: its monitor drains them within it (the graceful timeout if
/// shorter), and main orders that drain with it.
pub const FAILED_GRACE: Duration = Duration::from_secs(5);
/// The first delay before starting again what failed: a worker in its slot
/// after a quick exit (the monitor), a replacement generation after the
/// last one failed (main). It doubles per failure in a row, up to
/// [`BACKOFF_CAP`].
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest of those delays.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// The delay before starting again after `failures` failures in a row (at
/// least one): [`BACKOFF_START`], doubled per failure, at most [`BACKOFF_CAP`].
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_START.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_CAP)
}
/// Exits before ready, in a row in one slot, that fail a generation: the
/// monitor judges them until the generation was first ready, main judges
/// those of a later step of a staged reload.
pub const MAX_UNREADY_EXITS: u32 = 5;

/// The hidden `panzer __monitor` command line main builds.
#[derive(Debug, Parser)]
#[command(name = "panzer __monitor", hide = true)]
pub struct MonitorArgs {
    #[arg(long)]
    pub generation: u32,
    #[arg(long)]
    pub count: u32,
    #[arg(long)]
    pub ready: ReadyMode,
    #[arg(long)]
    pub graceful_timeout: CliDuration,
    /// How many listening sockets start at [`FIRST_SOCKET_FD`].
    #[arg(long)]
    pub sockets: usize,
    #[arg(long, default_value = "")]
    pub fd_names: String,
    /// `--balance round-robin`: the sockets are one per slot and address,
    /// address-major (address b's slot k at `b * slots + k`), and worker k
    /// gets its slot's; 0: every worker gets them all.
    #[arg(long, default_value_t = 0)]
    pub slots: u32,
    #[arg(long)]
    pub notify_socket: PathBuf,
    #[arg(long)]
    pub log_level: log::LevelFilter,
    /// `--log-format`: the monitor's log lines (and `--tag-output`'s) as
    /// text or JSON. Passed only when not `text`, so that a library-mode app
    /// built on an older panzer still reads the arguments of a text run.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<OsString>,
    /// Each socket's bound address, in order (`127.0.0.1:8080` with the
    /// real port, `[::1]:8080`, or a unix socket's path), for workers'
    /// `SERVER_STARTER_PORT`.
    #[arg(long = "address")]
    pub addresses: Vec<OsString>,
    /// Give each worker pipes for stdout and stderr and prefix its lines.
    #[arg(long)]
    pub tag_output: bool,
    /// What a worker gets to drain (`--drain-signal`).
    #[arg(long, default_value = "TERM")]
    pub drain_signal: CliSignal,
    /// `--health-timeout`: replace a worker silent this long after `WATCHDOG=1`.
    #[arg(long)]
    pub health_timeout: Option<CliDuration>,
    /// `--max-rss`, in bytes: replace a worker (with its children) above it.
    #[arg(long)]
    pub max_rss: Option<CliSize>,
    /// `--max-age`: replace each worker after about this long.
    #[arg(long)]
    pub max_age: Option<CliDuration>,
    /// `--startup-timeout`: a restarted or replacing worker not ready by
    /// then is stopped and started again (the generation's own first start
    /// is main's to time).
    #[arg(long)]
    pub startup_timeout: Option<CliDuration>,
    /// The protocol version main speaks ([`VERSION`] of main's build). A
    /// library-mode app links its own copy of panzer, which may be older or
    /// newer than main: it refuses to start unless it [`speaks`] it.
    #[arg(long, default_value_t = 1)]
    pub protocol: u32,
}

impl MonitorArgs {
    /// The time alive of `--ready DURATION` (zero for the other modes).
    pub fn ready_after(&self) -> Duration {
        match self.ready {
            ReadyMode::After(after) => after,
            _ => Duration::ZERO,
        }
    }

    /// The argument list main passes, `__monitor` first.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "__monitor".into(),
            format!("--protocol={}", self.protocol).into(),
            format!("--generation={}", self.generation).into(),
            format!("--count={}", self.count).into(),
            format!("--ready={}", self.ready).into(),
            format!("--graceful-timeout={}ms", self.graceful_timeout.0.as_millis()).into(),
            format!("--sockets={}", self.sockets).into(),
            format!("--fd-names={}", self.fd_names).into(),
        ];
        if self.slots > 0 {
            args.push(format!("--slots={}", self.slots).into());
        }
        let mut notify = OsString::from("--notify-socket=");
        notify.push(&self.notify_socket);
        args.push(notify);
        args.push(format!("--log-level={}", self.log_level).into());
        if self.log_format != crate::logging::LogFormat::Text {
            args.push(format!("--log-format={}", self.log_format).into());
        }
        for address in &self.addresses {
            let mut arg = OsString::from("--address=");
            arg.push(address);
            args.push(arg);
        }
        if self.tag_output {
            args.push("--tag-output".into());
        }
        args.push(format!("--drain-signal={}", self.drain_signal).into());
        let millis =
            |flag: &str, d: &Option<CliDuration>| d.map(|d| format!("--{flag}={}ms", d.0.as_millis()));
        args.extend(millis("health-timeout", &self.health_timeout).map(OsString::from));
        args.extend(self.max_rss.map(|size| OsString::from(format!("--max-rss={size}"))));
        args.extend(millis("max-age", &self.max_age).map(OsString::from));
        args.extend(millis("startup-timeout", &self.startup_timeout).map(OsString::from));
        args.push("--".into());
        args.extend(self.argv.iter().cloned());
        args
    }
}

/// Library mode (`--preload`): the variable through which main hands the
/// app it execs as a monitor its [`MonitorArgs`], since the app's argv is the
/// user's own. A JSON array of the [`MonitorArgs::to_args`] words;
/// `panzer::run` reads it and removes it, so workers never see it.
pub const MONITOR_ARGS_ENV: &str = "PANZER_MONITOR_ARGS";

impl MonitorArgs {
    /// The value of [`MONITOR_ARGS_ENV`]; `None` when a word is not UTF-8.
    pub fn to_env(&self) -> Option<String> {
        let args = self.to_args();
        let words: Vec<&str> = args.iter().map(|w| w.to_str()).collect::<Option<_>>()?;
        serde_json::to_string(&words).ok()
    }

    /// Parses a [`MONITOR_ARGS_ENV`] value.
    pub fn from_env(value: &str) -> Result<MonitorArgs, String> {
        let words: Vec<String> =
            serde_json::from_str(value).map_err(|e| format!("{MONITOR_ARGS_ENV}: {e}"))?;
        MonitorArgs::try_parse_from(words).map_err(|e| format!("{MONITOR_ARGS_ENV}: {e}"))
    }
}

/// Largest message either side sends.
const MAX_MESSAGE: usize = 16 * 1024;

/// What a monitor tells main.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum Report {
    /// A worker process was started in slot `ordinal`.
    WorkerStarted { ordinal: u32, pid: i32 },
    /// The worker in slot `ordinal` became ready (`--ready`).
    WorkerReady { ordinal: u32, pid: i32 },
    /// The worker in slot `ordinal` exited; `how` is human-readable.
    WorkerExited { ordinal: u32, pid: i32, how: String },
    /// Every slot has had a ready worker: the generation can take over.
    /// `how`: what decided (`accepting`, `notify`, `alive 1s`, or a mix).
    GenerationReady {
        workers: u32,
        elapsed_ms: u64,
        #[serde(default)]
        how: String,
    },
    /// The generation cannot become ready; the monitor drains it.
    GenerationFailed { reason: String },
    /// Supervision (`--health-timeout`, `--max-rss`, `--max-age`) replaced
    /// the worker `old_pid` of slot `ordinal` by `new_pid`, which is ready;
    /// `old_pid` drains now. This is the first main hears of `new_pid`, in
    /// one message so that the slot never shows without a ready worker (the
    /// old worker's `WorkerExited` follows; its pid no longer matches the
    /// slot). `reason`: `health`, `rss` or `age`; `replacements`: how many
    /// times this slot has been replaced so far.
    WorkerReplaced { ordinal: u32, old_pid: i32, new_pid: i32, reason: String, replacements: u32 },
    /// The monitor has sent the drain signal to its workers (on main's
    /// order, or on its own); it sends `SIGKILL` to what is left when its
    /// grace ends. Sent again for every later drain order. Protocol 2 on
    /// ([`reports_draining`]).
    Draining,
    /// A library-mode app's first word, sent before its `main` runs (so
    /// before it loads anything): it is built on `panzer::run`. Protocol 3
    /// on ([`says_hello`]).
    Hello,
}

/// What main tells a monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum Order {
    /// Stop the generation: the drain signal to the workers, `SIGKILL` to
    /// what is left after `grace_ms`, then exit.
    Drain { grace_ms: u64 },
    /// Run `count` workers from now on.
    Scale { count: u32 },
    /// `--balance round-robin`: the sockets of slot `slot` (one per
    /// address, in `--bind` order) come with this message (`SCM_RIGHTS`);
    /// `slot` is the number of slots the monitor has, so slots are added
    /// in turn. Sent before the scale that needs them. Protocol 4 on
    /// ([`takes_slots`]).
    Slot { slot: u32 },
}

impl Order {
    pub fn drain(grace: Duration) -> Order {
        Order::Drain { grace_ms: grace.as_millis().min(u64::MAX as u128) as u64 }
    }
}

/// One end of a status channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    /// Encoded messages the socket could not take yet, oldest first.
    outbox: VecDeque<Vec<u8>>,
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
        Ok((Channel::new(a), Channel::new(b)))
    }

    fn new(fd: OwnedFd) -> Channel {
        Channel { fd, outbox: VecDeque::new() }
    }

    /// Wraps an inherited end (the monitor's fd 3), made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Channel::new(fd))
    }

    /// Queues `message` and sends what the socket takes now. Never blocks
    /// and never drops: the rest goes out from [`Channel::flush`]. An error
    /// means the peer is gone (`EPIPE`, `ECONNRESET`) or the socket broke.
    pub fn send<T: Serialize>(&mut self, message: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        self.outbox.push_back(bytes);
        self.flush()
    }

    /// Sends `message` with `fds` attached (`SCM_RIGHTS`), now: what is
    /// queued goes first, and a socket that cannot take it all now is an
    /// error (`EAGAIN`), so that no descriptor waits in the queue (which
    /// an upgrade hands over as bytes).
    pub fn send_with_fds<T: Serialize>(&mut self, message: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.flush()?;
        if self.wants_write() {
            return Err(Errno::EAGAIN.into());
        }
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let iov = [io::IoSlice::new(&bytes)];
        let cmsg = [socket::ControlMessage::ScmRights(&raw)];
        loop {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, &cmsg, flags, None) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Queues an order, coalesced with those still waiting: a newer scale
    /// replaces a queued one; a drain already queued is not queued twice.
    pub fn send_order(&mut self, order: &Order) -> io::Result<()> {
        let queued: Vec<Order> =
            self.outbox.iter().filter_map(|bytes| serde_json::from_slice(bytes).ok()).collect();
        let same_kind = |o: &Order| std::mem::discriminant(o) == std::mem::discriminant(order);
        if let Some(index) = queued.iter().position(same_kind) {
            if matches!(order, Order::Scale { .. }) {
                self.outbox[index] = serde_json::to_vec(order).map_err(io::Error::other)?;
            }
            return self.flush();
        }
        self.send(order)
    }

    /// Sends queued messages until the socket is full or the queue empty.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(bytes) = self.outbox.front() {
            match socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether messages wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Every message waiting now. Malformed packets are logged and skipped;
    /// descriptors sent along are closed.
    pub fn receive<T: DeserializeOwned>(&self) -> Received<T> {
        match self.receive_with_fds() {
            Received::Messages(m) => Received::Messages(m.into_iter().map(|(m, _)| m).collect()),
            Received::Closed(m) => Received::Closed(m.into_iter().map(|(m, _)| m).collect()),
        }
    }

    /// Every message waiting now, each with the descriptors sent along
    /// with it ([`Channel::send_with_fds`]).
    pub fn receive_with_fds<T: DeserializeOwned>(&self) -> Received<(T, Vec<OwnedFd>)> {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; MAX_MESSAGE];
        // Room for the most descriptors a message carries, reused for each.
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        loop {
            let got = {
                let mut iov = [io::IoSliceMut::new(&mut buf)];
                let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
                socket::recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags).map(|msg| {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().into_iter().flatten() {
                        if let socket::ControlMessageOwned::ScmRights(raw) = c {
                            fds.extend(raw.into_iter().map(crate::sys::own_received_fd));
                        }
                    }
                    (msg.bytes, fds)
                })
            };
            match got {
                Ok((0, _)) => return Received::Closed(messages),
                Ok((n, fds)) => match serde_json::from_slice(&buf[..n]) {
                    Ok(message) => messages.push((message, fds)),
                    Err(e) => log::warn!("ignoring malformed status message: {e}"),
                },
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Received::Messages(messages),
                Err(_) => return Received::Closed(messages),
            }
        }
    }

    /// The messages not sent yet, oldest first (handed over on an upgrade).
    pub fn queued(&self) -> impl Iterator<Item = &[u8]> {
        self.outbox.iter().map(Vec::as_slice)
    }

    /// An end handed over by the previous image of main, with what it had
    /// not sent yet.
    pub fn resume(fd: OwnedFd, queued: Vec<Vec<u8>>) -> Channel {
        Channel { fd, outbox: queued.into() }
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
        let (main, mut monitor) = Channel::pair().unwrap();
        monitor.send(&Report::WorkerStarted { ordinal: 1, pid: 42 }).unwrap();
        monitor
            .send(&Report::GenerationReady { workers: 2, elapsed_ms: 7, how: "accepting".into() })
            .unwrap();
        let Received::Messages(got) = main.receive::<Report>() else { panic!("channel closed") };
        assert_eq!(
            got,
            vec![
                Report::WorkerStarted { ordinal: 1, pid: 42 },
                Report::GenerationReady { workers: 2, elapsed_ms: 7, how: "accepting".into() }
            ]
        );
        drop(monitor);
        assert!(matches!(main.receive::<Report>(), Received::Closed(v) if v.is_empty()));
    }

    #[test]
    fn a_full_socket_queues_messages_instead_of_dropping_them() {
        let (main, mut monitor) = Channel::pair().unwrap();
        let sent = 20_000;
        for pid in 0..sent {
            monitor.send(&Report::WorkerStarted { ordinal: 0, pid }).unwrap();
        }
        assert!(monitor.wants_write(), "the socket buffer should have filled up");
        let mut got = Vec::new();
        while got.len() < sent as usize {
            let Received::Messages(batch) = main.receive::<Report>() else { panic!("channel closed") };
            got.extend(batch);
            monitor.flush().unwrap();
        }
        assert!(!monitor.wants_write());
        let pids: Vec<i32> = got
            .iter()
            .map(|r| match r {
                Report::WorkerStarted { pid, .. } => *pid,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(pids, (0..sent).collect::<Vec<_>>(), "every message, in order");
    }

    #[test]
    fn queued_orders_coalesce() {
        let (monitor, mut main) = Channel::pair().unwrap();
        // Fill the socket so that orders stay queued.
        while !main.wants_write() {
            main.send(&Order::Scale { count: 1 }).unwrap();
        }
        let before = main.outbox.len();
        main.send_order(&Order::Scale { count: 7 }).unwrap();
        main.send_order(&Order::drain(Duration::from_secs(1))).unwrap();
        main.send_order(&Order::drain(Duration::from_secs(2))).unwrap();
        assert_eq!(main.outbox.len(), before + 1, "one drain added, the scale replaced in place");
        let mut last = Vec::new();
        loop {
            let Received::Messages(batch) = monitor.receive::<Order>() else { panic!("closed") };
            last.extend(batch);
            main.flush().unwrap();
            if !main.wants_write() {
                let Received::Messages(batch) = monitor.receive::<Order>() else { panic!("closed") };
                last.extend(batch);
                break;
            }
        }
        assert_eq!(last.last(), Some(&Order::Drain { grace_ms: 1000 }));
    }

    #[test]
    fn monitor_args_read_back_what_main_writes() {
        let args = MonitorArgs::parse_from(
            ["__monitor", "--generation=1", "--count=1", "--ready=notify", "--graceful-timeout=1s"]
                .into_iter()
                .chain(["--sockets=2", "--notify-socket=/n", "--log-level=info"])
                .chain(["--address=127.0.0.1:80", "--address=/run/a;b.sock", "--", "srv", "--address=x"]),
        );
        assert_eq!(args.addresses, ["127.0.0.1:80", "/run/a;b.sock"]);
        assert_eq!(args.argv, ["srv", "--address=x"]);
        assert_eq!(args.protocol, 1, "a main that does not say speaks version 1");
        let args = MonitorArgs { protocol: VERSION + 1, ..args };
        let again = MonitorArgs::parse_from(args.to_args());
        assert_eq!((again.addresses, again.argv), (args.addresses, args.argv));
        assert_eq!(again.protocol, VERSION + 1, "main's version reaches the monitor");
        assert!(!speaks(again.protocol), "and a monitor refuses one it does not speak");
    }

    #[test]
    fn supervision_settings_reach_the_monitor() {
        let args = MonitorArgs::parse_from([
            "__monitor",
            "--generation=1",
            "--count=1",
            "--ready=notify",
            "--graceful-timeout=1s",
            "--sockets=0",
            "--notify-socket=/n",
            "--log-level=info",
            "--drain-signal=USR2",
            "--health-timeout=1500ms",
            "--max-rss=1048576",
            "--max-age=2s",
            "--startup-timeout=5s",
            "--",
            "srv",
        ]);
        let again = MonitorArgs::parse_from(args.to_args());
        assert_eq!(again.drain_signal.0, nix::sys::signal::Signal::SIGUSR2);
        assert_eq!(again.health_timeout, Some(CliDuration(Duration::from_millis(1500))));
        assert_eq!(again.max_rss, Some(CliSize(1 << 20)));
        assert_eq!(again.max_age, Some(CliDuration(Duration::from_secs(2))));
        assert_eq!(again.startup_timeout, Some(CliDuration(Duration::from_secs(5))));
    }

    #[test]
    fn this_main_speaks_its_own_protocol_version_and_none_newer() {
        assert!(speaks(VERSION));
        assert!(!speaks(VERSION + 1));
        assert!(!speaks(0));
    }

    #[test]
    fn a_main_asks_of_its_monitors_only_the_version_the_run_needs() {
        // An app built on the panzer before round-robin (protocol 3) still
        // runs under this main, unless it balances.
        assert_eq!(needed(false), 3);
        assert_eq!(needed(true), VERSION);
        assert!(takes_slots(needed(true)) && !takes_slots(needed(false)));
        assert!(says_hello(needed(false)) && reports_draining(needed(false)));
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let text = serde_json::to_string(&Order::Scale { count: 3 }).unwrap();
        assert_eq!(text, r#"{"msg":"scale","count":3}"#);
        assert_eq!(serde_json::to_string(&Report::Draining).unwrap(), r#"{"msg":"draining"}"#);
        assert_eq!(serde_json::to_string(&Report::Hello).unwrap(), r#"{"msg":"hello"}"#);
    }

    #[test]
    fn only_a_monitor_of_protocol_2_on_says_it_has_acted_on_a_drain() {
        assert!(!reports_draining(1), "main keeps monitors of protocol 1, which never say it");
        assert!(speaks(1));
        assert!(reports_draining(VERSION));
    }
}
