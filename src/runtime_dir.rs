//! Where panzer keeps its runtime files (the default control socket, the
//! monitors' notify sockets) so that no other user can squat on, block or
//! redirect them, and a `kill -9` leaves nothing that piles up.
//!
//! One private directory per user: `$XDG_RUNTIME_DIR/panzer`, else
//! `/run/panzer` for root, else `$TMPDIR/panzer-<uid>`. panzer creates it
//! mode 0700 and uses it only if it is a real directory (not a symlink)
//! owned by its effective uid with no access for anyone else, as tmux does
//! with `/tmp/tmux-<uid>`. Its entries are named by main's pid
//! (`<pid>.sock`, `<pid>.d`); main removes those of pids no longer running
//! when it starts.
//!
//! With `--user`, monitors run as another user and cannot enter that
//! directory: their notify sockets go to a directory in the temp dir with an
//! unpredictable name (`panzer-<uid>-<pid>.<random>.d`), created with
//! `mkdir` (which never follows a symlink) and handed over through its fd.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Longest private dir path: room below it for `<pid>.d/gen-<n>.notify`
/// within a unix socket path's 107 bytes.
const MAX_DIR_LEN: usize = 72;

/// The private runtime directory of this user (see the module docs), as a
/// path only: nothing is created or checked. `panzerctl` looks here.
pub fn private_dir() -> PathBuf {
    let euid = nix::unistd::geteuid();
    let fits = |dir: &Path| dir.is_absolute() && dir.as_os_str().len() <= MAX_DIR_LEN;
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map(PathBuf::from) {
        // Only this user's own: a root shell that kept a user's
        // XDG_RUNTIME_DIR (sudo) must not create files the user controls.
        let own = std::fs::metadata(&xdg).is_ok_and(|m| m.is_dir() && m.uid() == euid.as_raw());
        let dir = xdg.join("panzer");
        if own && fits(&dir) {
            return dir;
        }
    }
    if euid.is_root() && Path::new("/run").is_dir() {
        return PathBuf::from("/run/panzer");
    }
    let name = format!("panzer-{euid}");
    let dir = std::env::temp_dir().join(&name);
    if fits(&dir) {
        dir
    } else {
        Path::new("/tmp").join(name)
    }
}

/// The default control socket for this main: makes sure the private dir is
/// safe (creating it if need be), removes what dead panzers left in it, and
/// returns `<private dir>/<pid>.sock`.
pub fn control_socket_path(pid: u32) -> Result<PathBuf, Error> {
    let dir = private_dir();
    ensure_private(&dir)?;
    remove_stale(&dir);
    Ok(dir.join(format!("{pid}.sock")))
}

