//! Where a test's files live: the built fixtures (`example`), a scratch
//! directory per test ([`TestDir`]), a server script a test swaps as a
//! deploy would ([`Deploy`]), and a worker that waits at a gate until the
//! test opens it ([`Gate`]), and a way to put a program where it will be
//! run ([`install_program`]).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Path of a built example (`hello`) or fixture (`server`, `probe`, `stubborn`, …).
pub fn example(name: &str) -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_panzer"));
    let path = bin.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: plain `cargo test` builds the examples and fixtures, \
         `cargo test --test integration` alone does not (run `cargo build --examples` first)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// Copies the program at `from` to `to`, which must not exist yet, by `cp`
/// in a child process, so that the only descriptor ever open for writing
/// `to` is `cp`'s. A copy made here would hold one in this process, and a
/// fork by another test thread in that moment would keep it open in the
/// child until the child execs: a program then started from `to` fails
/// with "text file busy".
pub fn install_program(from: &std::path::Path, to: &std::path::Path) {
    let status =
        std::process::Command::new("cp").arg("--").arg(from).arg(to).status().expect("cannot run cp");
    assert!(status.success(), "cp {} {} failed: {status}", from.display(), to.display());
}

/// A scratch directory for one test, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    /// Kept short: panzer's runtime files (control socket, notify sockets)
    /// go into it through `XDG_RUNTIME_DIR`, and unix socket paths are
    /// limited to 107 bytes; a longer dir would make panzer use /tmp, where a
    /// panzer killed by a test would leave them behind.
    pub fn new(name: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let short: String = name.rsplit('-').next().unwrap_or(name).chars().take(16).collect();
        let path = std::env::temp_dir().join(format!(
            "pzt-{}-{}-{short}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        // Made here, not taken as found: a directory another user planted
        // at this predictable name fails the test instead of holding its
        // scripts. Others may read it, as workers run as other users do.
        std::fs::DirBuilder::new().mode(0o755).create(&path).unwrap();
        TestDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server script whose content a test can swap, as a deploy would.
pub struct Deploy(pub PathBuf);

impl Deploy {
    pub fn new(dir: &TestDir) -> Deploy {
        let deploy = Deploy(dir.join("server.sh"));
        deploy.set("");
        deploy
    }

    /// Installs a server that runs the `server` fixture with `env` (e.g. `FAIL_ON_START=1`).
    pub fn set(&self, env: &str) {
        self.set_fixture("server", env);
    }

    /// Installs a server that runs the fixture `fixture` with `env`.
    pub fn set_fixture(&self, fixture: &str, env: &str) {
        let tmp = self.0.with_extension("new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{env} exec {} \"$@\"\n", example(fixture))).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

/// A worker script that waits for a file before it runs the `server`
/// fixture: under `--ready notify` its generation stays `starting`, with no
/// worker ready, until [`Gate::open`].
pub struct Gate {
    dir: TestDir,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = TestDir::new("gate");
        let script = dir.join("gated.sh");
        let file = dir.join("open");
        let text = format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.02; done\nexec {} \"$@\"\n",
            file.display(),
            example("server")
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Gate { dir }
    }

    /// The script to run as COMMAND.
    pub fn path(&self) -> String {
        self.dir.join("gated.sh").to_string_lossy().into_owned()
    }

    /// Lets every worker, waiting or yet to start, run the server.
    pub fn open(&self) {
        std::fs::write(self.dir.join("open"), "").unwrap();
    }
}
