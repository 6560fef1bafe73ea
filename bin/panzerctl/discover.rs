//! Which control socket `panzerctl` talks to when it is not given one: the
//! default socket of the one panzer running, or the default socket of the
//! pid a pid file names. Both live in this user's private runtime directory
//! (see the library's `runtime_dir`), which is trusted only when it is
//! really private: another user could plant a fake panzer's socket in a
//! shared temp dir.

use std::path::PathBuf;

use panzer::error::Error;

/// The control socket of the one panzer running with a default control
/// path, for `panzerctl` without `--control` or `--pid-file`. An error when
/// there is none, or several (it names them).
pub fn discover() -> Result<PathBuf, Error> {
    let dir = trusted_private_dir()?;
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_suffix(".sock")?.parse().ok()) else {
                continue;
            };
            if panzer::for_panzerctl::pid_is_running(pid) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::control(format!(
            "no running panzer in {}; give --control PATH or --pid-file PATH",
            dir.display()
        ))),
        _ => {
            let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            Err(Error::control(format!(
                "several panzers are running ({}); pick one with --control PATH",
                list.join(", ")
            )))
        }
    }
}

/// This user's private runtime directory, where default control sockets
/// live, if it is safe to trust: a real directory (not a symlink), owned by
/// this user, with no access for anyone else. Another user may have planted
/// one in a shared temp dir, with a fake panzer's socket in it.
fn trusted_private_dir() -> Result<PathBuf, Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = panzer::for_panzerctl::private_dir();
    let me = nix::unistd::geteuid().as_raw();
    match std::fs::symlink_metadata(&dir) {
        Err(_) => Ok(dir),
        Ok(meta) if meta.is_dir() && meta.uid() == me && meta.permissions().mode() & 0o077 == 0 => Ok(dir),
        Ok(meta) => Err(Error::Unsafe(format!(
            "{} is not a private directory of yours (owner uid {}, mode {:o}): not looking for panzers there; \
             give --control PATH",
            dir.display(),
            meta.uid(),
            meta.permissions().mode() & 0o7777
        ))),
    }
}

/// The default control socket of main `pid` (`<private dir>/<pid>.sock`,
/// the private dir being `$XDG_RUNTIME_DIR/panzer`, else `/run/panzer` for
/// root, else `$TMPDIR/panzer-<uid>`), in [`trusted_private_dir`].
pub fn trusted_default_path(pid: u32) -> Result<PathBuf, Error> {
    Ok(trusted_private_dir()?.join(format!("{pid}.sock")))
}
