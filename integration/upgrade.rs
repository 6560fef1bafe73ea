//! Upgrading panzer itself (`SIGUSR2`, `panzerctl upgrade`): main
//! re-executes the binary now at its path, keeping its pid, its sockets,
//! its control socket and the running workers. Each test starts panzer from
//! a copy of the binary in its own directory, so that it can swap that copy
//! as a deploy would (a new file renamed over the old one).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

/// The version suffix of the second build.
const SUFFIX: &str = "-upgraded";

/// A second `panzer` binary, built once per test run with
/// `PANZER_VERSION_SUFFIX` set, in a target directory of its own (so the
/// binary under test is never rebuilt).
fn upgraded_binary() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_panzer"));
        let target = bin.parent().and_then(Path::parent).ok_or("no target directory")?.join("upgrade-build");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--bin", "panzer"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target)
            .env("PANZER_VERSION_SUFFIX", SUFFIX)
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!("cargo build failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        Ok(target.join("debug").join("panzer"))
    });
    built.as_deref().unwrap_or_else(|e| panic!("cannot build the second panzer: {e}"))
}

/// Where the test's panzer runs from, and how to swap it.
struct Install {
    dir: TestDir,
}

impl Install {
    fn new() -> Install {
        let install = Install { dir: TestDir::new("install") };
        install.put(Path::new(env!("CARGO_BIN_EXE_panzer")));
        install
    }

    fn path(&self) -> PathBuf {
        self.dir.join("panzer")
    }

    /// Installs `binary` at the path, as a deploy does: copied beside it,
    /// then renamed over it (a running binary cannot be written in place).
    fn put(&self, binary: &Path) {
        let tmp = self.dir.join("panzer.new");
        install_program(binary, &tmp);
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    /// Installs a shell script with `body` (a broken "binary").
    fn put_script(&self, body: &str) {
        // Written beside it, never run itself, then installed as a program.
        let text = self.dir.join("panzer.text");
        std::fs::write(&text, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = self.dir.join("panzer.new");
        let _ = std::fs::remove_file(&tmp);
        install_program(&text, &tmp);
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    /// panzer, from this install, serving the `server` fixture with `--ready notify`.
    fn start(&self, count: &str, server_env: &str) -> (Panzer, Deploy) {
        let deploy = Deploy(self.dir.join("server.sh"));
        deploy.set(server_env);
        let panzer = Panzer::new(deploy.path())
            .count(count)
            .notify()
            .pid_file()
            .via(self.path().to_str().unwrap(), &[])
            .start();
        panzer.wait_ready(1);
        (panzer, deploy)
    }
}

/// `(generation, worker pids)` of each generation, and the control socket's inode.
fn workers(status: &serde_json::Value) -> Vec<(u64, Vec<i64>)> {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let pids = g["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
            (g["generation"].as_u64().unwrap(), pids)
        })
        .collect()
}

fn control_socket(panzer: &Panzer) -> (PathBuf, u64) {
    let path = panzer.dir.join("panzer").join(format!("{}.sock", panzer.pid));
    let inode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).ino();
    (path, inode)
}

#[test]
fn upgrades_under_load_keep_the_pid_the_control_socket_and_the_workers_and_fail_no_request() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("4", "");
    let port = panzer.port(0);
    let before = panzer.status();
    let socket = control_socket(&panzer);
    let fresh = Load::start(port, 8, "/");
    let kept = KeepAlive::start(port, 8);
    fresh.wait_for(50);
    for n in 1..=5 {
        panzer.signal(Signal::SIGUSR2);
        panzer.wait_for_lines("resumed as panzer", n);
        fresh.wait_for(20);
        let out = panzer.ctl(&["upgrade"]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        fresh.wait_for(20);
    }
    let (failures, _) = fresh.finish();
    let (answered, kept_failures) = kept.finish();
    assert!(failures.is_empty(), "fresh connections failed: {failures:?}");
    assert!(kept_failures.is_empty(), "kept-alive connections failed: {kept_failures:?}");
    assert!(answered > 0);
    let after = panzer.status();
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["pid"].as_i64(), Some(panzer.pid.as_raw() as i64), "main's pid never changes");
    assert_eq!(workers(&after), workers(&before), "the same generation and worker pids");
    assert_eq!(control_socket(&panzer), socket, "the same control socket file");
    assert!(panzer.exited().is_none());
}

