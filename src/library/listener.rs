//! The sockets `serve` takes: [`Listener`] (a listening socket of either
//! kind, with its `--bind NAME=` name), the [`FromListener`] conversions to
//! the std types, and [`Connection`], what [`Listener::accept`] hands out.
//! Both ways a worker starts (forked by its monitor, or run on its own on
//! `LISTEN_FDS`) wrap the fds they were given here.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use super::drain;
use crate::sys;

/// A type [`Worker::serve`](super::Worker::serve) can take its listeners as.
pub trait FromListener: Sized + Send + 'static {
    /// Converts one socket, or says why it cannot be this type.
    fn from_listener(listener: Listener) -> Result<Self, String>;
}

impl FromListener for Listener {
    fn from_listener(listener: Listener) -> Result<Self, String> {
        Ok(listener)
    }
}

impl FromListener for TcpListener {
    fn from_listener(listener: Listener) -> Result<Self, String> {
        match listener.socket {
            Socket::Tcp(l) => Ok(l),
            Socket::Unix(_) => Err(wrong_kind(&listener.name, "unix", "TcpListeners")),
        }
    }
}

impl FromListener for UnixListener {
    fn from_listener(listener: Listener) -> Result<Self, String> {
        match listener.socket {
            Socket::Unix(l) => Ok(l),
            Socket::Tcp(_) => Err(wrong_kind(&listener.name, "TCP", "UnixListeners")),
        }
    }
}

/// Why socket `name`, of kind `is`, cannot be what `serve` takes.
fn wrong_kind(name: &str, is: &str, takes: &str) -> String {
    format!(
        "socket `{name}` is a {is} socket, and serve takes {takes}: take panzer::Listener \
         (impl panzer::Worker<panzer::Listener>) to serve both kinds"
    )
}

/// A listening socket of one kind.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// One listening socket, with its name (`--bind web=127.0.0.1:8080` names
/// it `web`; an unnamed one is called `unknown`, as systemd does).
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
}

impl Listener {
    /// Wraps a listening socket; the kind is read from the socket itself.
    pub(super) fn from_fd(fd: OwnedFd, name: &str) -> io::Result<Listener> {
        let family = socket2::SockRef::from(&fd).local_addr()?.family();
        let socket = if family == libc::AF_UNIX as libc::sa_family_t {
            Socket::Unix(UnixListener::from(fd))
        } else {
            Socket::Tcp(TcpListener::from(fd))
        };
        Ok(Listener { name: name.to_string(), socket })
    }

    /// Its name from `--bind NAME=ADDR` (`LISTEN_FDNAMES`), or `unknown`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    pub fn into_socket(self) -> Socket {
        self.socket
    }

    /// The TCP listener, if this is one.
    pub fn tcp(&self) -> Option<&TcpListener> {
        match &self.socket {
            Socket::Tcp(l) => Some(l),
            Socket::Unix(_) => None,
        }
    }

    /// The unix-domain listener, if this is one.
    pub fn unix(&self) -> Option<&UnixListener> {
        match &self.socket {
            Socket::Unix(l) => Some(l),
            Socket::Tcp(_) => None,
        }
    }

    /// Waits for the next connection, or for the drain: `Ok(None)` once this
    /// worker drains (see [`draining`](super::draining)), so a blocking server can write
    /// `while let Some(conn) = listener.accept()? { … }` and return after.
    /// Several workers wait on one socket; a connection a sibling took first
    /// is waited for again, never blocked on. It makes the socket
    /// non-blocking, for every worker (accepted connections stay blocking).
    pub fn accept(&self) -> io::Result<Option<Connection>> {
        drain::watch();
        match &self.socket {
            Socket::Tcp(l) => l.set_nonblocking(true)?,
            Socket::Unix(l) => l.set_nonblocking(true)?,
        }
        loop {
            if sys::fork::drain_requested() {
                return Ok(None);
            }
            let mut fds = vec![(self.as_fd(), false)];
            fds.extend(drain::fd().map(|fd| (fd, false)));
            let ready = sys::poll(&fds, None)?;
            if ready.get(1).copied().unwrap_or(false) {
                return Ok(None);
            }
            if !ready[0] {
                continue;
            }
            let accepted = match &self.socket {
                Socket::Tcp(l) => l.accept().map(|(s, _)| Connection::Tcp(s)),
                Socket::Unix(l) => l.accept().map(|(s, _)| Connection::Unix(s)),
            };
            match accepted {
                Ok(conn) => {
                    conn.set_nonblocking(false)?;
                    return Ok(Some(conn));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Another handle on the same socket (`dup`).
    pub fn try_clone(&self) -> io::Result<Listener> {
        let fd = self.as_fd().try_clone_to_owned()?;
        let socket = match &self.socket {
            Socket::Tcp(_) => Socket::Tcp(TcpListener::from(fd)),
            Socket::Unix(_) => Socket::Unix(UnixListener::from(fd)),
        };
        Ok(Listener { name: self.name.clone(), socket })
    }
}

/// A connection from [`Listener::accept`]: read and write it as a stream.
#[derive(Debug)]
pub enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.set_nonblocking(on),
            Connection::Unix(s) => s.set_nonblocking(on),
        }
    }
}

impl io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.read(buf),
            Connection::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.write(buf),
            Connection::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.flush(),
            Connection::Unix(s) => s.flush(),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// `LISTEN_FDNAMES`, one name per socket (`unknown` for a missing one).
pub(super) fn names(fd_names: &str, count: usize) -> Vec<String> {
    let mut names: Vec<String> = fd_names.split(':').take(count).map(str::to_string).collect();
    names.resize(count, "unknown".to_string());
    names.iter_mut().filter(|n| n.is_empty()).for_each(|n| *n = "unknown".to_string());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_gets_a_name() {
        assert_eq!(names("web:admin", 2), ["web", "admin"]);
        assert_eq!(names("web::x", 3), ["web", "unknown", "x"]);
        assert_eq!(names("", 2), ["unknown", "unknown"]);
    }
}
