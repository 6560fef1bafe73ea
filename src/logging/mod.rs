//! Log lines on stderr: `<time> <LEVEL> panzer[<pid>]: <message>` for main,
//! `panzer[<pid> gen <k>]` for a monitor; with `--log-format json`, one JSON
//! object per line instead ([`json`]). `RUST_LOG` overrides `-q`/`-v`.
//! With `--tag-output`, the workers' lines a monitor forwards go through
//! here too: this module owns what main and a monitor write to their own
//! stdout and stderr.
//!
//! **Never waiting on it.** Whatever reads panzer's stderr may stop reading
//! (a stuck log shipper, a paused container log driver), and a blocking
//! write would then stop main's loop: no answer to `panzerctl`, no
//! `SIGTERM`, no replacement for a dead worker. So nothing here waits: a
//! line that cannot be written now waits in a queue, which the event loop
//! writes out when poll says there is room ([`waiting_fds`], [`flush`];
//! no thread: main and the monitors are single-threaded, and library mode
//! forks). Log lines are bounded ([`sink::LOG_BOUND`]); past it they are
//! dropped and counted, and once half of what waits is written the count
//! is logged where they are missing: `N log lines dropped: stderr was not
//! writable`. Forwarded worker lines are never dropped: while too many
//! wait, the monitor stops reading the workers' pipes, so a worker waits in
//! its own `write`, as it would on an inherited stderr.
//!
//! **Never touching what others share.** fds 1 and 2 are shared with
//! panzer's parent and, without `--tag-output`, with every worker, and
//! `O_NONBLOCK` belongs to the open file description, not the fd: setting it
//! would make a worker's (or the shell's) writes fail with `EAGAIN`. So the
//! way to write without waiting depends on what the fd is ([`sink::Target`]):
//!
//! - a pipe, FIFO or terminal is opened anew through `/proc/self/fd/N`,
//!   which gives a description of its own of the same pipe or terminal, on
//!   which `O_NONBLOCK` is private; where that open is refused (a monitor
//!   running as `--user` on a pipe root created, no `/proc`), it is written
//!   only after poll reports room, one `PIPE_BUF` at a time;
//! - a socket (journald's stdout stream) is written with `send(…,
//!   MSG_DONTWAIT)`, a per-call flag;
//! - a regular file never makes a writer wait, and is written through fd 2
//!   itself, never reopened, so the offset and `O_APPEND` stay the ones
//!   everybody shares.
//!
//! Only the reopened pipe or terminal costs an fd (`CLOEXEC`), opened with
//! the first line written to that stream.
//!
//! A line up to `PIPE_BUF` goes to a pipe in one write, which is atomic: it
//! never mixes with what main, another monitor or a worker writes.
//!
//! In library mode the app may have installed a logger of its own: panzer's
//! lines go to it (and wait if it does). A worker forked in library mode
//! writes its log lines directly, as any worker does.

mod json;
mod sink;

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use json::Origin;
pub(crate) use json::WorkerLine;
pub(crate) use sink::PIPE_BUF;
use sink::{Queue, Sink, Stdio, Target};

/// Before the process exits, how long what waits may take to be written.
const EXIT_FLUSH: Duration = Duration::from_secs(1);

/// Which of the process's own streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

/// How to reach fds 1 and 2, each opened when first written to (main
/// never writes to stdout).
static TARGETS: [OnceLock<Target>; 2] = [OnceLock::new(), OnceLock::new()];
/// What waits for each (`None` until first used).
static SINKS: Mutex<Option<[Sink; 2]>> = Mutex::new(None);
/// The process the sinks are for: a process forked from it (a worker in
/// library mode) writes directly instead.
static OWNER: AtomicU32 = AtomicU32::new(0);
/// Logs the count of dropped lines (and what else goes past the level
/// filter), in the process's format.
static NOTICE: OnceLock<env_logger::Logger> = OnceLock::new();
/// The format [`init`] was given (text until then).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// `--log-format`: how each log line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `<time> <LEVEL> panzer[<pid>]: <message>`, a monitor's tagged
    /// `panzer[<pid> gen <k>]`.
    #[default]
    Text,
    /// One JSON object per line, for a log shipper: `ts`, `level`, `pid`,
    /// `generation` (where there is one), `msg`, and the event's fields
    /// (`worker`, `worker_pid`, `status`, …).
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the logger for this process; `generation` is `None` for main
/// and `Some(k)` for the monitor of generation k. In library mode the app may
/// have installed a logger of its own already: panzer's lines then go to it.
pub fn init(level: log::LevelFilter, format: LogFormat, generation: Option<u32>) {
    install(level, format, Origin { pid: std::process::id(), generation, keeper: false });
}

