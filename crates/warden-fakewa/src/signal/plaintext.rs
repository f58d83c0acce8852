//! What is inside a Signal payload: WhatsApp's padding, and what kind of message a decoded
//! `Message` is.

use prost::Message as _;
use wa_rs_proto::whatsapp as wa;

/// What a decrypted message is, as a test would describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// `text`, `image`, `document`, `reaction`, or `other`.
    pub kind: String,
    /// The text, caption or reaction, when the message has one.
    pub text: Option<String>,
    /// Whether the message came wrapped for the sender's own other devices
    /// (`deviceSentMessage`), rather than for the recipient.
    pub device_sent: bool,
}

/// A text message, encoded and padded for encryption.
#[cfg(test)]
pub(super) fn padded_text(text: &str) -> Vec<u8> {
    padded(&wa::Message {
        conversation: Some(text.to_owned()),
        ..Default::default()
    })
}

/// `message`, encoded and padded for encryption.
pub(super) fn padded(message: &wa::Message) -> Vec<u8> {
    let mut plaintext = message.encode_to_vec();
    pad(&mut plaintext);
    plaintext
}

/// WhatsApp's padding (version 2): N bytes of value N, N in 1..=15.
fn pad(plaintext: &mut Vec<u8>) {
    let n = (rand::random::<u8>() % 15) + 1;
    plaintext.extend(std::iter::repeat_n(n, usize::from(n)));
}

/// Strips the padding and decodes the message.
pub(super) fn decode(padded: &[u8]) -> Result<Plaintext, String> {
    let n = usize::from(*padded.last().ok_or("empty plaintext")?);
    if n == 0 || n > padded.len() {
        return Err(format!("bad padding length {n}"));
    }
    let message = wa::Message::decode(&padded[..padded.len() - n])
        .map_err(|e| format!("not a WhatsApp message: {e}"))?;
    Ok(describe(&message))
}

fn describe(message: &wa::Message) -> Plaintext {
    if let Some(inner) = message
        .device_sent_message
        .as_ref()
        .and_then(|d| d.message.as_deref())
    {
        return Plaintext {
            device_sent: true,
            ..describe(inner)
        };
    }
    let (kind, text) = if let Some(text) = &message.conversation {
        ("text", Some(text.clone()))
    } else if let Some(m) = &message.extended_text_message {
        ("text", m.text.clone())
    } else if let Some(m) = &message.image_message {
        ("image", m.caption.clone())
    } else if let Some(m) = &message.document_message {
        ("document", m.caption.clone())
    } else if let Some(m) = &message.reaction_message {
        ("reaction", m.text.clone())
    } else {
        ("other", None)
    };
    Plaintext {
        kind: kind.to_owned(),
        text,
        device_sent: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trips() {
        for _ in 0..50 {
            let padded = padded_text("hello");
            let plain = decode(&padded).expect("decodes");
            assert_eq!(plain.kind, "text");
            assert_eq!(plain.text.as_deref(), Some("hello"));
            assert!(!plain.device_sent);
        }
    }

    #[test]
    fn bad_padding_is_an_error() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[1, 2, 40]).is_err());
    }

    #[test]
    fn a_copy_for_own_devices_is_unwrapped() {
        let inner = wa::Message {
            conversation: Some("hi".into()),
            ..Default::default()
        };
        let dsm = wa::Message {
            device_sent_message: Some(Box::new(wa::message::DeviceSentMessage {
                destination_jid: Some("15550001111@s.whatsapp.net".into()),
                message: Some(Box::new(inner)),
                phash: None,
            })),
            ..Default::default()
        };
        let plain = describe(&dsm);
        assert_eq!(plain.text.as_deref(), Some("hi"));
        assert!(plain.device_sent);
    }
}
