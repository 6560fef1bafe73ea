use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;

/// main's answers as a test sets them: ready or not, and a metrics body.
struct Main {
    ready: bool,
    metrics: String,
    asked: Vec<Route>,
}

impl Main {
    fn new() -> Main {
        Main { ready: true, metrics: "panzer_ready 1\n".into(), asked: Vec::new() }
    }

    fn answer(&mut self, route: Route) -> Answer {
        self.asked.push(route);
        match route {
            Route::Ready if self.ready => {
                Answer { ok: true, body: "generation 1 ready: 2/2 workers ready\n".into() }
            }
            Route::Ready => Answer { ok: false, body: "stopping\n".into() },
            Route::Live => Answer { ok: true, body: "ok\n".into() },
            Route::Metrics => Answer { ok: true, body: self.metrics.clone() },
        }
    }

    /// `step` on `input`: the response as text, the bytes consumed, and
    /// whether the connection closes after it.
    fn step(&mut self, input: &str) -> Option<(String, usize, bool)> {
        match step(input.as_bytes(), &mut |route| self.answer(route)) {
            Step::Incomplete => None,
            Step::Respond { consumed, response, close } => {
                Some((String::from_utf8(response).unwrap(), consumed, close))
            }
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn readyz_answers_200_or_503_with_the_line_and_keeps_the_connection() {
    let mut main = Main::new();
    let (response, consumed, close) = main.step(&get("/readyz")).unwrap();
    assert_eq!(
        response,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 38\r\n\
         Cache-Control: no-store\r\n\r\ngeneration 1 ready: 2/2 workers ready\n"
    );
    assert_eq!((consumed, close), (get("/readyz").len(), false));
    main.ready = false;
    let (response, _, _) = main.step(&get("/readyz?verbose")).unwrap();
    assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nstopping\n"), "{response}");
}

#[test]
fn metrics_carry_the_prometheus_content_type_and_head_gets_no_body() {
    let mut main = Main::new();
    let (response, _, _) = main.step(&get("/metrics")).unwrap();
    assert!(response.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\npanzer_ready 1\n"), "{response}");
    let (response, _, close) = main.step("HEAD /livez HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.contains("Content-Length: 3\r\n"));
    assert!(response.ends_with("\r\n\r\n") && !close, "{response:?}");
}

#[test]
fn other_paths_get_404_and_other_methods_405_without_asking_main() {
    let mut main = Main::new();
    let (response, _, close) = main.step(&get("/admin/reload")).unwrap();
    assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n") && !close, "{response}");
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let (response, _, _) = main.step(&format!("{method} /readyz HTTP/1.1\r\nHost: t\r\n\r\n")).unwrap();
        assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{response}");
        assert!(response.contains("\r\nAllow: GET, HEAD\r\n"), "{response}");
    }
    assert!(main.asked.is_empty(), "{:?}", main.asked);
}

#[test]
fn a_request_with_a_body_is_answered_then_the_connection_closes() {
    let mut main = Main::new();
    let post = "POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nstop";
    let (response, _, close) = main.step(post).unwrap();
    assert!(response.starts_with("HTTP/1.1 405 ") && response.contains("Connection: close\r\n"));
    assert!(close);
    let chunked = "GET /livez HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (response, _, close) = main.step(chunked).unwrap();
    assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n") && close, "{response}");
    let (response, _, close) = main.step("GET /livez HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap();
    assert!(response.starts_with("HTTP/1.1 400 ") && close, "{response}");
}

#[test]
fn connection_close_http_1_0_and_keep_alive_are_honoured() {
    let mut main = Main::new();
    let (response, _, close) = main.step("GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert!(close && response.contains("\r\nConnection: close\r\n"), "{response}");
    let (response, _, close) =
        main.step("GET /livez HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n").unwrap();
    assert!(close && response.contains("\r\nConnection: close\r\n"), "{response}");
    let (_, _, close) = main.step("GET /livez HTTP/1.0\r\n\r\n").unwrap();
    assert!(close, "HTTP/1.0 closes by default");
    let (response, _, close) = main.step("GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    assert!(!close && response.contains("\r\nConnection: keep-alive\r\n"), "{response}");
}

#[test]
fn pipelined_requests_are_taken_one_at_a_time() {
    let mut main = Main::new();
    let two = format!("{}{}", get("/livez"), get("/readyz"));
    let (response, consumed, _) = main.step(&two).unwrap();
    assert!(response.ends_with("ok\n"));
    assert_eq!(consumed, get("/livez").len());
    assert_eq!(main.asked, [Route::Live]);
}

#[test]
fn a_partial_head_waits_but_not_past_the_limit_and_garbage_is_refused() {
    let mut main = Main::new();
    assert_eq!(main.step("GET /livez HTTP/1.1\r\nHost:"), None);
    let long = format!("GET /livez HTTP/1.1\r\nX-Filler: {}", "x".repeat(MAX_REQUEST));
    let (response, consumed, close) = main.step(&long).unwrap();
    assert!(response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n") && close);
    assert_eq!(consumed, long.len());
    let whole_but_long = format!("{long}\r\n\r\n");
    assert!(main.step(&whole_but_long).unwrap().0.starts_with("HTTP/1.1 431 "));
    let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
    let (response, _, _) = main.step(&format!("GET /livez HTTP/1.1\r\n{many}\r\n")).unwrap();
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    for garbage in ["\u{0}\u{1}\r\n\r\n", "GET /livez HTTP/9.9\r\n\r\n", "GET\r\n\r\n"] {
        let (response, _, close) = main.step(garbage).unwrap();
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n") && close, "{garbage:?}: {response}");
    }
    assert!(main.asked.is_empty());
}

proptest::proptest! {
    #[test]
    fn any_bytes_get_an_answer_or_a_wait_never_a_panic(input in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let mut main = Main::new();
        match step(&input, &mut |route| main.answer(route)) {
            Step::Incomplete => proptest::prop_assert!(input.len() < MAX_REQUEST),
            Step::Respond { consumed, response, .. } => {
                proptest::prop_assert!(consumed <= input.len());
                proptest::prop_assert!(response.starts_with(b"HTTP/1.1 "));
            }
        }
    }
}

// The server on real sockets, driven by hand as main's loop drives it.

fn bound() -> (Server, u16) {
    let server = Server::bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let port = server.addresses().next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    (server, port)
}

/// Polls the server's fds once (waiting at most 200 ms) and handles what is ready.
fn turn(server: &mut Server, main: &mut Main) -> usize {
    let (tokens, fds): (Vec<Token>, Vec<(BorrowedFd<'_>, Interest)>) =
        server.fds().into_iter().map(|(t, fd, i)| (t, (fd, i))).unzip();
    let deadline = Instant::now() + Duration::from_millis(200);
    let ready = crate::sys::poll(&fds, Some(deadline)).unwrap();
    drop(fds);
    let ready: Vec<Token> = tokens.into_iter().zip(ready).filter(|(_, r)| *r).map(|(t, _)| t).collect();
    server.on_ready(&ready, Instant::now(), &mut |route| main.answer(route));
    ready.len()
}

/// Turns the server until `done` or 10 s pass.
fn until(server: &mut Server, main: &mut Main, mut done: impl FnMut(&Server) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done(server) {
        assert!(Instant::now() < give_up, "the server never got there");
        turn(server, main);
    }
}

fn client(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Whether `got` holds a whole response (its head and `Content-Length` bytes).
fn whole(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// Turns the server until the client has one whole response (or the
/// server closed the connection); returns what came.
fn response(stream: &mut TcpStream, server: &mut Server, main: &mut Main) -> String {
    stream.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(10);
    while !whole(&got) && Instant::now() < give_up {
        turn(server, main);
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
    }
    stream.set_nonblocking(false).unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// Turns the server until it has closed `stream`.
fn closed(stream: &mut TcpStream, server: &mut Server, main: &mut Main) -> bool {
    stream.set_nonblocking(true).unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < give_up {
        turn(server, main);
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn a_kept_alive_client_gets_each_answer_in_turn() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    let mut stream = client(port);
    for path in ["/livez", "/readyz"] {
        stream.write_all(get(path).as_bytes()).unwrap();
        let answer = response(&mut stream, &mut server, &mut main);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
    assert_eq!(main.asked, [Route::Live, Route::Ready]);
    assert_eq!(server.clients.len(), 1);
}

#[test]
fn past_the_cap_the_client_idle_the_longest_is_closed() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    let mut first = client(port);
    until(&mut server, &mut main, |s| s.clients.len() == 1);
    let others: Vec<TcpStream> = (0..MAX_CLIENTS + 5).map(|_| client(port)).collect();
    until(&mut server, &mut main, |s| s.next_id as usize == MAX_CLIENTS + 6);
    assert_eq!(server.clients.len(), MAX_CLIENTS);
    let mut rest = Vec::new();
    assert_eq!(first.read_to_end(&mut rest).unwrap(), 0, "the oldest was closed");
    drop(others);
}

#[test]
fn a_client_past_its_deadline_is_closed() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    let mut stream = client(port);
    stream.write_all(b"GET /livez HTTP/1.1\r\n").unwrap();
    until(&mut server, &mut main, |s| s.clients.first().is_some_and(|c| !c.input.is_empty()));
    let deadline = server.next_deadline().unwrap();
    server.expire(deadline - Duration::from_millis(1));
    assert_eq!(server.clients.len(), 1);
    server.expire(deadline);
    assert!(server.clients.is_empty());
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn pipelined_requests_are_answered_one_per_turn_of_the_loop() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    let stream = client(port);
    (&stream).write_all(get("/livez").repeat(3).as_bytes()).unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    while main.asked.is_empty() {
        assert!(Instant::now() < give_up, "the request was never read");
        turn(&mut server, &mut main);
    }
    assert_eq!(main.asked.len(), 1, "one request in that turn");
    turn(&mut server, &mut main);
    assert_eq!(main.asked.len(), 2, "the next in the next turn, though nothing new came");
    turn(&mut server, &mut main);
    assert_eq!(main.asked.len(), 3);
    assert_eq!(server.fds()[1].2, Interest::Read, "nothing left: waits for more");
}

#[test]
fn a_client_that_never_reads_waits_for_writability_while_others_are_served() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    main.metrics = "x".repeat(1 << 20);
    // A small receive buffer, fixed: the kernel would grow a default one
    // to take megabytes that nobody reads.
    let deaf = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    deaf.set_recv_buffer_size(4096).unwrap();
    deaf.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    let deaf = TcpStream::from(deaf);
    (&deaf).write_all(get("/metrics").repeat(20).as_bytes()).unwrap();
    // Until a turn (200 ms) passes without an answer: its socket is full.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < give_up, "the deaf client took everything");
        let before = main.asked.len();
        turn(&mut server, &mut main);
        if before > 0 && main.asked.len() == before {
            break;
        }
    }
    let interests: Vec<Interest> = server.fds().into_iter().map(|(_, _, i)| i).collect();
    assert_eq!(interests, [Interest::Read, Interest::Write], "polled for writing only");
    let mut other = client(port);
    other.write_all(get("/livez").as_bytes()).unwrap();
    let answer = response(&mut other, &mut server, &mut main);
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    assert_eq!(main.asked.last(), Some(&Route::Live));
    let scrapes = main.asked.iter().filter(|r| **r == Route::Metrics).count();
    assert!(scrapes < 20, "20 MiB of answers cannot all have gone to a client that never reads");
    assert!(server.clients.iter().any(|c| c.interest() == Interest::Write), "it waits to take more");
    drop(deaf);
}

#[test]
fn an_oversized_request_gets_431_in_full_before_the_close() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    let mut stream = client(port);
    let huge = format!("GET /livez HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "x".repeat(3 * MAX_REQUEST));
    stream.write_all(huge.as_bytes()).unwrap();
    let answer = response(&mut stream, &mut server, &mut main);
    assert!(answer.starts_with("HTTP/1.1 431 ") && answer.ends_with("too large\n"), "{answer}");
    assert!(closed(&mut stream, &mut server, &mut main), "closed after the answer, not reset");
}

#[test]
fn a_saved_server_resumes_with_its_clients_and_what_they_had_sent() {
    let (mut server, port) = bound();
    let mut main = Main::new();
    let mut stream = client(port);
    stream.write_all(b"GET /livez HTTP/1.1\r\n").unwrap();
    until(&mut server, &mut main, |s| s.clients.first().is_some_and(|c| !c.input.is_empty()));
    let now = Instant::now();
    let saved: Saved = serde_json::from_str(&serde_json::to_string(&server.save(now)).unwrap()).unwrap();
    // The fds stay open, as across an exec, and the new server owns them.
    std::mem::forget(server);
    let mut server = Server::resume(&saved, now, |fd| {
        crate::sys::adopt_inherited_fd(fd).map_err(|e| Error::os("adopt", e))
    })
    .unwrap();
    assert_eq!(server.addresses().collect::<Vec<_>>(), [format!("127.0.0.1:{port}")]);
    stream.write_all(b"Host: t\r\n\r\n").unwrap();
    let answer = response(&mut stream, &mut server, &mut main);
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    let mut fresh = client(port);
    fresh.write_all(get("/readyz").as_bytes()).unwrap();
    assert!(response(&mut fresh, &mut server, &mut main).starts_with("HTTP/1.1 200 OK"));
}
