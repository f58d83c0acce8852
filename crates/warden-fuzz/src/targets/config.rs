//! `daemon_toml`: the daemon's configuration parser.

use super::{Outcome, Target, leaks_password, no_panic};

/// Feeds [`warden::config::parse`] (no environment overrides).
#[derive(Debug, Default)]
pub struct DaemonToml;

#[async_trait::async_trait]
impl Target for DaemonToml {
    fn name(&self) -> &'static str {
        "daemon_toml"
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"[daemon]\n",
            b"[policy]\n",
            b"[janitor]\n",
            b"[admission]\n",
            b"[outbox]\n",
            b"[whatsapp]\n",
            b"[http]\n",
            b"max_attempts = ",
            b"backoff_base = \"3s\"\n",
            b"jitter = 0.2\n",
            b"per_second = 5.0\n",
            b"socket_mode = \"0777\"\n",
            b"max_sessions = 0\n",
            b"bind = \"0.0.0.0:8080\"\n",
            b"api_key = \"k\"\n",
            b"proxy = \"socks5://u:S3cretPw@h:1080\"\n",
            b"proxy = \"http://u:S3cretPw@h:notaport\"\n",
            b"\"1h 30m\"",
            b"-1",
            b"1e309",
            b"18446744073709551616",
            b"\"\"",
            b"[[",
            b"]]",
            b"= ",
            b"\n",
        ]
    }

    async fn run(&mut self, input: &[u8]) -> Result<Outcome, String> {
        let text = String::from_utf8_lossy(input);
        match no_panic("config::parse", || warden::config::parse(&text, &[]))? {
            Ok(_) => Ok(Outcome::accepted("ok")),
            Err(message) => {
                if message.trim().is_empty() {
                    return Err("refused without a message".into());
                }
                if leaks_password(&text, &message) {
                    return Err(format!("the error shows the proxy password: {message}"));
                }
                Ok(Outcome::refused("err", &message))
            }
        }
    }
}
