//! `--tag-output`: each line a worker writes comes out whole, prefixed
//! with its generation and slot; without it, workers write to panzer's own
//! stdout and stderr directly.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::harness::*;

const LINES: usize = 400;

/// Writes LINES lines to stdout and to stderr, each in three writes (so that
/// two workers sharing one fd would interleave them), then a last line
/// without its newline, then sleeps.
fn chatty_worker() -> String {
    format!(
        r#"i=0
while [ $i -lt {LINES} ]; do
  printf 'out w=%s ' "$PANZER_WORKER"; printf 'i=%s ' $i; printf 'end\n'
  printf 'err w=%s ' "$PANZER_WORKER" >&2; printf 'i=%s ' $i >&2; printf 'end\n' >&2
  i=$((i+1))
done
printf 'last words of w=%s' "$PANZER_WORKER"
exec sleep 1000"#
    )
}

/// The live workers of `panzer` (processes running `sleep 1000`).
fn sleeping_workers(panzer: &Panzer) -> Vec<Pid> {
    let table = process_table();
    panzer
        .descendants()
        .into_iter()
        .filter(|p| table.get(p).is_some_and(|i| i.cmdline == "sleep 1000 "))
        .collect()
}

#[test]
fn two_workers_lines_come_out_whole_with_the_right_prefix() {
    let script = chatty_worker();
    let mut panzer = Panzer::new("sh")
        .count(2)
        .ready("100ms")
        .arg("--tag-output")
        .command_args(&["--", "-c", &script])
        .start();
    panzer.wait_for_lines(" end", 4 * LINES);
    // Each worker's fd 1 and 2 are its own pipes; nothing else leaked in.
    let workers = eventually(PATIENCE, "two sleeping workers", || {
        let workers = sleeping_workers(&panzer);
        (workers.len() == 2).then_some(workers)
    });
    for worker in &workers {
        assert_eq!(open_fds(*worker), [0, 1, 2, 3], "worker {worker}");
        let (out, err) = (fd_target(*worker, 1), fd_target(*worker, 2));
        assert!(out.starts_with("pipe:") && err.starts_with("pipe:") && out != err, "{out} {err}");
        assert!(fd_target(*worker, 3).starts_with("socket:"));
    }
    panzer.signal(Signal::SIGTERM);
    assert_eq!(panzer.wait_exit(PATIENCE).code(), Some(0));

    let log = panzer.log();
    let mut seen = [[0usize; 2]; 2];
    for line in log.lines().filter(|l| l.contains("w=")) {
        let words: Vec<&str> = line.split(' ').collect();
        if words.get(2) == Some(&"last") {
            assert_eq!(words.len(), 6, "{line:?}");
            assert_eq!(words[1].strip_prefix('w'), words[5].strip_prefix("w="), "{line:?}");
            continue;
        }
        // g1 wN out|err w=N i=K end
        assert_eq!(words.len(), 6, "a line cut or merged: {line:?}");
        assert_eq!(words[0], "g1", "{line:?}");
        let slot = words[1].strip_prefix('w').unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(words[3], format!("w={slot}"), "a line under another worker's prefix: {line:?}");
        let stream = ["out", "err"].iter().position(|s| *s == words[2]).unwrap_or_else(|| panic!("{line:?}"));
        let i: usize =
            words[4].strip_prefix("i=").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
        let slot: usize = slot.parse().unwrap();
        assert_eq!(i, seen[slot][stream], "lines of one worker and stream keep their order: {line:?}");
        seen[slot][stream] += 1;
        assert_eq!(words[5], "end", "{line:?}");
    }
    assert_eq!(seen, [[LINES; 2]; 2], "every line arrived once");
    // The unfinished last line was written when its worker exited.
    for slot in 0..2 {
        let last = format!("g1 w{slot} last words of w={slot}");
        assert!(log.lines().any(|l| l == last), "no {last:?} in\n{log}");
    }
}

#[test]
fn without_tag_output_workers_write_to_panzers_own_stdout_and_stderr() {
    let panzer = Panzer::new("sh")
        .no_bind()
        .count(2)
        .ready("100ms")
        .command_args(&["--", "-c", "echo plain line; exec sleep 1000"])
        .env("PANZER_TAG_OUTPUT", "0")
        .start();
    panzer.wait_for_lines("plain line", 2);
    assert!(panzer.log().lines().any(|l| l == "plain line"), "{}", panzer.log());
    let workers = eventually(PATIENCE, "two sleeping workers", || {
        let workers = sleeping_workers(&panzer);
        (workers.len() == 2).then_some(workers)
    });
    let (out, err) = (fd_target(panzer.pid, 1), fd_target(panzer.pid, 2));
    assert!(out.ends_with("panzer.log"), "{out}");
    for worker in workers {
        assert_eq!(fd_target(worker, 1), out, "worker {worker}'s stdout");
        assert_eq!(fd_target(worker, 2), err, "worker {worker}'s stderr");
    }
}

#[test]
fn the_environment_variable_turns_tagging_on_and_a_reload_changes_the_generation_tag() {
    let panzer = Panzer::new("sh")
        .no_bind()
        .count(1)
        .ready("100ms")
        .command_args(&["--", "-c", "echo hello; exec sleep 1000"])
        .env("PANZER_TAG_OUTPUT", "1")
        .start();
    panzer.wait_for_line("g1 w0 hello");
    panzer.wait_ready(1);
    panzer.signal(Signal::SIGUSR1);
    panzer.wait_for_line("g2 w0 hello");
    assert!(!panzer.log().lines().any(|l| l == "hello"), "{}", panzer.log());
}
