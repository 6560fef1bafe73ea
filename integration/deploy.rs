//! The deployment examples in examples/deploy/, run as far as this machine
//! allows: each unit's command line is read out of the unit file and run
//! under a test-owned NOTIFY_SOCKET (the socket-activated one through
//! systemd-socket-activate); the container entrypoint runs as PID 1 of a
//! pid namespace, probed and scraped over HTTP the way the Kubernetes
//! Deployment says, and stopped as a pod is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;
use crate::systemd::FakeSystemd;

fn deploy_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/deploy").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A unit file's `Key=value` settings (continuation lines joined).
fn unit_file(name: &str) -> HashMap<String, String> {
    let text = read(name).replace("\\\n", " ");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

/// `30s` → 30; `45` → 45.
fn seconds(value: &str) -> u64 {
    value.trim_matches('"').trim_end_matches('s').parse().unwrap_or_else(|_| panic!("not seconds: {value}"))
}

/// The value after `option` in `argv`.
fn option<'a>(argv: &'a [String], option: &str) -> &'a str {
    let at = argv.iter().position(|a| a == option).unwrap_or_else(|| panic!("no {option} in {argv:?}"));
    &argv[at + 1]
}

/// An `ExecStart=` line as this test can run it: the built panzer for
/// `/usr/local/bin/panzer`, `app` for the server, loopback port 0 for
/// every `--bind`; every other option as written.
fn runnable(exec_start: &str, app: &str) -> Vec<String> {
    assert!(!exec_start.contains(['"', '\'']), "quoting is not expected here: {exec_start}");
    let mut argv: Vec<String> = exec_start.split_whitespace().map(String::from).collect();
    assert_eq!(argv[0], "/usr/local/bin/panzer", "{exec_start}");
    argv[0] = env!("CARGO_BIN_EXE_panzer").to_string();
    for i in 1..argv.len() {
        if argv[i - 1] == "--bind" {
            argv[i] = "127.0.0.1:0".into();
        }
    }
    assert_eq!(argv.last().map(String::as_str), Some("/usr/local/bin/my-server"), "{exec_start}");
    *argv.last_mut().unwrap() = app.to_string();
    argv
}

/// Runs an `ExecReload=` line for main `pid`, as systemd would.
fn exec_reload(line: &str, pid: Pid) {
    let line = line.replace("$MAINPID", &pid.to_string());
    let words: Vec<&str> = line.split_whitespace().collect();
    let status = Command::new(words[0]).args(&words[1..]).status().unwrap();
    assert!(status.success(), "{line}: {status}");
}

/// What systemd checks of a service unit that runs panzer; returns its
/// graceful timeout in seconds.
fn check_service(unit: &HashMap<String, String>, argv: &[String]) {
    assert_eq!(unit["Type"], "notify");
    assert_eq!(unit["KillMode"], "mixed", "SIGTERM must reach main alone");
    assert_eq!(unit["ExecReload"], "/bin/kill -USR1 $MAINPID");
    let graceful = seconds(option(argv, "--graceful-timeout"));
    let stop_delay = argv.iter().position(|a| a == "--stop-delay").map_or(0, |i| seconds(&argv[i + 1]));
    assert!(
        seconds(&unit["TimeoutStopSec"]) > stop_delay + graceful + 5,
        "TimeoutStopSec leaves no time for the stop delay and the drain"
    );
    let startup = argv.iter().position(|a| a == "--startup-timeout").map_or(60, |i| seconds(&argv[i + 1]));
    assert!(seconds(&unit["TimeoutStartSec"]) > startup, "TimeoutStartSec is shorter than --startup-timeout");
}

#[test]
fn the_systemd_unit_runs_as_written_and_tells_systemd_ready_reloading_stopping() {
    let text = read("panzer.service");
    assert!(
        text.lines().any(|l| l.starts_with('#') && l.contains("--stop-delay")),
        "the unit says when to add --stop-delay"
    );
    let unit = unit_file("panzer.service");
    let argv = runnable(&unit["ExecStart"], &example("hello"));
    check_service(&unit, &argv);
    let systemd = FakeSystemd::new();
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let mut panzer = Panzer::with_args(&args).env("NOTIFY_SOCKET", systemd.path()).start();
    let ready = systemd.until("READY=1");
    assert!(ready.last().unwrap().contains(&format!("MAINPID={}", panzer.pid)), "{ready:?}");
    let port = panzer.port(0);
    assert_eq!(get(port, "/").unwrap().status, 200);

    exec_reload(&unit["ExecReload"], panzer.pid);
    let reload = systemd.until("READY=1");
    assert!(reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload:?}");
    assert!(reload.last().unwrap().contains("STATUS=generation 2 serving with 4 worker(s)"), "{reload:?}");
    // Generation 1 may still answer a request or two while it drains.
    eventually(PATIENCE, "generation 2 to answer", || {
        (get(port, "/").ok()?.field("generation") == "2").then_some(())
    });

    // systemctl stop with KillMode=mixed: SIGTERM to main alone.
    panzer.signal(Signal::SIGTERM);
    systemd.until("STOPPING=1");
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
}

