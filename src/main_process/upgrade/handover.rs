//! The state main hands to its next image across an upgrade: one
//! serialisable struct, [`Handover`], that the old image writes into a
//! sealed memfd ([`Main::seal_state`]) and that the new binary's check and
//! the resumed main read back ([`read_state`]). It carries a format number
//! (an image reads every format up to its own) and the `CLOCK_MONOTONIC`
//! time it was written, so that every deadline in it ([`clock`]) means the
//! same instant in both images.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::file::ConfigFile;
use crate::config::{Config, LoadError};
use crate::control::admin;
use crate::control::server::{self, ClientId};
use crate::error::Error;
use crate::main_process::balance::{Balance, SavedBalance};
use crate::main_process::orphans::SavedGroup;
use crate::main_process::policy::{clock, Saved};
use crate::main_process::systemd::Systemd;
use crate::main_process::Main;
use crate::sockets::Listener;
use crate::sys;

/// The version of the state format below. A change an older image could
/// misread takes the next number; an image reads every format up to its own.
/// Format 2: the next image is started with main's own command line and
/// finds the state through `RESUME_ENV`, which an image of format 1 does
/// not read (it would start afresh): its check refuses format 2, so the
/// upgrade fails before anything is handed over. A field that only some
/// setups have (`admin`, `config_file`, `balance`) is left out when absent
/// and takes no new number: a state without it reads in every image, and
/// an image that does not know it fails its check on it (rather than lose
/// what it holds), while the other setups can still go back to that image.
pub(super) const FORMAT: u32 = 2;
/// The most bytes of state an image reads.
const MAX_STATE: u64 = 64 << 20;

/// Everything main hands to its next image.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Handover {
    pub(super) format: u32,
    /// The version of the image that wrote it.
    pub(super) version: String,
    /// `CLOCK_MONOTONIC` when it was written: every deadline below is
    /// relative to it.
    pub(super) taken_usec: u64,
    /// The path main was started from, and its command line.
    pub(super) exe: Vec<u8>,
    pub(super) argv: Vec<Vec<u8>>,
    pub(super) uptime_ms: u64,
    pub(super) interrupts: u32,
    pub(super) sockets: Vec<SavedSocket>,
    pub(super) control: server::Saved,
    /// The admin endpoint; absent without `--admin-bind`, so that a state
    /// without it still reads in an image that has none (and one with it
    /// fails the check of such an image, rather than losing the endpoint).
    #[serde(default, skip_serializing_if = "admin::Saved::is_empty")]
    pub(super) admin: admin::Saved,
    pub(super) monitors: Vec<SavedMonitor>,
    pub(super) orphans: Vec<SavedGroup>,
    pub(super) runtime_dir: Vec<u8>,
    pub(super) systemd_ready_sent: bool,
    pub(super) policy: Saved,
    /// Who asked for this upgrade: the new image answers them.
    pub(super) answer: Vec<ClientId>,
    /// `--config`: the file as read at start and as last applied, so that
    /// the next image runs with the settings in force, not with the file as
    /// it is now (absent without `--config`; an image that does not know it
    /// fails the check rather than lose it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) config_file: Option<SavedFile>,
    /// `--balance round-robin`: the slot sockets and the rotations (absent
    /// in `shared`; see [`FORMAT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) balance: Option<SavedBalance>,
}

