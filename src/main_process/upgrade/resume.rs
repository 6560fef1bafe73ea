//! Main becomes the new binary, both sides of the `execve`. The old image
//! ([`Main::exec`]) writes its state as it is now into a sealed memfd,
//! clears `CLOEXEC` on exactly the fds the next image takes over, and
//! `execve`s main's path with main's own command line, the memfd's number
//! in [`RESUME_ENV`] (an image before state format 2 used `panzer __resume
//! <memfd>`, which this one still takes); if anything fails
//! before, or the `execve` itself, the flags are set again and the old
//! image goes on. The new image ([`resume`]) reads the state, takes every
//! fd over, and rebuilds main from it: same pid, same sockets, the same
//! monitors, control clients and policy, then serves as main always does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::handover::{os, read_state};
use super::RESUME_ENV;
use crate::control::admin;
use crate::control::server::{ClientId, Server};
use crate::error::Error;
use crate::main_process::balance::Balance;
use crate::main_process::orphans::Orphans;
use crate::main_process::pid_file::WrittenPidFile;
use crate::main_process::policy::{Event, Policy};
use crate::main_process::systemd::Systemd;
use crate::main_process::{self, Main, Monitor};
use crate::protocol::{self, Channel};
use crate::runtime_dir::RuntimeDir;
use crate::sockets::{BindSpec, Listener};
use crate::sys;

impl Main {
    /// `Effect::Exec`: hands the state over and becomes the new binary.
    /// Returns only if that failed, with the event that says so.
    pub(in crate::main_process) fn exec(&mut self, answer: Vec<ClientId>) -> Option<Event> {
        let Err(e) = self.hand_over(&answer);
        Some(Event::UpgradeFailed { clients: answer, reason: e.report() })
    }

    fn hand_over(&mut self, answer: &[ClientId]) -> Result<Infallible, Error> {
        let exe = self.exe.display().to_string();
        let memfd = self.seal_state(answer)?;
        let mut kept: Vec<BorrowedFd<'_>> = Vec::new();
        let mut failure = None;
        for fd in self.handover_fds().into_iter().chain([memfd.as_fd()]) {
            match sys::handover::keep_across_exec(fd, true) {
                Ok(()) => kept.push(fd),
                Err(e) => {
                    failure = Some(Error::os(format!("cannot pass fd {}", fd.as_raw_fd()), e));
                    break;
                }
            }
        }
        let error = match failure {
            Some(error) => error,
            None => {
                log::info!("upgrade: re-executing {exe} (pid {} stays)", std::process::id());
                // The operator's command line, so that `ps` shows it still.
                let argv = &self.argv;
                let mut env: Vec<OsString> = std::env::vars_os()
                    .filter(|(key, _)| key != RESUME_ENV)
                    .map(|(key, value)| {
                        let mut entry = key;
                        entry.push("=");
                        entry.push(value);
                        entry
                    })
                    .collect();
                env.push(format!("{RESUME_ENV}={}", memfd.as_raw_fd()).into());
                // What still waits for room on stderr is lost with this image.
                crate::logging::flush();
                let e = sys::handover::exec(&self.exe, argv, &env);
                Error::os(format!("cannot execute {exe}"), e)
            }
        };
        for fd in kept {
            let _ = sys::handover::keep_across_exec(fd, false);
        }
        Err(error)
    }
}

/// The new image of main (`RESUME_ENV=FD`, or `panzer __resume FD` from an
/// older image), taking over the state the previous one wrote at `fd`.
/// Returns main's exit status, as [`crate::main_process::run`].
pub fn resume(fd: &OsStr) -> Result<i32, Error> {
    let handover = read_state(fd)?;
    let config = handover.config()?;
    crate::logging::init(config.log_level, config.log_format, None);
    let signals = main_process::signal_fd()?;
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
    let mut monitors = BTreeMap::new();
    for m in &handover.monitors {
        let channel = Channel::resume(adopt(m.fd)?, m.queued.clone());
        let monitor = Monitor {
            pid: Pid::from_raw(m.pid),
            channel,
            closed: m.closed,
            notify_socket: PathBuf::from(os(&m.notify_socket)),
            protocol: m.protocol,
            // Heard from, or judged, by the previous image.
            hello_by: None,
        };
        monitors.insert(m.generation, monitor);
    }
    let stale: Vec<u32> =
        monitors.iter().filter(|(_, m)| !protocol::speaks(m.protocol)).map(|(&g, _)| g).collect();
    let mut orphans = Orphans::new(config.drain_signal);
    orphans.restore(&handover.orphans);
    let pid_file = config.pid_file.as_deref().map(WrittenPidFile::adopt);
    let balance = match &handover.balance {
        Some(saved) => Some(Balance::resume(saved, &sockets, adopt)?),
        None => None,
    };
    let settings = main_process::settings(&config, sockets.len(), balance.as_ref().map(Balance::room));
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
        config_before: None,
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
        balance,
        _pid_file: pid_file,
    };
    let resumed = Event::Resumed {
        clients: handover.answer,
        pid: std::process::id(),
        version: crate::control::version().to_string(),
        stale,
    };
    main_process::serve(main, resumed)
}
