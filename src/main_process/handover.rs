//! Upgrading main in place (`SIGUSR2`, `{"cmd":"upgrade"}`): same pid, same
//! sockets, the running generations untouched.
//!
//! When the policy says so ([`super::policy::Effect::CheckUpgrade`]), main runs the binary
//! now at its path (recorded at startup: `/proc/self/exe` names a deleted
//! file once a deploy has replaced it) as `panzer __upgrade-check 3`, with
//! the state it would hand over in a sealed memfd at fd 3. That child must
//! read the state and the command line and exit 0 within
//! [`super::policy::UPGRADE_CHECK_TIMEOUT`]: the new binary runs, and reads this
//! version's state format. Then ([`super::policy::Effect::Exec`]) main writes its state
//! again, as it is now, into a new sealed memfd, clears `CLOEXEC` on exactly
//! the fds that must survive (the sockets, the control listener and its
//! clients, the admin endpoint's listeners and clients, each monitor's
//! status channel, the memfd) and `execve`s
//! `panzer __resume <memfd>`. Any step that fails before the `execve`, and
//! the `execve` itself, leaves the old image running and answers the
//! requesters with the reason ([`Event::UpgradeChecked`],
//! [`Event::UpgradeFailed`]).
//!
//! Across `execve` the kernel keeps the pid, the children (monitors stay
//! main's children and never see a parent die), the signal mask and the
//! signals pending (a signal sent meanwhile waits for the new signalfd),
//! and every fd without `CLOEXEC`; the listening sockets never close, so
//! clients wait in the backlog at most for the exec. The new image
//! ([`resume`]) rebuilds main from the memfd: the policy's whole state
//! (generations, counts, reload counters, reload tickets), each monitor's
//! pid, channel and unsent messages, the control clients with the same ids
//! (so held reload tickets and the upgrade's requesters get their answers),
//! orphans, the runtime directory, the pid file and the systemd link.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::orphans::{Orphans, SavedGroup};
use super::pid_file::WrittenPidFile;
use super::policy::{Event, Policy, Saved};
use super::systemd::Systemd;
use super::{Main, Monitor};
use crate::cli::Cli;
use crate::config::Config;
use crate::control::admin;
use crate::control::server::{self, ClientId, Server};
use crate::error::{describe, Error};
use crate::protocol::{self, Channel};
use crate::runtime_dir::RuntimeDir;
use crate::sockets::{BindSpec, Listener};
use crate::sys::{self, spawn::ExecPlan};
use crate::worker;

/// The version of the state format below. A change an older image could
/// misread takes the next number; an image reads every format up to its own.
pub const FORMAT: u32 = 1;
/// The most bytes of state an image reads.
const MAX_STATE: u64 = 64 << 20;
/// The hidden commands of `panzer` (see `bin/panzer.rs`).
pub const CHECK_COMMAND: &str = "__upgrade-check";
pub const RESUME_COMMAND: &str = "__resume";
/// The fd at which the check child finds the state.
const CHECK_FD: RawFd = 3;

