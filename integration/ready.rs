//! `--ready accepting` and `--ready auto` (issue #13): a worker that never
//! sends `READY=1` is ready once panzer sees it accept on its socket, never
//! before; `auto`, the default, takes `READY=1` or accepting, whichever
//! comes first, and falls back to 1 s alive only for a worker whose
//! accepting cannot be seen. main's `generation K ready` line says what decided.

use crate::harness::*;
use crate::real_servers::{available, go_server, script, skip};

/// main's line for generation `k`: `generation 1 ready: 2/2 workers in 12 ms (accepting)`.
fn reason_line(panzer: &Panzer, k: u32) -> String {
    let tag = format!("generation {k} ready: ");
    eventually(PATIENCE, &format!("generation {k}'s readiness line\n{}", panzer.log()), || {
        panzer.log().lines().find(|l| l.contains(&tag)).map(String::from)
    })
}

/// What decided, in parentheses at the end of the line.
fn reason(line: &str) -> &str {
    let open = line.rfind('(').unwrap_or_else(|| panic!("no reason in {line:?}"));
    line[open + 1..].trim_end().trim_end_matches(')')
}

/// Starts `command` as two workers with `--ready ready` (none: the default)
/// and waits for generation 1; returns panzer and the reason logged.
fn start(ready: Option<&str>, command: &[&str], env: &[(&str, &str)]) -> (Panzer, String) {
    let mut panzer = Panzer::new(command[0]).count(2);
    if let Some(ready) = ready {
        panzer = panzer.ready(ready);
    }
    let panzer = panzer.arg("--").command_args(&command[1..]).envs(env).start();
    panzer.wait_ready(1);
    let line = reason_line(&panzer, 1);
    (panzer, reason(&line).to_owned())
}

/// Index of the first log line containing `needle`.
fn position(log: &str, needle: &str) -> usize {
    log.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in\n{log}"))
}

/// Both workers said `serving` (or whatever `serving` is) before panzer's
/// ready line, and a request is answered right after it.
fn ready_only_after(panzer: &Panzer, serving: &str) {
    let log = panzer.log();
    let ready = position(&log, "generation 1 ready");
    let serving: Vec<usize> =
        log.lines().enumerate().filter(|(_, l)| l.contains(serving)).map(|(i, _)| i).collect();
    assert!(serving.len() >= 2, "two workers said {serving:?}:\n{log}");
    assert!(serving[..2].iter().all(|&i| i < ready), "ready before the workers accepted:\n{log}");
    let answer = get(panzer.port(0), "/").expect("a request right after ready");
    assert_eq!(answer.status, 200);
}

#[test]
fn accepting_waits_for_a_server_that_never_notifies_to_accept() {
    let server = example("server");
    let env = [("NO_NOTIFY", "1"), ("READY_DELAY_MS", "300")];
    let (panzer, reason) = start(Some("accepting"), &[&server], &env);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    ready_only_after(&panzer, " serving");
}

#[test]
fn auto_is_the_default_and_sees_a_silent_server_accept() {
    let server = example("server");
    let (panzer, reason) = start(None, &[&server], &[("NO_NOTIFY", "1")]);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    ready_only_after(&panzer, " serving");
}

#[test]
fn auto_never_calls_a_visibly_busy_server_ready_after_one_second() {
    // Polling only its signals for 1.5 s: observable, not yet accepting.
    let server = example("server");
    let env = [("NO_NOTIFY", "1"), ("READY_DELAY_MS", "1500")];
    let (panzer, reason) = start(Some("auto"), &[&server], &env);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    ready_only_after(&panzer, " serving");
}

#[test]
fn auto_falls_back_to_one_second_alive_for_a_worker_it_cannot_watch() {
    // `sleep` neither accepts nor waits on anything panzer can read.
    let (panzer, reason) = start(Some("auto"), &["sleep", "60"], &[]);
    assert_eq!(reason, "alive 1s", "{}", panzer.log());
}

#[test]
fn auto_takes_ready_1_from_a_server_that_notifies() {
    // Not asserted: which of READY=1 and accepting panzer saw first.
    let (panzer, reason) = start(None, &[&example("server")], &[]);
    assert!(["notify", "accepting"].iter().any(|r| reason.contains(r)), "{reason}\n{}", panzer.log());
}

#[test]
fn accepting_sees_node_listen_on_fd_3() {
    if let Err(why) = available("node", &["--version"]) {
        return skip("node", &why);
    }
    let (panzer, reason) = start(Some("accepting"), &["node", &script("node_server.js")], &[]);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    ready_only_after(&panzer, " listening");
}

#[test]
fn auto_waits_for_node_that_listens_late() {
    // Node has its epoll instance from the start: observable, so no 1 s
    // fallback while it has not registered the socket yet.
    if let Err(why) = available("node", &["--version"]) {
        return skip("node", &why);
    }
    let env = [("LISTEN_DELAY_MS", "1500")];
    let (panzer, reason) = start(None, &["node", &script("node_server.js")], &env);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    ready_only_after(&panzer, " listening");
}

#[test]
fn accepting_sees_python_asyncio_serve_fd_3() {
    let (panzer, reason) = start(Some("accepting"), &["python3", &script("asyncio_app.py")], &[]);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    ready_only_after(&panzer, "asyncio: pid");
}

#[test]
fn accepting_sees_a_go_server_that_never_notifies() {
    let server = match go_server() {
        Ok(server) => server,
        Err(why) => return skip("go", &why),
    };
    let (panzer, reason) = start(Some("accepting"), &[&server], &[("NO_NOTIFY", "1")]);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    assert_eq!(get(panzer.port(0), "/").unwrap().status, 200);
}

#[test]
fn accepting_sees_gunicorns_worker_child() {
    // gunicorn's arbiter sends READY=1 itself, which `accepting` ignores:
    // its sync worker child, waiting in select(2) on the socket, decides.
    if let Err(why) = available("gunicorn", &["--version"]) {
        return skip("gunicorn", &why);
    }
    let dir = script("");
    let command = ["gunicorn", "--chdir", &dir, "--workers", "1", "wsgi_app:app"];
    let (panzer, reason) = start(Some("accepting"), &command, &[]);
    assert_eq!(reason, "accepting", "{}", panzer.log());
    assert_eq!(get(panzer.port(0), "/").unwrap().status, 200);
}
