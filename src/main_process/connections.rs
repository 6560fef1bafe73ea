//! What a worker still holds: the client connections it has open, for
//! `status` (and so `panzerctl status`, `top` and `metrics`), which shows
//! how far a drain has come. Read from `/proc` when a status is asked for,
//! never in main's loop otherwise.
//!
//! A worker's sockets are the `socket:[INODE]` links in `/proc/PID/fd` of
//! it and of the processes below it (a server's own workers, a wrapper's
//! child: [`MAX_TREE`] at most, found through the kernel's children lists);
//! each is looked up in the sockets of the worker's own network namespace.
//! For main's own namespace (the usual case) the TCP ones come from the
//! kernel's `sock_diag` ([`sock_diag`]), which lists only the listening
//! and established sockets: `/proc/net/tcp` also lists every socket in
//! `TIME_WAIT`, tens of thousands on a busy host, and reading that text
//! would hold main's loop for a good part of a second on every status.
//! For another namespace, or a kernel without `sock_diag`, they come from
//! the tables `/proc/PID/net/{tcp,tcp6}`; unix sockets always from
//! `/proc/PID/net/unix`. A client connection is an established
//! TCP connection whose local port is a listening port there (the end a
//! server accepted), or a connected unix stream socket that carries a
//! listening socket's path (an accepted one: a client's own end has none).
//! So a listening socket, a connection the worker opened itself (to a
//! database, to journald for its output) and a socketpair are not counted.
//!
//! Bounded: at most [`MAX_FDS`] descriptors of one worker and
//! [`MAX_FDS_IN_ALL`] for one status, and [`MAX_TABLE_LINES`] lines of one
//! table (or sockets from `sock_diag`), each namespace's tables read once.
//! What is past a bound, or cannot be read (another user's process), counts
//! as unknown (`null`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader};

use nix::unistd::Pid;

use crate::sys::{self, sock_diag};

/// Most processes of one worker's tree looked at.
pub(crate) const MAX_TREE: usize = 64;
/// Most descriptors of one worker (with its tree) looked at: a worker with
/// more shows `null`.
pub(crate) const MAX_FDS: usize = 1 << 16;
/// Most descriptors looked at for one status, all workers together.
pub(crate) const MAX_FDS_IN_ALL: usize = 1 << 17;
/// Most lines read from one `/proc/net` table: a bigger one shows `null`.
pub(crate) const MAX_TABLE_LINES: usize = 1 << 17;

/// `/proc/net/tcp` states.
const TCP_ESTABLISHED: &[u8] = b"01";
const TCP_LISTEN: &[u8] = b"0A";
/// `/proc/net/unix`: `SOCK_STREAM`, `SOCK_SEQPACKET`, and `SS_CONNECTED`.
const UNIX_STREAM: &[u8] = b"0001";
const UNIX_SEQPACKET: &[u8] = b"0005";
const UNIX_CONNECTED: &[u8] = b"03";

/// The sockets one worker holds, and the network namespace they are looked up in.
struct Held {
    /// `net:[…]` from `/proc/PID/ns/net`, or the pid's own key when that is hidden.
    net: String,
    /// Each once, though a socket a child inherited is held twice.
    inodes: HashSet<u64>,
}

