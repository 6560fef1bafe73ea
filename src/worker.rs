//! The worker contract in code: what a worker process finds when it starts.
//!
//! - fds 3 … 3+k-1: the k listening sockets in `--bind` order, blocking, no
//!   `CLOEXEC`; nothing else open beyond 0, 1 and 2;
//! - `LISTEN_FDS=k`, `LISTEN_PID=<its own pid>`, `LISTEN_FDNAMES=a:b:…`
//!   (systemd socket activation, so `listenfd`, uvicorn `--fd 3`, Node's
//!   `listen({fd: 3})` and Go's activation libraries work unchanged);
//! - `NOTIFY_SOCKET`: its monitor's datagram socket (sd_notify);
//! - `PANZER_GENERATION=1, 2, …` and `PANZER_WORKER=0 … N-1`;
//! - the same sockets in einhorn's convention (`EINHORN_FD_COUNT=k`,
//!   `EINHORN_FD_0=3`, …) and Server::Starter's (`SERVER_STARTER_PORT=
//!   127.0.0.1:8080=3;/run/app.sock=4`, `SERVER_STARTER_GENERATION`), so apps
//!   written for those launchers start unchanged;
//! - with `--health-timeout`: `WATCHDOG_USEC` (the timeout) and
//!   `WATCHDOG_PID` (its own pid), so `sd_watchdog_enabled()` says yes;
//! - `PANZER_INSTANCE=<main's pid>:<its start time>`, which names the panzer
//!   that started it (and, inherited, its descendants) to a later panzer;
//! - default signal dispositions and an empty signal mask.
//!
//! On `SIGTERM` (or `--drain-signal`) it should stop accepting, finish
//! in-flight requests, and exit; `SIGKILL` follows after `--graceful-timeout`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

pub const LISTEN_FDS: &str = "LISTEN_FDS";
pub const LISTEN_PID: &str = "LISTEN_PID";
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
pub const GENERATION: &str = "PANZER_GENERATION";
pub const WORKER: &str = "PANZER_WORKER";
pub const EINHORN_FD_COUNT: &str = "EINHORN_FD_COUNT";
/// Followed by the socket's index: `EINHORN_FD_0`, `EINHORN_FD_1`, …
pub const EINHORN_FD_PREFIX: &str = "EINHORN_FD_";
pub const SERVER_STARTER_PORT: &str = "SERVER_STARTER_PORT";
pub const SERVER_STARTER_GENERATION: &str = "SERVER_STARTER_GENERATION";
/// With `--health-timeout`: the timeout in microseconds, as systemd sets it.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// With `--health-timeout`: the worker's own pid (filled in by the spawn code).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
/// The panzer a process belongs to, `<main's pid>:<its start time>`: set by
/// main for its monitors, inherited by the workers and what they start.
pub const INSTANCE: &str = "PANZER_INSTANCE";

/// Variables a worker must never inherit from panzer's own environment:
/// they describe panzer's parent (systemd), not the worker.
const NOT_INHERITED: &[&str] = &[
    LISTEN_FDS,
    LISTEN_PID,
    LISTEN_FDNAMES,
    NOTIFY_SOCKET,
    GENERATION,
    WORKER,
    WATCHDOG_USEC,
    WATCHDOG_PID,
    SERVER_STARTER_PORT,
    SERVER_STARTER_GENERATION,
    crate::protocol::MONITOR_ARGS_ENV,
];

/// Prefixes of variables a worker never inherits, for the same reason.
const NOT_INHERITED_PREFIXES: &[&str] = &[EINHORN_FD_PREFIX];

fn inherited(key: &OsStr) -> bool {
    !NOT_INHERITED.iter().any(|n| key == OsStr::new(n))
        && !NOT_INHERITED_PREFIXES.iter().any(|p| key.as_bytes().starts_with(p.as_bytes()))
}