/// The configuration file main runs with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedFile {
    pub(super) path: Vec<u8>,
    pub(super) owner: u32,
    pub(super) at_start: String,
    pub(super) applied: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedSocket {
    pub(super) fd: RawFd,
    /// The `--bind` value (`name=addr`), and the address actually bound.
    pub(super) spec: String,
    pub(super) local: String,
    /// A unix socket file main created: `(path, dev, inode)`.
    pub(super) created: Option<(Vec<u8>, u64, u64)>,
    /// Passed in by systemd: left listening on a stop. (An older image's
    /// state lacks it.)
    #[serde(default)]
    pub(super) activated: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedMonitor {
    pub(super) generation: u32,
    pub(super) pid: i32,
    pub(super) fd: RawFd,
    pub(super) closed: bool,
    pub(super) notify_socket: Vec<u8>,
    /// Orders not sent yet.
    pub(super) queued: Vec<Vec<u8>>,
    /// The protocol version it was started with.
    pub(super) protocol: u32,
}

/// Just the format, read before the rest.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

fn bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub(super) fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

impl Handover {
    /// Reads a state written by this image or an older one.
    fn decode(bytes: &[u8]) -> Result<Handover, Error> {
        let unreadable = |e: serde_json::Error| Error::handover("the state handed over is unreadable", e);
        let header: Header = serde_json::from_slice(bytes).map_err(unreadable)?;
        if header.format > FORMAT {
            return Err(Error::Usage(format!(
                "the state handed over is in format {}; panzer {} reads formats up to {FORMAT}",
                header.format,
                crate::control::version()
            )));
        }
        let taken = serde_json::from_slice::<TakenAt>(bytes).map(|t| t.taken_usec).unwrap_or(0);
        let elapsed = Duration::from_micros(sys::monotonic_usec().saturating_sub(taken));
        let now = Instant::now();
        let anchor = now.checked_sub(elapsed).unwrap_or(now);
        clock::with_anchor(anchor, || serde_json::from_slice(bytes)).map_err(unreadable)
    }

    /// The configuration from the command line main was started with, and
    /// its configuration file as last applied.
    pub(super) fn config(&self) -> Result<Config, Error> {
        let argv: Vec<OsString> = self.argv.iter().map(|a| os(a)).collect();
        let load = |text: Option<&String>| {
            let file = self.config_file.as_ref().zip(text).map(|(saved, text)| ConfigFile {
                path: os(&saved.path).into(),
                owner: saved.owner,
                text: text.clone(),
            });
            Config::with_file(&argv, file).map_err(|e| match e {
                LoadError::Clap(e) => Error::Usage(format!(
                    "the command line handed over does not parse: {}",
                    e.to_string().trim()
                )),
                LoadError::Config(e) => e,
            })
        };
        let at_start = load(self.config_file.as_ref().map(|f| &f.at_start))?;
        let mut config = match &self.config_file {
            Some(saved) => at_start.apply(load(Some(&saved.applied))?).0,
            None => at_start,
        };
        config.credentials = config.resolve_credentials()?;
        Ok(config)
    }
}

#[derive(Deserialize)]
struct TakenAt {
    taken_usec: u64,
}

impl Main {
    /// Everything the next image needs, with `answer` as the requesters.
    fn save(&self, answer: &[ClientId]) -> Result<Vec<u8>, Error> {
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
                    fd: l.fd().as_raw_fd(),
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
                    fd: m.channel.fd().as_raw_fd(),
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
            config_file: self.config.file.as_ref().map(|files| SavedFile {
                path: bytes(files.at_start.path.as_os_str()),
                owner: files.at_start.owner,
                at_start: files.at_start.text.clone(),
                applied: files.applied.text.clone(),
            }),
            balance: self.balance.as_ref().map(Balance::save),
        });
        clock::with_anchor(now, || serde_json::to_vec(&handover))
            .map_err(|e| Error::handover("cannot write the state", e))
    }

    /// The state, with `answer` as the requesters, in a sealed memfd: what
    /// the check child reads, and then the next image.
    pub(super) fn seal_state(&self, answer: &[ClientId]) -> Result<OwnedFd, Error> {
        let state = self.save(answer)?;
        sys::handover::sealed_memfd("panzer-state", &state)
            .map_err(|e| Error::os("cannot hand the state over", e))
    }

    /// Every fd the next image takes over.
    pub(super) fn handover_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds: Vec<BorrowedFd<'_>> = self.sockets.iter().map(Listener::fd).collect();
        fds.extend(self.control.handover_fds());
        fds.extend(self.admin.handover_fds());
        fds.extend(self.monitors.values().map(|m| m.channel.fd()));
        fds.extend(self.balance.iter().flat_map(Balance::handover_fds));
        fds
    }
}

/// The state at inherited fd `fd` (its number, as the command line gives it).
pub(super) fn read_state(fd: &OsStr) -> Result<Handover, Error> {
    let number: RawFd = fd
        .to_str()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 2)
        .ok_or_else(|| Error::Usage(format!("{}: not an fd number", fd.to_string_lossy())))?;
    let fd = sys::adopt_inherited_fd(number)
        .map_err(|e| Error::handover(format!("no state at fd {number}"), e))?;
    let bytes = sys::handover::read_memfd(fd, MAX_STATE)
        .map_err(|e| Error::handover(format!("cannot read the state at fd {number}"), e))?;
    Handover::decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_that_is_not_one_is_unreadable() {
        let e = Handover::decode(b"<html>").unwrap_err();
        assert_eq!(e.report(), "the state handed over is unreadable: expected value at line 1 column 1");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_state_in_a_newer_format_is_refused_with_the_formats_this_image_reads() {
        let e = Handover::decode(br#"{"format":99}"#).unwrap_err();
        let expected = format!(
            "the state handed over is in format 99; panzer {} reads formats up to {FORMAT}",
            crate::control::version()
        );
        assert_eq!(e.report(), expected);
        assert_eq!(e.exit_code(), 2);
    }
}
