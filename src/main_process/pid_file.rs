//! `--pid-file`: main's pid, written atomically once main is up, removed on
//! exit. A file naming a live process stops panzer from starting; a stale
//! one is replaced.

use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::error::Error;

/// A pid file path checked to be free, not yet written.
pub struct PidFile {
    path: PathBuf,
}

/// A written pid file, removed on drop if it still holds our pid.
pub struct WrittenPidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn check(path: &Path) -> Result<PidFile, Error> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let me = std::process::id() as i32;
                if pid > 0 && pid != me && nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok() {
                    return Err(Error::InUse(format!(
                        "pid file {} names process {pid}, which is running (another panzer?)",
                        path.display()
                    )));
                }
            }
        }
        Ok(PidFile { path: path.to_path_buf() })
    }

    pub fn write(self) -> Result<WrittenPidFile, Error> {
        let pid = std::process::id();
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".{pid}.tmp"));
        let fail = |e| Error::os(format!("cannot write pid file {}", self.path.display()), e);
        std::fs::write(&tmp, format!("{pid}\n")).map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })?;
        Ok(WrittenPidFile { path: self.path, pid })
    }
}

impl Drop for WrittenPidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == self.pid.to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
