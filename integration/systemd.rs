//! Under systemd (`NOTIFY_SOCKET` set for main): readiness, reloads and
//! stops are announced; the watchdog is fed; workers never see the socket.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::Signal;

use crate::harness::*;

/// A stand-in for systemd's notify socket.
pub(crate) struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeSystemd {
    pub(crate) fn new() -> FakeSystemd {
        // Short path: unix socket paths hold at most 107 bytes.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pz-sd-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        FakeSystemd { socket, path }
    }

    pub(crate) fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next datagram that contains `needle`; earlier ones are returned too.
    pub(crate) fn until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {needle:?} from panzer ({e}); got {seen:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.contains(needle);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn readiness_reloads_and_stop_are_announced_to_systemd() {
    let systemd = FakeSystemd::new();
    let mut panzer =
        Panzer::new(example("server")).count(2).notify().env("NOTIFY_SOCKET", systemd.path()).start();
    let port = panzer.port(0);
    let first = systemd.until("READY=1");
    let ready = first.last().unwrap();
    assert!(ready.contains(&format!("MAINPID={}", panzer.pid)), "{ready}");
    assert!(ready.contains("STATUS=generation 1 serving with 2 worker(s)"), "{ready}");
    // Workers talk to their monitor, never to systemd.
    let worker = get(port, "/").unwrap().pid();
    assert_ne!(environ(worker)["NOTIFY_SOCKET"], systemd.path());

    panzer.signal(Signal::SIGHUP);
    let reload = systemd.until("READY=1");
    assert!(reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload:?}");
    assert!(reload.last().unwrap().contains("STATUS=generation 2 serving"), "{reload:?}");

    panzer.signal(Signal::SIGTERM);
    systemd.until("STOPPING=1");
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn the_watchdog_is_fed_at_half_its_interval() {
    let systemd = FakeSystemd::new();
    let panzer = Panzer::new(example("server"))
        .count(1)
        .notify()
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "200000")
        .start();
    panzer.wait_ready(1);
    systemd.until("WATCHDOG=1");
    systemd.until("WATCHDOG=1");
}
