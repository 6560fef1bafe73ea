//! Real servers, unchanged (issue #10): stock third-party servers and apps
//! written for other launchers run as panzer's workers. Each test starts
//! one with two workers and checks what a user sees: two distinct pids
//! answer, a reload under a load of fresh connections refuses none, and a
//! stop exits 0 with nothing left running.
//!
//! The servers come from `.ci/run` (gunicorn and uvicorn from PyPI, Go from
//! apt; Node and Python are on the machine); the scripts they run live in
//! `integration/fixtures/real/`. A test whose tool is missing says so and
//! passes without running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

/// The fixture scripts' directory.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/real")
}

pub(crate) fn script(name: &str) -> String {
    scripts().join(name).to_string_lossy().into_owned()
}

/// Whether `program ARGS…` runs and exits 0; the error says why not.
pub(crate) fn available(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            Err(format!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
        }
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// Prints why a test does not run (`.ci/run` installs what it needs).
pub(crate) fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason} (bash .ci/run installs it)");
}

/// The Go server, built once per test run from its source.
pub(crate) fn go_server() -> Result<String, String> {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            available("go", &["version"])?;
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go_server");
            let built = Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&out)
                .arg(scripts().join("go_server.go"))
                .output()
                .map_err(|e| format!("go build: {e}"))?;
            if !built.status.success() {
                return Err(format!("go build failed: {}", String::from_utf8_lossy(&built.stderr)));
            }
            Ok(out.to_string_lossy().into_owned())
        })
        .clone()
}

/// Runs `command` as panzer's workers (`--ready ready`, two workers) and
/// checks the whole life: serve, reload under load, stop.
fn serves_reloads_and_stops(ready: &str, command: &[&str], env: &[(&str, &str)]) {
    let mut panzer = Panzer::new(command[0])
        .count(2)
        .ready(ready)
        .args(&["--graceful-timeout", "10s", "--"])
        .command_args(&command[1..])
        .envs(env)
        .start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let first = distinct_pids(port, 2);

    let load = Load::start(port, 4, "/");
    load.wait_for(20);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    // The old generation is gone, and the new one has served the load.
    eventually(PATIENCE, "generation 1's workers to exit", || first.iter().all(|p| !alive(*p)).then_some(()));
    load.wait_for(20);
    let (failures, generations) = load.finish();
    let answered: u32 = generations.values().sum();
    let (connect_errors, failed): (Vec<String>, Vec<String>) =
        failures.into_iter().partition(|f| f.starts_with("connect: "));
    assert!(
        connect_errors.is_empty(),
        "{} of {} connections were not made around the reload, e.g. {:?}",
        connect_errors.len(),
        answered as usize + connect_errors.len() + failed.len(),
        &connect_errors[..connect_errors.len().min(3)]
    );
    eprintln!(
        "{}: {answered} answered, 0 refused, {} failed after connecting around the reload {:?}",
        command.join(" "),
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // A generation-1 worker may take a connection until its drain signal lands.
    eventually(PATIENCE, "only generation 2 to answer", || {
        distinct_pids(port, 2).is_disjoint(&first).then_some(())
    });

    let tree = panzer.descendants();
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "panzer's exit after SIGTERM");
    let left: Vec<Pid> = tree.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after panzer exited: {left:?}");
}

#[test]
fn gunicorn_reads_listen_fds_and_notifies_ready() {
    // gunicorn's arbiter takes the LISTEN_FDS sockets and sends READY=1
    // itself; each panzer worker is an arbiter with one sync worker.
    if let Err(why) = available("gunicorn", &["--version"]) {
        return skip("gunicorn", &why);
    }
    let dir = scripts();
    let dir = dir.to_str().unwrap();
    serves_reloads_and_stops("notify", &["gunicorn", "--chdir", dir, "--workers", "1", "wsgi_app:app"], &[]);
}

#[test]
fn uvicorn_serves_fd_3() {
    if let Err(why) = available("uvicorn", &["--version"]) {
        return skip("uvicorn", &why);
    }
    let dir = scripts();
    let dir = dir.to_str().unwrap();
    serves_reloads_and_stops("1s", &["uvicorn", "--fd", "3", "--app-dir", dir, "asgi_app:app"], &[]);
}

#[test]
fn node_listens_on_fd_3() {
    if let Err(why) = available("node", &["--version"]) {
        return skip("node", &why);
    }
    serves_reloads_and_stops("1s", &["node", &script("node_server.js")], &[]);
}

#[test]
fn a_go_file_listener_serves_and_notifies_ready() {
    let server = match go_server() {
        Ok(server) => server,
        Err(why) => return skip("go", &why),
    };
    serves_reloads_and_stops("notify", &[&server], &[]);
}

#[test]
fn pythons_socketserver_serves_fd_3() {
    serves_reloads_and_stops("notify", &["python3", &script("socketserver_app.py")], &[]);
}

#[test]
fn an_einhorn_app_finds_its_socket() {
    serves_reloads_and_stops("1s", &["python3", &script("einhorn_app.py")], &[]);
}

#[test]
fn a_server_starter_app_finds_its_socket() {
    serves_reloads_and_stops("1s", &["python3", &script("starter_app.py")], &[]);
}
