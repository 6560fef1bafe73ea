//! One error type for the whole launcher, and the exit code each maps to.
//!
//! Every message names the thing at fault and, where there is one, the fix.

use std::fmt;
use std::io;

/// Exit status when generation 1 never became ready.
pub const EXIT_NOT_READY: i32 = 1;
/// Exit status for a usage error (clap uses it too).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when a socket cannot be bound, or another OS resource fails
/// (`EX_OSERR` from sysexits.h).
pub const EXIT_OSERR: i32 = 71;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong in a way clap cannot see.
    Usage(String),
    /// The command to run cannot be found or executed.
    Command { command: String, reason: String },
    /// A `--bind` address cannot be bound.
    Bind { addr: String, source: io::Error },
    /// An `--admin-bind` address cannot be bound.
    AdminBind { addr: String, source: io::Error },
    /// Generation 1 never became ready.
    NotReady { reason: String },
    /// A resource panzer needs is held by another live process.
    InUse(String),
    /// Any other system call failed; `what` says what panzer was doing.
    Os { what: String, source: io::Error },
    /// The state an upgrade hands to the next image cannot be written or
    /// read; `what` says which step. A resumed main that cannot read it
    /// exits as for a command line it cannot use.
    Handover { what: String, source: io::Error },
    /// A file or directory panzer would use is not safe: another user could
    /// replace, redirect or read it. The message names it and the fix.
    Unsafe(String),
    /// `panzerctl` cannot talk to a running panzer, or its answer is a
    /// failure: `what` says which, `source` why (where there is a cause),
    /// and `hint` what to try.
    Control {
        what: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
        hint: Option<&'static str>,
    },
}

impl Error {
    pub fn os(what: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Os { what: what.into(), source: source.into() }
    }

    pub fn handover(what: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Handover { what: what.into(), source: source.into() }
    }

    /// A [`Error::Control`] with no cause: the message says it all.
    pub fn control(what: impl Into<String>) -> Error {
        Error::Control { what: what.into(), source: None, hint: None }
    }

    /// A [`Error::Control`] for `what`, because of `source`.
    pub fn control_because(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Control { what: what.into(), source: Some(source.into()), hint: None }
    }

    /// The process exit status for this error (see DESIGN.md, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Command { .. } | Error::Handover { .. } => EXIT_USAGE,
            Error::NotReady { .. } => EXIT_NOT_READY,
            Error::Bind { .. }
            | Error::AdminBind { .. }
            | Error::InUse(_)
            | Error::Os { .. }
            | Error::Unsafe(_)
            | Error::Control { .. } => EXIT_OSERR,
        }
    }
}

impl fmt::Display for Error {
    /// What panzer was doing; the cause is [`std::error::Error::source`],
    /// and [`Error::report`] puts the two together.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) => write!(f, "{message}"),
            Error::Command { command, reason } => write!(f, "cannot run {command}: {reason}"),
            Error::Bind { addr, .. } => write!(f, "cannot bind {addr}"),
            Error::AdminBind { addr, .. } => write!(f, "cannot bind admin endpoint {addr}"),
            Error::InUse(message) | Error::Unsafe(message) => write!(f, "{message}"),
            Error::NotReady { reason } => write!(f, "generation 1 never became ready: {reason}"),
            Error::Os { what, .. } | Error::Handover { what, .. } | Error::Control { what, .. } => {
                write!(f, "{what}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. }
            | Error::AdminBind { source, .. }
            | Error::Os { source, .. }
            | Error::Handover { source, .. } => Some(source),
            Error::Control { source: Some(source), .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl Error {
    /// The one line the binary prints: what failed, each cause in turn,
    /// then the fix where there is one.
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            line.push_str(": ");
            match error.downcast_ref::<io::Error>() {
                Some(io) => line.push_str(&describe(io)),
                None => line.push_str(&error.to_string()),
            }
            cause = error.source();
        }
        if let Some(hint) = self.hint() {
            line.push_str(&format!(" ({hint})"));
        }
        line
    }

    fn hint(&self) -> Option<&'static str> {
        if let Error::Control { hint, .. } = self {
            return *hint;
        }
        let (Error::Bind { addr, source } | Error::AdminBind { addr, source }) = self else { return None };
        match source.raw_os_error() {
            Some(libc::EACCES) if !addr.starts_with("unix:") => Some("run as root, or use a port above 1023"),
            Some(libc::EADDRINUSE) => Some("another process listens there"),
            Some(libc::EADDRNOTAVAIL) => Some("no interface has that address"),
            _ => None,
        }
    }
}

/// An OS error as a short lowercase phrase ("address already in use"),
/// without Rust's "(os error 98)" suffix.
pub fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(errno) => {
            let text = nix::errno::Errno::from_raw(errno).desc();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text.to_string(),
            }
        }
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_errors_name_the_address_and_the_fix() {
        let e =
            Error::Bind { addr: "127.0.0.1:80".into(), source: io::Error::from_raw_os_error(libc::EACCES) };
        assert_eq!(
            e.report(),
            "cannot bind 127.0.0.1:80: permission denied (run as root, or use a port above 1023)"
        );
        let e =
            Error::os("cannot bind control socket /run/x.sock", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.report(), "cannot bind control socket /run/x.sock: no such file or directory");
        assert_eq!(e.exit_code(), 71);
        let e = Error::AdminBind {
            addr: "127.0.0.1:9090".into(),
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        assert_eq!(
            e.report(),
            "cannot bind admin endpoint 127.0.0.1:9090: address already in use (another process listens there)"
        );
        assert_eq!(e.exit_code(), 71);
    }

    #[test]
    fn a_state_that_cannot_be_handed_over_names_the_step_then_the_cause() {
        let cause = serde_json::from_slice::<u32>(b"{").unwrap_err();
        let text = cause.to_string();
        let e = Error::handover("the state handed over is unreadable", cause);
        assert_eq!(e.report(), format!("the state handed over is unreadable: {text}"));
        assert_eq!(e.exit_code(), 2);
        let e = Error::handover("no state at fd 7", io::Error::from_raw_os_error(libc::EBADF));
        assert_eq!(e.report(), "no state at fd 7: bad file number");
    }

    #[test]
    fn control_errors_put_the_cause_between_what_failed_and_the_hint() {
        let e = Error::Control {
            what: "cannot connect to /run/x.sock".into(),
            source: Some(io::Error::from_raw_os_error(libc::ECONNREFUSED).into()),
            hint: Some("is panzer running?"),
        };
        assert_eq!(e.report(), "cannot connect to /run/x.sock: connection refused (is panzer running?)");
        let e = Error::control_because("cannot read the terminal mode", nix::errno::Errno::ENOTTY);
        // A cause that is not an io::Error says it in its own words.
        let nix_words = format!("cannot read the terminal mode: {}", nix::errno::Errno::ENOTTY);
        assert_eq!(e.report(), nix_words);
        assert_eq!(Error::control("no reply").report(), "no reply");
    }
}
