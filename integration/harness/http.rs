//! A small HTTP/1.1 client for the test servers: one request per fresh
//! connection, or one on an open connection, a request kept in flight, and
//! [`Load`], clients that send requests back to back while a test reloads.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{eventually, PATIENCE};

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    /// The value of `key=` in the one-line body (`pid=12 generation=1 worker=0`).
    pub fn field(&self, key: &str) -> String {
        self.find(key).unwrap_or_else(|| panic!("no {key}= in body {:?}", self.body))
    }

    /// The value of `key=` in the body, if there is one.
    pub fn find(&self, key: &str) -> Option<String> {
        self.body.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(String::from))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.field("pid").parse().unwrap())
    }

    /// Whether the server said `Connection: close`.
    pub fn closes(&self) -> bool {
        header(&self.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A connection to 127.0.0.1:`port`; connecting, reads and writes time out after
/// [`PATIENCE`], so a hung server fails a test instead of hanging it.
pub fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET path` on a fresh connection to 127.0.0.1:`port`, `Connection: close`.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    request(connect(port)?, path)
}

/// `GET path` with `Connection: close` on an open connection (TCP or unix).
pub fn request<S: Read + Write>(mut stream: S, path: &str) -> std::io::Result<Response> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    read_response(&mut stream)
}

/// Reads one response (with Content-Length) from `stream`. An end of stream
/// is an `UnexpectedEof` error that says whether any byte had come.
pub fn read_response(stream: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let mut head_end = None;
    loop {
        // The server sends nothing unasked, so a read never takes bytes of
        // a later response.
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                let what = if buf.is_empty() { "EOF before any response byte" } else { "EOF mid-response" };
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
        let Some(end) = head_end else { continue };
        let headers = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = header(&headers, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if buf.len() < end + length {
            continue;
        }
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {headers:?}")))?;
        let body = String::from_utf8_lossy(&buf[end..end + length]).into_owned();
        return Ok(Response { status, headers, body });
    }
}

/// The value of header `name` (any case) in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A request in flight: a kept-alive connection whose first answer proved a
/// worker accepted it, now waiting for `GET /slow?ms=MS`. Returns the
/// connection (read the slow answer with [`read_response`]) and the pid
/// that serves it.
pub fn slow_request_in_flight(port: u16, ms: u32) -> (TcpStream, Pid) {
    let mut stream = connect(port).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let server = read_response(&mut stream).unwrap().pid();
    write!(stream, "GET /slow?ms={ms} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    (stream, server)
}

/// Sends requests until `n` distinct worker pids have answered.
pub fn distinct_pids(port: u16, n: usize) -> HashSet<Pid> {
    let mut seen = HashSet::new();
    eventually(PATIENCE, &format!("{n} distinct workers to answer"), || {
        if let Ok(r) = get(port, "/") {
            seen.insert(r.pid());
        }
        (seen.len() >= n).then(|| seen.clone())
    })
}
/// What load clients share: the stop flag (set by `finish`, or on drop, so
/// a test that panics does not leave them running), how many requests were
/// answered, how many clients still run, and the failures seen (the first
/// [`FAILURES_KEPT`], and a count of the rest).
#[derive(Default)]
struct Clients {
    stop: AtomicBool,
    ok: AtomicU32,
    running: AtomicU32,
    failures: Mutex<(Vec<String>, u32)>,
}

/// Failures kept word for word; past that, only counted.
const FAILURES_KEPT: usize = 50;

impl Clients {
    fn new(clients: usize) -> Arc<Clients> {
        Arc::new(Clients { running: AtomicU32::new(clients as u32), ..Clients::default() })
    }

    fn go_on(&self, until: Instant) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < until
    }

    fn failed(&self, what: String) {
        let mut failures = self.failures.lock().unwrap();
        if failures.0.len() < FAILURES_KEPT {
            failures.0.push(what);
        } else {
            failures.1 += 1;
        }
    }

    /// Waits until `n` more requests were answered; says so at once when
    /// every client has ended (stopped at `LOAD_LIMIT`).
    fn wait_for(&self, n: u32) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        eventually(PATIENCE, &format!("{n} more answers"), || {
            assert!(
                self.running.load(Ordering::Relaxed) > 0,
                "waiting for {n} more answers, but every load client has ended"
            );
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the clients and waits for them; every failure they saw.
    fn finish(&self, threads: Vec<std::thread::JoinHandle<()>>) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        let (mut failures, more) = std::mem::take(&mut *self.failures.lock().unwrap());
        if more > 0 {
            failures.push(format!("and {more} more failure(s)"));
        }
        failures
    }
}

/// Load clients stop at the latest this long after they started.
pub const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// Runs `client` on `clients` threads, each until stopped; counts the
/// running ones down as they end.
fn spawn_clients(
    shared: &Arc<Clients>,
    clients: usize,
    client: impl Fn(&Clients) + Clone + Send + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (shared, client) = (shared.clone(), client.clone());
            std::thread::spawn(move || {
                client(&shared);
                shared.running.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect()
}

/// Clients that each send `GET path` on fresh connections, back to back,
/// until stopped (and never past [`LOAD_LIMIT`]). A connection not made is
/// a failure that starts with `connect: `.
pub struct Load {
    shared: Arc<Clients>,
    /// Answers by generation.
    generations: Arc<Mutex<BTreeMap<String, u32>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, clients: usize, path: &'static str) -> Load {
        let shared = Clients::new(clients);
        let generations = Arc::new(Mutex::new(BTreeMap::new()));
        let answers = generations.clone();
        let threads = spawn_clients(&shared, clients, move |shared: &Clients| {
            let until = Instant::now() + LOAD_LIMIT;
            while shared.go_on(until) {
                let stream = match connect(port) {
                    Ok(stream) => stream,
                    Err(e) => {
                        shared.failed(format!("connect: {e}"));
                        continue;
                    }
                };
                match request(stream, path) {
                    Ok(r) if r.status == 200 => {
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                        let generation = r.find("generation").unwrap_or_default();
                        *answers.lock().unwrap().entry(generation).or_insert(0) += 1;
                    }
                    Ok(r) => shared.failed(format!("status {}", r.status)),
                    Err(e) => shared.failed(e.to_string()),
                }
            }
        });
        Load { shared, generations, threads }
    }

    /// Waits until `n` more requests were answered.
    pub fn wait_for(&self, n: u32) {
        self.shared.wait_for(n);
    }

    /// Stops the clients; returns every failure they saw, and how many
    /// answers each generation gave.
    pub fn finish(mut self) -> (Vec<String>, BTreeMap<String, u32>) {
        let failures = self.shared.finish(std::mem::take(&mut self.threads));
        let generations = self.generations.lock().unwrap().clone();
        (failures, generations)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Clients on kept-alive connections, each sending requests back to back
/// until stopped (and never past [`LOAD_LIMIT`]); a connection the server
/// closes (`Connection: close`) is replaced. `finish` returns how many
/// were answered, and every failure.
pub struct KeepAlive {
    shared: Arc<Clients>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl KeepAlive {
    pub fn start(port: u16, clients: usize) -> KeepAlive {
        let shared = Clients::new(clients);
        let threads = spawn_clients(&shared, clients, move |shared: &Clients| {
            let until = Instant::now() + LOAD_LIMIT;
            let mut stream: Option<std::net::TcpStream> = None;
            while shared.go_on(until) {
                let mut s = match stream.take().map_or_else(|| connect(port), Ok) {
                    Ok(s) => s,
                    Err(e) => {
                        shared.failed(format!("connect: {e}"));
                        continue;
                    }
                };
                let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                match sent.and_then(|()| read_response(&mut s)) {
                    Ok(r) if r.status == 200 => {
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                        if !r.closes() {
                            stream = Some(s);
                        }
                    }
                    Ok(r) => shared.failed(format!("status {}", r.status)),
                    Err(e) => shared.failed(e.to_string()),
                }
            }
        });
        KeepAlive { shared, threads }
    }

    pub fn finish(mut self) -> (u32, Vec<String>) {
        let failures = self.shared.finish(std::mem::take(&mut self.threads));
        (self.shared.ok.load(Ordering::Relaxed), failures)
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