/// Everything main hands to its next image.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Handover {
    format: u32,
    /// The version of the image that wrote it.
    version: String,
    /// `CLOCK_MONOTONIC` when it was written: every deadline below is
    /// relative to it.
    taken_usec: u64,
    /// The path main was started from, and its command line.
    exe: Vec<u8>,
    argv: Vec<Vec<u8>>,
    uptime_ms: u64,
    interrupts: u32,
    sockets: Vec<SavedSocket>,
    control: server::Saved,
    /// The admin endpoint; absent without `--admin-bind`, so that a state
    /// without it still reads in an image that has none (and one with it
    /// fails the check of such an image, rather than losing the endpoint).
    #[serde(default, skip_serializing_if = "admin::Saved::is_empty")]
    admin: admin::Saved,
    monitors: Vec<SavedMonitor>,
    orphans: Vec<SavedGroup>,
    runtime_dir: Vec<u8>,
    systemd_ready_sent: bool,
    policy: Saved,
    /// Who asked for this upgrade: the new image answers them.
    answer: Vec<ClientId>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedSocket {
    fd: RawFd,
    /// The `--bind` value (`name=addr`), and the address actually bound.
    spec: String,
    local: String,
    /// A unix socket file main created: `(path, dev, inode)`.
    created: Option<(Vec<u8>, u64, u64)>,
    /// Passed in by systemd: left listening on a stop. (An older image's
    /// state lacks it.)
    #[serde(default)]
    activated: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedMonitor {
    generation: u32,
    pid: i32,
    fd: RawFd,
    closed: bool,
    notify_socket: Vec<u8>,
    /// Orders not sent yet.
    queued: Vec<Vec<u8>>,
    /// The protocol version it was started with.
    protocol: u32,
}

/// Just the format, read before the rest.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

/// (De)serializes an `Instant` as signed microseconds from an anchor that
/// both images agree on (the `CLOCK_MONOTONIC` time the state was written).
pub(crate) mod clock {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    thread_local! {
        static ANCHOR: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    /// Runs `f` with `anchor` as the zero of every `Instant` (de)serialized.
    pub(crate) fn with_anchor<T>(anchor: Instant, f: impl FnOnce() -> T) -> T {
        let before = ANCHOR.with(|a| a.replace(Some(anchor)));
        let out = f();
        ANCHOR.with(|a| a.set(before));
        out
    }

    fn anchor() -> Instant {
        ANCHOR.with(Cell::get).unwrap_or_else(Instant::now)
    }

    fn micros(d: Duration) -> i64 {
        d.as_micros().min(i64::MAX as u128) as i64
    }

    pub(crate) fn serialize<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
        let anchor = anchor();
        let offset = if *at >= anchor {
            micros(at.duration_since(anchor))
        } else {
            -micros(anchor.duration_since(*at))
        };
        offset.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        let offset = i64::deserialize(d)?;
        let anchor = anchor();
        let by = Duration::from_micros(offset.unsigned_abs());
        Ok(if offset >= 0 {
            anchor.checked_add(by).unwrap_or(anchor)
        } else {
            anchor.checked_sub(by).unwrap_or(anchor)
        })
    }

    pub(crate) mod option {
        use std::time::Instant;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] Instant);
            Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(at)| at))
        }
    }
}

fn bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

impl Handover {
    /// Reads a state written by this image or an older one.
    fn decode(bytes: &[u8]) -> Result<Handover, String> {
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| format!("the state handed over is unreadable: {e}"))?;
        if header.format > FORMAT {
            return Err(format!(
                "the state handed over is in format {}; panzer {} reads formats up to {FORMAT}",
                header.format,
                crate::control::version()
            ));
        }
        let taken = serde_json::from_slice::<TakenAt>(bytes).map(|t| t.taken_usec).unwrap_or(0);
        let elapsed = Duration::from_micros(sys::monotonic_usec().saturating_sub(taken));
        let now = Instant::now();
        let anchor = now.checked_sub(elapsed).unwrap_or(now);
        clock::with_anchor(anchor, || serde_json::from_slice(bytes))
            .map_err(|e| format!("the state handed over is unreadable: {e}"))
    }

    /// The configuration from the command line main was started with.
    fn config(&self) -> Result<Config, Error> {
        let argv: Vec<OsString> = self.argv.iter().map(|a| os(a)).collect();
        let cli = <Cli as clap::Parser>::try_parse_from(argv).map_err(|e| {
            Error::Usage(format!("the command line handed over does not parse: {}", e.to_string().trim()))
        })?;
        Config::from_cli(cli)
    }
}

#[derive(Deserialize)]
struct TakenAt {
    taken_usec: u64,
}

/// A check child under way.
pub(super) struct Check {
    pid: Pid,
    /// Its stdout and stderr (non-blocking read end of a pipe).
    output: OwnedFd,
}

