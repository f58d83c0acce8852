//! What a send request must look like before anything is stored: a recipient that is a phone
//! number or a user JID, a text that is neither empty nor over WhatsApp's limit, and an
//! idempotency key of at most 128 bytes. Pure functions; each error says what is wrong.

/// WhatsApp's limit on the length of a text message, in characters.
pub const MAX_TEXT_CHARS: usize = 65_536;
/// The longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// The recipient as a JID: a phone number (digits with country code; a leading `+`, spaces,
/// dashes and parentheses are allowed) becomes `<digits>@s.whatsapp.net`; a JID of a user
/// (`@s.whatsapp.net`, `@c.us`, `@lid`) or a group (`@g.us`) is kept (`@c.us` is spelled
/// `@s.whatsapp.net`). A device JID (`user:3@…`) is not a recipient.
pub fn recipient(to: &str) -> Result<String, String> {
    let to = to.trim();
    let invalid = |why: &str| format!("invalid recipient {to:?}: {why}");
    if let Some((user, server)) = to.split_once('@') {
        let server = match server {
            "s.whatsapp.net" | "c.us" => "s.whatsapp.net",
            "lid" => "lid",
            "g.us" => "g.us",
            _ => return Err(invalid("the server must be s.whatsapp.net, lid or g.us")),
        };
        let valid_user = !user.is_empty()
            && if server == "g.us" {
                user.chars().all(|c| c.is_ascii_digit() || c == '-')
            } else {
                user.chars().all(|c| c.is_ascii_digit())
            };
        if !valid_user {
            return Err(invalid("the part before @ must be digits"));
        }
        return Ok(format!("{user}@{server}"));
    }
    let number = to.strip_prefix('+').unwrap_or(to);
    if number.is_empty()
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')'))
    {
        return Err(invalid(
            "expected a phone number with country code, or a JID",
        ));
    }
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if !(6..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(invalid(
            "a phone number has 6 to 15 digits with its country code, and no leading 0",
        ));
    }
    Ok(format!("{digits}@s.whatsapp.net"))
}

/// The text, if it can be sent.
pub fn text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("the text is empty".into());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "the text has {chars} characters; WhatsApp takes at most {MAX_TEXT_CHARS}"
        ));
    }
    Ok(())
}

/// The idempotency key, if it can be used.
pub fn key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the idempotency key is empty: leave it out to have one made".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the idempotency key has {} bytes; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("the idempotency key contains control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients() {
        let table: &[(&str, Option<&str>)] = &[
            ("15557654321", Some("15557654321@s.whatsapp.net")),
            ("+1 555 765-4321", Some("15557654321@s.whatsapp.net")),
            ("+1 (555) 765-4321", Some("15557654321@s.whatsapp.net")),
            ("  15557654321  ", Some("15557654321@s.whatsapp.net")),
            (
                "15557654321@s.whatsapp.net",
                Some("15557654321@s.whatsapp.net"),
            ),
            ("15557654321@c.us", Some("15557654321@s.whatsapp.net")),
            ("2155@lid", Some("2155@lid")),
            ("120363-1234@g.us", Some("120363-1234@g.us")),
            ("", None),
            ("+", None),
            ("12345", None),
            ("1234567890123456", None),
            ("0155576543", None),
            ("not a number", None),
            ("1555@example.com", None),
            ("@s.whatsapp.net", None),
            ("1555:3@s.whatsapp.net", None),
            ("abc@s.whatsapp.net", None),
            ("../etc@s.whatsapp.net", None),
        ];
        for (input, want) in table {
            assert_eq!(recipient(input).ok().as_deref(), *want, "{input:?}");
        }
        assert!(recipient("x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn texts() {
        assert!(text("hi").is_ok());
        assert!(text("").is_err());
        assert!(text(" \n\t").is_err());
        assert!(
            text(&"é".repeat(MAX_TEXT_CHARS)).is_ok(),
            "characters, not bytes"
        );
        assert!(text(&"a".repeat(MAX_TEXT_CHARS + 1)).is_err());
    }

    #[test]
    fn keys() {
        assert!(key("order-42").is_ok());
        assert!(key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(key("").is_err());
        assert!(key("a\nb").is_err());
    }
}
