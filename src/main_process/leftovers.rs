//! What a dead panzer left holding a port. A generation's keeper ends what
//! stayed in the generation's process group when main and the monitor die
//! together. A worker's descendant that inherited the listening socket and
//! left the group (`setsid`, a daemonizing sidecar), or any such descendant
//! in library mode, which has no keeper, outlives them: nobody is left to
//! signal it, and the next panzer could not bind.
//!
//! Every process a panzer starts carries `PANZER_INSTANCE=<main's pid>:<its
//! start time>` in its environment, and passes it on to what it starts.
//! When a bind fails because the address is in use, main looks for the
//! processes that hold a listening socket the address clashes with, run as
//! the user the workers run as, and carry the marker of a main that is gone
//! (no such process, a zombie, or a later process given the same pid). It
//! says so, ends them (`SIGTERM`, `SIGKILL` after 1 s, through pidfds, so a
//! recycled pid is never hit), and binds again. A holder without the marker
//! (a program that clears its environment), of another user, or of a live
//! panzer is left alone, and the bind fails as before.
//!
//! This reads all of `/proc` once per failed bind, at startup: never in the
//! event loop.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::sockets::{BindAddr, BindSpec};
use crate::sys;
use crate::units::format_duration;
use crate::worker::INSTANCE;

/// How long the holders get to exit on `SIGTERM`.
const TERM_WAIT: Duration = Duration::from_secs(1);
/// How long they get to be gone after `SIGKILL`.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Most holders ended for one address.
const MAX_HOLDERS: usize = 256;

/// The marker of this main: `<pid>:<start time>`.
pub(crate) fn marker() -> String {
    let me = nix::unistd::getpid();
    let start = sys::process_start(me).map_or(0, |(start, _)| start);
    format!("{me}:{start}")
}

/// `env` with this main's marker in place of any inherited one.
pub(crate) fn with_marker(mut env: Vec<OsString>) -> Vec<OsString> {
    let key = format!("{INSTANCE}=");
    env.retain(|entry| !entry.as_bytes().starts_with(key.as_bytes()));
    env.push(format!("{key}{}", marker()).into());
    env
}

/// A process found holding the address.
struct Holder {
    pid: Pid,
    start: u64,
    name: String,
    /// The dead main whose marker it carries.
    main: i32,
}

/// Ends what dead panzers left holding a listening socket that `spec`
/// clashes with, for processes of `uid`; whether any was ended.
pub(crate) fn end(spec: &BindSpec, uid: u32) -> bool {
    let inodes = listening_inodes(&spec.addr);
    if inodes.is_empty() {
        return false;
    }
    let holders = holders(&inodes, uid);
    if holders.is_empty() {
        return false;
    }
    let mut by_main: BTreeMap<i32, Vec<&Holder>> = BTreeMap::new();
    for holder in &holders {
        by_main.entry(holder.main).or_default().push(holder);
    }
    for (main, held) in by_main {
        let list: Vec<String> = held.iter().map(|h| format!("pid {} ({})", h.pid, h.name)).collect();
        log::warn!(
            "{} is held by {}, left by panzer {main}, which is gone: ending {}",
            spec.addr,
            list.join(", "),
            if held.len() == 1 { "it" } else { "them" }
        );
    }
    // Opened, then checked to be the process found: not one given its pid since.
    let opened: Vec<(sys::Pidfd, &Holder)> = holders
        .iter()
        .filter_map(|h| {
            let fd = sys::Pidfd::open(h.pid).ok()?;
            (sys::process_start(h.pid) == Some((h.start, false))).then_some((fd, h))
        })
        .collect();
    for (fd, _) in &opened {
        fd.signal(Signal::SIGTERM);
    }
    let left = wait_gone(&opened, Instant::now() + TERM_WAIT);
    if !left.is_empty() {
        let pids: Vec<String> = left.iter().map(|h| h.pid.to_string()).collect();
        log::warn!(
            "pids {} still running {} after SIGTERM: SIGKILL",
            pids.join(", "),
            format_duration(TERM_WAIT)
        );
        for (fd, h) in &opened {
            if left.iter().any(|l| l.pid == h.pid) {
                fd.signal(Signal::SIGKILL);
            }
        }
        wait_gone(&opened, Instant::now() + KILL_WAIT);
    }
    !opened.is_empty()
}

/// Waits until every process in `opened` has exited, or `deadline`; returns
/// those still running.
fn wait_gone<'a>(opened: &[(sys::Pidfd, &'a Holder)], deadline: Instant) -> Vec<&'a Holder> {
    let mut left: Vec<(BorrowedFd<'_>, &Holder)> = opened.iter().map(|(fd, h)| (fd.as_fd(), *h)).collect();
    while !left.is_empty() && Instant::now() < deadline {
        let fds: Vec<(BorrowedFd<'_>, bool)> = left.iter().map(|(fd, _)| (*fd, false)).collect();
        // A pidfd is readable once its process has exited.
        let Ok(ready) = sys::poll(&fds, Some(deadline)) else { break };
        left = left.into_iter().zip(ready).filter(|(_, gone)| !gone).map(|(l, _)| l).collect();
    }
    left.into_iter().map(|(_, h)| h).collect()
}

/// Every process of `uid` (but this one) that carries a dead main's marker
/// and holds one of `inodes`.
fn holders(inodes: &[u64], uid: u32) -> Vec<Holder> {
    let me = nix::unistd::getpid();
    let Ok(proc) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in proc.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()).map(Pid::from_raw) else {
            continue;
        };
        if pid == me || real_uid(pid) != Some(uid) {
            continue;
        }
        let Some(main) = dead_main_of(pid) else { continue };
        if !holds_any(pid, inodes) {
            continue;
        }
        let Some((start, false)) = sys::process_start(pid) else { continue };
        let name =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        found.push(Holder { pid, start, name, main });
        if found.len() == MAX_HOLDERS {
            break;
        }
    }
    found
}

