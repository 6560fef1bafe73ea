//! The bench's setup and its output: where the measured panzer and the
//! `server` example are (built first when `cargo bench` runs the bench),
//! how a scenario starts a panzer to measure, and the one result line
//! every scenario prints, with how to reproduce it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{within, Panzer};
use crate::measured::{Measured, PATIENCE};

/// Workers per generation in every scenario but `start-64`.
pub(crate) const WORKERS: u32 = 4;

pub(crate) type Outcome = Result<Vec<String>, String>;

/// One result line: name, figures, target, verdict, how to reproduce.
pub(crate) fn line(name: &str, figures: &str, target: &str, pass: bool, repro: &str) -> String {
    let verdict = if pass { "PASS" } else { "MISS" };
    format!("{name:<26} {figures} | target: {target} | {verdict} | {repro}")
}

/// A plain child that is killed and reaped on drop.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let child = &mut self.0;
        let _ = within(PATIENCE, || child.try_wait().ok().flatten());
    }
}

/// What is measured: the panzer binary and the `server` it runs.
pub(crate) struct Bench {
    pub(crate) panzer: PathBuf,
    pub(crate) server: PathBuf,
}

impl Bench {
    /// Finds panzer and builds (or finds) the release `server` example:
    /// `cargo bench` builds benches and binaries, not examples.
    pub(crate) fn new() -> Result<Bench, String> {
        let panzer = PathBuf::from(env!("CARGO_BIN_EXE_panzer"));
        let server = panzer
            .parent()
            .ok_or("CARGO_BIN_EXE_panzer has no parent directory")?
            .join("examples")
            .join("server");
        let profile_is_release = panzer.parent().and_then(Path::file_name).is_some_and(|d| d == "release");
        match std::env::var_os("CARGO") {
            Some(cargo) if profile_is_release => build_example(&cargo, "server")?,
            _ if server.exists() => {}
            _ => {
                return Err(format!(
                    "{} is missing: run `cargo build --release --examples` first (`cargo bench` \
                     does not build examples)",
                    server.display()
                ))
            }
        }
        if !server.exists() {
            return Err(format!(
                "{} is still missing after building it: run `cargo build --release --examples`",
                server.display()
            ));
        }
        // Another build of panzer may be measured instead, e.g. a static one
        // (see README, "Performance").
        let panzer = match std::env::var_os("PANZER_BENCH_BIN") {
            Some(other) => {
                println!("bench reload: measuring {}", Path::new(&other).display());
                PathBuf::from(other)
            }
            None => panzer,
        };
        Ok(Bench { panzer, server })
    }

    pub(crate) fn panzer(&self, options: &[&str], env: &[(&str, &str)]) -> Result<Measured, String> {
        let server = self.server.to_string_lossy();
        let mut args = vec!["--bind", "127.0.0.1:0"];
        args.extend_from_slice(options);
        args.push(&server);
        let guard = Panzer::start_via(&self.panzer.to_string_lossy(), &args, env);
        let log = guard.watch_log();
        Ok(Measured { guard, log })
    }

    /// How to rerun a scenario, and roughly what it does by hand: panzer
    /// with `options`, then `then`.
    pub(crate) fn repro(&self, filter: &str, options: &str, then: &str) -> String {
        let here = std::env::current_dir().unwrap_or_default();
        let short = |p: &Path| p.strip_prefix(&here).unwrap_or(p).to_string_lossy().into_owned();
        let mut repro = format!("repro: cargo bench --bench reload -- {filter}");
        if !options.is_empty() {
            let _ = write!(
                repro,
                "  # {} --bind 127.0.0.1:0 {options} {}",
                short(&self.panzer),
                short(&self.server)
            );
        }
        if !then.is_empty() {
            let _ = write!(repro, "; {then}");
        }
        repro
    }
}

/// `cargo build --release --example NAME`, so that the bench measures the
/// current source. A no-op when it is up to date.
pub(crate) fn build_example(cargo: &std::ffi::OsStr, name: &str) -> Result<(), String> {
    eprintln!("bench reload: cargo build --release --example {name}");
    let child = Command::new(cargo)
        .args(["build", "--release", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    let mut child = KillOnDrop(child);
    let status = within(Duration::from_secs(900), || child.0.try_wait().ok().flatten())
        .ok_or_else(|| format!("`cargo build --release --example {name}` took over 15 minutes"))?;
    if !status.success() {
        return Err(format!("`cargo build --release --example {name}` failed ({status})"));
    }
    Ok(())
}
