//! The monitor's `NOTIFY_SOCKET`: a datagram socket on a path that every
//! worker of the generation sends sd_notify messages to. The sender is told
//! apart by the kernel-checked credentials (`SO_PASSCRED`), never by what
//! the message says.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

use crate::notify::{self, Notify};

/// Largest datagram read; sd_notify messages are a few lines.
const MAX_DATAGRAM: usize = 4096;

pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> std::io::Result<NotifySocket> {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let _ = std::fs::remove_file(path);
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        socket::setsockopt(&fd, sockopt::PassCred, &true)?;
        Ok(NotifySocket { fd, path: path.to_path_buf() })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every datagram waiting now, with the sender's pid.
    pub fn receive(&self) -> Vec<(i32, Result<Vec<Notify>, std::str::Utf8Error>)> {
        let mut received = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let mut space = nix::cmsg_space!(libc::ucred);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            let mut pid = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmCredentials(creds) = cmsg {
                        pid = Some(creds.pid());
                    }
                }
            }
            let len = msg.bytes;
            if let Some(pid) = pid {
                received.push((pid, notify::parse(&buf[..len])));
            }
        }
        received
    }

    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
