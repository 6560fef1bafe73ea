//! The listening sockets: bound once by main, kept open for its whole life,
//! passed to every generation.

mod spec;

pub use spec::{join_pieces, BindAddr, BindSpec};

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::Error;
use crate::worker::{LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};

/// A bound, listening socket (`CLOEXEC`: it reaches a child only on purpose).
#[derive(Debug)]
pub struct Listener {
    pub spec: BindSpec,
    /// The address actually bound, with the real port for `:0`.
    pub local: String,
    socket: Socket,
    /// A unix socket file this process created and removes on drop.
    created: Option<(PathBuf, u64, u64)>,
    /// Passed in by systemd (socket activation): never shut, since systemd
    /// keeps it and queues connections for the next start.
    activated: bool,
}

impl Listener {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The socket itself, for main's own listeners (the admin endpoint).
    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The unix socket file this process created, `(path, dev, inode)`.
    pub(crate) fn created(&self) -> Option<&(PathBuf, u64, u64)> {
        self.created.as_ref()
    }

    /// Whether systemd passed it in (socket activation).
    pub(crate) fn activated(&self) -> bool {
        self.activated
    }

    /// Stops listening, for every process that holds the socket: a new
    /// connection is refused from now on (`ECONNREFUSED`), and `accept`
    /// fails. A TCP socket resets the connections still in its backlog; a
    /// unix socket keeps them for whoever still accepts.
    pub(crate) fn stop_listening(&self) -> io::Result<()> {
        self.socket.shutdown(std::net::Shutdown::Read)
    }

    /// A listener the previous image of main handed over (an upgrade).
    pub(crate) fn resume(
        fd: std::os::fd::OwnedFd,
        spec: BindSpec,
        local: String,
        created: Option<(PathBuf, u64, u64)>,
        activated: bool,
    ) -> Listener {
        Listener { spec, local, socket: Socket::from(fd), created, activated }
    }

