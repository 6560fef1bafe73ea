//! The sd_notify wire format, both directions: workers → monitor (readiness;
//! library mode's `panzer::ready` sends it from here) and main → systemd. A
//! datagram is newline-separated `KEY=VALUE` lines.

use std::ffi::OsStr;
use std::fmt;

/// One `KEY=VALUE` line of an sd_notify datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1`: startup finished.
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=`, as systemd's `Type=notify-reload` wants.
    Reloading { monotonic_usec: u64 },
    /// `STOPPING=1`.
    Stopping,
    /// `STATUS=…`: a line for humans.
    Status(String),
    /// `WATCHDOG=1`: still alive.
    Watchdog,
    /// `MAINPID=…`.
    MainPid(u32),
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notify::Ready => write!(f, "READY=1"),
            Notify::Reloading { monotonic_usec } => {
                write!(f, "RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
            }
            Notify::Stopping => write!(f, "STOPPING=1"),
            Notify::Status(text) => write!(f, "STATUS={}", text.replace('\n', " ")),
            Notify::Watchdog => write!(f, "WATCHDOG=1"),
            Notify::MainPid(pid) => write!(f, "MAINPID={pid}"),
        }
    }
}

/// Longest `STATUS=` text kept; the rest is cut off (at a character
/// boundary), so a worker's status always fits a report to main.
pub const MAX_STATUS: usize = 512;

/// The longest prefix of `text` of at most `max` bytes that ends at a
/// character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The messages of one datagram that panzer acts on; unknown keys are
/// skipped. `Err` if the datagram is not text.
pub fn parse(datagram: &[u8]) -> Result<Vec<Notify>, std::str::Utf8Error> {
    let text = std::str::from_utf8(datagram)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            match (key, value) {
                ("READY", "1") => Some(Notify::Ready),
                ("STOPPING", "1") => Some(Notify::Stopping),
                ("WATCHDOG", "1") => Some(Notify::Watchdog),
                ("STATUS", text) => Some(Notify::Status(truncate(text, MAX_STATUS).to_string())),
                ("MAINPID", pid) => pid.parse().ok().map(Notify::MainPid),
                _ => None,
            }
        })
        .collect())
}

/// Sends `messages` as one datagram to the socket named by `NOTIFY_SOCKET`
/// (a path, or `@name` for the abstract namespace), without waiting for
/// room in the receiver's queue.
pub fn send_to(target: &str, messages: &[Notify]) -> std::io::Result<()> {
    send(target.as_ref(), messages, false)
}

/// As [`send_to`], but waits for room in the receiver's queue: a worker's
/// `READY=1` (library mode's `panzer::ready`) is not dropped because its
/// monitor has not read yet.
pub fn send_waiting(target: &OsStr, messages: &[Notify]) -> std::io::Result<()> {
    send(target, messages, true)
}

fn send(target: &OsStr, messages: &[Notify], wait: bool) -> std::io::Result<()> {
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::unix::ffi::OsStrExt;
    let text: Vec<String> = messages.iter().map(Notify::to_string).collect();
    let addr = match target.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(target)?,
    };
    let sock = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let bytes = text.join("\n");
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if !wait {
        // Never block main on a supervisor that stopped reading.
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    socket::sendto(std::os::fd::AsRawFd::as_raw_fd(&sock), bytes.as_bytes(), &addr, flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_skips_the_rest() {
        let got = parse(b"READY=1\nSTATUS=warming up\nFOO=bar\nnonsense\nWATCHDOG=1").unwrap();
        assert_eq!(got, vec![Notify::Ready, Notify::Status("warming up".into()), Notify::Watchdog]);
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert_eq!(parse(b"READY=0").unwrap(), vec![]);
    }

    #[test]
    fn a_long_status_is_cut_at_a_character_boundary() {
        let long = format!("STATUS={}", "é".repeat(1000));
        let Notify::Status(text) = &parse(long.as_bytes()).unwrap()[0] else { panic!("not a status") };
        assert_eq!(text.len(), MAX_STATUS);
        assert!(text.chars().all(|c| c == 'é'));
        let odd = format!("STATUS=a{}", "é".repeat(1000));
        let Notify::Status(text) = &parse(odd.as_bytes()).unwrap()[0] else { panic!("not a status") };
        assert_eq!(text.len(), MAX_STATUS - 1);
    }

    #[test]
    fn display_is_the_wire_bytes() {
        assert_eq!(Notify::Reloading { monotonic_usec: 5 }.to_string(), "RELOADING=1\nMONOTONIC_USEC=5");
        assert_eq!(Notify::Status("a\nb".into()).to_string(), "STATUS=a b");
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_parses_or_is_refused_as_not_text(
            datagram in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)
        ) {
            if let Ok(messages) = parse(&datagram) {
                for message in messages {
                    if let Notify::Status(text) = message {
                        proptest::prop_assert!(text.len() <= MAX_STATUS && !text.contains('\n'));
                    }
                }
            }
        }

        #[test]
        fn text_datagrams_never_panic(text in "((READY|STATUS|WATCHDOG|MAINPID|STOPPING|X)=[^\n]{0,700}\n?){0,6}") {
            let messages = parse(text.as_bytes()).unwrap();
            proptest::prop_assert!(messages.len() <= 6);
        }
    }
}