/// Installs the logger of generation `generation`'s keeper (`panzer[4242 gen
/// 3 keeper]`, or `"role": "keeper"`).
pub fn init_keeper(level: log::LevelFilter, format: LogFormat, generation: u32) {
    install(level, format, Origin { pid: std::process::id(), generation: Some(generation), keeper: true });
}

fn install(level: log::LevelFilter, format: LogFormat, origin: Origin) {
    // Before a monitor forks any worker (library mode), so that a worker
    // knows the sinks are its monitor's. (No fd is opened yet: main must
    // first take the sockets passed in at fds 3… by socket activation.)
    drop(sinks());
    let _ = FORMAT.set(format);
    let mut logger = builder(format, origin, false);
    logger.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        logger.parse_filters(&spec);
    }
    if logger.try_init().is_err() {
        log::set_max_level(log::max_level().max(level));
        return;
    }
    let mut notice = builder(format, origin, true);
    notice.filter_level(log::LevelFilter::Trace);
    let _ = NOTICE.set(notice.build());
}

fn builder(format: LogFormat, origin: Origin, notice: bool) -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    match format {
        LogFormat::Text => {
            let tag = origin.tag();
            builder.format(move |buf, record| {
                writeln!(buf, "{} {:<5} {tag}: {}", buf.timestamp_millis(), record.level(), record.args())
            })
        }
        LogFormat::Json => builder.format(move |buf, record| {
            let line = json::Line {
                ts: &buf.timestamp_millis(),
                level: record.level(),
                origin: &origin,
                msg: record.args(),
                fields: record.key_values(),
            };
            let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            writeln!(buf, "{text}")
        }),
    };
    builder.target(env_logger::Target::Pipe(Box::new(LogWriter { line: Vec::new(), notice })));
    builder
}

/// Logs `args` at INFO past the level filter, as long as logging is not off
/// altogether: what an operator needs even with `-q` (the addresses
/// listened on, which carry the port the kernel picked for `:0`).
pub(crate) fn always(fields: &[(&str, &str)], args: std::fmt::Arguments<'_>) {
    if log::max_level() == log::LevelFilter::Off {
        return;
    }
    let record = log::Record::builder()
        .level(log::Level::Info)
        .target(module_path!())
        .args(args)
        .key_values(&fields)
        .build();
    match NOTICE.get() {
        Some(notice) => log::Log::log(notice, &record),
        // The app's own logger (library mode): through it, as every line.
        None => log::logger().log(&record),
    }
}

/// Logs at `$level` a line about worker `$ordinal` (pid `$pid`), which a
/// JSON line carries as the fields `worker` and `worker_pid` (and `status`,
/// how it exited, where given).
macro_rules! of_worker {
    ($level:ident, $ordinal:expr, $pid:expr, $how:expr; $($line:tt)+) => {
        log::$level!(worker = $ordinal, worker_pid = $pid, status = $how; $($line)+)
    };
    ($level:ident, $ordinal:expr, $pid:expr; $($line:tt)+) => {
        log::$level!(worker = $ordinal, worker_pid = $pid; $($line)+)
    };
}
pub(crate) use of_worker;

/// The fds to poll for room (writable), while lines wait for them.
pub(crate) fn waiting_fds() -> Vec<BorrowedFd<'static>> {
    match sinks().as_ref() {
        Some(sinks) => sinks.iter().filter_map(Sink::waiting_fd).collect(),
        None => Vec::new(),
    }
}

/// Writes what waits, as far as there is room; for the event loops, when
/// poll found a fd of [`waiting_fds`] writable.
pub(crate) fn flush() {
    if let Some(sinks) = sinks().as_mut() {
        for sink in sinks {
            sink.flush();
        }
    }
    log_dropped();
}