impl Main {
    /// Everything the next image needs, with `answer` as the requesters.
    fn save(&self, answer: &[ClientId]) -> Result<Vec<u8>, String> {
        let now = Instant::now();
        let taken_usec = sys::monotonic_usec();
        let handover = clock::with_anchor(now, || Handover {
            format: FORMAT,
            version: crate::control::version().to_string(),
            taken_usec,
            exe: bytes(self.exe.as_os_str()),
            argv: self.argv.iter().map(|a| bytes(a)).collect(),
            uptime_ms: self.started.elapsed().as_millis().min(u64::MAX as u128) as u64,
            interrupts: self.interrupts,
            sockets: self
                .sockets
                .iter()
                .map(|l| SavedSocket {
                    fd: sys::handover::number(l.fd()),
                    spec: l.spec.to_string(),
                    local: l.local.clone(),
                    created: l.created().map(|(path, dev, ino)| (bytes(path.as_os_str()), *dev, *ino)),
                    activated: l.activated(),
                })
                .collect(),
            control: self.control.save(now),
            admin: self.admin.save(now),
            monitors: self
                .monitors
                .iter()
                .map(|(&generation, m)| SavedMonitor {
                    generation,
                    pid: m.pid.as_raw(),
                    fd: sys::handover::number(m.channel.fd()),
                    closed: m.closed,
                    notify_socket: bytes(m.notify_socket.as_os_str()),
                    queued: m.channel.queued().map(<[u8]>::to_vec).collect(),
                    protocol: m.protocol,
                })
                .collect(),
            orphans: self.orphans.save(),
            runtime_dir: bytes(self.runtime_dir.path().as_os_str()),
            systemd_ready_sent: self.systemd.as_ref().is_some_and(Systemd::ready_sent),
            policy: self.policy.save(),
            answer: answer.to_vec(),
        });
        clock::with_anchor(now, || serde_json::to_vec(&handover))
            .map_err(|e| format!("cannot write the state: {e}"))
    }