/// The client connections each of `pids` holds, in order; `None` where
/// that cannot be read. `listening`: the inodes of main's listening
/// sockets, which every worker holds and which are never a connection: a
/// namespace whose workers hold no other socket needs no table read.
pub(crate) fn count(pids: &[i32], listening: &HashSet<u64>) -> Vec<Option<u32>> {
    let mut budget = MAX_FDS_IN_ALL;
    let held: Vec<Option<Held>> = pids.iter().map(|&pid| sockets_of(pid, listening, &mut budget)).collect();
    let own = std::fs::read_link("/proc/self/ns/net").ok().map(|l| l.to_string_lossy().into_owned());
    let mut clients: HashMap<&str, Option<HashSet<u64>>> = HashMap::new();
    for h in held.iter().flatten() {
        if clients.contains_key(h.net.as_str()) {
            continue;
        }
        let in_net = || pids.iter().zip(&held).filter(|(_, o)| o.as_ref().is_some_and(|o| o.net == h.net));
        let wanted: HashSet<u64> =
            in_net().flat_map(|(_, o)| o.iter().flat_map(|o| o.inodes.iter().copied())).collect();
        // The tables of main's own namespace are main's to read; a worker
        // may exit meanwhile, and then the next one of that namespace is tried.
        let mut readers: Vec<String> = in_net().map(|(pid, _)| pid.to_string()).collect();
        if own.as_deref() == Some(h.net.as_str()) {
            readers.insert(0, "self".into());
        }
        let here = (own.as_deref() == Some(h.net.as_str())).then(|| client_connections_here(&wanted));
        let found = here
            .flatten()
            .into_iter()
            .chain(readers.iter().map(|r| client_connections(r, &wanted)))
            .find_map(|tables| match tables {
                Tables::Gone => None,
                Tables::TooLong => Some(None),
                Tables::Read(found) => Some(Some(found)),
            });
        clients.insert(&h.net, found.flatten());
    }
    held.iter()
        .map(|h| {
            let h = h.as_ref()?;
            let clients = clients.get(h.net.as_str())?.as_ref()?;
            Some(h.inodes.iter().filter(|inode| clients.contains(inode)).count() as u32)
        })
        .collect()
}

/// The socket inodes `pid` and the processes below it hold, but for
/// `listening`; `None` when fds of theirs cannot be read, or there are
/// more than [`MAX_FDS`] (or than what is left of `budget`).
fn sockets_of(pid: i32, listening: &HashSet<u64>, budget: &mut usize) -> Option<Held> {
    let net = match std::fs::read_link(format!("/proc/{pid}/ns/net")) {
        Ok(link) => link.to_string_lossy().into_owned(),
        Err(_) => format!("pid {pid}"),
    };
    let mut inodes = HashSet::new();
    let mut limit = MAX_FDS.min(*budget);
    for process in tree_of(pid) {
        let fds = match std::fs::read_dir(format!("/proc/{process}/fd")) {
            Ok(fds) => fds,
            // A child that has exited meanwhile holds nothing.
            Err(e) if process != pid && e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        for entry in fds {
            if limit == 0 {
                return None;
            }
            limit -= 1;
            *budget -= 1;
            // An fd closed meanwhile is not a socket any more.
            let Ok(entry) = entry else { continue };
            if let Some(inode) = std::fs::read_link(entry.path())
                .ok()
                .and_then(|l| socket_inode(&l.to_string_lossy()))
                .filter(|i| !listening.contains(i))
            {
                inodes.insert(inode);
            }
        }
    }
    Some(Held { net, inodes })
}

/// `pid` and the processes below it, [`MAX_TREE`] at most.
fn tree_of(pid: i32) -> Vec<i32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() && tree.len() < MAX_TREE {
        let children = sys::children_of(Pid::from_raw(tree[next]));
        next += 1;
        let room = MAX_TREE - tree.len();
        tree.extend(children.into_iter().map(Pid::as_raw).take(room));
    }
    tree
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// What the tables of a network namespace say about the sockets wanted.
enum Tables {
    /// These are client connections.
    Read(HashSet<u64>),
    /// A table is past [`MAX_TABLE_LINES`], or broke off.
    TooLong,
    /// The process they were read through is gone (or hidden): try another.
    Gone,
}

/// Which of `wanted` are client connections, from the tables of the
/// network namespace of `/proc/<reader>` (a pid, or `self`).
fn client_connections(reader: &str, wanted: &HashSet<u64>) -> Tables {
    if wanted.is_empty() {
        return Tables::Read(HashSet::new());
    }
    let open = |name: &str| {
        File::open(format!("/proc/{reader}/net/{name}")).map(|f| BufReader::with_capacity(1 << 16, f))
    };
    let mut tcp = TcpTable::default();
    for (name, required) in [("tcp", true), ("tcp6", false)] {
        match open(name) {
            // Without IPv6 there is no tcp6.
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return Tables::Gone,
            Ok(table) => {
                if tcp.read(table, wanted, MAX_TABLE_LINES).is_none() {
                    return Tables::TooLong;
                }
            }
        }
    }
    let mut clients = tcp.clients();
    let Ok(unix) = open("unix") else { return Tables::Gone };
    match unix_clients(unix, wanted, MAX_TABLE_LINES) {
        Some(unix) => clients.extend(unix),
        None => return Tables::TooLong,
    }
    Tables::Read(clients)
}

/// Which of `wanted` are client connections, in main's own network
/// namespace: the TCP ones from the kernel's `sock_diag` (only listening
/// and established sockets, however many in `TIME_WAIT` there are), the
/// unix ones from `/proc/self/net/unix`. `None` when `sock_diag` is not
/// available: then the `/proc` tables are read.
fn client_connections_here(wanted: &HashSet<u64>) -> Option<Tables> {
    if wanted.is_empty() {
        return Some(Tables::Read(HashSet::new()));
    }
    let mut tcp = TcpTable::default();
    let states = 1 << sock_diag::TCP_ESTABLISHED | 1 << sock_diag::TCP_LISTEN;
    let complete = sock_diag::tcp_sockets(states, MAX_TABLE_LINES, |s| {
        if s.state == sock_diag::TCP_LISTEN {
            tcp.listening.insert(s.local_port);
        } else if wanted.contains(&s.inode) {
            tcp.established.push((s.inode, s.local_port));
        }
    });
    match complete {
        Ok(true) => {}
        Ok(false) => return Some(Tables::TooLong),
        Err(e) => {
            log::debug!("cannot read TCP sockets through sock_diag ({e}): reading /proc/self/net/tcp");
            return None;
        }
    }
    let mut clients = tcp.clients();
    let Ok(unix) = File::open("/proc/self/net/unix") else { return Some(Tables::Gone) };
    match unix_clients(BufReader::with_capacity(1 << 16, unix), wanted, MAX_TABLE_LINES) {
        Some(unix) => clients.extend(unix),
        None => return Some(Tables::TooLong),
    }
    Some(Tables::Read(clients))
}

/// Calls `row` with the whitespace-separated fields of each line of
/// `table` after its header; `None` when it cannot be read or has more
/// than `max_lines` lines. Bytes, not text: a table can be long, and this
/// runs in main.
fn rows(mut table: impl BufRead, max_lines: usize, mut row: impl FnMut(&[&[u8]])) -> Option<()> {
    let mut line = Vec::with_capacity(256);
    for n in 0.. {
        line.clear();
        if table.read_until(b'\n', &mut line).ok()? == 0 {
            return Some(());
        }
        if n > max_lines {
            return None;
        }
        if n == 0 {
            continue;
        }
        let mut fields: [&[u8]; 10] = [&[]; 10];
        let mut count = 0;
        for (slot, field) in
            fields.iter_mut().zip(line.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty()))
        {
            *slot = field;
            count += 1;
        }
        row(&fields[..count]);
    }
    Some(())
}

fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// What the TCP tables (`tcp`, then `tcp6`) say about the sockets wanted.
#[derive(Debug, Default)]
struct TcpTable {
    /// Every port something listens on.
    listening: HashSet<u16>,
    /// Established sockets among those wanted, with their local port.
    established: Vec<(u64, u16)>,
}

impl TcpTable {
    /// Reads one table; `None` when it cannot be read or is longer than `max_lines`.
    fn read(&mut self, table: impl BufRead, wanted: &HashSet<u64>, max_lines: usize) -> Option<()> {
        rows(table, max_lines, |fields| {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
            let [_, local, _, state, _, _, _, _, _, inode] = fields[..] else { return };
            if state != TCP_LISTEN && state != TCP_ESTABLISHED {
                return;
            }
            let Some(port) = local
                .rsplit(|b| *b == b':')
                .next()
                .and_then(|p| u16::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
            else {
                return;
            };
            if state == TCP_LISTEN {
                self.listening.insert(port);
            } else if let Some(inode) = number(inode).filter(|i| wanted.contains(i)) {
                self.established.push((inode, port));
            }
        })
    }

    /// The established sockets whose local port is a listening port: the
    /// server's end of a connection.
    fn clients(&self) -> HashSet<u64> {
        self.established.iter().filter(|(_, port)| self.listening.contains(port)).map(|(i, _)| *i).collect()
    }
}

/// The connected unix stream sockets among `wanted` that carry a path:
/// accepted on a listening socket. `None` when the table cannot be read or
/// is longer than `max_lines`.
fn unix_clients(table: impl BufRead, wanted: &HashSet<u64>, max_lines: usize) -> Option<HashSet<u64>> {
    let mut clients = HashSet::new();
    rows(table, max_lines, |fields| {
        // Num RefCount Protocol Flags Type St Inode [Path]
        let [_, _, _, _, kind, state, inode, _path, ..] = fields[..] else { return };
        if matches!(kind, UNIX_STREAM | UNIX_SEQPACKET) && state == UNIX_CONNECTED {
            clients.extend(number(inode).filter(|i| wanted.contains(i)));
        }
    })?;
    Some(clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 100 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000  1000        0 101 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D3A2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 102 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C000 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 103 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:D3A4 08 00000000:00000000 00:00000000 00000000  1000        0 104 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:1F90 0100007F:D3A6 01 00000000:00000000 00:00000000 00000000  1000        0 999 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 200 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0050 0000000000000000FFFF00000100007F:E000 01 00000000:00000000 00:00000000 00000000  1000        0 201 1 0000000000000000 20 4 30 10 -1
";
    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 300 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 301 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 302
0000000000000000: 00000003 00000000 00000000 0001 03 303 /run/other.sock
0000000000000000: 00000003 00000000 00000000 0005 03 304 @abstract
0000000000000000: 00000002 00000000 00000000 0002 03 305 /dev/log
0000000000000000: 00000003 00000000 00000000 0001 03 306 /run/with a space.sock
";

    fn set(inodes: &[u64]) -> HashSet<u64> {
        inodes.iter().copied().collect()
    }

    #[test]
    fn only_established_connections_to_a_listening_port_are_tcp_clients() {
        let wanted = set(&[100, 101, 102, 103, 104, 200, 201]);
        let mut tcp = TcpTable::default();
        tcp.read(TCP.as_bytes(), &wanted, MAX_TABLE_LINES).unwrap();
        tcp.read(TCP6.as_bytes(), &wanted, MAX_TABLE_LINES).unwrap();
        // 100, 200: listening; 102, 103: the worker's own outgoing
        // connections (to itself, to a database); 104: closing; 999: not
        // the worker's.
        assert_eq!(tcp.clients(), set(&[101, 201]));
    }

    #[test]
    fn only_connected_unix_stream_sockets_with_a_listener_s_path_are_unix_clients() {
        let wanted = set(&[300, 301, 302, 303, 304, 305, 306]);
        // 300: listening; 302: a socketpair, or a client's own end (the
        // worker's output connected to journald, say); 305: datagram.
        assert_eq!(unix_clients(UNIX.as_bytes(), &wanted, MAX_TABLE_LINES), Some(set(&[301, 303, 304, 306])));
        assert_eq!(unix_clients(UNIX.as_bytes(), &set(&[302]), MAX_TABLE_LINES), Some(set(&[])));
    }

    #[test]
    fn a_table_past_its_bound_is_unknown_not_a_wrong_count() {
        let rows = TCP.lines().count() - 1;
        assert!(TcpTable::default().read(TCP.as_bytes(), &set(&[101]), rows).is_some());
        assert!(TcpTable::default().read(TCP.as_bytes(), &set(&[101]), rows - 1).is_none());
        let rows = UNIX.lines().count() - 1;
        assert!(unix_clients(UNIX.as_bytes(), &set(&[301]), rows).is_some());
        assert_eq!(unix_clients(UNIX.as_bytes(), &set(&[301]), rows - 1), None);
    }

    #[test]
    fn socket_links_give_their_inode_and_other_links_nothing() {
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn an_accepted_connection_of_this_process_is_a_client_and_its_own_connecting_end_is_not() {
        use std::os::fd::AsFd;
        let inode = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let path = std::env::temp_dir().join(format!("panzer-connections-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let unix_client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (unix_accepted, _) = unix_listener.accept().unwrap();
        let _ = std::fs::remove_file(&path);

        let pid = std::process::id() as i32;
        let none = HashSet::new();
        let held =
            sockets_of(pid, &none, &mut MAX_FDS_IN_ALL.clone()).expect("this process's fds are readable");
        let wanted: HashSet<u64> = held.inodes.iter().copied().collect();
        let Tables::Read(clients) = client_connections(&pid.to_string(), &wanted) else {
            panic!("its tables are unreadable")
        };
        for (what, fd, client) in [
            ("accepted TCP", accepted.as_fd(), true),
            ("accepted unix", unix_accepted.as_fd(), true),
            ("connecting TCP", client.as_fd(), false),
            ("connecting unix", unix_client.as_fd(), false),
            ("listening TCP", listener.as_fd(), false),
            ("listening unix", unix_listener.as_fd(), false),
        ] {
            assert!(wanted.contains(&inode(fd)), "{what}: not among the fds");
            assert_eq!(clients.contains(&inode(fd)), client, "{what}");
        }
        assert_eq!(count(&[-1], &none), vec![None], "no such process");
        // main's own listening sockets are left out before any table is read.
        let listening: HashSet<u64> = [listener.as_fd(), unix_listener.as_fd()].map(inode).into();
        let held = sockets_of(pid, &listening, &mut MAX_FDS_IN_ALL.clone()).unwrap();
        assert!(listening.iter().all(|i| !held.inodes.contains(i)));
        assert!(held.inodes.contains(&inode(accepted.as_fd())));
        // A worker gone by the time its namespace's tables are read: the
        // next reader of that namespace is tried.
        assert!(matches!(client_connections("-1", &wanted), Tables::Gone));
    }

    #[test]
    fn through_sock_diag_an_accepted_connection_is_a_client_and_its_connecting_end_and_time_wait_are_not() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let inode = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // A socket in TIME_WAIT on the listening port: the server's end of
        // a connection it closed first.
        let mut closed = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(listener.accept().unwrap().0);
        assert_eq!(closed.read(&mut [0; 1]).unwrap(), 0);
        drop(closed);
        let time_wait = 1 << sock_diag::TCP_TIME_WAIT;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut found = false;
            sock_diag::tcp_sockets(time_wait, usize::MAX, |s| {
                found |= s.local_port == port && s.remote_port == closed_port;
            })
            .expect("sock_diag");
            if found {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no socket in TIME_WAIT");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        let held =
            sockets_of(std::process::id() as i32, &HashSet::new(), &mut MAX_FDS_IN_ALL.clone()).unwrap();
        let Some(Tables::Read(clients)) = client_connections_here(&held.inodes) else {
            panic!("sock_diag unavailable, or this process's tables unreadable")
        };
        assert!(clients.contains(&inode(accepted.as_fd())), "accepted");
        assert!(!clients.contains(&inode(client.as_fd())), "connecting end");
        assert!(!clients.contains(&inode(listener.as_fd())), "listening");
        assert!(!clients.contains(&0), "TIME_WAIT");
        let mut listed = Vec::new();
        let states = 1 << sock_diag::TCP_ESTABLISHED | 1 << sock_diag::TCP_LISTEN;
        sock_diag::tcp_sockets(states, usize::MAX, |s| listed.push(s)).unwrap();
        assert!(listed.iter().all(|s| s.state != sock_diag::TCP_TIME_WAIT), "a TIME_WAIT socket was dumped");
        assert!(!listed.iter().any(|s| s.local_port == port && s.remote_port == closed_port));
    }

    #[test]
    fn a_connection_a_child_of_the_worker_holds_is_the_worker_s() {
        use std::os::fd::{AsFd, OwnedFd};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let inode = nix::sys::stat::fstat(accepted.as_fd()).unwrap().st_ino;
        // Handed to a child (as its stdin), and closed here.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(OwnedFd::from(accepted))
            .spawn()
            .expect("cannot run sleep");
        let pid = std::process::id() as i32;
        assert!(tree_of(pid).contains(&(child.id() as i32)));
        let held = sockets_of(pid, &HashSet::new(), &mut MAX_FDS_IN_ALL.clone()).unwrap();
        let found = held.inodes.contains(&inode);
        let clients = client_connections("self", &held.inodes);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "the child's socket is not among the worker's");
        assert!(matches!(clients, Tables::Read(c) if c.contains(&inode)));
    }
}
