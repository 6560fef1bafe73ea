//! Upgrading main in place (`SIGUSR2`, `{"cmd":"upgrade"}`): same pid, same
//! sockets, the running generations untouched. The policy decides when
//! ([`super::policy::Effect::CheckUpgrade`], [`super::policy::Effect::Exec`]);
//! this room does it, in three steps, one file each.
//!
//! - `check.rs`: main runs the binary now at its path (recorded at startup by
//!   [`start_path`]: `/proc/self/exe` names a deleted file once a deploy has
//!   replaced it) as `panzer __upgrade-check 3`, with the state it would hand
//!   over in a sealed memfd at fd 3. That child must read the state and the
//!   command line and exit 0 within [`super::policy::UPGRADE_CHECK_TIMEOUT`]:
//!   the new binary runs, and reads this version's state format.
//! - `handover.rs`: the state itself, one serialisable struct written into a
//!   sealed memfd and read back from it: the policy's whole state
//!   (generations, counts, reload counters, reload tickets), each monitor's
//!   pid, channel and unsent messages, the control clients with the same ids
//!   (so held reload tickets and the upgrade's requesters get their answers),
//!   orphans, the runtime directory, the pid file and the systemd link;
//!   with `--balance round-robin`, each address's slot sockets and its
//!   rotation's BPF program and maps (the program stays attached across
//!   the `execve`; the next image reads the slots in rotation back).
//! - `resume.rs`: main writes its state again, as it is now, clears `CLOEXEC`
//!   on exactly the fds that must survive (the sockets and slot sockets, the
//!   rotations' BPF fds, the control listener and its clients, the admin
//!   endpoint's listeners and clients, each monitor's status channel, the
//!   memfd) and `execve`s the new binary with the command line the operator
//!   started main with (what `ps` shows), the memfd's number in
//!   [`RESUME_ENV`]; the new image takes that variable out of its
//!   environment and rebuilds main from the memfd.
//!
//! Any step that fails before the `execve`, and the `execve` itself, leaves
//! the old image running and answers the requesters with the reason
//! ([`super::policy::Event::UpgradeChecked`],
//! [`super::policy::Event::UpgradeFailed`]).
//!
//! Across `execve` the kernel keeps the pid, the children (monitors stay
//! main's children and never see a parent die), the signal mask and the
//! signals pending (a signal sent meanwhile waits for the new signalfd),
//! and every fd without `CLOEXEC`; the listening sockets never close, so
//! clients wait in the backlog at most for the exec. The kernel calls
//! themselves (the memfd, the `CLOEXEC` flag, `execve`) are in
//! `sys::handover`.

mod check;
pub(super) mod handover;
mod resume;

pub use check::check;
pub(super) use check::Check;
pub use resume::resume;

use std::path::PathBuf;

use crate::error::Error;

/// The hidden commands of `panzer` (see `bin/panzer.rs`).
pub const CHECK_COMMAND: &str = "__upgrade-check";
/// `panzer __resume FD`: how an image before state format 2 hands over.
pub const RESUME_COMMAND: &str = "__resume";
/// The variable that tells the next image, started with main's own command
/// line, at which fd the state waits. Read, and removed from the
/// environment, before anything else (see `bin/panzer.rs`).
pub const RESUME_ENV: &str = "PANZER_RESUME_FD";

/// The path panzer was started from, as the user gave it: `argv[0]` made
/// absolute (or found in `PATH`), symlinks and all, when it names the file
/// running now; else the file itself (`/proc/self/exe`). A deploy that
/// repoints a symlink (`current -> releases/2`, Homebrew, alternatives)
/// must upgrade to what the symlink names then, not to the file it named
/// at startup.
pub(super) fn start_path() -> Result<PathBuf, Error> {
    use std::os::unix::fs::MetadataExt;
    let running = std::env::current_exe().map_err(|e| Error::os("cannot find panzer's own executable", e))?;
    let id = |path: &std::path::Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let Some(this) = id("/proc/self/exe".as_ref()) else { return Ok(running) };
    let Some(arg0) = std::env::args_os().next().map(PathBuf::from) else { return Ok(running) };
    let candidates: Vec<PathBuf> = if arg0.as_os_str().as_encoded_bytes().contains(&b'/') {
        vec![arg0]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|dir| dir.join(&arg0)).collect()
    };
    let found =
        candidates.into_iter().filter_map(|c| std::path::absolute(c).ok()).find(|c| id(c) == Some(this));
    Ok(found.unwrap_or(running))
}
