//! [`ProxyUrl`]: the proxy a session connects through, parsed once, and never shown with its
//! password.
//!
//! Accepted forms (user and password are optional, percent-encoded when they hold reserved
//! characters):
//!
//! | form | what it does | default port |
//! |---|---|---|
//! | `socks5://user:pass@host:port` | SOCKS5; warden resolves WhatsApp's host name itself | 1080 |
//! | `socks5h://user:pass@host:port` | SOCKS5; the proxy resolves the host name (no DNS here) | 1080 |
//! | `http://user:pass@host:port` | HTTP `CONNECT` tunnel (Basic authentication) | 80 |
//!
//! `Display` and `Debug` mask the password (`socks5://user:***@host:1080`); only
//! [`ProxyUrl::expose`] gives it back, for the session store and the dialer.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest proxy URL accepted, in bytes.
pub const MAX_PROXY_URL: usize = 2048;

/// What replaces the password wherever a proxy is shown.
pub const MASK: &str = "***";

/// How the proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyScheme {
    /// SOCKS5, with host names resolved locally.
    Socks5,
    /// SOCKS5, with host names resolved by the proxy.
    Socks5h,
    /// An HTTP proxy, through `CONNECT`.
    Http,
}

impl ProxyScheme {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Socks5 => "socks5",
            Self::Socks5h => "socks5h",
            Self::Http => "http",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Socks5 | Self::Socks5h => 1080,
            Self::Http => 80,
        }
    }
}

/// Why a proxy URL was refused. The messages never include the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Nothing was given.
    #[error("the proxy URL is empty")]
    Empty,
    /// Longer than [`MAX_PROXY_URL`].
    #[error("the proxy URL is longer than {MAX_PROXY_URL} bytes")]
    TooLong,
    /// No `scheme://`, or a scheme that is not supported.
    #[error("proxy scheme {0:?} is not supported: use socks5://, socks5h:// or http://")]
    Scheme(String),
    /// No host after the scheme.
    #[error("the proxy URL has no host")]
    NoHost,
    /// The host holds characters no host name has.
    #[error("proxy host {0:?} is not a host name or an IP address")]
    Host(String),
    /// The port is a number, but not from 1 to 65535.
    #[error("proxy port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// The port is not a number (not quoted: it may be a password whose host was forgotten).
    #[error("the proxy port is not a number (is a user:password@ missing before the host?)")]
    PortNotNumber,
    /// A path, query or fragment follows the address.
    #[error("a proxy URL is only scheme://[user[:password]@]host[:port]; remove {0:?}")]
    Trailing(String),
    /// The user or password is badly percent-encoded, empty where it must not be, or over
    /// 255 bytes (the SOCKS5 limit).
    #[error("the proxy {0} is invalid: {1}")]
    Credentials(&'static str, &'static str),
}

/// A proxy for one session; see the module docs. One pointer wide and cheap to clone: every
/// session record, snapshot and connection holds one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyUrl(std::sync::Arc<Parts>);

