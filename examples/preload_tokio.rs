//! `preload_tokio`: library mode with an async server. The app preloads its
//! state single-threaded; each worker builds its tokio runtime inside
//! `serve` (never before `panzer::run`: a runtime's threads cannot be
//! forked) and drains gracefully.
//!
//! ```text
//! cargo build --release --examples
//! panzer --preload --bind 127.0.0.1:8080 --count 4 target/release/examples/preload_tokio
//! curl 127.0.0.1:8080          # pid=4242 generation=1 worker=3 runtime=tokio
//! curl '127.0.0.1:8080/slow?ms=2000' & kill -USR1 <panzer pid>   # answered in full
//! ```
//!
//! On the drain signal the worker stops accepting, lets every connection in
//! flight finish, and calls `panzer::finished()`; the process exits 0.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Prints a line to stderr in one write: the workers share it, and
/// `eprintln!` writes a line in pieces that another worker's can split.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}

/// The preloaded state (here, a small greeting table).
struct App {
    greeting: String,
}

impl panzer::Worker for App {
    fn serve(self, listeners: Vec<std::net::TcpListener>) -> ! {
        let Some(listener) = listeners.into_iter().next() else {
            say!("preload_tokio: --bind one TCP address");
            std::process::exit(2);
        };
        // The runtime lives in the worker, built after the fork.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            listener.set_nonblocking(true).expect("a non-blocking listener");
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let mut drain = std::pin::pin!(tokio::task::spawn_blocking(panzer::wait_draining));
            let mut connections = tokio::task::JoinSet::new();
            panzer::ready();
            loop {
                tokio::select! {
                    _ = &mut drain => break,
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            let body = format!("{} runtime=tokio\n", self.greeting);
                            connections.spawn(answer(stream, body));
                        }
                    }
                    // Reap finished connections as they end.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            // Stop accepting: the socket stays open in panzer, so new
            // connections wait for the next generation in its backlog.
            drop(listener);
            let in_flight = connections.len();
            while connections.join_next().await.is_some() {}
            say!("preload_tokio: pid {} drained ({in_flight} in flight)", std::process::id());
        });
        panzer::finished()
    }
}

/// One `Connection: close` answer; `/slow?ms=N` waits N ms first.
async fn answer(stream: TcpStream, body: String) {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request).await.is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).await.is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    if let Some(ms) = path.strip_prefix("/slow?ms=").and_then(|ms| ms.parse().ok()) {
        say!("preload_tokio: pid {} answers in {ms} ms", std::process::id());
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let var = |name| std::env::var(name).unwrap_or_else(|_| "-".into());
    let body = format!(
        "pid={} generation={} worker={} {body}",
        std::process::id(),
        var("PANZER_GENERATION"),
        var("PANZER_WORKER")
    );
    let response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = reader.get_mut().write_all(response.as_bytes()).await;
}

fn main() {
    // Load everything here, on this one thread; start no runtime yet.
    let app = App { greeting: "hello from a preloaded app".into() };
    panzer::run(app)
}
