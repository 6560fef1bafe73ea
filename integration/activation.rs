//! Socket activation of main itself: sockets passed in with `LISTEN_FDS`
//! are adopted, not bound again.

use std::net::TcpListener;

use crate::harness::*;

/// Execs panzer with a listening socket at fd 3, as systemd would.
const LAUNCHER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(16)
# Never dup2 an fd onto itself: that leaves it close-on-exec.
t = os.dup(s.fileno())
s.close()
os.dup2(t, 3)
os.close(t)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn sockets_passed_by_systemd_are_adopted() {
    let panzer = Panzer::new(example("server"))
        .no_bind()
        .count(2)
        .notify()
        .via("python3", &["-c", LAUNCHER, env!("CARGO_BIN_EXE_panzer")])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    distinct_pids(port, 2);
    let worker = get(port, "/").unwrap().pid();
    let env = environ(worker);
    assert_eq!(env["LISTEN_FDNAMES"], "web");
    assert_eq!(env["LISTEN_PID"], worker.to_string());
    // The port is the one the launcher bound: nobody else can take it.
    assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
}

#[test]
fn an_absurd_listen_fds_is_a_usage_error_not_an_abort() {
    let mut panzer = Panzer::new("true")
        .no_bind()
        .via(
            "sh",
            &["-c", "LISTEN_PID=$$ LISTEN_FDS=4294967295 exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_panzer")],
        )
        .start();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(2), "{}", panzer.log());
    assert!(panzer.log().contains("LISTEN_FDS=4294967295: at most 1024 sockets"), "{}", panzer.log());
}

#[test]
fn a_socket_from_systemd_stays_listening_while_panzer_drains_so_systemd_queues_for_the_next_start() {
    let mut panzer = Panzer::new(example("slow_drain"))
        .no_bind()
        .count(1)
        .notify()
        .via("python3", &["-c", LAUNCHER, env!("CARGO_BIN_EXE_panzer")])
        .env("DRAIN_MS", "2000")
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    panzer.signal(nix::sys::signal::Signal::SIGTERM);
    panzer.wait_for_line("draining for 2000 ms");
    // Queued by the kernel, not refused: the socket still listens.
    let queued = connect(port).expect("a connection while draining");
    panzer.wait_for_line(&format!("127.0.0.1:{port} stays listening: systemd passed it in"));
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    drop(queued);
}
