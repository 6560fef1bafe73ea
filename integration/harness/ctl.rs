//! `panzerctl`, run as an operator would: to completion ([`panzerctl`],
//! [`Panzer::ctl`]), as another user ([`panzerctl_as`]), or in the
//! background while a test does something else ([`CtlRun`]).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, within, Panzer, PATIENCE};

/// What `panzerctl` printed and how it exited.
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `panzerctl ARGS…` to completion (it bounds its own waits, except
/// `reload`, which main answers by `--startup-timeout`).
pub fn panzerctl(args: &[&str]) -> CtlOutput {
    panzerctl_as(None, args, &[])
}

impl Panzer {
    /// Runs `panzerctl ARGS…` in this panzer's environment (its
    /// `XDG_RUNTIME_DIR`, where the default control socket lives).
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        panzerctl_as(None, args, &[("XDG_RUNTIME_DIR", self.dir.0.to_str().unwrap())])
    }

    /// `panzerctl status --json`'s status object.
    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["--json", "status"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        reply["status"].clone()
    }

    /// Runs `panzerctl --pid-file {dir}/panzer.pid ARGS…`, for a panzer
    /// started with `--pid-file {dir}/panzer.pid`, once that file exists.
    pub fn ctl_by_pid_file(&self, args: &[&str]) -> CtlOutput {
        let pid_file = self.pid_file();
        let mut all = vec!["--pid-file", &pid_file];
        all.extend_from_slice(args);
        self.ctl(&all)
    }

    /// Starts `panzerctl --pid-file {dir}/panzer.pid ARGS…` (see
    /// [`Panzer::ctl_by_pid_file`]) and returns without waiting for it.
    pub fn ctl_start(&self, args: &[&str]) -> CtlRun {
        let child = Command::new(env!("CARGO_BIN_EXE_panzerctl"))
            .arg("--pid-file")
            .arg(self.pid_file())
            .args(args)
            .env_remove("PANZER_CONTROL")
            .env_remove("PANZER_PID_FILE")
            .env("XDG_RUNTIME_DIR", &self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run panzerctl");
        CtlRun { child, what: format!("panzerctl {}", args.join(" ")) }
    }

    fn pid_file(&self) -> String {
        let pid_file = self.dir.join("panzer.pid");
        eventually(PATIENCE, "the pid file", || pid_file.exists().then_some(()));
        pid_file.to_string_lossy().into_owned()
    }
}

/// A `panzerctl` started with [`Panzer::ctl_start`]; killed on drop.
pub struct CtlRun {
    child: Child,
    what: String,
}

impl CtlRun {
    /// Whether it has exited.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What it printed and how it exited, or `None` if it is still running
    /// after `limit` (it is killed then).
    pub fn wait(mut self, limit: Duration) -> Option<CtlOutput> {
        let child = &mut self.child;
        let status = within(limit, || child.try_wait().ok().flatten())?;
        fn read(pipe: Option<impl Read>) -> String {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        }
        let stdout = read(self.child.stdout.take());
        let stderr = read(self.child.stderr.take());
        Some(CtlOutput { code: status.code().unwrap_or(-1), stdout, stderr })
    }

    /// [`CtlRun::wait`], panicking after `limit`.
    pub fn answer(self, limit: Duration) -> CtlOutput {
        let what = self.what.clone();
        self.wait(limit).unwrap_or_else(|| panic!("`{what}` got no answer within {limit:?}"))
    }
}

impl Drop for CtlRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let child = &mut self.child;
        let _ = within(PATIENCE, || child.try_wait().ok().flatten());
    }
}

/// Runs `panzerctl` as another uid (through `setpriv`), or as ourselves.
pub fn panzerctl_as(uid: Option<u32>, args: &[&str], env: &[(&str, &str)]) -> CtlOutput {
    let exe = env!("CARGO_BIN_EXE_panzerctl");
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), exe.into()]);
            c
        }
        None => Command::new(exe),
    };
    let output = command
        .args(args)
        .env_remove("PANZER_CONTROL")
        .env_remove("PANZER_PID_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run panzerctl");
    CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
