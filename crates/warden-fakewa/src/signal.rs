//! The other end of a chat: fake contacts that send the client Signal-encrypted messages.
//!
//! A registering client sends its registration id, identity key and signed pre-key in its
//! `ClientPayload` ([`SignalKeys`]); the server keeps them with the paired device. A contact
//! then builds a pre-key bundle from them (no one-time pre-key: libsignal accepts a
//! signed-pre-key-only `pkmsg`), starts a session and encrypts a WhatsApp `Message` padded as
//! WhatsApp pads it. Each contact keeps one identity for the server's lifetime, so the client
//! trusts it from the second message on.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use prost::Message as _;
use rand::TryRngCore;
use wa_rs_libsignal::protocol::{
    CurveError, Direction, IdentityChange, IdentityKey, IdentityKeyPair, IdentityKeyStore,
    PreKeyBundle, ProtocolAddress, PublicKey, SessionRecord, SessionStore, SignalProtocolError,
    UsePQRatchet, message_encrypt, process_prekey_bundle,
};
use wa_rs_proto::whatsapp as wa;

/// The Signal keys a registering client announces (`ClientPayload.device_pairing_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalKeys {
    /// Its registration id.
    pub registration_id: u32,
    /// Its identity public key.
    pub identity_key: [u8; 32],
    /// Its signed pre-key's id.
    pub signed_pre_key_id: u32,
    /// Its signed pre-key's public key.
    pub signed_pre_key: [u8; 32],
    /// The identity key's signature over the signed pre-key.
    pub signature: Vec<u8>,
}

impl SignalKeys {
    /// Reads them from a registration's pairing data; `None` when one is missing or malformed.
    pub fn from_pairing_data(
        data: &wa::client_payload::DevicePairingRegistrationData,
    ) -> Option<Self> {
        let registration_id = u32::from_be_bytes(data.e_regid.as_deref()?.try_into().ok()?);
        let id = data.e_skey_id.as_deref()?;
        let signed_pre_key_id = match id {
            [a, b, c] => u32::from_be_bytes([0, *a, *b, *c]),
            _ => return None,
        };
        Some(Self {
            registration_id,
            identity_key: data.e_ident.as_deref()?.try_into().ok()?,
            signed_pre_key_id,
            signed_pre_key: data.e_skey_val.as_deref()?.try_into().ok()?,
            signature: data.e_skey_sig.clone()?,
        })
    }
}

/// Encrypting for a client failed (its keys do not make a valid bundle).
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    /// A key is not a valid curve point.
    #[error("cannot encrypt for the client: a key is invalid: {0}")]
    Key(#[from] CurveError),
    /// libsignal refused.
    #[error("cannot encrypt for the client: {0}")]
    Signal(#[from] SignalProtocolError),
}

/// The server's fake contacts, each with one identity.
#[derive(Default)]
pub struct Contacts {
    identities: Mutex<HashMap<String, IdentityKeyPair>>,
}

impl Contacts {
    fn identity(&self, contact: &str) -> IdentityKeyPair {
        let mut identities = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        identities
            .entry(contact.to_owned())
            .or_insert_with(|| IdentityKeyPair::generate(&mut rand::rngs::OsRng.unwrap_err()))
            .clone()
    }

    /// The `<enc type="pkmsg">` payload of a text message from `contact` to the client with
    /// `keys`: a fresh Signal session each time, so every message stands alone.
    pub async fn encrypt_text(
        &self,
        contact: &str,
        keys: &SignalKeys,
        text: &str,
    ) -> Result<Vec<u8>, EncryptError> {
        let mut sessions = ContactSessions::default();
        let mut identity = ContactIdentity {
            pair: self.identity(contact),
            known: HashMap::new(),
        };
        let bundle = PreKeyBundle::new(
            keys.registration_id,
            0u32.into(),
            None,
            keys.signed_pre_key_id.into(),
            PublicKey::from_djb_public_key_bytes(&keys.signed_pre_key)?,
            keys.signature.clone(),
            IdentityKey::new(PublicKey::from_djb_public_key_bytes(&keys.identity_key)?),
        )?;
        let client = ProtocolAddress::new("client@c.us".to_owned(), 0u32.into());
        process_prekey_bundle(
            &client,
            &mut sessions,
            &mut identity,
            &bundle,
            &mut rand::rngs::OsRng.unwrap_err(),
            UsePQRatchet::No,
        )
        .await?;
        let mut plaintext = wa::Message {
            conversation: Some(text.to_owned()),
            ..Default::default()
        }
        .encode_to_vec();
        pad(&mut plaintext);
        let message = message_encrypt(&plaintext, &client, &mut sessions, &mut identity).await?;
        Ok(message.serialize().to_vec())
    }
}

/// WhatsApp's padding (version 2): N bytes of value N, N in 1..=15.
fn pad(plaintext: &mut Vec<u8>) {
    let n = (rand::random::<u8>() % 15) + 1;
    plaintext.extend(std::iter::repeat_n(n, usize::from(n)));
}

/// One contact's Signal sessions while it encrypts one message.
#[derive(Default)]
struct ContactSessions {
    sessions: HashMap<ProtocolAddress, SessionRecord>,
}

/// One contact's identity, and the identities it has seen.
struct ContactIdentity {
    pair: IdentityKeyPair,
    known: HashMap<ProtocolAddress, IdentityKey>,
}

#[async_trait]
impl SessionStore for ContactSessions {
    async fn load_session(
        &self,
        address: &ProtocolAddress,
    ) -> Result<Option<SessionRecord>, SignalProtocolError> {
        Ok(self.sessions.get(address).cloned())
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: &SessionRecord,
    ) -> Result<(), SignalProtocolError> {
        self.sessions.insert(address.clone(), record.clone());
        Ok(())
    }
}

#[async_trait]
impl IdentityKeyStore for ContactIdentity {
    async fn get_identity_key_pair(&self) -> Result<IdentityKeyPair, SignalProtocolError> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> Result<u32, SignalProtocolError> {
        Ok(4242)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<IdentityChange, SignalProtocolError> {
        self.known.insert(address.clone(), *identity);
        Ok(IdentityChange::NewOrUnchanged)
    }

    async fn is_trusted_identity(
        &self,
        _address: &ProtocolAddress,
        _identity: &IdentityKey,
        _direction: Direction,
    ) -> Result<bool, SignalProtocolError> {
        Ok(true)
    }

    async fn get_identity(
        &self,
        address: &ProtocolAddress,
    ) -> Result<Option<IdentityKey>, SignalProtocolError> {
        Ok(self.known.get(address).copied())
    }
}
