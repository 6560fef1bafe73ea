//! Log lines on stderr: `<time> <LEVEL> panzer[<pid>]: <message>` for main,
//! `panzer[<pid> gen <k>]` for a monitor. `RUST_LOG` overrides `-q`/`-v`.

use std::io::Write;

/// Installs the logger for this process; `role` is `None` for main and
/// `Some(k)` for the monitor of generation k. In library mode the app may
/// have installed a logger of its own already: panzer's lines then go to it.
pub fn init(level: log::LevelFilter, generation: Option<u32>) {
    let pid = std::process::id();
    let tag = match generation {
        None => format!("panzer[{pid}]"),
        Some(k) => format!("panzer[{pid} gen {k}]"),
    };
    init_tagged(level, tag);
}

/// Installs the logger with `tag` before each message (`panzer[4242 gen 3
/// keeper]` for a generation's keeper).
pub fn init_tagged(level: log::LevelFilter, tag: String) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder
        .format(move |buf, record| {
            writeln!(buf, "{} {:<5} {tag}: {}", buf.timestamp_millis(), record.level(), record.args())
        })
        .target(env_logger::Target::Stderr);
    if builder.try_init().is_err() {
        log::set_max_level(log::max_level().max(level));
    }
}
