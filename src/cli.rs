//! The command line, as clap sees it: flags and their help, no logic.
//! [`crate::config::Config`] validates and fills in defaults.

use std::ffi::{OsStr, OsString};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::Parser;

use crate::sockets::{BindAddr, BindSpec};
use crate::units::{Balance, CliDuration, CliSignal, CliSize, ReadyMode, ReloadStrategy};

/// Zero-downtime launcher: binds the listening sockets once, runs COUNT
/// copies of COMMAND on them, restarts copies that die, swaps in a new
/// version on SIGUSR1 or SIGHUP without refusing a connection, and stops
/// gracefully on SIGTERM or SIGINT.
///
/// Options may stand before or after COMMAND; everything after `--` goes to
/// COMMAND. Without COMMAND before `--`, the first word after it is COMMAND
/// (as with einhorn and start_server).
#[derive(Debug, Parser)]
#[command(
    name = "panzer",
    version = crate::control::version(),
    // Wrapped to the terminal (COLUMNS when it is not one), never wider.
    max_term_width = 100,
    after_help = "Signals, exit codes, files and panzerctl: `panzerctl man panzer`, or \
                  docs/src/reference.md. More on each option: `panzer --help`.",
    after_long_help = "Examples:\n\
                       \x20 panzer --bind 127.0.0.1:8080 --count 4 ./my_server -- --verbose\n\
                       \x20 panzer --bind 127.0.0.1:8080 --count 4 -- ./my_server --verbose\n\
                       \n\
                       Signals, exit codes, files and panzerctl: `panzerctl man panzer`, or \
                       docs/src/reference.md."
)]
pub struct Cli {
    /// Workers per generation. Default: the number of CPUs.
    ///
    /// At least 1, at most 4096, what RLIMIT_NPROC allows, and what RLIMIT_NOFILE leaves
    /// a monitor room for; the default is fewer if the limits allow fewer.
    #[arg(short, long, env = "PANZER_COUNT", value_parser = crate::limits::parse_count)]
    pub count: Option<u32>,

    /// Address to listen on, repeatable.
    ///
    /// Workers get the sockets at fd 3, 4, … in this order. Forms: 127.0.0.1:8080,
    /// [::1]:8080, 0.0.0.0:0 (any free port), unix:/path/to.sock, optionally with the
    /// socket file's mode, owner and group (unix:/run/app.sock,mode=0660,owner=U,group=G);
    /// prefix NAME= to name it in LISTEN_FDNAMES. One value may hold several addresses
    /// separated by commas, here as in the environment variable (so a path cannot
    /// hold a comma).
    #[arg(short, long, env = "PANZER_BIND", value_name = "ADDR", value_delimiter = ',')]
    pub bind: Vec<BindSpec>,

    /// Serve a small read-only HTTP endpoint from main on this address, for probes and
    /// scrapes.
    ///
    /// Repeatable: 127.0.0.1:9090, [::1]:9090, unix:/path. GET /readyz answers 200 while
    /// a generation is ready and panzer is not stopping, else 503 (the body says why);
    /// /livez answers 200 while main runs; /metrics is the text of `panzerctl metrics`.
    /// Nothing on it can change panzer, and it never reaches a worker. One value may hold
    /// several addresses separated by commas, here as in the environment variable.
    /// Default: off.
    #[arg(long, env = "PANZER_ADMIN_BIND", value_name = "ADDR", value_delimiter = ',')]
    pub admin_bind: Vec<BindAddr>,

    /// Listen backlog of every socket.
    #[arg(long, env = "PANZER_BACKLOG", default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,

