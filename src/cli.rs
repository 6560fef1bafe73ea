//! The command line, as clap sees it: flags and their help, no logic.
//! [`crate::config::Config`] validates and fills in defaults.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::sockets::{BindAddr, BindSpec};
use crate::units::{CliDuration, CliSignal, CliSize, ReadyMode, ReloadStrategy};

/// Zero-downtime launcher: binds the listening sockets once, runs COUNT
/// copies of COMMAND on them, restarts copies that die, swaps in a new
/// version on SIGUSR1 or SIGHUP without refusing a connection, and stops
/// gracefully on SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(
    name = "panzer",
    version = crate::control::version(),
    after_help = "Options may stand before or after COMMAND; everything after `--` goes to COMMAND.\n\
                  Without COMMAND before `--`, the first word after it is COMMAND (as with einhorn\n\
                  and start_server).\n\
                  Examples: panzer --bind 127.0.0.1:8080 --count 4 ./my_server -- --verbose\n\
                  \x20         panzer --bind 127.0.0.1:8080 --count 4 -- ./my_server --verbose"
)]
pub struct Cli {
    /// Workers per generation (at least 1, at most 4096, what RLIMIT_NPROC
    /// allows, and what RLIMIT_NOFILE leaves a monitor room for). Default:
    /// the number of CPUs (fewer if the limits allow fewer).
    #[arg(short, long, env = "PANZER_COUNT", value_parser = crate::limits::parse_count)]
    pub count: Option<u32>,

    /// Address to listen on, repeatable; workers get the sockets at fd 3, 4, … in
    /// this order. Forms: 127.0.0.1:8080, [::1]:8080, 0.0.0.0:0 (any free port),
    /// unix:/path/to.sock, optionally with the socket file's mode, owner and
    /// group (unix:/run/app.sock,mode=0660,owner=U,group=G); prefix NAME= to
    /// name it in LISTEN_FDNAMES. In the environment variable, separate
    /// addresses with commas.
    #[arg(short, long, env = "PANZER_BIND", value_name = "ADDR", value_delimiter = ',')]
    pub bind: Vec<BindSpec>,

    /// Serve a small read-only HTTP endpoint from main on this address, for
    /// probes and scrapes; repeatable: 127.0.0.1:9090, [::1]:9090, unix:/path.
    /// GET /readyz answers 200 while a generation is ready and panzer is not
    /// stopping, else 503 (the body says why); /livez answers 200 while main
    /// runs; /metrics is the text of `panzerctl metrics`. Nothing on it can
    /// change panzer, and it never reaches a worker. In the environment
    /// variable, separate addresses with commas. Default: off.
    #[arg(long, env = "PANZER_ADMIN_BIND", value_name = "ADDR", value_delimiter = ',')]
    pub admin_bind: Vec<BindAddr>,

    /// Listen backlog of every socket.
    #[arg(long, env = "PANZER_BACKLOG", default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,

    /// When a worker counts as ready: `notify` (it, or a process it started, sends
    /// READY=1 to NOTIFY_SOCKET); `accepting` (it, or a process it started, is seen
    /// waiting for connections on its socket: epoll, accept, poll or select, read
    /// from /proc); a duration it must stay alive, such as 1s; `auto` (the default):
    /// READY=1 or accepting, whichever comes first, and alive 1s only for a worker
    /// whose accepting cannot be seen.
    #[arg(long, env = "PANZER_READY", default_value = "auto", value_name = "MODE")]
    pub ready: ReadyMode,

    /// A generation whose workers are not all ready by then has failed.
    #[arg(long, env = "PANZER_STARTUP_TIMEOUT", default_value = "60s", value_name = "DURATION")]
    pub startup_timeout: CliDuration,

    /// After SIGTERM, how long a worker may drain before SIGKILL.
    #[arg(long, env = "PANZER_GRACEFUL_TIMEOUT", default_value = "30s", value_name = "DURATION")]
    pub graceful_timeout: CliDuration,

    /// Lame duck: on a graceful stop (SIGTERM, SIGINT, `panzerctl stop`),
    /// report not ready at once (systemd STOPPING=1) and keep serving for
    /// this long, so a load balancer can take this instance out of
    /// rotation; then drain. A second SIGTERM or SIGINT during the delay
    /// skips it; SIGQUIT stops at once. Set it to at least the time your
    /// balancer or Kubernetes' endpoints take to stop sending traffic.
    #[arg(long, env = "PANZER_STOP_DELAY", default_value = "0s", value_name = "DURATION")]
    pub stop_delay: CliDuration,