    /// The address as Server::Starter writes it: `IP:PORT` with the real
    /// port (`[IPv6]:PORT`), or a unix socket's path.
    pub fn address(&self) -> OsString {
        match &self.spec.addr {
            BindAddr::Inet(_) => self.local.clone().into(),
            BindAddr::Unix(path) => path.clone().into_os_string(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we created.
        if let Some((path, dev, ino)) = &self.created {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == *dev && meta.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// Binds every spec in order. On error, everything bound so far is closed
/// (and unix socket files removed) before returning. With `nodelay`, TCP
/// sockets get `TCP_NODELAY`, which Linux copies to every connection
/// accepted from them: a server that writes a response in two pieces is
/// then not held back by Nagle's algorithm until the client's delayed ACK.
/// When an address is in use, `when_in_use` may free it (it says whether
/// it ended anything): the bind is tried again, a few times at most. With
/// `reuse_port`, TCP sockets get `SO_REUSEPORT`, so more can be bound
/// beside them ([`bind_slot`]).
pub fn bind_all(
    specs: &[BindSpec],
    backlog: i32,
    nodelay: bool,
    reuse_port: bool,
    mut when_in_use: impl FnMut(&BindSpec) -> bool,
) -> Result<Vec<Listener>, Error> {
    const TRIES: usize = 3;
    // Every owner and group is looked up before anything is bound.
    for spec in specs {
        owner_ids(spec)?;
    }
    let in_use = |e: &Error| matches!(e, Error::Bind { source, .. } if source.raw_os_error() == Some(libc::EADDRINUSE));
    specs
        .iter()
        .map(|spec| {
            let mut tries = 1;
            loop {
                match bind_with(spec, backlog, nodelay, reuse_port) {
                    Err(e) if tries < TRIES && in_use(&e) && when_in_use(spec) => tries += 1,
                    done => return done,
                }
            }
        })
        .collect()
}

/// Binds one spec (see [`bind_all`]).
pub(crate) fn bind(spec: &BindSpec, backlog: i32, nodelay: bool) -> Result<Listener, Error> {
    bind_with(spec, backlog, nodelay, false)
}

/// One more `SO_REUSEPORT` socket beside `first` (bound by [`bind_all`]
/// with `reuse_port`), on the very address it has (its real port for
/// `:0`), in the same reuseport group: `--balance round-robin`'s slots.
pub(crate) fn bind_slot(first: &Listener, backlog: i32, nodelay: bool) -> Result<Listener, Error> {
    let fail = |source: io::Error| Error::Bind { addr: first.spec.addr.to_string(), source };
    let at = first.socket.local_addr().map_err(fail)?.as_socket().ok_or_else(|| {
        Error::Usage(format!("--bind {}: only a TCP address has a socket per slot", first.spec))
    })?;
    let mut spec = first.spec.clone();
    spec.addr = BindAddr::Inet(at);
    let mut listener = bind_with(&spec, backlog, nodelay, true)?;
    listener.spec = first.spec.clone();
    Ok(listener)
}

fn bind_with(spec: &BindSpec, backlog: i32, nodelay: bool, reuse_port: bool) -> Result<Listener, Error> {
    let fail = |source: io::Error| Error::Bind { addr: spec.addr.to_string(), source };
    match &spec.addr {
        BindAddr::Inet(addr) => {
            // socket2 creates sockets with SOCK_CLOEXEC.
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(fail)?;
            socket.set_reuse_address(true).map_err(fail)?;
            if reuse_port {
                socket.set_reuse_port(true).map_err(fail)?;
            }
            if nodelay {
                socket.set_nodelay(true).map_err(fail)?;
            }
            if addr.is_ipv6() {
                // [::]:80 then means IPv6 only, so 0.0.0.0:80 can be bound beside it.
                socket.set_only_v6(true).map_err(fail)?;
            }
            socket.bind(&(*addr).into()).map_err(fail)?;
            socket.listen(backlog).map_err(fail)?;
            let local = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.to_string())
                .unwrap_or_else(|| addr.to_string());
            Ok(Listener { spec: spec.clone(), local, socket, created: None, activated: false })
        }
        BindAddr::Unix(path) => {
            let ids = owner_ids(spec)?;
            remove_stale_unix_socket(path).map_err(fail)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
            socket.bind(&SockAddr::unix(path).map_err(fail)?).map_err(fail)?;
            // The file bind made, opened without following a symlink: what
            // is changed below is that file, and it is removed on drop.
            let (file, dev, ino) = socket_file(path).map_err(fail)?;
            let listener = Listener {
                spec: spec.clone(),
                local: spec.addr.to_string(),
                socket,
                created: Some((path.clone(), dev, ino)),
                activated: false,
            };
            // Until `listen`, a connect is refused: the file gets its owner
            // and mode before anyone can reach the socket through it.
            settle(&file, spec.unix.mode, ids).map_err(fail)?;
            listener.socket.listen(backlog).map_err(fail)?;
            Ok(listener)
        }
    }
}

/// The uid and gid a unix socket's `owner=` and `group=` name (a name or a
/// number), looked up now; an error names the `--bind` value and the one
/// not found.
pub(crate) fn owner_ids(spec: &BindSpec) -> Result<(Option<Uid>, Option<Gid>), Error> {
    let missing = |what: &str| Error::Usage(format!("--bind {spec}: no such {what}"));
    let owner = match spec.unix.owner.as_deref() {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(uid) => Uid::from_raw(uid),
            Err(_) => User::from_name(name).ok().flatten().ok_or_else(|| missing("user"))?.uid,
        }),
    };
    let group = match spec.unix.group.as_deref() {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(gid) => Gid::from_raw(gid),
            Err(_) => Group::from_name(name).ok().flatten().ok_or_else(|| missing("group"))?.gid,
        }),
    };
    Ok((owner, group))
}

/// The socket file `bind` just made at `path`, opened without following a
/// symlink (`O_PATH|O_NOFOLLOW`), with its `(dev, inode)`: it must be a
/// socket this process owns, so a file swapped in meanwhile is refused,
/// never changed or removed.
fn socket_file(path: &Path) -> io::Result<(OwnedFd, u64, u64)> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    let file = open(path, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
    let stat = fstat(&file)?;
    let is_socket = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK;
    if !is_socket || stat.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other("the socket file was replaced as it was made"));
    }
    Ok((file, stat.st_dev, stat.st_ino))
}