/// `--env KEY=VALUE`, and each entry of the file's `env`: KEY must be
/// non-empty, without `=` or NUL, and not a variable panzer sets for its
/// workers itself (`LISTEN_*`, `NOTIFY_SOCKET`, `PANZER_*`, `WATCHDOG_*`,
/// `EINHORN_FD_*`, `SERVER_STARTER_*`): those stay panzer's.
pub fn env_var(word: &str) -> Result<(String, String), String> {
    let (key, value) = word.split_once('=').ok_or_else(|| format!("{word}: expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{word}: the variable's name is empty"));
    }
    if key.contains('\0') || value.contains('\0') {
        return Err(format!("{key}: contains a NUL byte"));
    }
    const OWN: &[&str] =
        &["LISTEN_", "PANZER_", "WATCHDOG_", "EINHORN_FD_", "SERVER_STARTER_", NOTIFY_SOCKET];
    if let Some(own) = OWN.iter().find(|p| key.starts_with(*p)) {
        let what = if own.ends_with('_') { format!("{own}*") } else { own.to_string() };
        return Err(format!("{key}: panzer sets {what} for its workers itself"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// This process's environment without the variables above, as `KEY=VALUE`.
pub fn inherited_env() -> Vec<OsString> {
    std::env::vars_os().filter(|(key, _)| inherited(key)).map(|(key, value)| join(&key, &value)).collect()
}

/// `env` with `vars` (`--env`, the file's `env`) set, replacing what `env`
/// had under the same names.
pub fn with_vars(mut env: Vec<OsString>, vars: &[(String, String)]) -> Vec<OsString> {
    for (key, value) in vars {
        env.retain(|entry| entry.as_bytes().split(|&b| b == b'=').next() != Some(key.as_bytes()));
        env.push(join(OsStr::new(key), OsStr::new(value)));
    }
    env
}

/// The environment of worker `ordinal` of `generation` (without
/// `LISTEN_PID`, which the spawn code fills in with the worker's own pid).
/// `addresses` are the sockets' addresses as Server::Starter writes them
/// (`127.0.0.1:8080`, `[::1]:8080`, a unix socket's path), one per socket.
pub fn env(
    base: &[OsString],
    generation: u32,
    ordinal: u32,
    sockets: usize,
    fd_names: &str,
    notify_socket: Option<&str>,
    addresses: &[OsString],
) -> Vec<OsString> {
    let mut env = base.to_vec();
    if sockets > 0 {
        env.push(format!("{LISTEN_FDS}={sockets}").into());
        env.push(format!("{LISTEN_FDNAMES}={fd_names}").into());
        env.push(format!("{EINHORN_FD_COUNT}={sockets}").into());
        env.extend((0..sockets).map(|i| format!("{EINHORN_FD_PREFIX}{i}={}", FIRST_FD + i as i32).into()));
        if addresses.len() == sockets {
            env.push(server_starter_port(addresses));
            env.push(format!("{SERVER_STARTER_GENERATION}={generation}").into());
        }
    }
    if let Some(path) = notify_socket {
        env.push(format!("{NOTIFY_SOCKET}={path}").into());
    }
    env.push(format!("{GENERATION}={generation}").into());
    env.push(format!("{WORKER}={ordinal}").into());
    env
}

/// The fd of the first socket a worker gets.
const FIRST_FD: i32 = 3;

/// `SERVER_STARTER_PORT=addr=fd;addr=fd…`, the sockets in order from fd 3.
fn server_starter_port(addresses: &[OsString]) -> OsString {
    let mut value = Vec::new();
    for (i, addr) in addresses.iter().enumerate() {
        if i > 0 {
            value.push(b';');
        }
        value.extend_from_slice(addr.as_bytes());
        value.extend_from_slice(format!("={}", FIRST_FD + i as i32).as_bytes());
    }
    join(OsStr::new(SERVER_STARTER_PORT), OsStr::from_bytes(&value))
}

fn join(key: &OsStr, value: &OsStr) -> OsString {
    let mut bytes = key.as_bytes().to_vec();
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    OsString::from_vec(bytes)
}

/// A command resolved as the kernel will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The file `execve` is given.
    pub path: PathBuf,
    /// For a script, the interpreter its `#!` line names (and, for an
    /// interpreter that is itself a script, the one that names), in order.
    pub interpreters: Vec<PathBuf>,
}

/// Finds `command` as `execvp` would: a name with a `/` is a path, anything
/// else is looked up in `PATH`. The result must be an executable file; the
/// error is [`Error::Command`], naming the command and why it cannot run.
pub fn resolve_command(command: &OsStr) -> Result<PathBuf, Error> {
    resolve_command_in(command, None)
}

/// [`resolve_command`] for a worker that starts in `dir` (`--chdir`): a
/// relative path with a `/` is found from there.
pub fn resolve_command_in(command: &OsStr, dir: Option<&Path>) -> Result<PathBuf, Error> {
    resolve_program(command, dir).map(|program| program.path)
}

/// [`resolve_command_in`], with the interpreters a script's `#!` line
/// names: each must be an executable file too, or the command cannot run
/// (the kernel says "no such file or directory" of the script itself).
pub fn resolve_program(command: &OsStr, dir: Option<&Path>) -> Result<Program, Error> {
    let fail = |reason| Error::Command { command: command.to_string_lossy().into_owned(), reason };
    let in_dir = dir.filter(|_| command.as_bytes().contains(&b'/') && Path::new(command).is_relative());
    let command_path = match in_dir {
        Some(dir) => dir.join(command).into_os_string(),
        None => command.to_os_string(),
    };
    let path = find(&command_path).map_err(fail)?;
    let interpreters = interpreters(&path).map_err(fail)?;
    Ok(Program { path, interpreters })
}

/// The program a script's `#!/usr/bin/env NAME` line names, for a script
/// whose last interpreter is `env`: NAME, which `env` looks up in the
/// worker's `PATH` only when it runs. `None` when there is no such word
/// (an option such as `-S`, an assignment, nothing).
pub fn env_program(program: &Program) -> Option<OsString> {
    let (last, named_by) = match program.interpreters.as_slice() {
        [] => return None,
        [only] => (only, &program.path),
        [.., before, last] => (last, before),
    };
    if last.file_name() != Some(OsStr::new("env")) {
        return None;
    }
    let head = head_of(named_by)?;
    let line = head.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let mut words = line.split(blank).filter(|w| !w.is_empty());
    words.next()?; // env itself
    let word = words.next()?;
    let word = word.strip_suffix(b"\r").unwrap_or(word);
    (!word.starts_with(b"-") && !word.contains(&b'=')).then(|| OsStr::from_bytes(word).to_os_string())
}

/// What `execve` reads of a file to find its `#!` line (`BINPRM_BUF_SIZE`).
const SHEBANG_BUFFER: usize = 256;
/// How many scripts deep the kernel follows interpreters that are scripts.
const MAX_SCRIPT_DEPTH: usize = 4;

/// The chain of interpreters below the executable file `path`: empty for a
/// file that is not a script. The error says which interpreter cannot run.
fn interpreters(path: &Path) -> Result<Vec<PathBuf>, String> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        let Some(next) = shebang(&current)? else { return Ok(chain) };
        if chain.len() == MAX_SCRIPT_DEPTH {
            return Err(format!("its #! interpreters are nested more than {MAX_SCRIPT_DEPTH} deep"));
        }
        // A script saved with Windows line endings names `/bin/sh\r`.
        let (shown, crlf) = match next.as_os_str().as_bytes().strip_suffix(b"\r") {
            Some(bare) => (
                format!("{}\\r", Path::new(OsStr::from_bytes(bare)).display()),
                ", which ends in \\r: Windows line endings",
            ),
            None => (next.display().to_string(), ""),
        };
        check_executable(&next).map_err(|why| match chain.last() {
            None => format!("its interpreter {shown} (from its #! line{crlf}): {why}"),
            Some(script) => format!(
                "the interpreter {shown} (from the #! line of its interpreter {}{crlf}): {why}",
                script.display()
            ),
        })?;
        chain.push(next.clone());
        current = next;
    }
}