    /// Control socket path. Default: <pid>.sock in a private directory (mode 0700):
    /// $XDG_RUNTIME_DIR/panzer, else /run/panzer for root, else $TMPDIR/panzer-<uid>.
    #[arg(long, env = "PANZER_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Write main's pid to this file; it is removed on exit. Its directory must
    /// not be writable by other users, unless sticky (as /tmp is).
    #[arg(long, env = "PANZER_PID_FILE", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Run monitors and workers as this user (name or uid), after binding.
    /// Needs root. The group is the user's primary group unless --group is given.
    #[arg(long, env = "PANZER_USER", value_name = "USER")]
    pub user: Option<String>,

    /// Run monitors and workers with this group (name or gid), after binding.
    #[arg(long, env = "PANZER_GROUP", value_name = "GROUP")]
    pub group: Option<String>,

    /// Log less (repeat for even less). RUST_LOG overrides -q and -v.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Log more (repeat for even more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The server to run: a path, or a name looked up in PATH. It may also
    /// come first after `--` (`panzer [OPTIONS] -- COMMAND [ARG]...`).
    #[arg(value_name = "COMMAND", required_unless_present = "args")]
    pub command: Option<OsString>,

    /// Arguments for COMMAND (after `--`).
    #[arg(last = true, value_name = "ARG")]
    pub args: Vec<OsString>,

    /// Leave Nagle's algorithm on for TCP sockets. By default panzer sets
    /// TCP_NODELAY on the TCP sockets it binds, and every connection accepted
    /// from them inherits it, so a response written in pieces is not held back
    /// for the client's delayed ACK (about 40 ms). Sockets passed in by
    /// systemd are left as they are (see NoDelay= in systemd.socket).
    #[arg(long, env = "PANZER_NO_NODELAY", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_nodelay: bool,

    /// Prefix every line a worker writes to stdout or stderr with
    /// `g<generation> w<ordinal> `. Lines stay whole and never interleave;
    /// a line longer than 4 KiB is cut, marked with `…`. Default: off, and
    /// workers inherit panzer's stdout and stderr untouched.
    #[arg(long, env = "PANZER_TAG_OUTPUT", value_parser = clap::builder::BoolishValueParser::new())]
    pub tag_output: bool,

    /// How a reload replaces the serving workers: `all` starts N new ones,
    /// then drains the N old ones once every new one is ready (room for 2N
    /// workers); `rolling[:K]` (K defaults to 1) keeps at most K workers
    /// above the count: K new ones start, and once they are ready K old ones
    /// drain, and so on. A failure stops the roll and gives the old
    /// generation back its full count.
    #[arg(long, env = "PANZER_RELOAD_STRATEGY", default_value = "all", value_name = "STRATEGY")]
    pub reload_strategy: ReloadStrategy,

    /// On reload, start one new worker first: it serves beside the old
    /// generation for DURATION and the reload goes on only if it stayed
    /// ready all that time; otherwise the reload fails and is rolled back.
    /// Default: off.
    #[arg(long, env = "PANZER_CANARY", value_name = "DURATION")]
    pub canary: Option<CliDuration>,

    /// The signal a worker gets when it should drain: on a reload, a stop,
    /// a scale-down, a replacement (--health-timeout, --max-rss, --max-age),
    /// and as its parent-death signal when its monitor dies. A name (TERM,
    /// SIGTERM, QUIT, USR2, INT) or a number; KILL and STOP cannot be caught
    /// and are refused. SIGKILL still follows after --graceful-timeout.
    #[arg(long, env = "PANZER_DRAIN_SIGNAL", default_value = "TERM", value_name = "SIG")]
    pub drain_signal: CliSignal,

    /// Replace a ready worker that has sent WATCHDOG=1 at least once and then
    /// stays silent longer than this (workers see WATCHDOG_USEC and
    /// WATCHDOG_PID, as under systemd). The replacement starts first; the
    /// silent worker gets the drain signal once it is ready. Default: off.
    #[arg(long, env = "PANZER_HEALTH_TIMEOUT", value_name = "DURATION")]
    pub health_timeout: Option<CliDuration>,

    /// Replace a worker whose resident memory, with that of every process
    /// it started, exceeds SIZE (900K, 512M, 2G), checked every second. The
    /// replacement starts first; the old worker drains once it is ready.
    /// Default: off.
    #[arg(long, env = "PANZER_MAX_RSS", value_name = "SIZE")]
    pub max_rss: Option<CliSize>,

    /// Replace each worker after it has run about this long (±10 %), one
    /// slot at a time; the replacement starts first, the old worker drains
    /// once it is ready. Default: off.
    #[arg(long, env = "PANZER_MAX_AGE", value_name = "DURATION")]
    pub max_age: Option<CliDuration>,

    /// Library mode: COMMAND is a Rust binary built on panzer's library
    /// (`panzer::run`). It is exec'd as the monitor of each generation, loads
    /// once, and forks its workers, which share its memory copy-on-write.
    #[arg(long, env = "PANZER_PRELOAD", value_parser = clap::builder::BoolishValueParser::new())]
    pub preload: bool,
}
