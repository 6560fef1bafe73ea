//! Library mode's side of the monitor (`panzer --preload`): the monitor
//! runs in the app's own binary, entered through `panzer::run`, and starts
//! each worker by forking itself instead of exec'ing a command. The child
//! leaves the monitor's loop for good and calls the app's `serve`
//! ([`ForkedWorker`] is what it takes along). A fork without exec is sound
//! only in a single-threaded process: a generation whose app runs threads
//! is refused here, before any worker exists.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{fail, output, serve, Launch, Monitor};
use crate::protocol::{Channel, MonitorArgs, FIRST_SOCKET_FD, STATUS_FD};
use crate::sys;

/// What a worker forked in library mode gets from its monitor.
pub(crate) struct ForkedWorker {
    pub generation: u32,
    pub ordinal: u32,
    /// The listening sockets, in `--bind` order (`CLOEXEC` copies).
    pub sockets: Vec<OwnedFd>,
    /// `LISTEN_FDNAMES`: the sockets' names, `:`-separated.
    pub fd_names: String,
    pub notify_socket: PathBuf,
    pub drain_signal: Signal,
    /// `--health-timeout`, for `WATCHDOG_USEC`.
    pub health_timeout: Option<Duration>,
}

/// Library mode: runs the monitor role in the user's own binary (exec'd by
/// main with the same fds as `panzer __monitor`); `start` runs in each
/// forked worker. Returns the process exit status.
pub(crate) fn run_library(
    args: MonitorArgs,
    start: Box<dyn FnMut(ForkedWorker) -> std::convert::Infallible>,
) -> i32 {
    // Before panzer opens anything: the rest is the app's (never closed
    // under its values in the workers), but for main's status channel and sockets.
    let inherited = STATUS_FD..FIRST_SOCKET_FD + args.sockets as RawFd;
    let app_fds: Vec<RawFd> = match sys::fork::open_fds() {
        Ok(fds) => fds.into_iter().filter(|fd| !inherited.contains(fd)).collect(),
        Err(e) => {
            eprintln!("panzer::run: cannot list this process's fds: {e}");
            return 1;
        }
    };
    crate::logging::init(args.log_level, args.log_format, Some(args.generation));
    let status = match sys::adopt_inherited_fd(STATUS_FD).and_then(Channel::from_fd) {
        Ok(status) => status,
        Err(e) => {
            log::error!("no status channel at fd {STATUS_FD}: {e} (started by `panzer --preload` only)");
            return 1;
        }
    };
    // fork() copies only the calling thread: refuse before any worker exists.
    match sys::fork::thread_count() {
        Ok(1) => {}
        Ok(threads) => return fail(threads_refused(threads), status),
        Err(e) => return fail(format!("cannot count this process's threads: {e}"), status),
    }
    serve(args, status, Launch::Fork { start, app_fds })
}

/// The error of a generation whose monitor runs threads when it should fork.
fn threads_refused(threads: usize) -> String {
    format!(
        "panzer::run: this process runs {threads} threads, and fork() copies only one of them \
         (a lock another thread holds would never be released in the workers). Start no thread \
         before panzer::run: build the async runtime (tokio, …) inside Worker::serve"
    )
}

impl Monitor {
    /// Library mode: forks this process; the child becomes worker `ordinal`.
    pub(super) fn fork_worker(&mut self, ordinal: u32) -> std::io::Result<Pid> {
        use std::io::Write;
        let ends = match self.output {
            Some(_) => Some(output::TaggedOutput::pipes()?),
            None => None,
        };
        let mut keep: Vec<RawFd> =
            self.worker_sockets(ordinal)?.into_iter().map(AsRawFd::as_raw_fd).collect();
        if let Launch::Fork { app_fds, .. } = &self.launch {
            keep.extend(app_fds);
        }
        let plan = sys::fork::ForkPlan {
            parent_death_signal: self.drain_signal(),
            keep: &keep,
            stdout_stderr: ends.as_ref().map(|e| (&e.stdout, &e.stderr)),
        };
        // Nothing buffered may be written twice, once by each process.
        let _ = std::io::stdout().flush();
        match sys::fork::fork_worker(&plan)? {
            sys::fork::Forked::Parent(pid) => {
                if let (Some(output), Some(ends)) = (&mut self.output, ends) {
                    output.started(pid.as_raw(), ordinal, ends);
                }
                Ok(pid)
            }
            sys::fork::Forked::Child => {
                let mine = self.worker_sockets(ordinal).unwrap_or_default();
                let sockets = match mine.into_iter().map(OwnedFd::try_clone).collect() {
                    Ok(sockets) => sockets,
                    Err(e) => {
                        eprintln!("panzer: worker {ordinal}: cannot copy the listening sockets: {e}");
                        std::process::exit(127)
                    }
                };
                let worker = ForkedWorker {
                    generation: self.args.generation,
                    ordinal,
                    sockets,
                    fd_names: self.args.fd_names.clone(),
                    notify_socket: self.args.notify_socket.clone(),
                    drain_signal: self.drain_signal(),
                    health_timeout: self.args.health_timeout.map(|d| d.0),
                };
                // A panic must never unwind into this monitor's frames in the
                // child (dropping them would remove the generation's notify
                // socket, say): the worker ends here.
                let launch = &mut self.launch;
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match launch {
                    #[allow(unreachable_code)]
                    Launch::Fork { start, .. } => match start(worker) {},
                    Launch::Exec { .. } => unreachable!("exec mode never forks without exec"),
                }));
                std::process::exit(101)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_says_where_the_runtime_belongs() {
        let text = threads_refused(3);
        assert!(text.contains("3 threads"), "{text}");
        assert!(text.contains("build the async runtime (tokio, …) inside Worker::serve"), "{text}");
    }
}