/// Before the process exits: writes what waits, waiting at most
/// [`EXIT_FLUSH`] for room.
pub fn finish() {
    let deadline = Instant::now() + EXIT_FLUSH;
    loop {
        flush();
        let fds: Vec<(BorrowedFd<'_>, crate::sys::Interest)> =
            waiting_fds().into_iter().map(|fd| (fd, crate::sys::Interest::Write)).collect();
        if fds.is_empty() || Instant::now() >= deadline {
            return;
        }
        let _ = crate::sys::poll(&fds, Some(deadline));
    }
}

/// Writes `text` (a last word before exit, as is: a check's report) to
/// stderr as a whole line, after what waits, then [`finish`]es.
pub fn exit_message(text: &str) {
    let mut line = text.as_bytes().to_vec();
    line.push(b'\n');
    write_line(Stream::Stderr, line, true);
    finish();
}

/// Writes `report` (the error that ends panzer) to stderr as a whole line,
/// after what waits, then [`finish`]es: `panzer: <report>`, or with
/// `--log-format json` an object at level `error`.
pub fn exit_error(report: &str) {
    match (FORMAT.get(), NOTICE.get()) {
        (Some(LogFormat::Json), Some(notice)) => log::Log::log(
            notice,
            &log::Record::builder()
                .level(log::Level::Error)
                .target(module_path!())
                .args(format_args!("{report}"))
                .build(),
        ),
        _ => return exit_message(&format!("panzer: {report}")),
    }
    finish();
}

/// Queues a worker's line (`--tag-output`) for the process's `stream`;
/// written by the next [`flush`].
pub(crate) fn forward(stream: Stream, line: Vec<u8>) {
    if let Some(sinks) = sinks().as_mut() {
        sinks[stream as usize].queue.push_forwarded(line);
    }
}

/// Whether enough workers' lines wait for `stream` that their pipes should
/// not be read now.
pub(crate) fn forward_full(stream: Stream) -> bool {
    sinks().as_ref().is_some_and(|s| s[stream as usize].queue.forward_full())
}

/// The sinks, opened on first use.
fn sinks() -> MutexGuard<'static, Option<[Sink; 2]>> {
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    if sinks.is_none() {
        OWNER.store(std::process::id(), Ordering::Relaxed);
        let sink = |target, stdio| Sink { target, stdio, queue: Queue::default() };
        *sinks = Some([
            sink(&TARGETS[0], || Stdio::Out(std::io::stdout())),
            sink(&TARGETS[1], || Stdio::Err(std::io::stderr())),
        ]);
    }
    sinks
}

/// One of panzer's log lines (`notice`: the count of dropped ones).
fn write_line(stream: Stream, line: Vec<u8>, notice: bool) {
    let owner = OWNER.load(Ordering::Relaxed);
    if owner != 0 && owner != std::process::id() {
        // A forked worker (library mode): it may wait, as any worker.
        let _ = std::io::stderr().write_all(&line);
        return;
    }
    if !notice {
        // The count of what is missing goes before what comes next.
        log_dropped();
    }
    if let Some(sinks) = sinks().as_mut() {
        let sink = &mut sinks[stream as usize];
        sink.queue.push_log(line, notice);
        sink.flush();
    }
}

/// Logs how many lines were dropped, once that is due.
fn log_dropped() {
    let Some(dropped) = sinks().as_mut().and_then(|s| s[Stream::Stderr as usize].queue.take_dropped()) else {
        return;
    };
    let message = format!("{dropped} log lines dropped: stderr was not writable");
    match NOTICE.get() {
        Some(notice) => log::Log::log(
            notice,
            &log::Record::builder()
                .level(log::Level::Warn)
                .target(module_path!())
                .args(format_args!("{message}"))
                .key_values(&[("dropped", dropped)])
                .build(),
        ),
        None => write_line(Stream::Stderr, format!("panzer: {message}\n").into_bytes(), true),
    }
}

/// Where env_logger writes a formatted record: one `write_all` of the
/// whole line, then `flush`.
struct LogWriter {
    line: Vec<u8>,
    notice: bool,
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            write_line(Stream::Stderr, std::mem::take(&mut self.line), self.notice);
        }
        Ok(())
    }
}
