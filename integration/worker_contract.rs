//! What a worker sees: its fds, its environment, its signal state.

use crate::harness::*;
use nix::unistd::Pid;

/// Worker pids from the monitor's `worker K started: pid N` lines.
fn started_workers(panzer: &Panzer, count: usize) -> Vec<(u32, Pid)> {
    panzer
        .wait_for_lines("started: pid ", count)
        .iter()
        .map(|line| {
            let after = line.split("worker ").nth(1).unwrap();
            let ordinal = after.split(' ').next().unwrap().parse().unwrap();
            let pid = line.rsplit("pid ").next().unwrap().trim().parse().unwrap();
            (ordinal, Pid::from_raw(pid))
        })
        .collect()
}

#[test]
fn a_worker_gets_exactly_its_sockets_and_the_activation_environment() {
    let dir = TestDir::new("contract");
    let unix = format!("unix:{}", dir.join("api.sock").display());
    // `sleep` is a stock C program: what /proc shows of it is exactly what
    // panzer handed it.
    let panzer = Panzer::new("sleep")
        .bind("web=127.0.0.1:0")
        .args(&["--bind", &unix])
        .count(2)
        .ready("50ms")
        .command_args(&["--", "1000"])
        .start();
    panzer.wait_ready(1);
    let workers = started_workers(&panzer, 2);
    let mut ordinals: Vec<u32> = workers.iter().map(|w| w.0).collect();
    ordinals.sort();
    assert_eq!(ordinals, [0, 1]);
    for (ordinal, pid) in workers {
        assert_eq!(open_fds(pid), [0, 1, 2, 3, 4], "fds of worker {ordinal}");
        assert!(fd_target(pid, 3).starts_with("socket:"), "fd 3 is {}", fd_target(pid, 3));
        assert!(fd_target(pid, 4).starts_with("socket:"), "fd 4 is {}", fd_target(pid, 4));
        let env = environ(pid);
        assert_eq!(env["LISTEN_FDS"], "2");
        assert_eq!(env["LISTEN_PID"], pid.to_string());
        assert_eq!(env["LISTEN_FDNAMES"], "web:unknown");
        assert_eq!(env["PANZER_GENERATION"], "1");
        assert_eq!(env["PANZER_WORKER"], ordinal.to_string());
        assert!(env.contains_key("NOTIFY_SOCKET"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("SigBlk:\t0000000000000000"), "signal mask not reset:\n{status}");
        assert!(status.contains("SigIgn:\t0000000000000000"), "ignored signals not reset:\n{status}");
    }
}

#[test]
fn fd_3_is_a_listening_socket_a_stock_server_can_accept_on() {
    let panzer = Panzer::new(example("probe")).count(1).ready("50ms").start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let response = get(port, "/").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.field("generation"), "1");
    assert_eq!(response.field("worker"), "0");
    eventually(PATIENCE, "the probe to close its connection", || {
        (open_fds(response.pid()) == [0, 1, 2, 3]).then_some(())
    });
}

#[test]
fn ipv6_and_unix_sockets_serve_and_a_stop_removes_the_socket_file() {
    let dir = TestDir::new("families");
    let path = dir.join("web.sock");
    let unix = format!("unix:{}", path.display());
    // The server serves the first socket (fd 3): one panzer per family.
    for (bind, connect) in [("[::1]:0", "v6"), (unix.as_str(), "unix")] {
        let mut panzer = Panzer::new(example("server")).bind(bind).count(1).notify().start();
        panzer.wait_ready(1);
        let response = if connect == "v6" {
            let line = panzer.wait_for_line("listening on [::1]:");
            let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
            request(std::net::TcpStream::connect(("::1", port)).unwrap(), "/").unwrap()
        } else {
            panzer.wait_for_line(&format!("listening on {unix}"));
            request(std::os::unix::net::UnixStream::connect(&path).unwrap(), "/").unwrap()
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.field("worker"), "0");
        panzer.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));
    }
    assert!(!path.exists(), "the unix socket file outlived panzer");
}

#[test]
fn a_worker_sees_its_sockets_the_einhorn_and_server_starter_way_too() {
    let dir = TestDir::new("conventions");
    let path = dir.join("api.sock");
    let unix = format!("unix:{}", path.display());
    let panzer = Panzer::new("sleep")
        .args(&["--bind", &unix])
        .count(2)
        .ready("50ms")
        .command_args(&["--", "1000"])
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    for (ordinal, pid) in started_workers(&panzer, 2) {
        let env = environ(pid);
        let var = |key: &str| {
            env.get(key).map(String::as_str).unwrap_or_else(|| panic!("worker {ordinal}: no {key}"))
        };
        // einhorn: a count and one variable per fd number.
        assert_eq!(var("EINHORN_FD_COUNT"), "2");
        assert_eq!(var("EINHORN_FD_0"), "3");
        assert_eq!(var("EINHORN_FD_1"), "4");
        // Server::Starter: `addr=fd` joined by `;`, TCP with the real port,
        // a unix socket as its path.
        assert_eq!(var("SERVER_STARTER_PORT"), format!("127.0.0.1:{port}=3;{}=4", path.display()));
        assert_eq!(var("SERVER_STARTER_GENERATION"), "1");
    }
}

/// What the `nodelay` fixture reports for a connection it accepted from
/// panzer's socket, for a panzer started with `extra` options and `env`.
fn accepted_nodelay(bind: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let panzer = Panzer::new(example("nodelay")).bind(bind).count(1).notify().args(extra).envs(env).start();
    panzer.wait_ready(1);
    let line = panzer.wait_for_line("listening on ");
    let addr = line.rsplit("listening on ").next().unwrap().trim();
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    request(stream, "/").unwrap().field("nodelay")
}

#[test]
fn accepted_tcp_connections_have_tcp_nodelay_unless_told_otherwise() {
    // Without it, a server that writes a response in two pieces (head, then
    // body) waits for the client's delayed ACK before the second: about
    // 40 ms per keep-alive request.
    assert_eq!(accepted_nodelay("127.0.0.1:0", &[], &[]), "true");
    assert_eq!(accepted_nodelay("[::1]:0", &[], &[]), "true");
    assert_eq!(accepted_nodelay("127.0.0.1:0", &["--no-nodelay"], &[]), "false");
    assert_eq!(accepted_nodelay("127.0.0.1:0", &[], &[("PANZER_NO_NODELAY", "1")]), "false");
}
