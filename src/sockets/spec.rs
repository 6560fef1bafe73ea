//! The `--bind` grammar: `[NAME=]ADDR`, where ADDR is `IPv4:PORT`,
//! `[IPv6]:PORT` or `unix:/path`, and a unix socket may add what its file
//! gets, as systemd's `SocketMode=`, `SocketUser=` and `SocketGroup=` do:
//! `unix:/run/app.sock,mode=0660,owner=U,group=G`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// What an address looks like, for errors.
const EXPECTED: &str = "expected IP:PORT, [IPv6]:PORT or unix:/path";

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// What a unix socket's file gets: `,mode=0660,owner=U,group=G`. Names
/// are kept as given and resolved when panzer starts ([`UnixOptions::ids`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixOptions {
    /// Permission bits, at most `0o777`.
    pub mode: Option<u32>,
    /// A user name or uid.
    pub owner: Option<String>,
    /// A group name or gid.
    pub group: Option<String>,
}

/// One `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// The name given with `NAME=`, passed in `LISTEN_FDNAMES`.
    pub name: Option<String>,
    pub addr: BindAddr,
    /// A unix socket's mode and ownership (empty for every other socket).
    pub unix: UnixOptions,
    /// Set only on a piece that a comma cut off a value (`mode=0660` of
    /// `unix:/x.sock,mode=0660`, which clap splits as it splits
    /// `PANZER_BIND`): [`join_pieces`] puts it back onto the value before.
    piece: Option<String>,
}

impl BindSpec {
    /// `[NAME=]ADDR` with no option.
    pub fn new(name: Option<String>, addr: BindAddr) -> BindSpec {
        BindSpec { name, addr, unix: UnixOptions::default(), piece: None }
    }

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
        if let Some(piece) = &self.piece {
            return write!(f, "{piece}");
        }
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.addr)?,
            None => write!(f, "{}", self.addr)?,
        }
        let UnixOptions { mode, owner, group } = &self.unix;
        if let Some(mode) = mode {
            write!(f, ",mode={mode:04o}")?;
        }
        if let Some(owner) = owner {
            write!(f, ",owner={owner}")?;
        }
        if let Some(group) = group {
            write!(f, ",group={group}")?;
        }
        Ok(())
    }
}

/// Puts back together what a comma split: each piece (`mode=0660`) joins
/// the value before it, and the whole is read again, so that a piece
/// first, after a TCP address or unknown gets the error its whole value
/// would.
pub fn join_pieces(specs: Vec<BindSpec>) -> Result<Vec<BindSpec>, String> {
    let mut joined: Vec<BindSpec> = Vec::with_capacity(specs.len());
    for spec in specs {
        match (&spec.piece, joined.last_mut()) {
            (None, _) => joined.push(spec),
            (Some(piece), Some(before)) => *before = format!("{before},{piece}").parse()?,
            (Some(piece), None) => return Err(format!("invalid address '{piece}': {EXPECTED}")),
        }
    }
    Ok(joined)
}