#[derive(PartialEq, Eq, Hash)]
struct Parts {
    scheme: ProxyScheme,
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl ProxyUrl {
    /// Parses `text`; see the module docs for the forms accepted.
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ProxyError::Empty);
        }
        if text.len() > MAX_PROXY_URL {
            return Err(ProxyError::TooLong);
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| ProxyError::Scheme(text.split(':').next().unwrap_or("").into()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "socks5" => ProxyScheme::Socks5,
            "socks5h" => ProxyScheme::Socks5h,
            "http" => ProxyScheme::Http,
            _ => return Err(ProxyError::Scheme(scheme.into())),
        };
        // The authority ends at the first '/', '?' or '#'; only a lone '/' may follow.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            // A stray '/' in a password would put part of it in the tail: not echoed then.
            let shown = if tail.contains('@') {
                "what follows the host"
            } else {
                tail
            };
            return Err(ProxyError::Trailing(shown.into()));
        }
        // The password may hold '@' only percent-encoded, so the last '@' ends the userinfo.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                let user = decode(user).map_err(|why| ProxyError::Credentials("user", why))?;
                if user.is_empty() {
                    return Err(ProxyError::Credentials("user", "it is empty"));
                }
                let password = password
                    .map(decode)
                    .transpose()
                    .map_err(|why| ProxyError::Credentials("password", why))?;
                (Some(user), password)
            }
        };
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            None => scheme.default_port(),
            Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(ProxyError::PortNotNumber);
            }
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(ProxyError::Port(port.chars().take(12).collect())),
            },
        };
        Ok(Self(std::sync::Arc::new(Parts {
            scheme,
            host,
            port,
            user,
            password,
        })))
    }

    /// How the proxy is spoken to.
    pub fn scheme(&self) -> ProxyScheme {
        self.0.scheme
    }

    /// The proxy's host name or IP address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The user and password to authenticate with, if a user is given (an absent password
    /// is empty).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.0
            .user
            .as_deref()
            .map(|user| (user, self.0.password.as_deref().unwrap_or("")))
    }

    /// `host:port`, with an IPv6 host in brackets.
    pub fn authority(&self) -> String {
        if self.0.host.contains(':') {
            format!("[{}]:{}", self.0.host, self.0.port)
        } else {
            format!("{}:{}", self.0.host, self.0.port)
        }
    }

    /// The URL with the password masked: what status, events and logs show.
    pub fn masked(&self) -> String {
        self.render(true)
    }

    /// The whole URL, password included: only for the session store and the dialer.
    pub fn expose(&self) -> String {
        self.render(false)
    }

    fn render(&self, mask: bool) -> String {
        let mut out = format!("{}://", self.0.scheme.as_str());
        if let Some(user) = &self.0.user {
            out.push_str(&encode(user));
            if let Some(password) = &self.0.password {
                out.push(':');
                out.push_str(&if mask {
                    MASK.to_string()
                } else {
                    encode(password)
                });
            }
            out.push('@');
        }
        out.push_str(&self.authority());
        out
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.masked())
    }
}

impl std::str::FromStr for ProxyUrl {
    type Err = ProxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Stored in full (the store is the one place the password lives).
impl Serialize for ProxyUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.expose())
    }
}

impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Replaces the password of every `user:password@` in `text` by `***`: for messages that
/// quote input which may hold a proxy URL (a configuration line, a stored record), whole or
/// mangled. Within each run of text between blanks, quotes and brackets that holds an `@`,
/// everything from the first `:` that does not start a `://` up to the last `@` is masked:
/// a password holding `/`, `//` or `@`, a garbled scheme, or two URLs run together are masked
/// whole. It may mask more than a password (a device JID's `:N@`), never less.
pub fn mask_passwords(text: &str) -> String {
    let separator = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '"' | '\'' | '`' | ',' | ';' | '(' | ')' | '<' | '>' | '{' | '}' | '[' | ']'
            )
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(separator).unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        out.push_str(&mask_token(token));
        let sep_len = tail.chars().next().map_or(0, char::len_utf8);
        out.push_str(&tail[..sep_len]);
        rest = &tail[sep_len..];
    }
    out
}

/// [`mask_passwords`] of one run of text.
fn mask_token(token: &str) -> std::borrow::Cow<'_, str> {
    let Some(at) = token.rfind('@') else {
        return token.into();
    };
    let mut from = 0;
    while let Some(colon) = token[from..at].find(':').map(|i| from + i) {
        if token[colon..].starts_with("://") {
            from = colon + 3; // a scheme's colon
            continue;
        }
        return format!("{}:{MASK}{}", &token[..colon], &token[at..]).into();
    }
    token.into()
}

fn split_host_port(hostport: &str) -> Result<(String, Option<&str>), ProxyError> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| ProxyError::Host(hostport.into()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(ProxyError::Host(host.into()));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| ProxyError::Host(hostport.into()))?,
            ),
        };
        (host.to_string(), port)
    } else {
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        let valid = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !host.is_empty() && !valid {
            return Err(ProxyError::Host(host.into()));
        }
        (host.to_ascii_lowercase(), port)
    };
    if host.is_empty() {
        return Err(ProxyError::NoHost);
    }
    Ok((host, port))
}

