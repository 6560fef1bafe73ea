//! The TCP sockets of this process's network namespace, from the kernel's
//! `sock_diag` netlink interface: only those in the states asked for, in
//! binary, filtered by the kernel. `/proc/net/tcp` lists every socket as
//! text, the tens of thousands a busy host keeps in `TIME_WAIT` too, and
//! generating and parsing that takes main a good part of a second.
//!
//! The messages are built and read as bytes, field by field at the
//! offsets of `<linux/inet_diag.h>` and `<linux/netlink.h>`: no `unsafe`
//! needed. The socket is connected to the kernel, so nothing else can
//! write to it, and every length in an answer is checked before it is
//! used: a malformed one ends the dump with an error, never a loop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

/// `<linux/sock_diag.h>`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `<net/tcp_states.h>`.
pub const TCP_ESTABLISHED: u8 = 1;
#[cfg(test)]
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_LISTEN: u8 = 10;

const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQUEST_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// One receive: the kernel fills a dump's datagrams to at most 32 KiB.
const RECV_BUFFER: usize = 1 << 16;

/// One TCP socket of the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// [`TCP_ESTABLISHED`], [`TCP_LISTEN`], …
    pub state: u8,
    pub local_port: u16,
    pub remote_port: u16,
    /// Of the socket's file (`socket:[INODE]` in `/proc/PID/fd`).
    pub inode: u64,
}

/// Calls `each` with every IPv4 and IPv6 TCP socket of this process's
/// network namespace whose state is in `states` (a bit `1 << state` for
/// each). `Ok(false)` when there are more than `max` of them (`each` has
/// seen `max`); an error when `sock_diag` is not available (an old or
/// restricted kernel: `EPROTONOSUPPORT`, `EACCES`) or answers something
/// this does not understand.
pub fn tcp_sockets(states: u32, max: usize, mut each: impl FnMut(TcpSocket)) -> io::Result<bool> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // Connected to the kernel (port 0): the kernel refuses to deliver
    // anything from another sender to it.
    socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut left = max;
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        socket::send(fd.as_raw_fd(), &request(seq, family, states), MsgFlags::empty())?;
        if !receive_dump(&fd, seq, &mut buffer, &mut left, &mut each)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for a dump of `family`'s TCP
/// sockets in `states`; every other field (the socket id to match) zero.
fn request(seq: u32, family: u8, states: u32) -> [u8; NLMSG_HDRLEN + REQUEST_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + REQUEST_LEN];
    m[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQUEST_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in this socket's.
    let r = &mut m[NLMSG_HDRLEN..];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    m
}

