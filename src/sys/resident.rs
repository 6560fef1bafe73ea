//! Dropping code pages a process no longer runs from its resident set.

use std::io::{self, BufRead};
use std::time::{Duration, Instant};

/// Unmaps from this process every resident page of its read-only,
/// file-backed mappings that holds no private copy (the executable's and
/// the C library's code and constants). The pages stay in the page cache;
/// the next instruction that needs one maps it again with a minor fault.
/// Mappings with private (anonymous) pages, such as relocated read-only
/// data, are left alone: dropping those would lose their contents.
pub fn release_code_pages() -> io::Result<usize> {
    let smaps = io::BufReader::new(std::fs::File::open("/proc/self/smaps")?);
    let mut candidate: Option<(usize, usize)> = None;
    let mut released = 0;
    for line in smaps.lines() {
        let line = line?;
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: `start-end perms offset dev inode path`.
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            else {
                candidate = None;
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("0");
            let read_only = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-');
            candidate = (read_only && inode != "0").then_some((start, end));
        } else if first == "Anonymous:" {
            let anonymous = fields.next().and_then(|k| k.parse::<u64>().ok()).unwrap_or(1);
            if let (Some((start, end)), 0) = (candidate.take(), anonymous) {
                // SAFETY: the range is one whole mapping of this process,
                // read-only and backed by a file with no private page, so
                // MADV_DONTNEED only drops page-table entries that the next
                // access restores from the same file: no content changes.
                let r =
                    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
                if r == 0 {
                    released += end - start;
                }
            }
        }
    }
    Ok(released)
}

/// How long a loop must have slept before its code pages go: long enough
/// that a start-up, reload or drain in progress is over (they wake the loop
/// far more often), short enough that an idle process is small at once.
/// Dropping them costs a read of `/proc/self/smaps` (about 0.2 ms) and, at
/// the next event, a minor fault per 64 KiB of code that runs again.
pub const QUIET: Duration = Duration::from_millis(250);

/// When an event loop next drops its code pages: [`QUIET`] after it last
/// woke up. So an idle main or monitor keeps mapped only what its loop runs,
/// not the start-up, spawn and reload code it ran once, and a busy one never
/// pays for it.
#[derive(Debug, Default)]
pub struct Shedder {
    due: Option<Instant>,
}

impl Shedder {
    /// Called once per turn of the loop, after it woke up at `now`: drops
    /// the pages when the loop woke for the quiet deadline itself (nothing
    /// else happened for [`QUIET`]), else arms that deadline again.
    pub fn on_wake(&mut self, now: Instant) {
        match self.due {
            Some(due) if now >= due => {
                self.due = None;
                if let Err(e) = release_code_pages() {
                    log::debug!("cannot release code pages: {e}");
                }
            }
            _ => self.due = Some(now + QUIET),
        }
    }

    /// When the loop must wake up for [`Shedder::on_wake`] to drop pages.
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn released_code_pages_leave_the_resident_set_and_still_run() {
        // Touch formatting, hashing and sorting code, then drop it.
        let mut words: Vec<String> = (0..500).map(|i| format!("{:x}", i * 7919)).collect();
        words.sort();
        let before = resident_file_kib();
        let released = release_code_pages().unwrap();
        assert!(released > 0, "no read-only file mapping released");
        let after = resident_file_kib();
        assert!(after < before, "resident file pages {before} KiB before, {after} KiB after");
        // The same code runs again, mapped back in from the page cache.
        let mut again: Vec<String> = (0..500).map(|i| format!("{:x}", i * 7919)).collect();
        again.sort();
        assert_eq!(words, again);
    }
}