/// The real uid of `pid`.
fn real_uid(pid: Pid) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The pid of the main whose marker `pid` carries, if that main is gone.
fn dead_main_of(pid: Pid) -> Option<i32> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let key = format!("{INSTANCE}=");
    let value = environ.split(|&b| b == 0).find_map(|entry| entry.strip_prefix(key.as_bytes()))?;
    let (main, start) = parse_marker(std::str::from_utf8(value).ok()?)?;
    let alive = matches!(sys::process_start(main), Some((now, false)) if now == start);
    (!alive).then_some(main.as_raw())
}

/// `<pid>:<start time>`.
fn parse_marker(value: &str) -> Option<(Pid, u64)> {
    let (pid, start) = value.split_once(':')?;
    let pid: i32 = pid.parse().ok().filter(|&p| p > 0)?;
    Some((Pid::from_raw(pid), start.parse().ok()?))
}

/// Whether `pid` has one of `inodes` open (`/proc/PID/fd/*` → `socket:[N]`).
fn holds_any(pid: Pid, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| socket_inode(target.as_os_str().as_bytes()))
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// `N` of an fd's `socket:[N]` link.
fn socket_inode(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// The inodes of the listening sockets that a bind of `addr` clashes with.
fn listening_inodes(addr: &BindAddr) -> Vec<u64> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    match addr {
        BindAddr::Inet(addr) if addr.is_ipv4() => tcp_listeners(&read("/proc/net/tcp"), *addr),
        BindAddr::Inet(addr) => tcp_listeners(&read("/proc/net/tcp6"), *addr),
        BindAddr::Unix(path) => unix_listeners(&read("/proc/net/unix"), path),
    }
}

/// Listening sockets of a `/proc/net/tcp` (or `tcp6`) table on `addr`'s
/// port and address, or on either's wildcard address.
fn tcp_listeners(table: &str, addr: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != LISTEN {
                return None;
            }
            let local = tcp_address(fields[1])?;
            let clash = local.port() == addr.port()
                && (local.ip() == addr.ip() || local.ip().is_unspecified() || addr.ip().is_unspecified());
            clash.then(|| fields[9].parse().ok()).flatten()
        })
        .collect()
}

/// An address as `/proc/net/tcp` prints it: the IP as the 32-bit words it
/// is stored in, each in hex in the host's byte order; the port in hex.
fn tcp_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip: IpAddr = match ip.len() {
        8 => Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Listening sockets of a `/proc/net/unix` table bound to `path`.
fn unix_listeners(table: &str, path: &Path) -> Vec<u64> {
    // __SO_ACCEPTCON: the socket listens.
    const LISTENING: u32 = 0x10000;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let flags = u32::from_str_radix(fields.nth(3)?, 16).ok()?;
            let inode = fields.nth(2)?.parse().ok()?;
            let bound: Vec<&str> = fields.collect();
            (flags & LISTENING != 0 && Path::new(&bound.join(" ")) == path).then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp_listeners_clash_on_the_same_port_and_address_or_a_wildcard() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0
   3: 0200007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0
";
        let at = |s: &str| tcp_listeners(table, s.parse().unwrap());
        assert_eq!(at("127.0.0.1:8080"), [111]);
        assert_eq!(at("0.0.0.0:8080"), [111, 444]);
        assert_eq!(at("127.0.0.1:8081"), [222]);
        assert_eq!(at("127.0.0.1:8082"), Vec::<u64>::new());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp6_addresses_are_read_word_by_word() {
        let loopback = tcp_address("00000000000000000000000001000000:1F90").unwrap();
        assert_eq!(loopback, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn unix_listeners_are_found_by_path() {
        let table = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 555 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 556 /run/app.sock
0000000000000000: 00000002 00000000 00010000 0001 01 557 /run/my app.sock
0000000000000000: 00000002 00000000 00000000 0002 01 558
";
        assert_eq!(unix_listeners(table, Path::new("/run/app.sock")), [555]);
        assert_eq!(unix_listeners(table, Path::new("/run/my app.sock")), [557]);
    }

    #[test]
    fn markers_and_socket_links_are_parsed_strictly() {
        assert_eq!(parse_marker("4242:98765"), Some((Pid::from_raw(4242), 98765)));
        assert_eq!(parse_marker("0:1"), None);
        assert_eq!(parse_marker("-1:1"), None);
        assert_eq!(parse_marker("4242"), None);
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
    }

    #[test]
    fn this_main_is_alive_by_its_own_marker() {
        let (pid, start) = parse_marker(&marker()).unwrap();
        assert_eq!(pid, nix::unistd::getpid());
        assert_eq!(sys::process_start(pid), Some((start, false)));
    }
}
