//! `preload`: library mode with the standard library only. The app loads a
//! large table once per generation; its workers are forks that share it.
//!
//! ```text
//! cargo build --release --examples
//! panzer --preload --bind 127.0.0.1:8080 --count 8 target/release/examples/preload
//! curl 127.0.0.1:8080     # pid=4242 generation=1 worker=3 table=… copy=0
//! kill -USR1 <panzer pid> # loads the binary again, swaps generations
//! ```
//!
//! - `PRELOAD_MB` (default 64): the table's size; every page is written,
//!   so it is really resident (and really shared by the workers).
//! - `PRELOAD_THREADS=T`: T copies of `serve` per worker process
//!   (`Runner::threads`); unset, one copy (`panzer::run`).
//! - `GET /panic` panics the copy that serves it (with `PRELOAD_THREADS` it
//!   is restarted in its thread, else its process exits and is replaced);
//!   `GET /slow?ms=N` answers after N ms.
//! - For panzer's tests: `PRELOAD_FAIL=1` panics while loading (a bad build),
//!   `PRELOAD_SPAWN_THREAD=1` starts a thread before `panzer::run` (refused),
//!   `PRELOAD_LOAD_MS=N` takes N ms more to load (a slow load).
//!
//! Run on its own it serves on `LISTEN_FDS` sockets, or says how to start it.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

/// Prints a line to stderr in one write: the workers share it, and
/// `eprintln!` writes a line in pieces that another worker's can split.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}

/// The preloaded state: a table every worker reads, never writes.
struct Routes {
    table: Vec<u64>,
    checksum: u64,
}

impl Routes {
    fn load(megabytes: usize) -> Routes {
        if std::env::var_os("PRELOAD_FAIL").is_some() {
            panic!("Routes::load: the routing table is corrupt (PRELOAD_FAIL is set)");
        }
        if let Some(ms) = std::env::var("PRELOAD_LOAD_MS").ok().and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let words = megabytes * 1024 * 1024 / 8;
        // Written word by word (not zeroed memory, which the kernel maps lazily).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let table: Vec<u64> = (0..words)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            })
            .collect();
        let checksum = table.iter().fold(0u64, |sum, w| sum.wrapping_add(*w));
        Routes { table, checksum }
    }

    /// A lookup, so that serving reads the table.
    fn lookup(&self, key: usize) -> u64 {
        self.table.get(key % self.table.len().max(1)).copied().unwrap_or(0)
    }
}

/// Cloned for each copy of `serve` (`PRELOAD_THREADS`): a pointer to the
/// one table.
#[derive(Clone)]
struct App {
    routes: Arc<Routes>,
}

// `panzer::Listener` rather than the default `std::net::TcpListener`: this
// app serves TCP and unix sockets alike.
impl panzer::Worker<panzer::Listener> for App {
    fn serve(self, listeners: Vec<panzer::Listener>) -> ! {
        let Some(listener) = listeners.first() else { panzer::finished() };
        let copy = std::thread::current().name().unwrap_or("serve").to_string();
        panzer::ready();
        // `None` once this worker drains: then `finished`, and the process
        // exits 0 when every copy has finished.
        while let Ok(Some(mut conn)) = listener.accept() {
            let mut request = String::new();
            let mut reader = BufReader::new(&mut conn);
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // The rest of the head, up to the empty line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            if path == "/panic" {
                panic!("GET /panic");
            }
            if let Some(ms) = path.strip_prefix("/slow?ms=").and_then(|ms| ms.parse().ok()) {
                std::thread::sleep(Duration::from_millis(ms));
            }
            let var = |name| std::env::var(name).unwrap_or_else(|_| "-".into());
            let body = format!(
                "pid={} generation={} worker={} table={:x} copy={copy} lookup={:x}\n",
                std::process::id(),
                var("PANZER_GENERATION"),
                var("PANZER_WORKER"),
                self.routes.checksum,
                self.routes.lookup(path.len()),
            );
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        say!("preload: pid {} {copy} drained", std::process::id());
        panzer::finished()
    }
}

fn main() {
    let megabytes = std::env::var("PRELOAD_MB").ok().and_then(|m| m.parse().ok()).unwrap_or(64);
    let threads: Option<usize> = std::env::var("PRELOAD_THREADS").ok().and_then(|t| t.parse().ok());
    let app = App { routes: Arc::new(Routes::load(megabytes)) };
    say!("preload: pid {} loaded {megabytes} MB (table {:x})", std::process::id(), app.routes.checksum);
    if std::env::var_os("PRELOAD_SPAWN_THREAD").is_some() {
        // What panzer::run must refuse: a thread alive at fork time.
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    match threads {
        // T copies per process, each restarted in its thread after a panic.
        Some(threads) => panzer::Runner::new(app).threads(threads).run(),
        // One copy: a panic ends the process, and its monitor forks another.
        None => panzer::run(app),
    }
}