/// Gives the socket file open at `file` ([`socket_file`]) its owner, group
/// and mode, through that descriptor, never the path again.
fn settle(file: &OwnedFd, mode: Option<u32>, (owner, group): (Option<Uid>, Option<Gid>)) -> io::Result<()> {
    if owner.is_some() || group.is_some() {
        nix::unistd::fchownat(file, "", owner, group, nix::fcntl::AtFlags::AT_EMPTY_PATH)?;
    }
    if let Some(mode) = mode {
        // An O_PATH descriptor takes no fchmod: chmod its /proc link,
        // which names this very file.
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        std::fs::set_permissions(link, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A socket file nobody listens on is left over from a crash: remove it. A
/// live one, or a file that is not a socket, is an error.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    if !socket_in_place(path)? {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Whether a socket file is at `path` (`false`: nothing is); anything
/// else there is in the way (`EEXIST`).
fn socket_in_place(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(true),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a unix socket can be bound at `path`, as far as can be told
/// without binding it: the path fits a socket address, its directory
/// exists and lets panzer create the socket, and nothing but a socket (a
/// stale one is removed at bind) is in the way. `panzer --check` asks; a
/// start learns the same from the bind. The error says what is wrong.
pub(crate) fn check_unix_path(path: &Path) -> Result<(), String> {
    use crate::error::describe;
    if SockAddr::unix(path).is_err() {
        return Err("the path is too long for a unix socket (at most 107 bytes)".into());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let in_dir = |e: io::Error| format!("its directory {}: {}", dir.display(), describe(&e));
    let meta = std::fs::metadata(dir).map_err(in_dir)?;
    if !meta.is_dir() {
        return Err(in_dir(io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let flags = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    nix::unistd::access(dir, flags).map_err(|e| in_dir(e.into()))?;
    match socket_in_place(path) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            Err("a file that is not a socket is in the way".into())
        }
        Err(e) => Err(describe(&e)),
        Ok(_) => Ok(()),
    }
}

/// The most sockets a process takes from `LISTEN_FDS`: main, or a
/// library-mode app run on its own.
const MAX_PASSED: usize = 1024;
/// The first fd of the sockets `LISTEN_FDS` counts (`SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: RawFd = 3;

/// The `LISTEN_FDNAMES` value for these specs.
pub fn fd_names<'a>(specs: impl IntoIterator<Item = &'a BindSpec>) -> String {
    specs.into_iter().map(BindSpec::fd_name).collect::<Vec<_>>().join(":")
}

/// What `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` pass this process:
/// socket activation (systemd, `systemfd`, another panzer-like launcher).
pub(crate) struct Passed {
    pub count: usize,
    /// `LISTEN_FDNAMES` as it is: `:`-separated, maybe fewer than `count`.
    pub names: String,
}

impl Passed {
    /// Reads the environment: `None` when it passes no socket to this
    /// process (no `LISTEN_FDS`, 0, or `LISTEN_PID` another's), an error
    /// when it passes more than this process takes.
    pub(crate) fn from_env() -> Result<Option<Passed>, Error> {
        let for_us = std::env::var(LISTEN_PID).is_ok_and(|pid| pid.trim() == std::process::id().to_string());
        let count: usize = match std::env::var(LISTEN_FDS).ok().and_then(|n| n.trim().parse().ok()) {
            Some(n) if for_us && n > MAX_PASSED => {
                return Err(Error::Usage(format!(
                    "{LISTEN_FDS}={n}: at most {MAX_PASSED} sockets can be passed in"
                )))
            }
            Some(n) if for_us && n > 0 => n,
            _ => return Ok(None),
        };
        let names = std::env::var(LISTEN_FDNAMES).unwrap_or_default();
        Ok(Some(Passed { count, names }))
    }

    /// Their fds, in order: 3….
    pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> {
        (0..self.count).map(|i| FIRST_PASSED_FD + i as RawFd)
    }
}

/// Socket activation: the sockets main's own parent passed at fds 3… with
/// `LISTEN_FDS`/`LISTEN_PID` (systemd, or another panzer-like launcher), or
/// `None` when there are none for this process. They are adopted as they
/// are: not re-bound, and their files (unix sockets) are never removed.
pub fn adopt_from_env() -> Result<Option<Vec<Listener>>, Error> {
    let Some(passed) = Passed::from_env()? else { return Ok(None) };
    let mut names = passed.names.split(':');
    let mut listeners = Vec::with_capacity(passed.count);
    for fd in passed.fds() {
        let fail = |e: io::Error| Error::os(format!("cannot adopt socket-activated fd {fd}"), e);
        let socket = Socket::from(crate::sys::adopt_inherited_fd(fd).map_err(fail)?);
        if !socket.is_listener().map_err(fail)? {
            return Err(fail(io::Error::other("not a listening socket")));
        }
        let local = socket.local_addr().map_err(fail)?;
        let addr = match (local.as_socket(), local.as_pathname()) {
            (Some(inet), _) => BindAddr::Inet(inet),
            (None, Some(path)) => BindAddr::Unix(path.to_path_buf()),
            (None, None) => return Err(fail(io::Error::other("not an IP or unix path socket"))),
        };
        let name = names.next().filter(|n| !n.is_empty() && *n != "unknown").map(String::from);
        listeners.push(Listener {
            spec: BindSpec::new(name, addr.clone()),
            local: addr.to_string(),
            socket,
            created: None,
            activated: true,
        });
    }
    Ok(Some(listeners))
}