/// Percent-decodes one userinfo part; at most 255 bytes (the SOCKS5 limit).
fn decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a '%' is not followed by two hex digits")?;
                out.push(hex);
                i += 3;
            }
            b'@' | b'/' | b'?' | b'#' | b'[' | b']' => {
                return Err("it holds a reserved character: percent-encode it");
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    if out.len() > 255 {
        return Err("it is longer than 255 bytes");
    }
    String::from_utf8(out).map_err(|_| "it is not UTF-8 once decoded")
}

/// Percent-encodes one userinfo part (everything but unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// input, scheme, host, port, credentials, masked.
    type Accepted<'a> = (
        &'a str,
        ProxyScheme,
        &'a str,
        u16,
        Option<(&'a str, &'a str)>,
        &'a str,
    );

    #[test]
    fn accepted_forms() {
        let table: &[Accepted] = &[
            (
                "socks5://127.0.0.1:1080",
                ProxyScheme::Socks5,
                "127.0.0.1",
                1080,
                None,
                "socks5://127.0.0.1:1080",
            ),
            (
                "socks5h://proxy.example:9050/",
                ProxyScheme::Socks5h,
                "proxy.example",
                9050,
                None,
                "socks5h://proxy.example:9050",
            ),
            (
                "SOCKS5://Proxy.Example",
                ProxyScheme::Socks5,
                "proxy.example",
                1080,
                None,
                "socks5://proxy.example:1080",
            ),
            (
                "http://user:s3cret@10.0.0.1:3128",
                ProxyScheme::Http,
                "10.0.0.1",
                3128,
                Some(("user", "s3cret")),
                "http://user:***@10.0.0.1:3128",
            ),
            (
                "http://proxy",
                ProxyScheme::Http,
                "proxy",
                80,
                None,
                "http://proxy:80",
            ),
            (
                "socks5://me%40corp:p%40ss%3Aw0rd@[::1]:1080",
                ProxyScheme::Socks5,
                "::1",
                1080,
                Some(("me@corp", "p@ss:w0rd")),
                "socks5://me%40corp:***@[::1]:1080",
            ),
            (
                "socks5://onlyuser@host:1",
                ProxyScheme::Socks5,
                "host",
                1,
                Some(("onlyuser", "")),
                "socks5://onlyuser@host:1",
            ),
            (
                "socks5://u:@host:2",
                ProxyScheme::Socks5,
                "host",
                2,
                Some(("u", "")),
                "socks5://u:***@host:2",
            ),
        ];
        for (input, scheme, host, port, credentials, masked) in table {
            let proxy = ProxyUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(proxy.scheme(), *scheme, "{input}");
            assert_eq!(proxy.host(), *host, "{input}");
            assert_eq!(proxy.port(), *port, "{input}");
            assert_eq!(proxy.credentials(), *credentials, "{input}");
            assert_eq!(proxy.to_string(), *masked, "{input}");
            assert_eq!(format!("{proxy:?}"), format!("ProxyUrl({masked})"));
            // What is stored parses back to the same proxy.
            assert_eq!(ProxyUrl::parse(&proxy.expose()).as_ref(), Ok(&proxy));
        }
    }

    #[test]
    fn refused_forms() {
        let table: &[(&str, ProxyError)] = &[
            ("", ProxyError::Empty),
            ("   ", ProxyError::Empty),
            ("127.0.0.1:1080", ProxyError::Scheme("127.0.0.1".into())),
            ("https://proxy:443", ProxyError::Scheme("https".into())),
            ("socks4://proxy:1080", ProxyError::Scheme("socks4".into())),
            ("socks5://", ProxyError::NoHost),
            ("socks5://:1080", ProxyError::NoHost),
            ("socks5://user:pw@", ProxyError::NoHost),
            ("socks5://host:0", ProxyError::Port("0".into())),
            ("socks5://host:70000", ProxyError::Port("70000".into())),
            ("socks5://host:x", ProxyError::PortNotNumber),
            ("socks5://host:", ProxyError::PortNotNumber),
            ("http://user:secret", ProxyError::PortNotNumber),
            ("http://host:80/path", ProxyError::Trailing("/path".into())),
            ("http://host?x=1", ProxyError::Trailing("?x=1".into())),
            ("http://ho st:80", ProxyError::Host("ho st".into())),
            ("socks5://[::1", ProxyError::Host("[::1".into())),
            ("socks5://[nope]:1", ProxyError::Host("nope".into())),
            (
                "socks5://:pw@host",
                ProxyError::Credentials("user", "it is empty"),
            ),
            (
                "socks5://u:%zz@host",
                ProxyError::Credentials("password", "a '%' is not followed by two hex digits"),
            ),
        ];
        for (input, error) in table {
            assert_eq!(ProxyUrl::parse(input).as_ref(), Err(error), "{input}");
        }
        let long = format!("socks5://{}:1080", "a".repeat(MAX_PROXY_URL));
        assert_eq!(ProxyUrl::parse(&long), Err(ProxyError::TooLong));
        let long_user = format!("socks5://{}:pw@host", "u".repeat(256));
        assert_eq!(
            ProxyUrl::parse(&long_user),
            Err(ProxyError::Credentials(
                "user",
                "it is longer than 255 bytes"
            ))
        );
    }

    #[test]
    fn a_proxy_is_one_pointer_wide() {
        assert_eq!(
            std::mem::size_of::<Option<ProxyUrl>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn a_password_never_shows_in_errors_or_renderings() {
        let proxy = ProxyUrl::parse("http://admin:hunter2@proxy:3128").unwrap();
        for shown in [proxy.to_string(), format!("{proxy:?}"), proxy.masked()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(proxy.expose().contains("hunter2"));
        let error = ProxyUrl::parse("http://admin:hunter2@proxy:3128/x")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        let error = ProxyUrl::parse("http://admin:hun/ter2@proxy")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("ter2"), "{error}");
        let error = ProxyUrl::parse("http://admin:hunter2@ho st")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn passwords_in_quoted_text_are_masked() {
        for (text, masked) in [
            (
                "proxy = \"http://u:p@h:1/x\" and socks5h://v@h, ws://h/p",
                "proxy = \"http://u:***@h:1/x\" and socks5h://v@h, ws://h/p",
            ),
            (
                "  | proxy = \"socks5://gw:ab/cd@h:0\"",
                "  | proxy = \"socks5://gw:***@h:0\"",
            ),
            ("no url here", "no url here"),
            ("http://user:pw", "http://user:pw"),
            // Found by fuzzing: a garbled scheme, or no URL left at all.
            (
                "2 | `roxy ? \"http:/\u{fffd}/u:S3cretPw@host:n",
                "2 | `roxy ? \"http:***@host:n",
            ),
            ("3 | u:S3cretPw@h\"", "3 | u:***@h\""),
            ("socks5://gw:a//b@h:1", "socks5://gw:***@h:1"),
            ("socks5://u:p@[::1]:1080", "socks5://u:***@[::1]:1080"),
            ("hu:S3cretPw@h:notttp://u:S3cretPw@h:n", "hu:***@h:n"),
            ("http://u:p@ss@h", "http://u:***@h"),
            (
                "jid = \"1555@s.whatsapp.net\" at 2026-12-04T10:00:00Z",
                "jid = \"1555@s.whatsapp.net\" at 2026-12-04T10:00:00Z",
            ),
        ] {
            assert_eq!(mask_passwords(text), masked, "{text}");
        }
    }

    #[test]
    fn serde_keeps_the_whole_url() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Holder {
            proxy: ProxyUrl,
        }
        let holder = Holder {
            proxy: ProxyUrl::parse("socks5h://u:p%20w@h:1").unwrap(),
        };
        let text = toml::to_string(&holder).unwrap();
        assert_eq!(text.trim(), r#"proxy = "socks5h://u:p%20w@h:1""#);
        assert_eq!(toml::from_str::<Holder>(&text).unwrap(), holder);
        assert!(toml::from_str::<Holder>(r#"proxy = "ftp://h""#).is_err());
    }
}
