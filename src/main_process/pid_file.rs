//! `--pid-file`: main's pid, written atomically once main is up, removed on
//! exit. A file naming a live process stops panzer from starting; a stale
//! one is replaced.
//!
//! panzer usually runs as root, so the file is never written through a
//! path another user controls: its directory must not be writable by others
//! (unless sticky, as /tmp is), and the pid is written to a new file with an
//! unpredictable name (`O_EXCL | O_NOFOLLOW`), then renamed into place.

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::error::Error;
use crate::runtime_dir::random_hex;

/// A pid file path checked to be free, not yet written.
pub struct PidFile {
    path: PathBuf,
}

/// A written pid file, removed on drop if it still holds our pid.
pub struct WrittenPidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn check(path: &Path) -> Result<PidFile, Error> {
        if let Some((pid, owner)) = check_place(path)? {
            let me = std::process::id() as i32;
            let trusted = owner == 0 || owner == nix::unistd::geteuid().as_raw();
            let running = pid > 0 && pid != me && nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok();
            if running && trusted && is_panzer(pid) {
                return Err(Error::InUse(format!(
                    "pid file {} names process {pid}, which is running (another panzer)",
                    path.display()
                )));
            }
            if running {
                // Only a file of ours naming a running panzer stops the
                // start: anyone may write a pid into a sticky directory.
                log::warn!(
                    "pid file {} names process {pid}, which is not a panzer of ours: replacing it",
                    path.display()
                );
            }
        }
        Ok(PidFile { path: path.to_path_buf() })
    }

    pub fn write(self) -> Result<WrittenPidFile, Error> {
        let pid = std::process::id();
        let fail = |e| Error::os(format!("cannot write pid file {}", self.path.display()), e);
        let (tmp, mut file) = create_temp(&self.path).map_err(fail)?;
        let written = file.write_all(format!("{pid}\n").as_bytes()).and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, &self.path)
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        Ok(WrittenPidFile { path: self.path, pid })
    }
}

impl WrittenPidFile {
    /// The pid file a previous image of main wrote (same pid: an upgrade).
    pub fn adopt(path: &Path) -> WrittenPidFile {
        WrittenPidFile { path: path.to_path_buf(), pid: std::process::id() }
    }
}

impl Drop for WrittenPidFile {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(self.pid as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a pid file can be written at `path`: its directory (see
/// [`check_directory`]), and what is there now: nothing, or a file whose
/// pid and owner are returned. Nothing is written; [`PidFile::check`] and
/// `panzer --check` both ask.
pub(crate) fn check_place(path: &Path) -> Result<Option<(i32, u32)>, Error> {
    check_directory(path)?;
    read_existing(path).map_err(|why| Error::Usage(format!("--pid-file {}: {why}", path.display())))
}

/// The directory of `path` must let panzer create the file, and must not
/// let another user replace it: not writable by group or others, unless it
/// has the sticky bit.
fn check_directory(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| {
        Error::Usage(format!(
            "--pid-file {}: cannot use its directory {}: {}",
            path.display(),
            dir.display(),
            crate::error::describe(&e)
        ))
    })?;
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Error::Usage(format!(
            "--pid-file {}: its directory {} is writable by other users (mode {:04o}) and not sticky, \
             so any of them could replace the file; use a directory only panzer's user may write, such as /run",
            path.display(),
            dir.display(),
            mode & 0o7777
        )));
    }
    use nix::unistd::AccessFlags;
    nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        Error::Usage(format!(
            "--pid-file {}: cannot create a file in its directory {}: {}",
            path.display(),
            dir.display(),
            crate::error::describe(&e.into())
        ))
    })
}

/// The pid in the file at `path`, read without following a symlink.
fn read_pid(path: &Path) -> Option<i32> {
    read_existing(path).ok().flatten().map(|(pid, _)| pid)
}

/// The pid in the file at `path` and the file's owner, if it is a regular
/// file holding a pid; an error if something else sits there. Never blocks
/// (a FIFO planted there would) and never follows a symlink.
fn read_existing(path: &Path) -> Result<Option<(i32, u32)>, String> {
    let opened = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // A symlink (ELOOP) is replaced by the rename, never followed.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(crate::error::describe(&e)),
    };
    let meta = file.metadata().map_err(|e| crate::error::describe(&e))?;
    if !meta.file_type().is_file() {
        return Err("is not a regular file; remove it or choose another path".into());
    }
    let mut text = String::new();
    Read::take(&mut file, 64).read_to_string(&mut text).map_err(|e| crate::error::describe(&e))?;
    Ok(text.trim().parse().ok().map(|pid| (pid, meta.uid())))
}

/// Whether `pid` runs the same program as this process (a panzer).
fn is_panzer(pid: i32) -> bool {
    let name = |path: String| std::fs::read_to_string(path).map(|n| n.trim_end().to_string()).ok();
    match (name(format!("/proc/{pid}/comm")), name("/proc/self/comm".into())) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}

/// A new file beside `path` with an unpredictable name, created with
/// `O_EXCL | O_NOFOLLOW`: never one that existed, never through a symlink.
fn create_temp(path: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().ok_or_else(|| io::Error::other("the path names no file"))?;
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", random_hex()));
        let tmp = path.with_file_name(tmp_name);
        let created = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        match created {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("panzer-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn writes_the_pid_and_leaves_no_temporary_file() {
        let dir = scratch("pid-write");
        let path = dir.join("app.pid");
        let written = PidFile::check(&path).unwrap().write().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        drop(written);
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_may_write_is_refused_unless_sticky() {
        let dir = scratch("pid-open");
        let path = dir.join("app.pid");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = PidFile::check(&path).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("writable by other users (mode 0777)"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(PidFile::check(&path).is_ok());
        std::fs::remove_dir(&dir).unwrap();
    }
}