/// The interpreter the `#!` line of the file at `path` names, read as the
/// kernel reads it; `None` for a file that is not a script, or that panzer
/// cannot read (the kernel may still run it).
fn shebang(path: &Path) -> Result<Option<PathBuf>, String> {
    let Some(head) = head_of(path) else { return Ok(None) };
    interpreter_in(&head).map(|name| name.map(|n| PathBuf::from(OsStr::from_bytes(n))))
}

/// The first bytes of the regular file at `path`, as many as `execve`
/// reads for its `#!` line; `None` for anything else, or a file panzer
/// cannot read. Never blocking: a FIFO would wait for a writer (`execve`
/// refuses it anyway).
fn head_of(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let opened =
        std::fs::File::options().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path);
    let file = opened.ok().filter(|f| f.metadata().is_ok_and(|m| m.is_file()))?;
    let mut head = Vec::with_capacity(SHEBANG_BUFFER);
    file.take(SHEBANG_BUFFER as u64).read_to_end(&mut head).ok()?;
    Some(head)
}

/// The interpreter named by the first bytes of a file, as Linux's
/// `binfmt_script` finds it: after `#!` and blanks, up to a blank or the
/// line's end; what follows is its one optional argument.
fn interpreter_in(head: &[u8]) -> Result<Option<&[u8]>, String> {
    let Some(rest) = head.strip_prefix(b"#!") else { return Ok(None) };
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let line = match rest.iter().position(|&b| b == b'\n') {
        Some(end) => &rest[..end],
        None => rest,
    };
    let start = line.iter().position(|b| !blank(b)).unwrap_or(line.len());
    let name = &line[start..];
    let end = name.iter().position(|b| blank(b) || *b == 0);
    if end.is_none() && line.len() == rest.len() && head.len() == SHEBANG_BUFFER {
        return Err(format!("its #! line is longer than the {} bytes the kernel reads", SHEBANG_BUFFER - 1));
    }
    let name = &name[..end.unwrap_or(name.len())];
    if name.is_empty() {
        return Err("its #! line names no interpreter".into());
    }
    Ok(Some(name))
}

