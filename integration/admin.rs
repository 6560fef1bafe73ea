//! The admin endpoint (`--admin-bind`): read-only HTTP/1.1 served by main's
//! loop, for probes (`/readyz`, `/livez`) and scrapes (`/metrics`). Never
//! blocked by a client, never passed to a worker, kept across an upgrade.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

/// panzer running `command` with `count` workers, `--ready notify`, one
/// `--bind` and `--admin-bind 127.0.0.1:0` plus `extra`.
fn start(count: &str, command: &str, extra: &[&str]) -> Panzer {
    Panzer::new(command).admin().count(count).notify().args(extra).start()
}

/// The address of the `index`th `admin endpoint on` line.
fn admin_addr(panzer: &Panzer, index: usize) -> String {
    let lines = panzer.wait_for_lines("admin endpoint on ", index + 1);
    lines[index].rsplit("admin endpoint on ").next().unwrap().trim().to_string()
}

/// The port of the first admin endpoint.
fn admin_port(panzer: &Panzer) -> u16 {
    admin_addr(panzer, 0).rsplit(':').next().unwrap().parse().unwrap()
}

/// Sends `raw` on a fresh connection and reads everything until the server
/// closes it (send `Connection: close`, or a request it closes after).
fn exchange(port: u16, raw: &[u8]) -> String {
    let mut stream = connect(port).unwrap();
    stream.write_all(raw).unwrap();
    let mut text = Vec::new();
    stream.read_to_end(&mut text).unwrap();
    String::from_utf8_lossy(&text).into_owned()
}