/// `mode=…,owner=…,group=…` after a unix path (`whole`: the value, for errors).
fn unix_options(options: &str, whole: &str) -> Result<UnixOptions, String> {
    let mut parsed = UnixOptions::default();
    for option in options.split(',') {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let slot = match key {
            "mode" => {
                let octal = !value.is_empty() && value.len() <= 4 && value.bytes().all(|b| (b'0'..=b'7').contains(&b));
                match u32::from_str_radix(value, 8) {
                    Ok(mode) if octal && mode <= 0o777 => parsed.mode.replace(mode).map(drop),
                    _ => {
                        return Err(format!(
                            "invalid mode '{value}' in '{whole}': expected an octal mode from 0 to 0777, such as 0660"
                        ))
                    }
                }
            }
            "owner" | "group" => {
                let valid = !value.is_empty() && value.len() <= 256 && !value.contains(|c: char| c.is_whitespace() || c.is_control());
                if !valid {
                    return Err(format!("invalid {key} '{value}' in '{whole}': expected a name or a number"));
                }
                let field = if key == "owner" { &mut parsed.owner } else { &mut parsed.group };
                field.replace(value.to_string()).map(drop)
            }
            _ => {
                return Err(format!(
                    "invalid option '{option}' in '{whole}': unknown option '{key}' (a unix socket takes mode=, owner= and group=)"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("invalid '{whole}': '{key}' given twice"));
        }
    }
    Ok(parsed)
}

impl FromStr for BindSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // No address lacks a ':', so `KEY=VALUE` without one is a piece.
        if !s.contains(':') && s.contains('=') {
            let piece = Some(s.to_string());
            return Ok(BindSpec { piece, ..BindSpec::new(None, BindAddr::Unix(PathBuf::new())) });
        }
        let (name, addr) = match s.split_once('=').filter(|(name, _)| !name.contains([':', ','])) {
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
        let (addr, options) = match addr.split_once(',') {
            Some((addr, options)) => (addr, Some(options)),
            None => (addr, None),
        };
        let addr = match addr.parse() {
            Err(_) if addr == "unix:" => return Err(format!("invalid address '{s}': unix: needs a path")),
            parsed => parsed?,
        };
        let unix = match (options, &addr) {
            (None, _) => UnixOptions::default(),
            (Some(options), BindAddr::Unix(_)) => unix_options(options, s)?,
            (Some(_), BindAddr::Inet(_)) => {
                return Err(format!("invalid address '{s}': only a unix: socket takes mode, owner or group"))
            }
        };
        Ok(BindSpec { unix, ..BindSpec::new(name, addr) })
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
        addr.parse().map(BindAddr::Inet).map_err(|_| format!("invalid address '{addr}': {EXPECTED}"))
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
    fn a_unix_socket_takes_mode_owner_and_group() {
        let spec: BindSpec = "api=unix:/run/app.sock,mode=660,owner=www,group=33".parse().unwrap();
        assert_eq!(spec.addr, BindAddr::Unix("/run/app.sock".into()));
        let unix = UnixOptions { mode: Some(0o660), owner: Some("www".into()), group: Some("33".into()) };
        assert_eq!(spec.unix, unix);
        assert_eq!(spec.to_string(), "api=unix:/run/app.sock,mode=0660,owner=www,group=33");
        let err = |s: &str| s.parse::<BindSpec>().unwrap_err();
        assert!(err("unix:/a,mode=0660,colour=blue").contains("unknown option 'colour'"));
        assert!(err("unix:/a,mode=1777").contains("invalid mode '1777'"));
        assert!(err("unix:/a,mode=0x1ff").contains("invalid mode '0x1ff'"));
        assert!(err("unix:/a,mode=").contains("invalid mode ''"));
        assert!(err("unix:/a,owner=").contains("invalid owner ''"));
        assert!(err("unix:/a,group=1,group=2").contains("'group' given twice"));
        assert!(err("127.0.0.1:0,mode=0660").contains("only a unix: socket takes mode, owner or group"));
    }

    #[test]
    fn the_pieces_a_comma_split_join_the_value_before() {
        let split =
            |s: &str| s.split(',').map(|p| p.parse::<BindSpec>()).collect::<Result<Vec<_>, _>>().unwrap();
        let joined =
            join_pieces(split("unix:/a.sock,mode=0600,group=g,127.0.0.1:80,b=unix:/b.sock")).unwrap();
        let texts: Vec<String> = joined.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["unix:/a.sock,mode=0600,group=g", "127.0.0.1:80", "b=unix:/b.sock"]);
        assert!(join_pieces(split("mode=0600,unix:/a"))
            .unwrap_err()
            .starts_with("invalid address 'mode=0600'"));
        assert!(join_pieces(split("127.0.0.1:80,mode=0600")).unwrap_err().contains("only a unix: socket"));
        assert!(join_pieces(split("unix:/a,size=3")).unwrap_err().contains("unknown option 'size'"));
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
