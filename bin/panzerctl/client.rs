//! The client side of the control socket: one request, one reply line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use panzer::control::{Reply, Request};
use panzer::error::{describe, Error};

/// Sends one request and reads its reply. `timeout` bounds the wait for the
/// reply (`None`: as long as main takes, which it bounds itself).
pub fn request(path: &Path, request: &Request, timeout: Option<Duration>) -> Result<Reply, Error> {
    let mut stream = UnixStream::connect(path).map_err(|e| Error::Control {
        what: format!("cannot connect to {}", path.display()),
        source: Some(e.into()),
        hint: Some("is panzer running? point at it with --control or --pid-file"),
    })?;
    stream.set_read_timeout(timeout).map_err(|e| Error::control(describe(&e)))?;
    let mut line = serde_json::to_vec(request).map_err(|e| Error::control(e.to_string()))?;
    line.push(b'\n');
    // A refused client is told why and dropped at once: read that reply
    // even when sending failed.
    let sent = stream.write_all(&line);
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(|e| {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            Error::control(format!(
                "no reply from {} within {:?}",
                path.display(),
                timeout.unwrap_or_default()
            ))
        } else {
            Error::control_because(format!("cannot read from {}", path.display()), e)
        }
    })?;
    if reply.is_empty() {
        return Err(match sent {
            Err(e) => Error::control_because(format!("cannot send to {}", path.display()), e),
            Ok(()) => Error::control(format!("{} closed the connection without a reply", path.display())),
        });
    }
    serde_json::from_str(&reply)
        .map_err(|e| Error::control_because(format!("malformed reply from {}", path.display()), e))
}