    /// When a worker counts as ready: auto, notify, accepting, or a duration.
    ///
    /// `notify` (it, or a process it started, sends READY=1 to NOTIFY_SOCKET);
    /// `accepting` (it, or a process it started, is seen waiting for connections on its
    /// socket: epoll, accept, poll or select, read from /proc); a duration it must stay
    /// alive, such as 1s; `auto` (the default): READY=1 or accepting, whichever comes
    /// first, and alive 1s only for a worker whose accepting cannot be seen.
    #[arg(long, env = "PANZER_READY", default_value = "auto", value_name = "MODE",
          value_parser = offering::<ReadyMode>(["auto", "notify", "accepting"]), hide_possible_values = true)]
    pub ready: ReadyMode,

    /// A generation whose workers are not all ready by then has failed.
    #[arg(long, env = "PANZER_STARTUP_TIMEOUT", default_value = "60s", value_name = "DURATION")]
    pub startup_timeout: CliDuration,

    /// After SIGTERM, how long a worker may drain before SIGKILL.
    #[arg(long, env = "PANZER_GRACEFUL_TIMEOUT", default_value = "30s", value_name = "DURATION")]
    pub graceful_timeout: CliDuration,

    /// Lame duck: on a graceful stop, report not ready and keep serving this long, then
    /// drain.
    ///
    /// On a graceful stop (SIGTERM, SIGINT, `panzerctl stop`), panzer reports not ready
    /// at once (systemd STOPPING=1) and keeps serving for this long, so a load balancer
    /// can take this instance out of rotation; then it drains. A second SIGTERM or SIGINT
    /// during the delay skips it; SIGQUIT stops at once. Set it to at least the time your
    /// balancer or Kubernetes' endpoints take to stop sending traffic.
    #[arg(long, env = "PANZER_STOP_DELAY", default_value = "0s", value_name = "DURATION")]
    pub stop_delay: CliDuration,

    /// Control socket path.
    ///
    /// Default: <pid>.sock in a private directory (mode 0700): $XDG_RUNTIME_DIR/panzer,
    /// else /run/panzer for root, else $TMPDIR/panzer-<uid>.
    #[arg(long, env = "PANZER_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Write main's pid to this file; it is removed on exit.
    ///
    /// Its directory must not be writable by other users, unless sticky (as /tmp is).
    #[arg(long, env = "PANZER_PID_FILE", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Run monitors and workers as this user (name or uid), after binding.
    ///
    /// Needs root. The group is the user's primary group unless --group is given.
    #[arg(long, env = "PANZER_USER", value_name = "USER")]
    pub user: Option<String>,

    /// Run monitors and workers with this group (name or gid), after binding.
    #[arg(long, env = "PANZER_GROUP", value_name = "GROUP")]
    pub group: Option<String>,

    /// Log less (repeat for even less). RUST_LOG overrides -q and -v. The
    /// `listening on` and `admin endpoint on` lines stay (they carry the
    /// real port of :0) unless logging is off altogether (-qqq).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Log more (repeat for even more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The server to run: a path, or a name looked up in PATH.
    ///
    /// It may also come first after `--` (`panzer [OPTIONS] -- COMMAND [ARG]...`).
    #[arg(value_name = "COMMAND", required_unless_present = "args")]
    pub command: Option<OsString>,

    /// Arguments for COMMAND (after `--`).
    #[arg(last = true, value_name = "ARG")]
    pub args: Vec<OsString>,

    /// Leave Nagle's algorithm on for TCP sockets.
    ///
    /// By default panzer sets TCP_NODELAY on the TCP sockets it binds, and every
    /// connection accepted from them inherits it, so a response written in pieces is not
    /// held back for the client's delayed ACK (about 40 ms). Sockets passed in by systemd
    /// are left as they are (see NoDelay= in systemd.socket).
    #[arg(long, env = "PANZER_NO_NODELAY", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_nodelay: bool,

    /// How new connections reach the workers: shared (the default) or round-robin.
    ///
    /// `shared`: one listening socket per --bind, shared by every worker; the kernel
    /// hands a connection to whichever worker waits, so a few long-lived connections
    /// may all land on one. `round-robin`: one SO_REUSEPORT socket per worker slot
    /// (worker k always gets slot k's socket at fd 3), and a BPF program hands new
    /// connections to the ready slots in turn. It needs root (CAP_BPF and
    /// CAP_NET_ADMIN), TCP binds panzer binds itself, and fails at start otherwise.
    #[arg(long, env = "PANZER_BALANCE", default_value = "shared", value_name = "MODE",
          value_parser = offering::<Balance>(["shared", "round-robin"]), hide_possible_values = true)]
    pub balance: Balance,

    /// Prefix every line a worker writes to stdout or stderr with
    /// `g<generation> w<ordinal> `.
    ///
    /// Lines stay whole and never interleave; a line longer than 4 KiB is cut, marked
    /// with `…`. Default: off, and workers inherit panzer's stdout and stderr untouched.
    #[arg(long, env = "PANZER_TAG_OUTPUT", value_parser = clap::builder::BoolishValueParser::new())]
    pub tag_output: bool,

    /// How a reload replaces the serving workers: all (the default) or rolling[:K].
    ///
    /// `all` starts N new ones, then drains the N old ones once every new one is ready
    /// (room for 2N workers); `rolling[:K]` (K defaults to 1) keeps at most K workers
    /// above the count: K new ones start, and once they are ready K old ones drain, and
    /// so on. A failure stops the roll and gives the old generation back its full count.
    #[arg(long, env = "PANZER_RELOAD_STRATEGY", default_value = "all", value_name = "STRATEGY",
          value_parser = offering::<ReloadStrategy>(["all", "rolling"]), hide_possible_values = true)]
    pub reload_strategy: ReloadStrategy,

    /// On reload, start one new worker first: it serves beside the old generation for
    /// DURATION.
    ///
    /// The reload goes on only if it stayed ready all that time; otherwise the reload
    /// fails and is rolled back. Default: off.
    #[arg(long, env = "PANZER_CANARY", value_name = "DURATION")]
    pub canary: Option<CliDuration>,

    /// The signal a worker gets when it should drain.
    ///
    /// It gets it on a reload, a stop, a scale-down, a replacement (--health-timeout,
    /// --max-rss, --max-age), and as its parent-death signal when its monitor dies. A
    /// name (TERM, SIGTERM, QUIT, USR2, INT) or a number; KILL and STOP cannot be caught
    /// and are refused. SIGKILL still follows after --graceful-timeout.
    #[arg(long, env = "PANZER_DRAIN_SIGNAL", default_value = "TERM", value_name = "SIG",
          value_parser = offering::<CliSignal>(drain_signal_names()), hide_possible_values = true)]
    pub drain_signal: CliSignal,

    /// Replace a ready worker that has sent WATCHDOG=1 at least once and then stays
    /// silent longer than this.
    ///
    /// Workers see WATCHDOG_USEC and WATCHDOG_PID, as under systemd. The replacement
    /// starts first; the silent worker gets the drain signal once it is ready. Default:
    /// off.
    #[arg(long, env = "PANZER_HEALTH_TIMEOUT", value_name = "DURATION")]
    pub health_timeout: Option<CliDuration>,

    /// Replace a worker whose resident memory, with that of every process it started,
    /// exceeds SIZE (900K, 512M, 2G).
    ///
    /// It is checked every second. The replacement starts first; the old worker drains
    /// once it is ready. Default: off.
    #[arg(long, env = "PANZER_MAX_RSS", value_name = "SIZE")]
    pub max_rss: Option<CliSize>,

    /// Replace each worker after it has run about this long (±10 %).
    ///
    /// One slot at a time; the replacement starts first, the old worker drains once it is
    /// ready. Default: off.
    #[arg(long, env = "PANZER_MAX_AGE", value_name = "DURATION")]
    pub max_age: Option<CliDuration>,

    /// Library mode: COMMAND is a Rust binary built on panzer's library (`panzer::run`).
    ///
    /// It is exec'd as the monitor of each generation, loads once, and forks its workers,
    /// which share its memory copy-on-write.
    #[arg(long, env = "PANZER_PRELOAD", value_parser = clap::builder::BoolishValueParser::new())]
    pub preload: bool,

    /// How panzer writes its log lines: text or json.
    ///
    /// Main's, the monitors' and the keepers' lines. With --tag-output and
    /// json, the workers' lines become objects too, with `stream`,
    /// `generation`, `worker` and `line`.
    #[arg(long, env = "PANZER_LOG_FORMAT", value_enum, default_value_t, value_name = "FORMAT")]
    pub log_format: crate::logging::LogFormat,

    /// Check the configuration and exit, as `nginx -t` does.
    ///
    /// Parses every option, resolves COMMAND (and a script's #! interpreter),
    /// looks up --user and --group, and checks the runtime directory, the pid
    /// file's directory and each unix: socket's directory. Prints every
    /// problem, one line each, and exits 2; or prints "configuration OK" and
    /// exits 0. Binds nothing, starts nothing, writes nothing.
    #[arg(long)]
    pub check: bool,

    /// Read settings from this TOML file.
    ///
    /// Every long option is a key, spelled as on the command line without
    /// the dashes in front (`count = 8`, `bind = ["0.0.0.0:80"]`,
    /// `graceful-timeout = "10s"`), plus `command = ["./my_server", "--port",
    /// "80"]` and `env = { KEY = "value" }`. The command line wins, then the
    /// environment, then the file, then the defaults. A reload re-reads it
    /// and applies what a generation can change.
    #[arg(long, env = "PANZER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Set KEY=VALUE in every worker's environment; repeatable.
    ///
    /// Variables panzer sets itself (LISTEN_*, NOTIFY_SOCKET, PANZER_*,
    /// WATCHDOG_*, EINHORN_FD_*, SERVER_STARTER_*) are refused.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = crate::worker::env_var)]
    pub env: Vec<(String, String)>,

    /// Workers start in DIR.
    ///
    /// A relative COMMAND is found from there. Default: panzer's own working
    /// directory.
    #[arg(long, env = "PANZER_CHDIR", value_name = "DIR")]
    pub chdir: Option<PathBuf>,
}

/// A value parsed by `T`'s `FromStr`, exactly as clap would parse it, whose
/// shell completion offers `words` (`--ready <TAB>`: `auto notify
/// accepting`) without refusing the other values `T` accepts (`--ready 2s`).
/// Each use sets `hide_possible_values`: the help text names them itself.
#[derive(Clone)]
pub struct Offering<T> {
    words: Vec<&'static str>,
    value: PhantomData<fn() -> T>,
}

fn offering<T>(words: impl IntoIterator<Item = &'static str>) -> Offering<T> {
    Offering { words: words.into_iter().collect(), value: PhantomData }
}

impl<T> TypedValueParser for Offering<T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let parse: fn(&str) -> Result<T, String> = T::from_str;
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.words.iter().map(|word| PossibleValue::new(*word))))
    }
}

/// Every signal `--drain-signal` takes, by its bare name (`TERM`).
fn drain_signal_names() -> impl Iterator<Item = &'static str> {
    nix::sys::signal::Signal::iterator()
        .map(|signal| signal.as_str().trim_start_matches("SIG"))
        .filter(|name| name.parse::<CliSignal>().is_ok())
}