#[test]
fn panzerctl_upgrade_reports_the_new_version_and_a_reload_then_runs_the_new_monitor() {
    let upgraded = upgraded_binary();
    let install = Install::new();
    let (panzer, _deploy) = install.start("2", "");
    let old_version = panzer.status()["version"].as_str().unwrap().to_string();
    let old_monitor = panzer.monitors()[0];
    install.put(upgraded);
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let new_version = format!("{old_version}{SUFFIX}");
    assert_eq!(
        out.stdout.trim(),
        format!("upgraded: panzer {new_version} runs as pid {}", panzer.pid),
        "{}",
        out.stderr
    );
    assert_eq!(panzer.status()["version"], new_version.as_str());
    let version = std::process::Command::new(install.path()).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("panzer {new_version}"));
    // The monitor of generation 1 still runs the old binary, now deleted.
    assert!(fd_exe(old_monitor).ends_with("(deleted)"), "{}", fd_exe(old_monitor));
    let out = panzer.ctl(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let status = panzer.status();
    let generations = status["generations"].as_array().unwrap();
    let serving = generations.iter().find(|g| g["state"] == "ready").unwrap();
    assert_eq!(serving["generation"], 2);
    let new_monitor = serving["monitor_pid"].as_i64().unwrap();
    assert_eq!(
        fd_exe(Pid::from_raw(new_monitor as i32)),
        install.path().display().to_string(),
        "the new generation's monitor is the new binary"
    );
}

/// What `/proc/PID/exe` points at.
fn fd_exe(pid: Pid) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default()
}

#[test]
fn a_broken_new_binary_leaves_the_old_main_serving_and_panzerctl_upgrade_fails_with_the_reason() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("2", "");
    let port = panzer.port(0);
    let before = workers(&panzer.status());
    install.put_script("echo 'this is not panzer' >&2; exit 1");
    let out = panzer.ctl(&["upgrade"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("upgrade failed: the new binary")
            && out.stderr.contains("exited with status 1")
            && out.stderr.contains("this is not panzer"),
        "{}",
        out.stderr
    );
    std::fs::remove_file(install.path()).unwrap();
    let out = panzer.ctl(&["upgrade"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("no such file or directory"), "{}", out.stderr);
    // A signal fails the same way, and the old main goes on.
    panzer.signal(Signal::SIGUSR2);
    panzer.wait_for_lines("upgrade failed", 3);
    assert_eq!(get(port, "/").unwrap().status, 200);
    assert_eq!(workers(&panzer.status()), before);
    assert!(panzer.exited().is_none());
}

#[test]
fn an_upgrade_during_a_reload_waits_for_it_and_both_complete() {
    let install = Install::new();
    let (panzer, deploy) = install.start("2", "");
    deploy.set("READY_DELAY_MS=1500");
    let reload = panzer.ctl_start(&["reload"]);
    panzer.wait_for_line("starting generation 2");
    let upgrade = panzer.ctl_start(&["upgrade"]);
    let second = panzer.ctl_start(&["upgrade"]);
    let reload = reload.answer(PATIENCE);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    let (upgrade, second) = (upgrade.answer(PATIENCE), second.answer(PATIENCE));
    assert_eq!(upgrade.code, 0, "{}", upgrade.stderr);
    assert_eq!(second.stdout, upgrade.stdout, "a second upgrade gets the first one's answer");
    let log = panzer.log();
    assert!(log.contains("upgrade waits for the reload under way"), "{log}");
    assert_eq!(log.matches("resumed as panzer").count(), 1, "one upgrade for both requests");
    let ready = log.find("generation 2 ready").unwrap();
    assert!(log.find("upgrade: re-executing").unwrap() > ready, "the reload finished first");
    assert_eq!(panzer.status()["generations"][0]["generation"], 2);
}

#[test]
fn fifty_upgrades_in_a_row_leak_no_fd_and_no_memory() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("1", "");
    let fds = || open_fds(panzer.pid);
    let before = fds();
    let rss_before = rss_kib(panzer.pid);
    for n in 0..50 {
        let out = panzer.ctl(&["upgrade"]);
        assert_eq!(out.code, 0, "upgrade {n}: {}", out.stderr);
    }
    // The last panzerctl's connection closes as main sees it gone.
    let after = within(PATIENCE, || Some(fds()).filter(|now| *now == before)).unwrap_or_else(fds);
    assert_eq!(after, before, "main's open fds, before and after 50 upgrades");
    let rss_after = rss_kib(panzer.pid);
    assert!(rss_after < rss_before + 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
    assert_eq!(panzer.log().matches("resumed as panzer").count(), 50);
}

fn rss_kib(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn systemd_hears_reloading_then_ready_around_an_upgrade_and_the_main_pid_stays() {
    let systemd = crate::systemd::FakeSystemd::new();
    let install = Install::new();
    let deploy = Deploy(install.dir.join("server.sh"));
    deploy.set("");
    let panzer = Panzer::new(deploy.path())
        .count(1)
        .notify()
        .via(install.path().to_str().unwrap(), &[])
        .env("NOTIFY_SOCKET", systemd.path())
        .start();
    let first = systemd.until("READY=1").join("\n");
    assert!(first.contains(&format!("MAINPID={}", panzer.pid)), "{first}");
    panzer.signal(Signal::SIGUSR2);
    let seen = systemd.until("upgraded to panzer").join("\n");
    assert!(seen.contains("RELOADING=1"), "{seen}");
    assert!(seen.contains("READY=1") && !seen.contains("MAINPID="), "{seen}");
}

/// Processes below main whose command line contains `marker`.
fn below_main(panzer: &Panzer, marker: &str) -> Vec<Pid> {
    let table = process_table();
    panzer
        .descendants()
        .into_iter()
        .filter(|p| table.get(p).is_some_and(|i| i.cmdline.contains(marker)))
        .collect()
}

#[test]
fn a_check_killed_by_a_signal_says_so_and_leaves_no_process_of_its_own_behind() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("1", "");
    let before = workers(&panzer.status());
    // A new binary that forks a helper and hangs in its check.
    install.put_script("sleep 3141 & wait");
    let upgrade = panzer.ctl_start(&["upgrade"]);
    let check = eventually(PATIENCE, "the check to run", || {
        let found = below_main(&panzer, "__upgrade-check");
        (found.len() == 1 && below_main(&panzer, "sleep 3141").len() == 1).then(|| found[0])
    });
    nix::sys::signal::kill(check, Signal::SIGKILL).unwrap();
    let out = upgrade.answer(PATIENCE);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("failed its check: it was killed by SIGKILL"), "{}", out.stderr);
    eventually(PATIENCE, "the check's helper to be gone", || {
        below_main(&panzer, "sleep 3141").is_empty().then_some(())
    });
    assert_eq!(workers(&panzer.status()), before);
}