/// Reads the answers to request `seq` up to its `NLMSG_DONE`; `Ok(false)`
/// once `left` sockets have been seen and there is another.
fn receive_dump(
    fd: &OwnedFd,
    seq: u32,
    buffer: &mut [u8],
    left: &mut usize,
    each: &mut impl FnMut(TcpSocket),
) -> io::Result<bool> {
    loop {
        // MSG_TRUNC: the length of the datagram, though it did not fit.
        let len = socket::recv(fd.as_raw_fd(), buffer, MsgFlags::MSG_TRUNC)?;
        if len == 0 || len > buffer.len() {
            return Err(malformed("an empty or truncated datagram"));
        }
        match parse(&buffer[..len], seq, left, each)? {
            Parsed::More => {}
            Parsed::Done => return Ok(true),
            Parsed::TooMany => return Ok(false),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    More,
    Done,
    TooMany,
}

/// The messages of one datagram.
fn parse(
    mut data: &[u8],
    seq: u32,
    left: &mut usize,
    each: &mut impl FnMut(TcpSocket),
) -> io::Result<Parsed> {
    while !data.is_empty() {
        if data.len() < NLMSG_HDRLEN {
            return Err(malformed("a short message header"));
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        let its_seq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(malformed("a message length out of bounds"));
        }
        let body = &data[NLMSG_HDRLEN..len];
        // The next message starts at a multiple of 4 (NLMSG_ALIGN).
        data = &data[len.next_multiple_of(4).min(data.len())..];
        if its_seq != seq {
            continue;
        }
        match kind {
            k if k == libc::NLMSG_DONE as u16 => return Ok(Parsed::Done),
            k if k == libc::NLMSG_ERROR as u16 => {
                let code = body.get(0..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
                return Err(match code {
                    Some(code) if code < 0 => io::Error::from_raw_os_error(-code),
                    _ => malformed("an error message without an error"),
                });
            }
            SOCK_DIAG_BY_FAMILY => {
                if body.len() < MSG_LEN {
                    return Err(malformed("a short socket message"));
                }
                if *left == 0 {
                    return Ok(Parsed::TooMany);
                }
                *left -= 1;
                each(TcpSocket {
                    state: body[1],
                    local_port: u16::from_be_bytes([body[4], body[5]]),
                    remote_port: u16::from_be_bytes([body[6], body[7]]),
                    inode: u64::from(u32::from_ne_bytes(body[68..72].try_into().unwrap())),
                });
            }
            // NLMSG_NOOP and the like.
            _ => {}
        }
    }
    Ok(Parsed::More)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(body);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    fn socket_body(state: u8, local: u16, remote: u16, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; MSG_LEN];
        b[0] = libc::AF_INET as u8;
        b[1] = state;
        b[4..6].copy_from_slice(&local.to_be_bytes());
        b[6..8].copy_from_slice(&remote.to_be_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    fn run(data: &[u8], max: usize) -> (io::Result<Parsed>, Vec<TcpSocket>) {
        let mut seen = Vec::new();
        let mut left = max;
        let parsed = parse(data, 7, &mut left, &mut |s| seen.push(s));
        (parsed, seen)
    }

    #[test]
    fn sockets_are_read_up_to_done_and_other_requests_answers_skipped() {
        let mut data = message(SOCK_DIAG_BY_FAMILY, 7, &socket_body(TCP_ESTABLISHED, 8080, 40000, 55));
        data.extend(message(SOCK_DIAG_BY_FAMILY, 6, &socket_body(TCP_ESTABLISHED, 1, 2, 3)));
        data.extend(message(libc::NLMSG_DONE as u16, 7, &[0; 4]));
        let (parsed, seen) = run(&data, 10);
        assert_eq!(parsed.unwrap(), Parsed::Done);
        let want = TcpSocket { state: TCP_ESTABLISHED, local_port: 8080, remote_port: 40000, inode: 55 };
        assert_eq!(seen, vec![want]);
        let (parsed, seen) = run(&data, 0);
        assert_eq!((parsed.unwrap(), seen.len()), (Parsed::TooMany, 0));
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_a_loop() {
        let good = message(SOCK_DIAG_BY_FAMILY, 7, &socket_body(TCP_LISTEN, 80, 0, 1));
        for len in [0u32, 4, 15, good.len() as u32 + 1, u32::MAX] {
            let mut bad = good.clone();
            bad[0..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(run(&bad, 10).0.unwrap_err().kind(), io::ErrorKind::InvalidData, "length {len}");
        }
        assert!(run(&good[..10], 10).0.is_err(), "a short header");
        let short = message(SOCK_DIAG_BY_FAMILY, 7, &[0; 20]);
        assert!(run(&short, 10).0.is_err(), "a short socket message");
        let error = message(libc::NLMSG_ERROR as u16, 7, &(-libc::EACCES).to_ne_bytes());
        assert_eq!(run(&error, 10).0.unwrap_err().raw_os_error(), Some(libc::EACCES));
        assert_eq!(run(&good, 10).0.unwrap(), Parsed::More);
    }

    #[test]
    fn the_kernel_lists_a_listener_and_both_ends_of_a_connection_to_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = client.local_addr().unwrap().port();
        let (_accepted, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        let states = 1 << TCP_ESTABLISHED | 1 << TCP_LISTEN;
        let complete = tcp_sockets(states, usize::MAX, |s| seen.push(s)).expect("sock_diag");
        assert!(complete);
        let has = |state, local, remote| {
            seen.iter()
                .any(|s| s.state == state && s.local_port == local && s.remote_port == remote && s.inode != 0)
        };
        assert!(has(TCP_LISTEN, port, 0));
        assert!(has(TCP_ESTABLISHED, port, client_port));
        assert!(has(TCP_ESTABLISHED, client_port, port));
        assert!(!tcp_sockets(states, 1, |_| {}).unwrap(), "more than one socket");
    }
}