/// A directory for the monitors' notify sockets, removed on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Without `--user`: `<private dir>/<main pid>.d`, mode 0700. With
    /// `credentials` (uid, gid): an unpredictably named directory in the temp
    /// dir owned by that user, since monitors running as it create their
    /// sockets there.
    pub fn create(credentials: Option<(u32, u32)>) -> Result<RuntimeDir, Error> {
        let pid = std::process::id();
        match credentials {
            None => {
                let private = private_dir();
                ensure_private(&private)?;
                remove_stale(&private);
                let path = private.join(format!("{pid}.d"));
                // Ours alone can be in the way: a process of ours that had this pid.
                let _ = std::fs::remove_dir_all(&path);
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| Error::os(format!("cannot create {}", path.display()), e))?;
                Ok(RuntimeDir { path })
            }
            Some((uid, gid)) => {
                let tmp = shared_temp_dir();
                check_parent(&tmp, &tmp)?;
                let euid = nix::unistd::geteuid();
                remove_stale_shared(&tmp, &format!("panzer-{euid}-"));
                let path = create_unique_dir(&tmp, &format!("panzer-{euid}-{pid}."), ".d")?;
                let fail = |e| Error::os(format!("cannot hand {} to uid {uid}", path.display()), e);
                // Through the fd: whatever is at the path now, the directory
                // just made is the one handed over.
                let dir = std::fs::File::options()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(fail)?;
                let meta = dir.metadata().map_err(fail)?;
                if !meta.is_dir() || meta.uid() != euid.as_raw() {
                    return Err(fail(io::Error::other("it was replaced")));
                }
                std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(fail)?;
                Ok(RuntimeDir { path })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory a previous image of main created (an upgrade).
    pub fn adopt(path: PathBuf) -> RuntimeDir {
        RuntimeDir { path }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates `dir` (mode 0700) if it is missing, then refuses it unless it is
/// a real directory owned by this user with no access for anyone else.
fn ensure_private(dir: &Path) -> Result<(), Error> {
    if let Some(parent) = dir.parent() {
        check_parent(parent, dir)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::os(format!("cannot create runtime directory {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::os(format!("cannot use runtime directory {}", dir.display()), e))?;
    check_private(dir, &meta)
}

/// What a start requires of the private runtime directory (see
/// [`ensure_private`]), checked without creating or removing anything, for
/// `panzer --check`: the directory is safe, or its parent is and lets this
/// user create it. Returns its path.
pub fn check_private_dir() -> Result<PathBuf, Error> {
    let dir = private_dir();
    let parent = dir.parent().unwrap_or(Path::new("/"));
    check_parent(parent, &dir)?;
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) => check_private(&dir, &meta)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            may_create_in(parent)
                .map_err(|e| Error::os(format!("cannot create runtime directory {}", dir.display()), e))?;
        }
        Err(e) => return Err(Error::os(format!("cannot use runtime directory {}", dir.display()), e)),
    }
    Ok(dir)
}

/// What a start with `--user` requires of the temp dir the monitors'
/// directory is made in (see [`RuntimeDir::create`]), checked without
/// creating anything, for `panzer --check`. Returns its path.
pub fn check_shared_dir() -> Result<PathBuf, Error> {
    let tmp = shared_temp_dir();
    check_parent(&tmp, &tmp)?;
    may_create_in(&tmp)
        .map_err(|e| Error::os(format!("cannot create a directory in {}", tmp.display()), e))?;
    Ok(tmp)
}

/// Whether this process may create an entry in `dir` (write and search).
fn may_create_in(dir: &Path) -> io::Result<()> {
    use nix::unistd::AccessFlags;
    nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(io::Error::from)
}

/// Refuses `dir` (whose own metadata, not followed, is `meta`) unless it is
/// a real directory owned by this user with no access for anyone else.
fn check_private(dir: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    let euid = nix::unistd::geteuid().as_raw();
    let problem = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_string()
    } else if !meta.is_dir() {
        "it is not a directory".to_string()
    } else if meta.uid() != euid {
        format!("it belongs to uid {}, not to panzer's uid {euid}", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!("other users may access it (mode {:04o})", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(Error::Unsafe(format!(
        "cannot use runtime directory {}: {problem}; remove it (panzer creates it, mode 0700) or give --control PATH",
        dir.display()
    )))
}

/// A directory that `child` is created in must not let another user swap
/// `child` for something else: owned by root or this user, and writable by
/// others only with the sticky bit (as /tmp is).
fn check_parent(parent: &Path, child: &Path) -> Result<(), Error> {
    let euid = nix::unistd::geteuid().as_raw();
    let meta = std::fs::metadata(parent)
        .map_err(|e| Error::os(format!("cannot use runtime directory {}", child.display()), e))?;
    let problem = if meta.uid() != 0 && meta.uid() != euid {
        format!("it is in {}, which belongs to uid {}", parent.display(), meta.uid())
    } else if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        format!("it is in {}, which other users may write and is not sticky", parent.display())
    } else {
        return Ok(());
    };
    Err(Error::Unsafe(format!(
        "cannot use runtime directory {}: {problem}; set XDG_RUNTIME_DIR or TMPDIR to a directory of your own, or give --control PATH",
        child.display()
    )))
}

/// The temp dir, or `/tmp` when it is too deep for the socket paths below
/// `panzer-<uid>-<pid>.<random>.d`.
fn shared_temp_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if tmp.is_absolute() && tmp.as_os_str().len() <= 40 {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

/// Makes `<dir>/<prefix><random><suffix>`, mode 0700; another name when
/// one is taken.
fn create_unique_dir(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf, Error> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let path = dir.join(format!("{prefix}{}{suffix}", random_hex()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(Error::os(format!("cannot create {}", path.display()), e)),
        }
    }
    Err(Error::os(format!("cannot create a directory {prefix}…{suffix} in {}", dir.display()), last))
}

/// Removes the entries `<pid>.sock` and `<pid>.d` of `dir` whose pid is not
/// running. `dir` is private (checked), so nothing in it is another user's.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_suffix(".sock").or_else(|| n.strip_suffix(".d")));
        if let Some(pid) = pid.and_then(|p| p.parse().ok()) {
            remove_if_dead(&entry, pid);
        }
    }
}

/// Removes the directories `<prefix><pid>.<random>.d` in the shared temp
/// dir whose pid is not running (left by a `kill -9` of a main with `--user`).
fn remove_stale_shared(tmp: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix)?.strip_suffix(".d")?.split_once('.'))
            .and_then(|(pid, random)| (random.len() == 16).then_some(pid));
        // A real directory only; symlinks planted there are not ours.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let Some(pid) = pid.and_then(|p| p.parse().ok()).filter(|_| is_dir) {
            remove_if_dead(&entry, pid);
        }
    }
}

