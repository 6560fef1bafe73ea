//! What an in-place upgrade needs from the kernel: a sealed memfd that
//! carries main's state across `execve`, the `CLOEXEC` flag cleared on
//! exactly the fds that must survive (and set again if the exec fails),
//! and the `execve` itself. All through nix's safe wrappers; the file is
//! here because it is the OS edge of the upgrade, as `spawn` is of a start.
//! What the state is, and when each call is made, is `main_process::upgrade`'s.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// A `CLOEXEC` memfd holding `bytes`, sealed against any change: whoever
/// reads it (the check child, the next image) sees exactly what was written.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let seals =
        SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(file))
}

/// The whole content of an inherited memfd (at most `limit` bytes), read
/// from its start whatever its offset.
pub fn read_memfd(fd: OwnedFd, limit: u64) -> io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    let size = file.metadata()?.len();
    if size > limit {
        return Err(io::Error::other(format!("{size} bytes, more than the {limit} allowed")));
    }
    file.rewind()?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Clears (`keep`) or sets `CLOEXEC` on `fd`.
pub fn keep_across_exec(fd: BorrowedFd<'_>, keep: bool) -> io::Result<()> {
    let flags = if keep { FdFlag::empty() } else { FdFlag::FD_CLOEXEC };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Replaces this process's image with `path`, keeping its pid, its
/// children, its blocked and pending signals and every fd without
/// `CLOEXEC`. Returns only if `execve` failed.
pub fn exec(path: &Path, argv: &[OsString], env: &[OsString]) -> io::Error {
    let c = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let built = (|| -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = c(path.as_os_str())?;
        let argv = argv.iter().map(|a| c(a)).collect::<io::Result<Vec<_>>>()?;
        // An entry with a NUL byte cannot be passed at all: left out.
        let env = env.iter().filter_map(|e| c(e).ok()).collect();
        Ok((path, argv, env))
    })();
    match built {
        Ok((path, argv, env)) => match nix::unistd::execve(&path, &argv, &env) {
            Err(e) => e.into(),
            Ok(never) => match never {},
        },
        Err(e) => e,
    }
}
