//! The worker contract in code: what a worker process finds when it starts.
//!
//! - fds 3 … 3+k-1: the k listening sockets in `--bind` order, blocking, no
//!   `CLOEXEC`; nothing else open beyond 0, 1 and 2;
//! - `LISTEN_FDS=k`, `LISTEN_PID=<its own pid>`, `LISTEN_FDNAMES=a:b:…`
//!   (systemd socket activation, so `listenfd`, uvicorn `--fd 3`, Node's
//!   `listen({fd: 3})` and Go's activation libraries work unchanged);
//! - `NOTIFY_SOCKET`: its monitor's datagram socket (sd_notify);
//! - `PANZER_GENERATION=1, 2, …` and `PANZER_WORKER=0 … N-1`;
//! - default signal dispositions and an empty signal mask.
//!
//! On `SIGTERM` it should stop accepting, finish in-flight requests, and exit;
//! `SIGKILL` follows after `--graceful-timeout`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub const LISTEN_FDS: &str = "LISTEN_FDS";
pub const LISTEN_PID: &str = "LISTEN_PID";
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
pub const GENERATION: &str = "PANZER_GENERATION";
pub const WORKER: &str = "PANZER_WORKER";

/// Variables a worker must never inherit from panzer's own environment:
/// they describe panzer's parent (systemd), not the worker.
const NOT_INHERITED: &[&str] = &[
    LISTEN_FDS,
    LISTEN_PID,
    LISTEN_FDNAMES,
    NOTIFY_SOCKET,
    GENERATION,
    WORKER,
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// This process's environment without the variables above, as `KEY=VALUE`.
pub fn inherited_env() -> Vec<OsString> {
    std::env::vars_os()
        .filter(|(key, _)| !NOT_INHERITED.iter().any(|n| key == OsStr::new(n)))
        .map(|(key, value)| join(&key, &value))
        .collect()
}

/// The environment of worker `ordinal` of `generation` (without
/// `LISTEN_PID`, which the spawn code fills in with the worker's own pid).
pub fn env(
    base: &[OsString],
    generation: u32,
    ordinal: u32,
    sockets: usize,
    fd_names: &str,
    notify_socket: Option<&str>,
) -> Vec<OsString> {
    let mut env = base.to_vec();
    if sockets > 0 {
        env.push(format!("{LISTEN_FDS}={sockets}").into());
        env.push(format!("{LISTEN_FDNAMES}={fd_names}").into());
    }
    if let Some(path) = notify_socket {
        env.push(format!("{NOTIFY_SOCKET}={path}").into());
    }
    env.push(format!("{GENERATION}={generation}").into());
    env.push(format!("{WORKER}={ordinal}").into());
    env
}

fn join(key: &OsStr, value: &OsStr) -> OsString {
    let mut bytes = key.as_bytes().to_vec();
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    OsString::from_vec(bytes)
}

/// Finds `command` as `execvp` would: a name with a `/` is a path, anything
/// else is looked up in `PATH`. The result must be an executable file.
pub fn resolve_command(command: &OsStr) -> Result<PathBuf, String> {
    let as_path = Path::new(command);
    if command.as_bytes().contains(&b'/') {
        return check_executable(as_path).map(|()| as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut first_error = None;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(command);
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if candidate.exists() => {
                first_error.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(first_error.unwrap_or_else(|| "command not found in PATH".to_string()))
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| crate::error::describe(&e))?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("permission denied (not executable)".into());
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|e| crate::error::describe(&e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_carries_the_socket_activation_block_and_identity() {
        let env = env(&["HOME=/root".into()], 3, 1, 2, "web:unknown", Some("@n"));
        let env: Vec<_> = env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(
            env,
            [
                "HOME=/root",
                "LISTEN_FDS=2",
                "LISTEN_FDNAMES=web:unknown",
                "NOTIFY_SOCKET=@n",
                "PANZER_GENERATION=3",
                "PANZER_WORKER=1"
            ]
        );
    }

    #[test]
    fn commands_resolve_like_execvp() {
        assert!(resolve_command(OsStr::new("sh")).unwrap().is_absolute());
        assert_eq!(
            resolve_command(OsStr::new("no-such-command-xyz")).unwrap_err(),
            "command not found in PATH"
        );
        assert_eq!(resolve_command(OsStr::new("./no/such")).unwrap_err(), "no such file or directory");
        assert_eq!(resolve_command(OsStr::new("/")).unwrap_err(), "is a directory");
    }
}