#[test]
fn a_check_that_takes_too_long_is_ended_with_every_process_it_started() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("1", "");
    install.put_script("sleep 2718 & wait");
    let out = panzer.ctl(&["upgrade"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("did not finish its check within"), "{}", out.stderr);
    eventually(PATIENCE, "the check's helper to be gone", || {
        below_main(&panzer, "sleep 2718").is_empty().then_some(())
    });
    assert!(panzer.exited().is_none());
}

#[test]
fn a_deploy_that_repoints_a_symlink_upgrades_to_the_binary_it_now_names() {
    let upgraded = upgraded_binary();
    let install = Install::new();
    // releases/1/panzer and releases/2/panzer, with `current` naming one of
    // them, as Capistrano-style deploys, Homebrew and alternatives lay out.
    let release = |n: u32, binary: &Path| {
        let dir = install.dir.join(&format!("releases/{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        install_program(binary, &dir.join("panzer"));
    };
    let point = |n: u32| {
        let tmp = install.dir.join("current.new");
        std::os::unix::fs::symlink(format!("releases/{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, install.dir.join("current")).unwrap();
    };
    release(1, Path::new(env!("CARGO_BIN_EXE_panzer")));
    point(1);
    let deploy = Deploy::new(&install.dir);
    let via = install.dir.join("current/panzer");
    let panzer =
        Panzer::new(deploy.path()).count(1).notify().pid_file().via(via.to_str().unwrap(), &[]).start();
    panzer.wait_ready(1);
    let old_version = panzer.status()["version"].as_str().unwrap().to_string();
    release(2, upgraded);
    point(2);
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(panzer.status()["version"], format!("{old_version}{SUFFIX}").as_str(), "{}", panzer.log());
}

/// main's children that are zombies (exited, never reaped).
fn zombie_children(main: Pid) -> Vec<String> {
    let children = std::fs::read_to_string(format!("/proc/{main}/task/{main}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        .collect()
}

#[test]
fn the_check_child_is_reaped_before_main_becomes_the_new_binary() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("1", "");
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    eventually(PATIENCE, "main to have no zombie child", || {
        zombie_children(panzer.pid).is_empty().then_some(())
    });
}

#[test]
fn after_an_upgrade_ps_shows_main_with_the_command_line_it_was_started_with() {
    let install = Install::new();
    let (panzer, _deploy) = install.start("1", "");
    let cmdline = |pid: i32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ")
    };
    let before = cmdline(panzer.pid.as_raw());
    assert!(before.contains(" --count 1 "), "{before}");
    install.put(Path::new(env!("CARGO_BIN_EXE_panzer")));
    let out = panzer.ctl(&["upgrade"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(cmdline(panzer.pid.as_raw()), before, "ps shows what the operator started");

    // Where the new image found the state is not passed on: a worker of
    // the next generation does not see it.
    let out = panzer.ctl(&["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let (_, pids) = workers(&panzer.status()).into_iter().find(|(g, _)| *g == 2).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("PANZER_RESUME"), "a worker inherited it");
}
