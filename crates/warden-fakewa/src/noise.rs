//! The server half of WhatsApp's Noise `XX` handshake, and the transport
//! ciphers that follow it.
//!
//! wa-rs 0.2.0 checks the server's certificate chain only for its shape (issuer
//! serials, leaf key equal to the server's static key), not its signatures, so a
//! self-made chain is accepted. The handshake is written sans-IO: feed it the
//! client's frames, send the frames it returns.

use prost::Message as _;
use thiserror::Error;
use wa_rs_binary::consts::{NOISE_START_PATTERN, WA_CONN_HEADER};
use wa_rs_binary::node::Node;
use wa_rs_libsignal::protocol::KeyPair;
use wa_rs_noise::{NoiseCipher, NoiseHandshake};
use wa_rs_proto::whatsapp as wa;
use wa_rs_proto::whatsapp::cert_chain::{NoiseCertificate, noise_certificate::Details};

use crate::frame::{FrameError, encode_frame};

/// Why a handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// A handshake message was not valid protobuf.
    #[error("undecodable handshake message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A required field was absent.
    #[error("handshake message lacks {0}")]
    Missing(&'static str),
    /// A key had the wrong length.
    #[error("{0} is not a 32-byte key")]
    BadKey(&'static str),
    /// A Noise operation (DH, AEAD) failed.
    #[error("noise: {0}")]
    Noise(#[from] wa_rs_noise::HandshakeError),
    /// The server hello could not be framed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why an encrypted stanza could not be sealed or opened.
#[derive(Debug, Error)]
pub enum SessionError {
    /// AEAD failure, or the 2^32 nonce space is used up.
    #[error("cipher: {0}")]
    Cipher(#[from] wa_rs_noise::NoiseError),
    /// The plaintext was not a valid binary node.
    #[error("binary node: {0}")]
    Binary(#[from] wa_rs_binary::error::BinaryError),
    /// The ciphertext could not be framed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame counter ran out.
    #[error("frame counter exhausted")]
    CounterExhausted,
}

/// The handshake after the server hello was produced, waiting for the client finish.
pub struct ServerHandshake {
    noise: NoiseHandshake,
    ephemeral: KeyPair,
}

/// An established session: who the client is and the two stanza ciphers.
pub struct Session {
    /// The decoded `ClientPayload` (login or registration data).
    pub payload: wa::ClientPayload,
    /// The client's static Noise public key (stable for a wa-rs device store).
    pub client_static: [u8; 32],
    /// Encrypts stanzas sent to the client.
    pub sealer: Sealer,
    /// Decrypts stanzas received from the client.
    pub opener: Opener,
}

impl ServerHandshake {
    /// Handles the client hello frame; returns the state and the framed server hello.
    pub fn respond(client_hello: &[u8]) -> Result<(Self, Vec<u8>), HandshakeError> {
        let hello = wa::HandshakeMessage::decode(client_hello)?
            .client_hello
            .ok_or(HandshakeError::Missing("client_hello"))?;
        let client_ephemeral = key32(
            hello
                .ephemeral
                .as_deref()
                .ok_or(HandshakeError::Missing("client ephemeral"))?,
            "client ephemeral",
        )?;

        let mut noise = NoiseHandshake::new(NOISE_START_PATTERN, &WA_CONN_HEADER)?;
        noise.authenticate(&client_ephemeral);
        let (ephemeral, static_kp) = {
            let mut rng = rand::rng();
            (KeyPair::generate(&mut rng), KeyPair::generate(&mut rng))
        };
        let ephemeral_pub = ephemeral.public_key.public_key_bytes().to_vec();
        let static_pub = static_kp.public_key.public_key_bytes().to_vec();

        noise.authenticate(&ephemeral_pub);
        noise.mix_shared_secret(ephemeral.private_key.serialize(), &client_ephemeral)?;
        let static_ct = noise.encrypt(&static_pub)?;
        noise.mix_shared_secret(static_kp.private_key.serialize(), &client_ephemeral)?;
        let cert_ct = noise.encrypt(&cert_chain(&static_pub).encode_to_vec())?;

        let server_hello = wa::HandshakeMessage {
            server_hello: Some(wa::handshake_message::ServerHello {
                ephemeral: Some(ephemeral_pub),
                r#static: Some(static_ct),
                payload: Some(cert_ct),
                ..Default::default()
            }),
            ..Default::default()
        };
        let framed = encode_frame(&server_hello.encode_to_vec())?;
        Ok((Self { noise, ephemeral }, framed))
    }

    /// Handles the client finish frame and establishes the session.
    pub fn finish(mut self, client_finish: &[u8]) -> Result<Session, HandshakeError> {
        let finish = wa::HandshakeMessage::decode(client_finish)?
            .client_finish
            .ok_or(HandshakeError::Missing("client_finish"))?;
        let static_ct = finish
            .r#static
            .as_deref()
            .ok_or(HandshakeError::Missing("client static"))?;
        let client_static = key32(&self.noise.decrypt(static_ct)?, "client static")?;
        self.noise
            .mix_shared_secret(self.ephemeral.private_key.serialize(), &client_static)?;
        let payload_ct = finish
            .payload
            .as_deref()
            .ok_or(HandshakeError::Missing("client payload"))?;
        let payload = wa::ClientPayload::decode(self.noise.decrypt(payload_ct)?.as_slice())?;
        // The client writes with the first key and reads with the second.
        let (client_write, client_read) = self.noise.finish()?;
        Ok(Session {
            payload,
            client_static,
            sealer: Sealer {
                cipher: client_read,
                counter: 0,
            },
            opener: Opener {
                cipher: client_write,
                counter: 0,
            },
        })
    }
}

/// A certificate chain that passes wa-rs's structural checks.
fn cert_chain(server_static: &[u8]) -> wa::CertChain {
    let cert = |details: Details| NoiseCertificate {
        details: Some(details.encode_to_vec()),
        signature: Some(vec![0; 64]),
    };
    wa::CertChain {
        intermediate: Some(cert(Details {
            serial: Some(1),
            issuer_serial: Some(0),
            key: Some(vec![7; 32]),
            ..Default::default()
        })),
        leaf: Some(cert(Details {
            serial: Some(2),
            issuer_serial: Some(1),
            key: Some(server_static.to_vec()),
            ..Default::default()
        })),
    }
}

fn key32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], HandshakeError> {
    bytes.try_into().map_err(|_| HandshakeError::BadKey(what))
}

/// Encrypts outgoing stanzas with a running nonce counter.
pub struct Sealer {
    cipher: NoiseCipher,
    counter: u32,
}

impl Sealer {
    /// Marshals, encrypts and frames one stanza.
    pub fn seal(&mut self, node: &Node) -> Result<Vec<u8>, SessionError> {
        let plain = wa_rs_binary::marshal::marshal(node)?;
        let ct = self.cipher.encrypt_with_counter(self.counter, &plain)?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(SessionError::CounterExhausted)?;
        Ok(encode_frame(&ct)?)
    }
}

/// Decrypts incoming stanzas with a running nonce counter.
pub struct Opener {
    cipher: NoiseCipher,
    counter: u32,
}

impl Opener {
    /// Decrypts and decodes one frame into a stanza.
    pub fn open(&mut self, frame: &[u8]) -> Result<Node, SessionError> {
        let plain = self.cipher.decrypt_with_counter(self.counter, frame)?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(SessionError::CounterExhausted)?;
        let unpacked = wa_rs_binary::util::unpack(&plain)?;
        Ok(wa_rs_binary::marshal::unmarshal_ref(&unpacked)?.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameReader;
    use wa_rs_binary::builder::NodeBuilder;
    use wa_rs_noise::HandshakeState;

    /// Unframes a single server frame (the reader wants the header first).
    fn one_frame(bytes: &[u8]) -> Vec<u8> {
        let mut r = FrameReader::new();
        r.push(&WA_CONN_HEADER);
        r.push(bytes);
        r.next_frame().unwrap().unwrap()
    }

    /// Runs wa-rs's own client handshake against the server half.
    #[test]
    fn client_and_server_agree_on_keys() {
        let client_static = KeyPair::generate(&mut rand::rng());
        let payload = wa::ClientPayload {
            username: Some(15551234567),
            device: Some(3),
            ..Default::default()
        };
        let mut client = HandshakeState::new(
            client_static.clone(),
            payload.encode_to_vec(),
            NOISE_START_PATTERN,
            &WA_CONN_HEADER,
        )
        .unwrap();

        let hello = client.build_client_hello().unwrap();
        let (server, server_hello) = ServerHandshake::respond(&hello).unwrap();
        let finish = client
            .read_server_hello_and_build_client_finish(&one_frame(&server_hello))
            .unwrap();
        let mut session = server.finish(&finish).unwrap();
        assert_eq!(session.payload, payload);
        assert_eq!(
            &session.client_static[..],
            client_static.public_key.public_key_bytes()
        );

        let (client_write, client_read) = client.finish().unwrap();
        let node = NodeBuilder::new("iq").attr("id", "1").build();
        let sealed = session.sealer.seal(&node).unwrap();
        let plain = client_read
            .decrypt_with_counter(0, &one_frame(&sealed))
            .unwrap();
        let got =
            wa_rs_binary::marshal::unmarshal_ref(&wa_rs_binary::util::unpack(&plain).unwrap())
                .unwrap()
                .to_owned();
        assert_eq!(got.tag, "iq");

        let ct = client_write
            .encrypt_with_counter(0, &wa_rs_binary::marshal::marshal(&node).unwrap())
            .unwrap();
        assert_eq!(session.opener.open(&ct).unwrap().tag, "iq");
        // A replayed frame fails: the counter moved on.
        assert!(session.opener.open(&ct).is_err());
    }

    #[test]
    fn garbage_hello_is_an_error_not_a_panic() {
        assert!(ServerHandshake::respond(b"\xff\xff\xff").is_err());
        assert!(matches!(
            ServerHandshake::respond(&wa::HandshakeMessage::default().encode_to_vec()),
            Err(HandshakeError::Missing("client_hello"))
        ));
    }
}
