//! The launcher of `reload-tail-bare`: the least a launcher can do, with
//! no panzer. The bench binds the socket, starts 4 servers on it and waits
//! for their `READY=1`; a reload starts 4 new ones, then drains and reaps
//! the old ones.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::bench::{Bench, KillOnDrop, WORKERS};
use crate::harness::TestDir;
use crate::measured::{Reload, PATIENCE};

/// The launcher of `reload-tail-bare`: a socket, 4 servers on it, and
/// their notify socket.
pub(crate) struct Bare {
    server: PathBuf,
    listener: std::net::TcpListener,
    pub(crate) port: u16,
    notify: UnixDatagram,
    notify_path: PathBuf,
    serving: Vec<KillOnDrop>,
    _dir: TestDir,
}

impl Bare {
    pub(crate) fn new(bench: &Bench) -> Result<Bare, String> {
        let dir = TestDir::new("tail-bare");
        let notify_path = dir.join("notify");
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("bind {notify_path:?}: {e}"))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let mut bare = Bare {
            server: bench.server.clone(),
            listener,
            port,
            notify,
            notify_path,
            serving: Vec::new(),
            _dir: dir,
        };
        bare.serving = bare.start(1)?;
        Ok(bare)
    }

    /// Starts generation `k`'s 4 servers and waits for their `READY=1`.
    fn start(&self, k: u32) -> Result<Vec<KillOnDrop>, String> {
        let mut started = Vec::new();
        for worker in 0..WORKERS {
            let socket = self.listener.try_clone().map_err(|e| format!("dup: {e}"))?;
            let child = Command::new("sh")
                .args(["-c", "exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec \"$0\""])
                .arg(&self.server)
                .env("LISTEN_FDS", "1")
                .env_remove("LISTEN_FDNAMES")
                .env("PANZER_GENERATION", k.to_string())
                .env("PANZER_WORKER", worker.to_string())
                .env("NOTIFY_SOCKET", &self.notify_path)
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(socket)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start sh: {e}"))?;
            started.push(KillOnDrop(child));
        }
        let deadline = Instant::now() + PATIENCE;
        let mut ready = 0;
        let mut buf = [0u8; 512];
        while ready < WORKERS {
            let left =
                deadline.checked_duration_since(Instant::now()).ok_or("bare servers never all ready")?;
            self.notify
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            match self.notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => ready += 1,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(e) => return Err(format!("notify socket: {e}")),
            }
        }
        Ok(started)
    }

    /// New servers ready, then the old ones drained (`SIGTERM`) and reaped;
    /// exits are checked every 2 ms, as `reload_quietly` reads the log.
    pub(crate) fn reload(&mut self, k: u32) -> Result<Reload, String> {
        let signal = Instant::now();
        let fresh = self.start(k)?;
        let ready = Instant::now();
        let mut old = std::mem::replace(&mut self.serving, fresh);
        for child in &old {
            let _ = signal::kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM);
        }
        let deadline = ready + PATIENCE;
        while !old.is_empty() {
            thread::sleep(Duration::from_millis(2)); // a poll period, not synchronisation
            old.retain_mut(|c| !matches!(c.0.try_wait(), Ok(Some(_))));
            if Instant::now() > deadline {
                return Err(format!("generation {} of bare servers still running", k - 1));
            }
        }
        let stopped = Instant::now();
        let in_ms = (ready - signal).as_millis() as u64;
        Ok(Reload { signal, ready, in_ms, stopped, ready_stamp: None, stopped_stamp: None })
    }
}