/// Binds the socket unit's address on loopback, port 0, and execs the rest
/// of its arguments with that socket at fd 3 and `LISTEN_FDS=1`, as
/// systemd does for a `.socket` unit (`LISTEN_FDNAMES` is its
/// `FileDescriptorName=`).
const SYSTEMD_SOCKET: &str = r#"
import os, socket, sys
names, argv = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(1024)
sys.stderr.write("socket unit: port %d\n" % s.getsockname()[1])
sys.stderr.flush()
t = os.dup(s.fileno())
s.close()
os.dup2(t, 3)
os.close(t)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=names)
os.execvp(argv[0], argv)
"#;

#[test]
fn the_socket_activated_unit_serves_on_the_socket_systemd_passes() {
    let socket = unit_file("panzer-activated.socket");
    let service = unit_file("panzer-activated.service");
    let listen: std::net::SocketAddr = socket["ListenStream"].parse().expect("ListenStream is host:port");
    assert_eq!(socket["Accept"], "no", "panzer takes the listening socket, not connections");
    let argv = runnable(&service["ExecStart"], &example("hello"));
    assert!(!argv.contains(&"--bind".to_string()), "the socket comes from systemd");
    check_service(&service, &argv);
    // systemd-socket-activate (from systemd's package) takes the socket
    // passed to it and waits for the first connection, then execs panzer
    // with LISTEN_FDS and LISTEN_PID of its own, as systemd does for a
    // service started by its socket. Without it, the socket goes to panzer
    // straight from the stand-in for the .socket unit.
    let activate = Command::new("systemd-socket-activate").arg("--version").output().is_ok();
    let name = socket["FileDescriptorName"].as_str();
    let mut args = vec!["-c", SYSTEMD_SOCKET, name];
    if activate {
        // It passes on only the variables it is told to; systemd gives a
        // service NOTIFY_SOCKET, and the test gives panzer its runtime dir.
        args.extend(["systemd-socket-activate", "-E", "NOTIFY_SOCKET", "-E", "XDG_RUNTIME_DIR"]);
    } else {
        eprintln!("systemd-socket-activate is not installed: the socket goes to panzer directly");
    }
    args.extend(argv.iter().map(String::as_str));
    let systemd = FakeSystemd::new();
    let mut panzer =
        Panzer::with_args(&args).via("python3", &[]).env("NOTIFY_SOCKET", systemd.path()).start();
    let line = panzer.wait_for_line("socket unit: port ");
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(listen.port() != 0);

    // The first connection starts the service; it is answered, not refused.
    let first = get(port, "/").unwrap();
    assert_eq!((first.status, first.field("generation").as_str()), (200, "1"));
    let ready = systemd.until("READY=1");
    assert!(ready.last().unwrap().contains(&format!("MAINPID={}", panzer.pid)), "{ready:?}");
    assert!(panzer.log().contains(&format!("listening on 127.0.0.1:{port}")), "{}", panzer.log());
    if !activate {
        assert_eq!(environ(first.pid())["LISTEN_FDNAMES"], name);
    }

    exec_reload(&service["ExecReload"], panzer.pid);
    let reload = systemd.until("READY=1");
    assert!(reload[0].starts_with("RELOADING=1"), "{reload:?}");
    // Generation 1 may still answer a request or two while it drains.
    eventually(PATIENCE, "generation 2 to answer", || {
        (get(port, "/").ok()?.field("generation") == "2").then_some(())
    });
    panzer.signal(Signal::SIGTERM);
    systemd.until("STOPPING=1");
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
}

/// The first line after `after` that starts (trimmed) with `key:`, its value.
fn yaml_value<'a>(yaml: &'a str, after: &str, key: &str) -> &'a str {
    let start = yaml.find(after).unwrap_or_else(|| panic!("no {after} in the Deployment"));
    yaml[start..]
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} after {after}"))
        .trim()
}

/// The Deployment's value of environment variable `name`, in seconds.
fn yaml_env_seconds(yaml: &str, name: &str) -> u64 {
    seconds(yaml_value(yaml, &format!("name: {name}"), "value").trim_matches('"'))
}

/// A probe's `httpGet`: its path, and the container port its named port is.
fn http_probe(yaml: &str, probe: &str) -> (String, u16) {
    let path = yaml_value(yaml, &format!("{probe}:"), "path").to_string();
    let name = yaml_value(yaml, &format!("{probe}:"), "port");
    let port = yaml_value(yaml, &format!("- name: {name}"), "containerPort").parse().expect("a port number");
    (path, port)
}