/// `METHOD path` with `Connection: close`; the whole answer, head and body.
fn ask(port: u16, method: &str, path: &str) -> String {
    exchange(port, format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn has_header(answer: &str, header: &str) -> bool {
    let head = answer.split_once("\r\n\r\n").map_or(answer, |(head, _)| head);
    head.lines().any(|l| l.eq_ignore_ascii_case(header))
}

#[test]
fn readyz_is_503_with_the_reason_until_a_generation_is_ready_then_200() {
    let gate = Gate::new();
    let panzer = start("2", &gate.path(), &[]);
    let port = admin_port(&panzer);
    let answer = ask(port, "GET", "/readyz");
    assert_eq!(status_line(&answer), "HTTP/1.1 503 Service Unavailable", "{answer}");
    assert_eq!(body(&answer), "generation 1 starting: 0/2 workers ready\n");
    // main's loop runs: live, though nothing is ready.
    assert_eq!(status_line(&ask(port, "GET", "/livez")), "HTTP/1.1 200 OK");
    gate.open();
    panzer.wait_ready(1);
    let answer = ask(port, "GET", "/readyz");
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert_eq!(body(&answer), "generation 1 ready: 2/2 workers ready\n");
    // The same rule as `panzerctl status --ready`.
    let out = panzer.ctl(&["status", "--ready"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "generation 1 ready: 2/2 workers ready\n"));
}

#[test]
fn readyz_is_503_stopping_during_a_graceful_stop_and_livez_stays_200() {
    let panzer =
        Panzer::new(example("slow_drain")).admin().count(1).notify().env("DRAIN_MS", "20000").start();
    panzer.wait_ready(1);
    let port = admin_port(&panzer);
    assert_eq!(status_line(&ask(port, "GET", "/readyz")), "HTTP/1.1 200 OK");
    panzer.signal(Signal::SIGTERM);
    panzer.wait_for_line("stopping gracefully");
    let answer = ask(port, "GET", "/readyz");
    assert_eq!(status_line(&answer), "HTTP/1.1 503 Service Unavailable", "{answer}");
    assert_eq!(body(&answer), "stopping\n");
    assert_eq!(status_line(&ask(port, "GET", "/livez")), "HTTP/1.1 200 OK");
}

#[test]
fn metrics_livez_head_and_the_errors_each_get_their_answer() {
    let panzer = start("2", &example("server"), &["--admin-bind", "unix:{dir}/admin.sock"]);
    panzer.wait_ready(1);
    let port = admin_port(&panzer);
    assert_eq!(admin_addr(&panzer, 1), format!("unix:{}", panzer.dir.join("admin.sock").display()));

    let metrics = ask(port, "GET", "/metrics");
    assert_eq!(status_line(&metrics), "HTTP/1.1 200 OK", "{metrics}");
    assert!(has_header(&metrics, "Content-Type: text/plain; version=0.0.4"), "{metrics}");
    for line in ["panzer_workers_configured 2", "panzer_ready 1", "panzer_workers_ready{generation=\"1\"} 2"]
    {
        assert!(body(&metrics).lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    // The same text as `panzerctl metrics`, but for the values that move.
    let ctl = panzer.ctl(&["metrics"]).stdout;
    let names =
        |text: &str| text.lines().filter(|l| l.starts_with('#')).map(String::from).collect::<Vec<_>>();
    assert_eq!(names(body(&metrics)), names(&ctl));

    let live = ask(port, "GET", "/livez");
    assert_eq!((status_line(&live), body(&live)), ("HTTP/1.1 200 OK", "ok\n"));
    let head = ask(port, "HEAD", "/livez");
    assert_eq!(status_line(&head), "HTTP/1.1 200 OK");
    assert!(has_header(&head, "Content-Length: 3") && body(&head).is_empty(), "{head:?}");
    let head = ask(port, "HEAD", "/readyz");
    assert_eq!(status_line(&head), "HTTP/1.1 200 OK");
    assert!(body(&head).is_empty(), "{head:?}");

    let missing = ask(port, "GET", "/nothing-here");
    assert_eq!(status_line(&missing), "HTTP/1.1 404 Not Found", "{missing}");
    for method in ["POST", "PUT", "DELETE"] {
        let refused = ask(port, method, "/readyz");
        assert_eq!(status_line(&refused), "HTTP/1.1 405 Method Not Allowed", "{refused}");
        assert!(has_header(&refused, "Allow: GET, HEAD"), "{refused}");
    }
    // A request head past 8 KiB is refused, and the connection closed.
    let huge = format!("GET /livez HTTP/1.1\r\nHost: t\r\nX-Filler: {}\r\n\r\n", "x".repeat(10_000));
    let refused = exchange(port, huge.as_bytes());
    assert_eq!(status_line(&refused), "HTTP/1.1 431 Request Header Fields Too Large", "{refused}");
    let garbage = exchange(port, b"\x00\x01 not http at all\r\n\r\n");
    assert_eq!(status_line(&garbage), "HTTP/1.1 400 Bad Request", "{garbage}");

    // The unix endpoint answers the same.
    let mut unix = UnixStream::connect(panzer.dir.join("admin.sock")).unwrap();
    unix.set_read_timeout(Some(PATIENCE)).unwrap();
    let answer = request(&mut unix, "/livez").unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    // Nothing here changed panzer.
    assert_eq!(panzer.status()["reloads"]["ok"], 0);
    assert!(panzer.exited().is_none());
}

#[test]
fn a_kept_alive_connection_carries_several_requests_until_connection_close() {
    let panzer = start("1", &example("server"), &[]);
    panzer.wait_ready(1);
    let mut stream = connect(admin_port(&panzer)).unwrap();
    for path in ["/livez", "/readyz", "/metrics"] {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let answer = read_response(&mut stream).unwrap();
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert!(!answer.closes(), "{path}: {answer:?}");
    }
    // Two at once (pipelined): answered in order.
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut both = Vec::new();
    let last = "\r\n\r\ngeneration 1 ready: 1/1 workers ready\n";
    while !both.ends_with(last.as_bytes()) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&both));
        both.extend_from_slice(&chunk[..n]);
    }
    let both = String::from_utf8(both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    assert!(both.find("\r\n\r\nok\n").is_some_and(|at| at < both.find(last).unwrap()), "{both}");
    write!(stream, "GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let answer = read_response(&mut stream).unwrap();
    assert!(answer.closes(), "{answer:?}");
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "closed after Connection: close");
}

#[test]
fn clients_that_never_finish_a_request_or_never_read_do_not_stop_livez_for_another() {
    let panzer = start("1", &example("server"), &[]);
    panzer.wait_ready(1);
    let port = admin_port(&panzer);
    // Half a request, never finished.
    let mut slow = connect(port).unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost:").unwrap();
    // Many pipelined scrapes whose answers are never read: main's writes
    // to it fill the socket buffers and would block.
    // A small receive buffer, fixed: the kernel would grow a default one.
    let deaf = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    deaf.set_recv_buffer_size(4096).unwrap();
    deaf.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    let mut deaf = TcpStream::from(deaf);
    deaf.set_nonblocking(true).unwrap();
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    let mut sent = 0;
    while sent < scrape.len() {
        match deaf.write(&scrape[sent..]) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // Many idle connections, past the client cap.
    let idle: Vec<TcpStream> = (0..100).map(|_| connect(port).unwrap()).collect();
    for _ in 0..5 {
        let answer = ask(port, "GET", "/livez");
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    }
    // The control socket answers too: main's loop was never held.
    assert_eq!(panzer.status()["count"], 1);
    drop((slow, deaf, idle));
}

/// The inode of the TCP socket listening on 127.0.0.1:`port`.
fn listening_inode(port: u16) -> String {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .map(|f| f[9].to_string())
        .unwrap_or_else(|| panic!("nothing listens on 127.0.0.1:{port}"))
}

/// Whether `pid` has the socket with `inode` open.
fn holds(pid: Pid, inode: &str) -> bool {
    let target = format!("socket:[{inode}]");
    open_fds(pid).into_iter().any(|fd| fd_target(pid, fd) == target)
}

#[test]
fn the_admin_socket_never_reaches_a_monitor_or_worker_nor_their_listen_fds() {
    let server = example("server");
    let panzer =
        Panzer::new(server.as_str()).count(2).notify().env("PANZER_ADMIN_BIND", "127.0.0.1:0").start();
    panzer.wait_ready(1);
    let inode = listening_inode(admin_port(&panzer));
    assert!(holds(panzer.pid, &inode), "main holds the admin socket");
    let below = panzer.descendants();
    assert_eq!(without_keepers(below.clone()).len(), 3, "a monitor and two workers");
    let mut workers = 0;
    for pid in below {
        assert!(!holds(pid, &inode), "pid {pid} holds the admin socket: {:?}", open_fds(pid));
        if let Some(fds) = environ(pid).get("LISTEN_FDS") {
            assert_eq!(fds, "1", "pid {pid}: only the --bind socket");
            workers += 1;
        }
    }
    assert_eq!(workers, 2);
    let status = panzer.status();
    assert_eq!(status["sockets"].as_array().unwrap().len(), 1, "{status}");
}

#[test]
fn the_admin_endpoint_keeps_its_port_and_its_connections_across_an_upgrade() {
    let panzer = start("1", &example("server"), &[]);
    panzer.wait_ready(1);
    let port = admin_port(&panzer);
    let inode = listening_inode(port);
    let mut kept = connect(port).unwrap();
    write!(kept, "GET /livez HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut kept).unwrap().status, 200);
    panzer.signal(Signal::SIGUSR2);
    panzer.wait_for_line("resumed as panzer");
    write!(kept, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let answer = read_response(&mut kept).unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "generation 1 ready: 1/1 workers ready\n"));
    assert_eq!(status_line(&ask(port, "GET", "/livez")), "HTTP/1.1 200 OK");
    assert_eq!(listening_inode(port), inode, "the same socket, never closed");
    assert!(holds(panzer.pid, &inode));
    // And again, with a request half sent when main re-executes.
    let mut half = connect(port).unwrap();
    half.write_all(b"GET /livez HTTP/1.1\r\n").unwrap();
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    half.write_all(b"Host: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut half).unwrap().body, "ok\n");
}

#[test]
fn an_admin_address_that_cannot_be_bound_is_one_line_and_exit_71() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let server = example("server");
    let mut panzer = Panzer::new(server.as_str()).args(&["--admin-bind", &addr]).start();
    let status = panzer.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(71), "{}", panzer.log());
    let log = panzer.log();
    let line = format!("panzer: cannot bind admin endpoint {addr}: address already in use");
    assert!(log.lines().any(|l| l.starts_with(&line)), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");

    let mut panzer = Panzer::new(server.as_str()).no_bind().args(&["--admin-bind", "localhost:80"]).start();
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(2), "{}", panzer.log());
    assert!(panzer.log().contains("'localhost:80'"), "{}", panzer.log());
}