    /// Every fd the next image takes over.
    fn handover_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds: Vec<BorrowedFd<'_>> = self.sockets.iter().map(Listener::fd).collect();
        fds.extend(self.control.handover_fds());
        fds.extend(self.admin.handover_fds());
        fds.extend(self.monitors.values().map(|m| m.channel.fd()));
        fds
    }

    /// `Effect::CheckUpgrade`: starts `panzer __upgrade-check` from the
    /// binary now at main's path, with the state at fd 3.
    pub(super) fn start_check(&mut self) -> Option<Event> {
        let failed = |reason: String| Some(Event::UpgradeChecked(Err(reason)));
        let exe = self.exe.display().to_string();
        log::info!("upgrade: checking the binary at {exe}");
        let state = match self.save(&[]) {
            Ok(state) => state,
            Err(reason) => return failed(reason),
        };
        let memfd = match sys::handover::sealed_memfd("panzer-state", &state) {
            Ok(fd) => fd,
            Err(e) => return failed(format!("cannot hand the state over: {}", describe(&e))),
        };
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).and_then(|(read, write)| {
            let flags = nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(flags))?;
            Ok((read, write))
        });
        let (read, write) = match pipe {
            Ok(pipe) => pipe,
            Err(e) => return failed(format!("cannot start the check of {exe}: {}", describe(&e.into()))),
        };
        let argv = ["panzer".into(), OsString::from(CHECK_COMMAND), CHECK_FD.to_string().into()];
        let fds = [sys::handover::number(memfd.as_fd())];
        let out = sys::handover::number(write.as_fd());
        let plan = ExecPlan::new(self.exe.as_os_str(), &argv, worker::inherited_env());
        let spawned = plan.map_err(sys::spawn::SpawnError::Exec).and_then(|plan| {
            plan.with_fds(&fds)
                .with_stdout_stderr(out, out)
                .with_new_process_group()
                .with_parent_death_signal(Signal::SIGKILL)
                .spawn()
        });
        match spawned {
            Ok(pid) => {
                self.check = Some(Check { pid, output: read });
                None
            }
            Err(e) => failed(format!("cannot run the new binary {exe}: {e}")),
        }
    }

    /// `Effect::AbortUpgradeCheck`.
    pub(super) fn abort_check(&mut self) {
        if let Some(check) = self.check.take() {
            // Our unreaped child leads its own group: neither id can have
            // been reused. The group takes whatever it started along.
            sys::signal_group(check.pid, Signal::SIGKILL);
        }
    }

    /// The check child `pid` has exited (not reaped yet): reaps it and
    /// acts on its verdict. Reaped first, since a passed check leads to the
    /// exec, and the next image would not know this zombie.
    pub(super) fn on_check_exit(&mut self, pid: Pid, exit: sys::ChildExit) -> bool {
        if !self.check.as_ref().is_some_and(|c| c.pid == pid) {
            return false;
        }
        let Some(check) = self.check.take() else { return false };
        // Anything it left running in its group (not reaped yet, so the
        // group id is still its own) ends with it.
        sys::signal_group(check.pid, Signal::SIGKILL);
        sys::reap(check.pid);
        let mut output = Vec::new();
        let _ = std::fs::File::from(check.output).take(64 * 1024).read_to_end(&mut output);
        let output = String::from_utf8_lossy(&output);
        let last = output.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
        let last: String = last.chars().take(300).collect();
        let exe = self.exe.display();
        let how = match exit {
            sys::ChildExit::Killed { .. } => format!("was {exit}"),
            sys::ChildExit::Exited(_) => exit.to_string(),
        };
        let result = match exit {
            sys::ChildExit::Exited(0) => {
                let first = output.lines().next().unwrap_or("").trim();
                log::info!("upgrade: {exe} passed its check ({first})");
                Ok(())
            }
            _ if last.is_empty() => Err(format!("the new binary {exe} failed its check: it {how}")),
            _ => Err(format!("the new binary {exe} failed its check: it {how} ({last})")),
        };
        self.dispatch(Event::UpgradeChecked(result));
        true
    }

    /// `Effect::Exec`: hands the state over and becomes the new binary.
    /// Returns only if that failed, with the event that says so.
    pub(super) fn exec(&mut self, answer: Vec<ClientId>) -> Option<Event> {
        let Err(reason) = self.hand_over(&answer);
        Some(Event::UpgradeFailed { clients: answer, reason })
    }

    fn hand_over(&mut self, answer: &[ClientId]) -> Result<std::convert::Infallible, String> {
        let exe = self.exe.display().to_string();
        let state = self.save(answer)?;
        let memfd = sys::handover::sealed_memfd("panzer-state", &state)
            .map_err(|e| format!("cannot hand the state over: {}", describe(&e)))?;
        let mut kept: Vec<BorrowedFd<'_>> = Vec::new();
        let mut failure = None;
        for fd in self.handover_fds().into_iter().chain([memfd.as_fd()]) {
            match sys::handover::keep_across_exec(fd, true) {
                Ok(()) => kept.push(fd),
                Err(e) => {
                    failure = Some(format!("cannot pass fd {}: {}", sys::handover::number(fd), describe(&e)));
                    break;
                }
            }
        }
        let error = match failure {
            Some(reason) => reason,
            None => {
                log::info!("upgrade: re-executing {exe} (pid {} stays)", std::process::id());
                let argv = [
                    OsString::from("panzer"),
                    OsString::from(RESUME_COMMAND),
                    sys::handover::number(memfd.as_fd()).to_string().into(),
                ];
                let env: Vec<OsString> = std::env::vars_os()
                    .map(|(key, value)| {
                        let mut entry = key;
                        entry.push("=");
                        entry.push(value);
                        entry
                    })
                    .collect();
                // What still waits for room on stderr is lost with this image.
                crate::logging::flush();
                let e = sys::handover::exec(&self.exe, &argv, &env);
                format!("cannot execute {exe}: {}", describe(&e))
            }
        };
        for fd in kept {
            let _ = sys::handover::keep_across_exec(fd, false);
        }
        Err(error)
    }
}

/// `panzer __upgrade-check FD`: what the new binary runs before main execs
/// it. Reads the state at `fd` and the command line in it; prints this
/// version on success. Returns the exit status.
pub fn check(fd: &OsStr) -> i32 {
    match read_state(fd).and_then(|h| h.config().map_err(|e| e.report()).map(|_| h)) {
        Ok(handover) => {
            println!(
                "panzer {} (reads state format {FORMAT}, given {})",
                crate::control::version(),
                handover.format
            );
            0
        }
        Err(reason) => {
            eprintln!("panzer {}: {reason}", crate::control::version());
            1
        }
    }
}

