//! `panzerctl top` in a real terminal: tmux runs it in a pane of known
//! size; the test types keys and reads the screen as a person would.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::harness::*;

/// A tmux server of this test's own (`-L`, in its own directory), killed on drop.
struct Tmux {
    socket: String,
    dir: TestDir,
}

impl Tmux {
    /// A detached 120×30 session running a plain shell with a known prompt.
    fn start() -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let tmux = Tmux {
            socket: format!("pz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
            dir: TestDir::new("tmux"),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "30",
            "env",
            "PS1=shell$ ",
            "TERM=xterm",
            "sh",
        ]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        eventually(PATIENCE, "the shell prompt", || tmux.screen().contains("shell$").then_some(()));
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TMUX_TMPDIR", &self.dir.0)
            .env_remove("TMUX")
            .output()
            .expect("cannot run tmux")
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    /// A pane variable: `alternate_on`, `cursor_flag`, …
    fn pane(&self, variable: &str) -> String {
        let out = self.run(&["display-message", "-p", &format!("#{{{variable}}}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Types a command line and waits for a line of output that starts
    /// with `prefix` (the echoed command line starts with the prompt);
    /// returns the rest of that line.
    fn type_line(&self, line: &str, prefix: &str) -> String {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
        eventually(PATIENCE, &format!("a line starting {prefix:?} after `{line}`"), || {
            let screen = self.screen();
            screen.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_string)
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_every_worker_live_and_gives_the_terminal_back_on_q_and_ctrl_c() {
    let Some(tmux) = Tmux::start() else {
        eprintln!("skipped: tmux is not installed (.ci/run installs it)");
        return;
    };
    let panzer =
        Panzer::new(example("server")).count(3).notify().args(&["--control", "{dir}/ctl.sock"]).start();
    panzer.wait_ready(1);
    let control = panzer.dir.join("ctl.sock");
    let top =
        format!("{} --control {} top --interval 200ms", env!("CARGO_BIN_EXE_panzerctl"), control.display());
    let workers = |screen: &str| {
        screen
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() >= 6 && words[0].parse::<u32>().is_ok() && words[2] == "yes"
            })
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };

    for (serving, quit) in [(1, "q"), (2, "C-c")] {
        tmux.keys(&["-l", &top]);
        tmux.keys(&["Enter"]);
        let screen = eventually(PATIENCE, "three ready workers on top's screen", || {
            let screen = tmux.screen();
            (workers(&screen).len() == 3).then_some(screen)
        });
        assert!(screen.contains(&format!("panzer pid {}", panzer.pid)), "{screen}");
        assert!(screen.contains(&format!("generation {serving}  ready")), "{screen}");
        assert!(
            screen.contains("WORKER") && screen.contains("RESTARTS") && screen.contains("RSS"),
            "{screen}"
        );
        assert!(!screen.contains("shell$"), "top draws on the alternate screen:\n{screen}");
        assert_eq!(tmux.pane("alternate_on"), "1");
        assert_eq!(tmux.pane("cursor_flag"), "0", "the cursor is hidden");

        // A reload shows up live, without a key pressed.
        let out = panzerctl(&["--control", control.to_str().unwrap(), "reload"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let screen = eventually(PATIENCE, "the reload on top's screen", || {
            let screen = tmux.screen();
            screen.contains(&format!("generation {} serves", serving + 1)).then_some(screen)
        });
        let row = screen.lines().skip_while(|l| *l != "last reloads").nth(1).unwrap_or_default();
        let words: Vec<&str> = row.split_whitespace().collect();
        assert!(words[0] == "ok" && ["ms", "s"].contains(&words[2]) && words[4] == "ago", "{screen}");

        tmux.keys(&[quit]);
        // Typed before top has exited, the next line would go to top (raw
        // mode), not to the shell: wait for the shell to be in front again.
        eventually(PATIENCE, &format!("top to exit on {quit}"), || {
            (tmux.pane("pane_current_command") != "panzerctl").then_some(())
        });
        let code = tmux.type_line("echo top-exit=$?", "top-exit=");
        let screen = tmux.screen();
        assert_eq!(code, "0", "{quit}: top did not exit 0:\n{screen}");
        assert!(!screen.contains("WORKER"), "{quit}: top's screen is still shown:\n{screen}");
        assert_eq!(tmux.pane("alternate_on"), "0", "{quit}: still on the alternate screen");
        assert_eq!(tmux.pane("cursor_flag"), "1", "{quit}: the cursor is still hidden");
        // The terminal mode is as before: canonical input, echo on.
        let modes = tmux
            .type_line("echo modes:$(stty -a | tr ' ' '\\n' | grep -cx 'icanon\\|echo\\|isig')", "modes:");
        assert_eq!(modes, "3", "{quit}: terminal mode not restored:\n{}", tmux.screen());
        tmux.type_line("clear; echo cleared", "cleared");
    }
}
