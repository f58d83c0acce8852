//! `session_toml`: a stored session record.

use warden_core::store::SessionRecord;

use super::{Outcome, Target, leaks_password, no_panic};

/// Feeds [`SessionRecord::decode`]; what it accepts must survive an encode and a decode.
#[derive(Debug, Default)]
pub struct SessionToml;

#[async_trait::async_trait]
impl Target for SessionToml {
    fn name(&self) -> &'static str {
        "session_toml"
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"name = \"Shop\"\n",
            b"state = \"connected\"\n",
            b"state = \"banned\"\n",
            b"desired = \"running\"\n",
            b"reason = \"x\"\n",
            b"jid = \"1555@s.whatsapp.net\"\n",
            b"created_at = ",
            b"banned_until = ",
            b"attempts = 4294967296\n",
            b"[counters]\n",
            b"connects = 1\n",
            b"proxy = \"socks5h://u:S3cretPw@10.0.0.2:1080\"\n",
            b"proxy = \"https://u:S3cretPw@h\"\n",
            b"{ secs_since_epoch = 1, nanos_since_epoch = 2 }",
            b"\"2026-12-04T10:00:00Z\"",
            b"\"\"",
            b"\n",
        ]
    }

    async fn run(&mut self, input: &[u8]) -> Result<Outcome, String> {
        let text = String::from_utf8_lossy(input);
        match no_panic("SessionRecord::decode", || {
            SessionRecord::decode("fuzz", &text)
        })? {
            Ok(record) => {
                let encoded = record
                    .encode()
                    .map_err(|e| format!("an accepted record cannot be encoded: {e}"))?;
                let again = SessionRecord::decode("fuzz", &encoded)
                    .map_err(|e| format!("an encoded record cannot be decoded: {e}"))?;
                if again != record {
                    return Err(format!(
                        "the record changed over a round trip: {record:?} -> {again:?}"
                    ));
                }
                Ok(Outcome::accepted(format!("ok:{}", record.state)))
            }
            Err(error) => {
                let message = error.to_string();
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
