//! The example a user copies, `examples/hello.rs`, keeps the worker contract
//! under the real panzer: it serves, drains on a reload, and stops.

use std::io::Write;
use std::net::TcpStream;

use nix::sys::signal::Signal;

use crate::harness::*;

#[test]
fn the_hello_example_serves_drains_on_a_reload_and_stops_with_exit_0() {
    // A drain grace far longer than the test, so the kept-alive connection
    // below is still open when its request arrives during the drain.
    let mut panzer =
        Panzer::new(example("hello")).count(2).notify().pid_file().env("DRAIN_GRACE_MS", "60000").start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let first = get(port, "/").unwrap();
    assert_eq!((first.status, first.field("generation").as_str()), (200, "1"), "{first:?}");

    // A kept-alive connection to generation 1, idle during the reload.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(kept, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let before = read_response(&mut kept).unwrap();
    assert!(before.headers.to_ascii_lowercase().contains("connection: keep-alive"), "{}", before.headers);
    let old = before.pid();

    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "reloaded: generation 2 serves"), "{}", out.stderr);
    panzer.wait_for_line(&format!("hello: pid {old} draining"));
    // Draining, it answers the kept-alive connection and closes it.
    write!(kept, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let during = read_response(&mut kept).unwrap();
    assert_eq!(during.pid(), old);
    assert!(during.headers.to_ascii_lowercase().contains("connection: close"), "{}", during.headers);
    panzer.wait_for_line("generation 1 stopped");
    assert_eq!(get(port, "/").unwrap().field("generation"), "2");
    assert!(panzer.log().contains(&format!("(pid {old}) exited with status 0")), "{}", panzer.log());

    let tree = panzer.descendants();
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    assert!(tree.iter().all(|p| !alive(*p)), "{tree:?} outlived main");
}
