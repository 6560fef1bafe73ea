//! What the bench reads of `/proc` beyond the harness's process table:
//! the resident memory of one process.

use nix::unistd::Pid;

use crate::stats::mib;

/// Resident memory of one process, in KiB.
pub(crate) struct Rss {
    pub(crate) total: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub(crate) pss: Option<u64>,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} MiB (anon {:.2}, file {:.2}, PSS {})",
            mib(self.total),
            mib(self.anon),
            mib(self.file),
            self.pss.map_or_else(|| "?".to_owned(), |p| format!("{:.2}", mib(p)))
        )
    }
}

/// VmRSS, RssAnon and RssFile from /proc/PID/status; Pss from
/// /proc/PID/smaps_rollup where the kernel has it.
pub(crate) fn rss(pid: Pid) -> Result<Rss, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("pid {pid}: {e}"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} for pid {pid}"))
    };
    Ok(Rss {
        total: field(&status, "VmRSS:")?,
        anon: field(&status, "RssAnon:")?,
        file: field(&status, "RssFile:")?,
        pss: field(&rollup, "Pss:").ok(),
    })
}
