//! Library mode (`panzer --preload`): the app (`examples/preload.rs`) is
//! each generation's monitor, loads its table once, and forks its workers,
//! with the guarantees of exec mode (readiness, rollback, drain, reload).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

/// Size of the example's table in these tests.
const TABLE_MB: u64 = 32;

/// `panzer --preload` with the `preload` example behind a script, so that
/// a test can swap the build (`set`) as a deploy would.
struct App(std::path::PathBuf);

impl App {
    fn new(dir: &TestDir, env: &str) -> App {
        let app = App(dir.join("app.sh"));
        app.set(env);
        app
    }

    fn set(&self, env: &str) {
        let tmp = self.0.with_extension("new");
        let script = format!("#!/bin/sh\nPRELOAD_MB={TABLE_MB} {env} exec {} \"$@\"\n", example("preload"));
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

fn start(app: &App, count: &str, extra: &[&str]) -> Panzer {
    Panzer::new(app.path()).arg("--preload").count(count).args(extra).start()
}

/// The `Key:` value of a `/proc/PID/status`-like file, first word.
fn proc_field(pid: Pid, file: &str, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {text}"));
    line[key.len()..].split_whitespace().next().unwrap_or_default().to_string()
}

fn parent_of(pid: Pid) -> Pid {
    Pid::from_raw(proc_field(pid, "status", "PPid:").parse().unwrap())
}

#[test]
fn preloaded_workers_are_forks_of_the_monitor_and_share_its_table() {
    let dir = TestDir::new("preload-forks");
    let app = App::new(&dir, "");
    let panzer = start(&app, "4", &["--ready", "notify"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let workers: Vec<Pid> = distinct_pids(port, 4).into_iter().collect();

    // One monitor: the app itself (loaded once), parent of every worker.
    let monitors: BTreeSet<Pid> = workers.iter().map(|w| parent_of(*w)).collect();
    assert_eq!(monitors.len(), 1, "{monitors:?}");
    let monitor = *monitors.iter().next().unwrap();
    assert_eq!(parent_of(monitor), panzer.pid);
    let exe = |pid: Pid| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe(monitor).ends_with("examples/preload"), "{:?}", exe(monitor));
    assert_eq!(panzer.log().matches(" loaded ").count(), 1, "loaded once: {}", panzer.log());
    assert!(
        panzer.log().contains(&format!("preload: pid {monitor} loaded {TABLE_MB} MB")),
        "{}",
        panzer.log()
    );
    for worker in &workers {
        assert_eq!(exe(*worker), exe(monitor), "worker {worker}");
        // Default dispositions but SIGPIPE ignored (as Rust starts), an
        // empty mask, and the monitor's fds gone.
        assert_eq!(proc_field(*worker, "status", "SigBlk:"), "0000000000000000", "worker {worker}");
        assert_eq!(proc_field(*worker, "status", "SigIgn:"), "0000000000001000", "worker {worker}");
        let fds = open_fds(*worker);
        assert!(
            fds.iter().all(|fd| *fd < 3
                || fd_target(*worker, *fd).starts_with("socket:")
                || fd_target(*worker, *fd).starts_with("pipe:")
                || fd_target(*worker, *fd).starts_with("anon_inode:")),
            "{fds:?}"
        );
    }
    // Every worker answers from the one table.
    let tables: BTreeSet<String> = (0..8).map(|_| get(port, "/").unwrap().field("table")).collect();
    assert_eq!(tables.len(), 1, "{tables:?}");

    // The table's pages are shared: proportional set sizes add up to about
    // one table, not four.
    let pss_kib: u64 =
        workers.iter().map(|w| proc_field(*w, "smaps_rollup", "Pss:").parse::<u64>().unwrap()).sum();
    let table_kib = TABLE_MB * 1024;
    assert!(pss_kib < 2 * table_kib, "4 workers' PSS {pss_kib} KiB for a {table_kib} KiB table");
    for worker in &workers {
        let rss: u64 = proc_field(*worker, "status", "VmRSS:").parse().unwrap();
        assert!(rss > table_kib, "worker {worker} maps the table: RSS {rss} KiB");
    }
}

#[test]
fn a_reload_under_load_swaps_generations_without_a_failed_request() {
    let dir = TestDir::new("preload-reload");
    let app = App::new(&dir, "");
    let panzer = start(&app, "2", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let old: Vec<Pid> = distinct_pids(port, 2).into_iter().collect();
    let load = Load::start(port, 4, "/");
    load.wait_for(50);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_ready(2);
    panzer.wait_for_line("generation 1 stopped");
    load.wait_for(50);
    let (failures, generations) = load.finish();
    assert!(failures.is_empty(), "{} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(generations.contains_key("1") && generations.contains_key("2"), "{generations:?}");
    assert_eq!(get(port, "/").unwrap().field("generation"), "2");
    // The old workers drained through serve (not killed) and exited 0.
    let log = panzer.log();
    for pid in &old {
        assert!(log.contains(&format!("preload: pid {pid} serve-0 drained")), "{log}");
        assert!(log.contains(&format!("(pid {pid}) exited with status 0")), "{log}");
    }
}

#[test]
fn a_build_that_panics_while_loading_is_rolled_back() {
    let dir = TestDir::new("preload-rollback");
    let app = App::new(&dir, "");
    let panzer = start(&app, "2", &["--pid-file", "{dir}/panzer.pid"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    app.set("PRELOAD_FAIL=1");
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("generation 1 keeps serving"), "{}", out.stderr);
    panzer.wait_for_line("reload failed");
    assert!(panzer.log().contains("Routes::load: the routing table is corrupt"), "{}", panzer.log());
    assert_eq!(get(port, "/").unwrap().field("generation"), "1");
}

#[test]
fn a_preload_that_started_a_thread_is_refused_with_the_rule() {
    let dir = TestDir::new("preload-thread");
    let app = App::new(&dir, "PRELOAD_SPAWN_THREAD=1");
    let mut panzer = start(&app, "2", &[]);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(1), "{}", panzer.log());
    let log = panzer.log();
    assert!(log.contains("generation 1 failed: panzer::run: this process runs 2 threads"), "{log}");
    assert!(log.contains("build the async runtime (tokio, …) inside Worker::serve"), "{log}");
    assert!(!log.contains("worker 0 started"), "{log}");
}

#[test]
fn a_panicking_copy_is_restarted_in_its_thread_and_its_process_survives() {
    let dir = TestDir::new("preload-panic");
    let app = App::new(&dir, "PRELOAD_THREADS=2");
    let panzer = start(&app, "1", &["--pid-file", "{dir}/panzer.pid"]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let worker = get(port, "/").unwrap().pid();
    assert!(get(port, "/panic").is_err(), "a panicking copy answers nothing");
    panzer.wait_for_line(&format!("worker 0 (pid {worker}): serve copy"));
    // Both copies serve again, in the same process.
    let mut copies = BTreeSet::new();
    eventually(PATIENCE, "both copies to answer", || {
        let r = get(port, "/").ok()?;
        assert_eq!(r.pid(), worker);
        copies.insert(r.field("copy"));
        (copies.len() == 2).then_some(())
    });
    assert!(alive(worker));
    assert!(!panzer.log().contains("exited with"), "{}", panzer.log());
    // Status shows the threads of each worker.
    let status = panzer.status();
    let threads = status["generations"][0]["workers"][0]["threads"].as_u64();
    assert_eq!(threads, Some(3), "2 copies and the watcher: {status}");
}

#[test]
fn without_threads_a_panic_ends_the_worker_and_its_monitor_forks_another() {
    let dir = TestDir::new("preload-one-copy");
    let app = App::new(&dir, "");
    let panzer = start(&app, "1", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let worker = get(port, "/").unwrap().pid();
    let monitor = parent_of(worker);
    let _ = get(port, "/panic");
    panzer.wait_for_line(&format!("worker 0 (pid {worker}) exited with status 70"));
    let next =
        eventually(PATIENCE, "a new worker to answer", || get(port, "/").ok().filter(|r| r.pid() != worker));
    assert_eq!(parent_of(next.pid()), monitor, "forked again by the same monitor");
}

#[test]
fn a_process_whose_copies_keep_panicking_is_replaced() {
    let dir = TestDir::new("preload-panics");
    let app = App::new(&dir, "PRELOAD_THREADS=2");
    let panzer = start(&app, "1", &[]);
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let worker = get(port, "/").unwrap().pid();
    let monitor = parent_of(worker);
    for _ in 0..5 {
        let _ = get(port, "/panic");
    }
    panzer.wait_for_line(&format!("worker 0 (pid {worker}) exited with status 70"));
    assert!(panzer.log().contains("serve panicked 5 times within 10s"), "{}", panzer.log());
    let next =
        eventually(PATIENCE, "a new worker to answer", || get(port, "/").ok().filter(|r| r.pid() != worker));
    assert_eq!(parent_of(next.pid()), monitor, "forked again by the same monitor");
}

#[test]
fn the_example_without_panzer_says_how_to_start_it_or_serves_on_listen_fds() {
    let out =
        Command::new(example("preload")).env("PRELOAD_MB", "1").env_remove("LISTEN_FDS").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("start it with `panzer --preload --bind 127.0.0.1:8080"), "{stderr}");
    assert!(stderr.contains("LISTEN_FDS"), "{stderr}");

    // Exec mode hands it sockets the systemd way: it serves as one worker.
    let mut panzer = Panzer::new(example("preload")).count(1).env("PRELOAD_MB", "1").start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let r = get(port, "/").unwrap();
    assert_eq!(r.field("generation"), "1");
    let worker = r.pid();
    let monitor = parent_of(worker);
    assert!(panzer.monitors().contains(&monitor), "an exec'd worker of panzer's own monitor");
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    assert!(panzer.log().contains(&format!("preload: pid {worker} serve-0 drained")), "{}", panzer.log());
}

#[test]
fn the_tokio_example_finishes_a_request_in_flight_when_a_reload_drains_it() {
    let mut panzer = Panzer::new(example("preload_tokio")).arg("--preload").count(2).pid_file().start();
    let port = panzer.port(0);
    panzer.wait_ready(1);
    let first = get(port, "/").unwrap();
    assert!(first.body.contains("runtime=tokio"), "{first:?}");

    let mut slow = connect(port).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let line = panzer.wait_for_line("answers in 1500 ms");
    let old: i32 = line.split("pid ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let out = panzer.ctl_by_pid_file(&["reload"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "reloaded: generation 2 serves"), "{}", out.stderr);
    let answer = read_response(&mut slow).unwrap();
    assert_eq!((answer.status, answer.pid().as_raw()), (200, old), "{answer:?}");
    panzer.wait_for_line(&format!("preload_tokio: pid {old} drained (1 in flight)"));
    panzer.wait_for_line(&format!("(pid {old}) exited with status 0"));
    assert_eq!(get(port, "/").unwrap().field("generation"), "2");
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
}

/// A file the app opened before `panzer::run` belongs to its preloaded
/// state: in every worker it is still that file, never closed under the
/// app's feet (its number then reused by a worker's own pipe, listener or
/// client connection, so that the app's log lines went to a client).
#[test]
fn a_file_the_app_opened_before_run_is_still_that_file_in_its_workers() {
    let dir = TestDir::new("preload-file");
    let file = dir.join("app.log");
    let file_env = file.to_str().unwrap().to_string();
    // Padding puts the log's fd where a worker opens its own fds; each
    // count shifts it to another of them.
    for pad in ["0", "6"] {
        let mut panzer = Panzer::new(example("preload_file"))
            .arg("--preload")
            .count(1)
            .env("PRELOAD_FILE", &file_env)
            .env("PRELOAD_PAD", pad)
            .start();
        let port = panzer.port(0);
        panzer.wait_ready(1);
        for _ in 0..2 {
            let r = get(port, "/").unwrap();
            assert_eq!((r.status, r.field("wrote")), (200, "ok".to_string()), "pad {pad}: {r:?}");
        }
        let worker = get(port, "/").unwrap().pid();
        let lines = std::fs::read_to_string(&file).unwrap();
        assert!(lines.contains(&format!("request 2 of pid {worker}")), "pad {pad}: {lines}");
        panzer.signal(Signal::SIGTERM);
        assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    }
}

#[test]
fn preload_without_any_socket_is_a_usage_error() {
    let dir = TestDir::new("preload-nosock");
    let app = App::new(&dir, "");
    let mut panzer = Panzer::new(app.path()).no_bind().arg("--preload").start();
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(2), "{}", panzer.log());
    let log = panzer.log();
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains("--preload needs a listening socket"), "{log}");
    assert!(panzer.monitors().is_empty());
}

#[test]
fn preload_of_a_program_not_built_on_panzer_run_fails_within_seconds_saying_so() {
    // One that runs on (and would be waited on for the whole startup
    // timeout), and one that exits at once.
    for (command, args) in [("sleep", &["--", "100"][..]), ("true", &[][..])] {
        let started = std::time::Instant::now();
        let mut panzer = Panzer::new(command).arg("--preload").command_args(args).start();
        let status = panzer.wait_exit(PATIENCE);
        let log = panzer.log();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(started.elapsed() < std::time::Duration::from_secs(6), "took {:?}: {log}", started.elapsed());
        assert!(log.contains(&format!("{command} is not built on panzer::run (library mode)")), "{log}");
        assert!(!log.contains("not ready within"), "{log}");
        assert!(panzer.monitors().is_empty());
    }
    let log = {
        let mut panzer = Panzer::new("sleep").arg("--preload").command_args(&["--", "100"]).start();
        panzer.wait_exit(PATIENCE);
        panzer.log()
    };
    assert!(log.contains("it did not speak the monitor protocol within 2s"), "{log}");
}

#[test]
fn an_app_that_loads_for_longer_than_the_hello_wait_still_starts() {
    // It says its first word before its own main, not after loading.
    let dir = TestDir::new("preload-slow");
    let app = App::new(&dir, "PRELOAD_LOAD_MS=3000");
    let panzer = start(&app, "1", &[]);
    panzer.wait_ready(1);
    let log = panzer.log();
    assert!(!log.contains("not built on panzer::run"), "{log}");
    assert_eq!(get(panzer.port(0), "/").unwrap().field("generation"), "1");
}