/// [`resolve_command`]'s search; the error is why the command cannot run.
fn find(command: &OsStr) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    find_in(command, &path)
}

/// [`find`] with `path` as `PATH`.
pub fn find_in(command: &OsStr, path: &OsStr) -> Result<PathBuf, String> {
    let as_path = Path::new(command);
    if command.as_bytes().contains(&b'/') {
        return check_executable(as_path).map(|()| as_path.to_path_buf());
    }
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
    fn a_fifo_in_place_of_a_script_never_blocks_the_env_lookup() {
        let dir = std::env::temp_dir().join(format!("panzer-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("app");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let program = Program { path: fifo.clone(), interpreters: vec!["/usr/bin/env".into()] };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(env_program(&program)).unwrap());
        let found = finished.recv_timeout(std::time::Duration::from_secs(10));
        // Unblock a reader left waiting (before the fix), then clean up.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, Ok(None), "reading a FIFO's head must not wait for a writer");
    }

    #[test]
    fn env_carries_the_socket_activation_block_and_identity() {
        let addresses = ["127.0.0.1:8080".into(), "/run/app.sock".into()];
        let env = env(&["HOME=/root".into()], 3, 1, 2, "web:unknown", Some("@n"), &addresses);
        let env: Vec<_> = env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(
            env,
            [
                "HOME=/root",
                "LISTEN_FDS=2",
                "LISTEN_FDNAMES=web:unknown",
                "EINHORN_FD_COUNT=2",
                "EINHORN_FD_0=3",
                "EINHORN_FD_1=4",
                "SERVER_STARTER_PORT=127.0.0.1:8080=3;/run/app.sock=4",
                "SERVER_STARTER_GENERATION=3",
                "NOTIFY_SOCKET=@n",
                "PANZER_GENERATION=3",
                "PANZER_WORKER=1"
            ]
        );
    }

    #[test]
    fn ipv6_addresses_keep_their_brackets_for_server_starter() {
        let addresses = ["[::1]:8080".into()];
        let env = env(&[], 1, 0, 1, "unknown", None, &addresses);
        assert!(env.contains(&"SERVER_STARTER_PORT=[::1]:8080=3".into()), "{env:?}");
    }

    #[test]
    fn without_sockets_no_launcher_variables_are_set() {
        let env = env(&[], 1, 0, 0, "", None, &[]);
        let env: Vec<_> = env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(env, ["PANZER_GENERATION=1", "PANZER_WORKER=0"]);
    }

    #[test]
    fn launcher_variables_of_panzers_own_parent_are_not_inherited() {
        for key in ["EINHORN_FD_COUNT", "EINHORN_FD_0", "SERVER_STARTER_PORT", "LISTEN_FDS"] {
            assert!(!inherited(OsStr::new(key)), "{key}");
        }
        assert!(inherited(OsStr::new("EINHORN_MASTER_PID")));
        assert!(inherited(OsStr::new("HOME")));
    }

    #[test]
    fn the_interpreter_is_read_from_the_hash_bang_line_as_the_kernel_reads_it() {
        let name =
            |head: &[u8]| interpreter_in(head).map(|n| n.map(|n| String::from_utf8_lossy(n).into_owned()));
        assert_eq!(name(b"\x7fELF\x02\x01"), Ok(None));
        assert_eq!(name(b"#!/bin/sh\necho"), Ok(Some("/bin/sh".into())));
        assert_eq!(name(b"#! \t/usr/bin/env python3 -u\n"), Ok(Some("/usr/bin/env".into())));
        assert_eq!(name(b"#!/bin/sh"), Ok(Some("/bin/sh".into())));
        assert_eq!(name(b"#!/bin/sh\r\n"), Ok(Some("/bin/sh\r".into())));
        assert_eq!(name(b"#!\n/bin/sh"), Err("its #! line names no interpreter".into()));
        let mut long = b"#!/".to_vec();
        long.resize(SHEBANG_BUFFER, b'x');
        assert!(name(&long).unwrap_err().contains("longer than the 255 bytes"));
        long[100] = b' ';
        assert_eq!(name(&long).unwrap().unwrap().len(), 100 - 2);
    }

    #[test]
    fn a_script_resolves_with_its_interpreters_and_a_missing_one_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("panzer-unit-shebang-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let inner = write("inner", "#!/bin/sh\n");
        let outer = write("outer", &format!("#!{} -x\n", inner.display()));
        let program = resolve_program(outer.as_os_str(), None).unwrap();
        assert_eq!(program.interpreters, [inner.clone(), PathBuf::from("/bin/sh")]);
        let broken = write("broken", "#!/no/such/sh\r\n");
        let e = resolve_command(broken.as_os_str()).unwrap_err();
        assert_eq!(
            e.report(),
            format!(
                "cannot run {}: its interpreter /no/such/sh\\r (from its #! line, which ends in \\r: \
                 Windows line endings): no such file or directory",
                broken.display()
            )
        );
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE);
        let looping = dir.join("looping");
        write("looping", &format!("#!{}\n", looping.display()));
        let e = resolve_command(looping.as_os_str()).unwrap_err();
        assert!(e.report().ends_with("its #! interpreters are nested more than 4 deep"), "{}", e.report());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vars_replace_what_the_environment_had_under_their_name() {
        let env = with_vars(vec!["A=1".into(), "AB=2".into()], &[("A".into(), "3".into())]);
        assert_eq!(env, [OsString::from("AB=2"), OsString::from("A=3")]);
    }

    #[test]
    fn commands_resolve_like_execvp() {
        assert!(resolve_command(OsStr::new("sh")).unwrap().is_absolute());
        assert_eq!(find(OsStr::new("no-such-command-xyz")).unwrap_err(), "command not found in PATH");
        assert_eq!(find(OsStr::new("./no/such")).unwrap_err(), "no such file or directory");
        assert_eq!(find(OsStr::new("/")).unwrap_err(), "is a directory");
        let e = resolve_command(OsStr::new("/")).unwrap_err();
        assert_eq!(e.report(), "cannot run /: is a directory");
    }
}