fn read_state(fd: &OsStr) -> Result<Handover, String> {
    let number: RawFd = fd
        .to_str()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 2)
        .ok_or_else(|| format!("{}: not an fd number", fd.to_string_lossy()))?;
    let fd =
        sys::adopt_inherited_fd(number).map_err(|e| format!("no state at fd {number}: {}", describe(&e)))?;
    let bytes = sys::handover::read_memfd(fd, MAX_STATE)
        .map_err(|e| format!("cannot read the state at fd {number}: {}", describe(&e)))?;
    Handover::decode(&bytes)
}

/// `panzer __resume FD`: the new image of main, taking over the state the
/// previous one wrote at `fd`. Returns main's exit status, as [`super::run`].
pub fn resume(fd: &OsStr) -> Result<i32, Error> {
    let handover = read_state(fd).map_err(Error::Usage)?;
    let config = handover.config()?;
    crate::logging::init(config.log_level, None);
    let signals = super::signal_fd()?;
    sys::become_subreaper().map_err(|e| Error::os("cannot become child subreaper", e))?;
    let adopt = |fd: RawFd| {
        sys::adopt_inherited_fd(fd)
            .map_err(|e| Error::os(format!("cannot take over fd {fd} from the previous image"), e))
    };
    let mut sockets = Vec::new();
    for saved in &handover.sockets {
        let spec: BindSpec = saved.spec.parse().map_err(Error::Usage)?;
        let created = saved.created.as_ref().map(|(path, dev, ino)| (PathBuf::from(os(path)), *dev, *ino));
        sockets.push(Listener::resume(adopt(saved.fd)?, spec, saved.local.clone(), created, saved.activated));
    }
    let control = Server::resume(&handover.control, Instant::now(), adopt)?;
    let admin = admin::Server::resume(&handover.admin, Instant::now(), adopt)?;
    let mut monitors = std::collections::BTreeMap::new();
    for m in &handover.monitors {
        let channel = Channel::resume(adopt(m.fd)?, m.queued.clone());
        let monitor = Monitor {
            pid: Pid::from_raw(m.pid),
            channel,
            closed: m.closed,
            notify_socket: PathBuf::from(os(&m.notify_socket)),
            protocol: m.protocol,
        };
        monitors.insert(m.generation, monitor);
    }
    let stale: Vec<u32> =
        monitors.iter().filter(|(_, m)| !protocol::speaks(m.protocol)).map(|(&g, _)| g).collect();
    let mut orphans = Orphans::new(config.drain_signal);
    orphans.restore(&handover.orphans);
    let pid_file = config.pid_file.as_deref().map(WrittenPidFile::adopt);
    let settings = super::settings(&config, sockets.len());
    let started =
        Instant::now().checked_sub(Duration::from_millis(handover.uptime_ms)).unwrap_or_else(Instant::now);
    let systemd = Systemd::from_env().map(|s| s.resumed(handover.systemd_ready_sent));
    log::info!(
        "resumed as panzer {} (state of panzer {}): pid {}, {} generation(s), {} socket(s), control socket {}",
        crate::control::version(),
        handover.version,
        std::process::id(),
        monitors.len(),
        sockets.len(),
        control.path().display()
    );
    let main = Main {
        policy: Policy::restore(settings, handover.policy),
        config,
        monitors,
        sockets,
        signals,
        control,
        admin,
        orphans,
        systemd,
        runtime_dir: RuntimeDir::adopt(PathBuf::from(os(&handover.runtime_dir))),
        started,
        interrupts: handover.interrupts,
        exit: None,
        shed: sys::resident::Shedder::default(),
        exe: PathBuf::from(os(&handover.exe)),
        argv: handover.argv.iter().map(|a| os(a)).collect(),
        check: None,
        _pid_file: pid_file,
    };
    let resumed = Event::Resumed {
        clients: handover.answer,
        pid: std::process::id(),
        version: crate::control::version().to_string(),
        stale,
    };
    super::serve(main, resumed)
}
