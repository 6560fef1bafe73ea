//! The `--bind` grammar: `[NAME=]ADDR`, where ADDR is `IPv4:PORT`,
//! `[IPv6]:PORT` or `unix:/path`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// One `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// The name given with `NAME=`, passed in `LISTEN_FDNAMES`.
    pub name: Option<String>,
    pub addr: BindAddr,
}

impl BindSpec {
    /// The name a worker sees in `LISTEN_FDNAMES`: the given one, else
    /// `unknown` as systemd does for unnamed sockets.
    pub fn fd_name(&self) -> &str {
        self.name.as_deref().unwrap_or("unknown")
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Inet(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for BindSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) => {
                let valid = !name.is_empty()
                    && name.len() <= 255
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !valid {
                    return Err(format!(
                        "invalid socket name '{name}' in '{s}': use letters, digits, '_', '.' or '-'"
                    ));
                }
                (Some(name.to_string()), addr)
            }
            None => (None, s),
        };
        let addr = match addr.parse() {
            Err(_) if addr == "unix:" => return Err(format!("invalid address '{s}': unix: needs a path")),
            parsed => parsed?,
        };
        Ok(BindSpec { name, addr })
    }
}

/// `IPv4:PORT`, `[IPv6]:PORT` or `unix:/path`, without a name (`--admin-bind`).
impl FromStr for BindAddr {
    type Err = String;

    fn from_str(addr: &str) -> Result<Self, String> {
        if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("invalid address '{addr}': unix: needs a path"));
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        addr.parse()
            .map(BindAddr::Inet)
            .map_err(|_| format!("invalid address '{addr}': expected IP:PORT, [IPv6]:PORT or unix:/path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        let v4: BindSpec = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(v4.addr, BindAddr::Inet("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(v4.fd_name(), "unknown");
        let v6: BindSpec = "[::1]:0".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:0");
        let unix: BindSpec = "api=unix:/run/x.sock".parse().unwrap();
        assert_eq!(unix.name.as_deref(), Some("api"));
        assert_eq!(unix.addr, BindAddr::Unix("/run/x.sock".into()));
        assert_eq!(unix.to_string(), "api=unix:/run/x.sock");
    }

    #[test]
    fn rejects_bad_addresses_naming_them() {
        let err = "localhost:80".parse::<BindSpec>().unwrap_err();
        assert!(err.contains("'localhost:80'"), "{err}");
        assert!("unix:".parse::<BindSpec>().is_err());
        assert!("a:b=127.0.0.1:1".parse::<BindSpec>().is_err());
        assert!("127.0.0.1".parse::<BindSpec>().is_err());
    }

    #[test]
    fn an_address_alone_parses_as_the_address_of_a_spec_does() {
        let tcp: BindAddr = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(tcp, BindAddr::Inet("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(tcp.to_string().parse::<BindAddr>(), Ok(tcp));
        let unix: BindAddr = "unix:/run/admin.sock".parse().unwrap();
        assert_eq!(unix.to_string(), "unix:/run/admin.sock");
        for bad in ["localhost:9090", "unix:", "9090", "admin=127.0.0.1:1"] {
            let err = bad.parse::<BindAddr>().unwrap_err();
            assert!(err.starts_with(&format!("invalid address '{bad}'")), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_gets_an_error_naming_the_problem(s in proptest::prelude::any::<String>()) {
            match s.parse::<BindSpec>() {
                // What parses prints back as something that parses the same.
                Ok(spec) => proptest::prop_assert_eq!(spec.to_string().parse::<BindSpec>(), Ok(spec)),
                Err(e) => proptest::prop_assert!(e.starts_with("invalid "), "{e}"),
            }
        }

        #[test]
        fn address_like_text_never_panics(s in "([a-z_.-]{0,4}=)?(unix:|\\[)?[0-9a-f:.\\]%]{0,24}") {
            if let Err(e) = s.parse::<BindSpec>() {
                proptest::prop_assert!(e.starts_with("invalid "), "{e}");
            }
        }
    }
}
