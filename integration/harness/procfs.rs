//! The `/proc` table, read the way the tests and the bench need it: every
//! process with its parent, group and command line; the processes below a
//! pid; whether a pid is alive; a process's environment, open fds and CPU
//! time.

use std::collections::{HashMap, HashSet};

use nix::unistd::Pid;

pub struct ProcInfo {
    pub ppid: Pid,
    pub pgid: Pid,
    pub cmdline: String,
}

/// Every process on the machine: pid → parent, group, command line.
pub fn process_table() -> HashMap<Pid, ProcInfo> {
    let mut table = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.len() < 3 || fields[0] == "Z" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        table.insert(
            Pid::from_raw(pid),
            ProcInfo {
                ppid: Pid::from_raw(fields[1].parse().unwrap_or(0)),
                pgid: Pid::from_raw(fields[2].parse().unwrap_or(0)),
                cmdline,
            },
        );
    }
    table
}

/// Every live (non-zombie) process below `root`.
pub fn descendants_of(root: Pid) -> Vec<Pid> {
    let table = process_table();
    let mut found: HashSet<Pid> = HashSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, info) in &table {
            if info.ppid == parent && found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found.into_iter().collect()
}

/// `pids` without the generations' keepers (`panzer __keeper`, one per
/// generation, in its process group) and without any that ended since
/// `pids` was read: a keeper outlives its monitor by a moment, and one that
/// exits between the two reads of the process table is gone, not a stranger.
pub fn without_keepers(pids: Vec<Pid>) -> Vec<Pid> {
    let table = process_table();
    pids.into_iter().filter(|p| table.get(p).is_some_and(|p| !p.cmdline.contains("__keeper"))).collect()
}

/// The live children of `parent`.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    process_table().into_iter().filter(|(_, p)| p.ppid == parent).map(|(pid, _)| pid).collect()
}

/// Whether `pid` is alive and not a zombie.
pub fn alive(pid: Pid) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// The environment of `pid` as a map.
pub fn environ(pid: Pid) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The fd numbers `pid` has open, sorted.
pub fn open_fds(pid: Pid) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

/// What fd `fd` of `pid` points at (`socket:[123]`, `/dev/null`, …).
pub fn fd_target(pid: Pid, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// CPU ticks (utime + stime) that `pid` has used.
pub fn cpu_ticks(pid: Pid) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T`…).
pub fn state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Sends `SIGSTOP` to `pid` and waits until it is stopped: until then it
/// may still return from a call it was in (take a connection, say).
pub fn stop_process(pid: Pid) {
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    super::eventually(super::PATIENCE, &format!("pid {pid} to be stopped"), || {
        (state(pid) == Some('T')).then_some(())
    });
}