#[test]
fn the_container_entrypoint_makes_panzer_pid_1_as_the_deployment_expects() {
    // The image: exec-form ENTRYPOINT (no shell as PID 1), running the entrypoint.
    let dockerfile = read("Dockerfile");
    let entrypoint = dockerfile.lines().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("ENTRYPOINT in exec form");
    assert!(
        dockerfile.lines().any(|l| l == format!("COPY examples/deploy/entrypoint.sh {}", entrypoint[0])),
        "the entrypoint is copied where ENTRYPOINT runs it"
    );
    let docker_env = dockerfile.lines().find_map(|l| l.strip_prefix("ENV ")).expect("ENV");
    let ready = docker_env.split(' ').find_map(|kv| kv.strip_prefix("PANZER_READY=")).expect("PANZER_READY");
    // The pod: a grace period beyond the stop delay, the graceful timeout
    // and panzer's backstop together.
    let yaml = read("deployment.yaml");
    let grace = seconds(yaml_value(&yaml, "spec:", "terminationGracePeriodSeconds"));
    let stop_delay = yaml_env_seconds(&yaml, "PANZER_STOP_DELAY");
    let graceful = yaml_env_seconds(&yaml, "PANZER_GRACEFUL_TIMEOUT");
    assert!(stop_delay > 0, "no stop delay: the pod is refused traffic before its endpoints are gone");
    assert!(
        grace > stop_delay + graceful + 5,
        "terminationGracePeriodSeconds {grace} cuts the drain short (stop delay {stop_delay} s, graceful \
         timeout {graceful} s, backstop 5 s)"
    );
    // The probes and the scrape, all on the admin endpoint.
    let mut args: Vec<String> = serde_json::from_str(yaml_value(&yaml, "containers:", "args")).expect("args");
    let admin = option(&args, "--admin-bind").to_string();
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(http_probe(&yaml, "readinessProbe"), ("/readyz".to_string(), admin_port));
    assert_eq!(http_probe(&yaml, "livenessProbe"), ("/livez".to_string(), admin_port));
    assert_eq!(yaml_value(&yaml, "annotations:", "prometheus.io/path"), "/metrics");
    assert_eq!(
        yaml_value(&yaml, "annotations:", "prometheus.io/port").trim_matches('"'),
        admin_port.to_string()
    );
    assert_eq!(yaml_value(&yaml, "annotations:", "prometheus.io/scrape"), "\"true\"");
    assert_eq!(args.last().map(String::as_str), Some("/app/server"));
    *args.last_mut().unwrap() = example("hello");
    for arg in &mut args {
        if *arg == admin {
            *arg = "127.0.0.1:0".into();
        }
    }

    let unshare = Command::new("unshare").arg("--version").output().is_ok();
    if !nix::unistd::geteuid().is_root() || !unshare {
        eprintln!("skipped: needs root and unshare(1) for a pid namespace");
        return;
    }
    // PATH as in the image: panzer and panzerctl where the entrypoint finds them.
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_panzer")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let script = deploy_file("entrypoint.sh");
    let mut command = vec!["--pid", "--fork", "--kill-child", "--mount-proc", "sh", script.to_str().unwrap()];
    command.extend(args.iter().map(String::as_str));
    let (stop_delay_env, graceful_env) = (format!("{stop_delay}s"), format!("{graceful}s"));
    let mut panzer = Panzer::with_args(&command)
        .via("unshare", &[])
        .env("PATH", &path)
        .env("PANZER_BIND", "127.0.0.1:0")
        .env("PANZER_READY", ready)
        .env("PANZER_STOP_DELAY", &stop_delay_env)
        .env("PANZER_GRACEFUL_TIMEOUT", &graceful_env)
        .start();
    let port = panzer.port(0);
    let admin = panzer.admin_port();
    panzer.wait_ready(1);
    assert!(panzer.log().contains("panzer[1]:"), "panzer is not PID 1:\n{}", panzer.log());
    assert_eq!(get(port, "/").unwrap().status, 200);
    // The kubelet's probes and Prometheus' scrape, over HTTP.
    let readyz = get(admin, "/readyz").unwrap();
    assert_eq!(readyz.status, 200, "{readyz:?}");
    assert_eq!(get(admin, "/livez").unwrap().status, 200);
    let metrics = get(admin, "/metrics").unwrap();
    assert!(metrics.status == 200 && metrics.body.contains("panzer_"), "{metrics:?}");
    // panzer as the host sees it: the child of unshare.
    let main = *process_table().iter().find(|(_, p)| p.ppid == panzer.pid).expect("panzer under unshare").0;

    // Pod termination: SIGTERM to PID 1. Not ready at once, still serving
    // through the stop delay, then drained.
    kill(main, Signal::SIGTERM).unwrap();
    panzer.wait_for_line("(--stop-delay); serving until then");
    assert_eq!(get(admin, "/readyz").unwrap().status, 503, "the pod still reads ready while stopping");
    assert_eq!(get(port, "/").unwrap().status, 200, "the pod no longer serves during its stop delay");
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0), "{}", panzer.log());
    assert!(panzer.log().contains("stopping gracefully"), "{}", panzer.log());
}