fn remove_if_dead(entry: &std::fs::DirEntry, pid: i32) {
    if pid <= 0 || pid_is_running(pid) {
        return;
    }
    let path = entry.path();
    // remove_dir_all never follows a symlink, not even one swapped in meanwhile.
    let removed = match entry.file_type() {
        Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
        _ => std::fs::remove_file(&path),
    };
    match removed {
        Ok(()) => log::info!("removed {}, left behind by panzer {pid}, which is gone", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {}", path.display(), crate::error::describe(&e)),
    }
}

/// Whether a process `pid` exists and is not a zombie.
pub fn pid_is_running(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').map_or(true, |i| !stat[i + 1..].trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// 64 random bits as 16 hex digits, for names no other user can guess:
/// from the kernel's random source, or std's randomly keyed hasher.
pub(crate) fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    let value = match random {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
            hasher.finish()
        }
    };
    format!("{value:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_differ() {
        let a = random_hex();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_hex());
    }

    #[test]
    fn this_process_runs_and_a_pid_above_the_maximum_does_not() {
        assert!(pid_is_running(std::process::id() as i32));
        assert!(!pid_is_running(i32::MAX));
    }

    #[test]
    fn checking_the_private_dir_creates_nothing_and_refuses_what_a_start_refuses() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("panzer-unit-rt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.join("panzer");
        let meta = |mode| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::symlink_metadata(&dir).unwrap()
        };
        std::fs::create_dir(&dir).unwrap();
        assert!(check_private(&dir, &meta(0o700)).is_ok());
        let e = check_private(&dir, &meta(0o750)).unwrap_err();
        assert!(e.report().contains("other users may access it (mode 0750)"), "{}", e.report());
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&base, &dir).unwrap();
        let e = check_private(&dir, &std::fs::symlink_metadata(&dir).unwrap()).unwrap_err();
        assert!(e.report().contains("it is a symbolic link"), "{}", e.report());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_private_dir_leaves_room_for_socket_paths() {
        let dir = private_dir();
        let deepest = dir.join(format!("{}.d/gen-{}.notify", i32::MAX, u32::MAX));
        assert!(deepest.as_os_str().len() < 108, "{}", deepest.display());
    }
}
