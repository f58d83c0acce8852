//! The other end of a chat: fake devices that talk Signal with the client.
//!
//! Any phone number is a fake contact. Its devices (`[0]`, its phone, unless configured) each
//! have a Signal identity, a signed pre-key and one-time pre-keys, all made by the server, and
//! keep their sessions for the server's lifetime. An account's own phone (device 0) is a fake
//! device too. So the server can:
//! - hand the client pre-key bundles for them ([`Contacts::bundle`]);
//! - decrypt what the client sends them, `pkmsg` or `msg` ([`Contacts::decrypt`]);
//! - encrypt a contact's message for the client ([`Contacts::encrypt_text`]), from the Signal
//!   keys the client announced when it registered ([`SignalKeys`]), or on the session the two
//!   already share.

mod plaintext;
mod stores;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rand::{Rng, TryRngCore};
use wa_rs_libsignal::protocol::{
    CiphertextMessage, CiphertextMessageType, CurveError, GenericSignedPreKey, IdentityKey,
    IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyBundle, PreKeyRecord, PreKeySignalMessage,
    PreKeyStore, ProtocolAddress, PublicKey, SignalMessage, SignalProtocolError,
    SignedPreKeyRecord, Timestamp, UsePQRatchet, message_decrypt, message_encrypt,
    process_prekey_bundle,
};
use wa_rs_proto::whatsapp as wa;

pub use plaintext::Plaintext;
use stores::{Identity, PreKeys, Sessions, SignedPreKey};

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

/// One device of one user: `user:device@s.whatsapp.net`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    /// The user (phone number) part.
    pub user: String,
    /// The device number; 0 is the phone.
    pub device: u16,
}

impl DeviceAddress {
    /// `user`'s device `device`.
    pub fn new(user: impl Into<String>, device: u16) -> Self {
        Self {
            user: user.into(),
            device,
        }
    }

    /// Reads `user@server`, `user:device@server` or `user.agent:device@server`.
    pub fn parse(jid: &str) -> Option<Self> {
        let (user_part, server) = jid.split_once('@')?;
        if server.is_empty() {
            return None;
        }
        let (user, device) = match user_part.split_once(':') {
            Some((user, device)) => (user, device.parse().ok()?),
            None => (user_part, 0),
        };
        let user = user.split('.').next().unwrap_or(user);
        if user.is_empty() {
            return None;
        }
        Some(Self::new(user, device))
    }

    /// The device JID, `user:device@s.whatsapp.net` (`user@s.whatsapp.net` for device 0).
    pub fn jid(&self) -> String {
        match self.device {
            0 => format!("{}@s.whatsapp.net", self.user),
            n => format!("{}:{n}@s.whatsapp.net", self.user),
        }
    }

    fn protocol_address(&self) -> ProtocolAddress {
        ProtocolAddress::new(format!("{}@c.us", self.user), u32::from(self.device).into())
    }
}

/// What a client needs to start a session with a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The device's registration id.
    pub registration_id: u32,
    /// Its identity public key.
    pub identity_key: [u8; 32],
    /// A one-time pre-key (id, public key), when one is offered.
    pub pre_key: Option<(u32, [u8; 32])>,
    /// Its signed pre-key's id.
    pub signed_pre_key_id: u32,
    /// Its signed pre-key's public key.
    pub signed_pre_key: [u8; 32],
    /// The identity key's signature over the signed pre-key.
    pub signature: Vec<u8>,
}

impl From<&SignalKeys> for Bundle {
    fn from(keys: &SignalKeys) -> Self {
        Self {
            registration_id: keys.registration_id,
            identity_key: keys.identity_key,
            pre_key: None,
            signed_pre_key_id: keys.signed_pre_key_id,
            signed_pre_key: keys.signed_pre_key,
            signature: keys.signature.clone(),
        }
    }
}

/// An encrypted payload and its `<enc type>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// `pkmsg` (starts a session) or `msg` (on an established one).
    pub enc_type: &'static str,
    /// The Signal message.
    pub payload: Vec<u8>,
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

/// A payload from the client could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The `<enc type>` is neither `pkmsg` nor `msg`.
    #[error("unsupported enc type {0:?}")]
    UnknownType(String),
    /// The bytes are not a Signal message of that type.
    #[error("malformed Signal message: {0}")]
    Malformed(SignalProtocolError),
    /// libsignal could not decrypt it (no session, unknown pre-key, bad MAC, ...).
    #[error("cannot decrypt: {0}")]
    Signal(#[from] SignalProtocolError),
    /// It decrypted, but not to a padded WhatsApp message.
    #[error("cannot read the plaintext: {0}")]
    Plaintext(String),
}

/// One fake device's keys and sessions.
struct FakeDevice {
    sessions: Sessions,
    identity: Identity,
    pre_keys: PreKeys,
    signed: SignedPreKey,
    next_pre_key: u32,
}

impl FakeDevice {
    const SIGNED_PRE_KEY_ID: u32 = 1;

    fn generate() -> Self {
        let mut rng = rand::rngs::OsRng.unwrap_err();
        let pair = IdentityKeyPair::generate(&mut rng);
        let signed_pair = KeyPair::generate(&mut rng);
        let signature = pair
            .private_key()
            .calculate_signature(&signed_pair.public_key.serialize(), &mut rng)
            .expect("a freshly generated key signs");
        let record = SignedPreKeyRecord::new(
            Self::SIGNED_PRE_KEY_ID.into(),
            Timestamp::from_epoch_millis(0),
            &signed_pair,
            &signature,
        );
        let registration_id = rand::rng().random_range(1..=16380);
        Self {
            sessions: Sessions::default(),
            identity: Identity::new(pair, registration_id),
            pre_keys: PreKeys::default(),
            signed: SignedPreKey {
                id: Self::SIGNED_PRE_KEY_ID.into(),
                record,
            },
            next_pre_key: 1,
        }
    }

    /// A bundle with a fresh one-time pre-key, kept until a message uses it.
    async fn bundle(&mut self) -> Bundle {
        let mut rng = rand::rngs::OsRng.unwrap_err();
        let id = self.next_pre_key;
        self.next_pre_key = (self.next_pre_key % 0x00FF_FFFF) + 1;
        let pair = KeyPair::generate(&mut rng);
        let _ = self
            .pre_keys
            .save_pre_key(id.into(), &PreKeyRecord::new(id.into(), &pair))
            .await;
        let signed = self
            .signed
            .record
            .public_key()
            .expect("the signed pre-key was made here");
        Bundle {
            registration_id: self.identity.registration_id,
            identity_key: djb(self.identity.pair.public_key()),
            pre_key: Some((id, djb(&pair.public_key))),
            signed_pre_key_id: Self::SIGNED_PRE_KEY_ID,
            signed_pre_key: djb(&signed),
            signature: self.signed.record.signature().unwrap_or_default(),
        }
    }
}

/// The 32-byte Curve25519 form WhatsApp puts on the wire.
fn djb(key: &PublicKey) -> [u8; 32] {
    key.public_key_bytes()
        .try_into()
        .expect("a Curve25519 public key is 32 bytes")
}

/// The server's fake devices.
pub struct Contacts {
    devices: Mutex<HashMap<DeviceAddress, Arc<tokio::sync::Mutex<FakeDevice>>>>,
    device_lists: BTreeMap<String, Vec<u16>>,
}

impl Default for Contacts {
    fn default() -> Self {
        Self::new(BTreeMap::new())
    }
}

impl Contacts {
    /// Fake devices for every user; `device_lists` gives some users more devices than `[0]`.
    pub fn new(device_lists: BTreeMap<String, Vec<u16>>) -> Self {
        Self {
            devices: Mutex::new(HashMap::new()),
            device_lists,
        }
    }

    /// The devices of `user`: as configured, or just its phone.
    pub fn devices_of(&self, user: &str) -> Vec<u16> {
        self.device_lists
            .get(user)
            .cloned()
            .unwrap_or_else(|| vec![0])
    }

    fn device(&self, address: &DeviceAddress) -> Arc<tokio::sync::Mutex<FakeDevice>> {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .entry(address.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(FakeDevice::generate())))
            .clone()
    }

    /// A pre-key bundle for `address`, with a fresh one-time pre-key.
    pub async fn bundle(&self, address: &DeviceAddress) -> Bundle {
        self.device(address).lock().await.bundle().await
    }

    /// How many one-time pre-keys of `address` are handed out and not yet used.
    pub async fn unused_pre_keys(&self, address: &DeviceAddress) -> usize {
        self.device(address).lock().await.pre_keys.len()
    }

    /// A text message from `from` (a fake device) to `client`, whose keys are `keys`. It goes
    /// on the session the two share; without one (or when the client's identity changed,
    /// as after a new pairing) it starts one from `keys`, as a `pkmsg`.
    pub async fn encrypt_text(
        &self,
        from: &DeviceAddress,
        client: &DeviceAddress,
        keys: &SignalKeys,
        text: &str,
    ) -> Result<Encrypted, EncryptError> {
        let message = wa::Message {
            conversation: Some(text.to_owned()),
            ..Default::default()
        };
        self.encrypt(from, client, keys, || None, &message).await
    }

    /// Any WhatsApp `message` from `from` to `client`, as [`Contacts::encrypt_text`] does it;
    /// a new session takes the one-time pre-key `pre_key` gives, if any (the client's
    /// uploaded ones).
    pub async fn encrypt(
        &self,
        from: &DeviceAddress,
        client: &DeviceAddress,
        keys: &SignalKeys,
        pre_key: impl FnOnce() -> Option<(u32, [u8; 32])>,
        message: &wa::Message,
    ) -> Result<Encrypted, EncryptError> {
        let device = self.device(from);
        let mut device = device.lock().await;
        let FakeDevice {
            sessions, identity, ..
        } = &mut *device;
        let remote = client.protocol_address();
        let client_identity =
            IdentityKey::new(PublicKey::from_djb_public_key_bytes(&keys.identity_key)?);
        let known = identity.get_identity(&remote).await?;
        if !sessions.has(&remote) || known != Some(client_identity) {
            let one_time = match pre_key() {
                Some((id, key)) => Some((id.into(), PublicKey::from_djb_public_key_bytes(&key)?)),
                None => None,
            };
            let bundle = PreKeyBundle::new(
                keys.registration_id,
                u32::from(client.device).into(),
                one_time,
                keys.signed_pre_key_id.into(),
                PublicKey::from_djb_public_key_bytes(&keys.signed_pre_key)?,
                keys.signature.clone(),
                client_identity,
            )?;
            process_prekey_bundle(
                &remote,
                sessions,
                identity,
                &bundle,
                &mut rand::rngs::OsRng.unwrap_err(),
                UsePQRatchet::No,
            )
            .await?;
        }
        let message =
            message_encrypt(&plaintext::padded(message), &remote, sessions, identity).await?;
        let enc_type = match message.message_type() {
            CiphertextMessageType::PreKey => "pkmsg",
            _ => "msg",
        };
        Ok(Encrypted {
            enc_type,
            payload: message.serialize().to_vec(),
        })
    }

    /// Decrypts a payload `client` sent to the fake device `to`.
    pub async fn decrypt(
        &self,
        to: &DeviceAddress,
        client: &DeviceAddress,
        enc_type: &str,
        payload: &[u8],
    ) -> Result<Plaintext, DecryptError> {
        let message = match enc_type {
            "pkmsg" => CiphertextMessage::PreKeySignalMessage(
                PreKeySignalMessage::try_from(payload).map_err(DecryptError::Malformed)?,
            ),
            "msg" => CiphertextMessage::SignalMessage(
                SignalMessage::try_from(payload).map_err(DecryptError::Malformed)?,
            ),
            other => return Err(DecryptError::UnknownType(other.to_owned())),
        };
        let device = self.device(to);
        let mut device = device.lock().await;
        let FakeDevice {
            sessions,
            identity,
            pre_keys,
            signed,
            ..
        } = &mut *device;
        let padded = message_decrypt(
            &message,
            &client.protocol_address(),
            sessions,
            identity,
            pre_keys,
            signed,
            &mut rand::rngs::OsRng.unwrap_err(),
            UsePQRatchet::No,
        )
        .await?;
        plaintext::decode(&padded).map_err(DecryptError::Plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_addresses_parse_from_jids() {
        let table = [
            ("15550001111@s.whatsapp.net", Some(("15550001111", 0))),
            ("15550001111:7@s.whatsapp.net", Some(("15550001111", 7))),
            ("15550001111.0:3@s.whatsapp.net", Some(("15550001111", 3))),
            ("2155@lid", Some(("2155", 0))),
            ("15550001111", None),
            ("@s.whatsapp.net", None),
            ("1555:x@s.whatsapp.net", None),
            ("1555@", None),
        ];
        for (jid, want) in table {
            let got = DeviceAddress::parse(jid);
            let want = want.map(|(u, d)| DeviceAddress::new(u, d));
            assert_eq!(got, want, "{jid}");
        }
        assert_eq!(DeviceAddress::new("1555", 3).jid(), "1555:3@s.whatsapp.net");
        assert_eq!(DeviceAddress::new("1555", 0).jid(), "1555@s.whatsapp.net");
    }

    #[test]
    fn users_have_their_configured_devices_or_a_phone() {
        let contacts = Contacts::new(BTreeMap::from([("1555".to_string(), vec![0, 4])]));
        assert_eq!(contacts.devices_of("1555"), vec![0, 4]);
        assert_eq!(contacts.devices_of("1666"), vec![0]);
    }

    /// Two fake devices talk to each other through the public API: one plays the client.
    #[tokio::test]
    async fn a_bundle_starts_a_session_both_ways() {
        let contacts = Contacts::default();
        let contact = DeviceAddress::new("15550001111", 0);
        let client = DeviceAddress::new("15551234567", 5);
        // The "client" is a fake device too; its bundle stands in for its announced keys.
        let client_bundle = contacts.bundle(&client).await;
        let keys = SignalKeys {
            registration_id: client_bundle.registration_id,
            identity_key: client_bundle.identity_key,
            signed_pre_key_id: client_bundle.signed_pre_key_id,
            signed_pre_key: client_bundle.signed_pre_key,
            signature: client_bundle.signature.clone(),
        };
        let first = contacts
            .encrypt_text(&contact, &client, &keys, "one")
            .await
            .expect("encrypts");
        assert_eq!(first.enc_type, "pkmsg");
        let plain = contacts
            .decrypt(&client, &contact, first.enc_type, &first.payload)
            .await
            .expect("the client reads it");
        assert_eq!(plain.text.as_deref(), Some("one"));
        // The contact's session is kept: the second message still introduces it (no reply yet).
        let second = contacts
            .encrypt_text(&contact, &client, &keys, "two")
            .await
            .expect("encrypts");
        let plain = contacts
            .decrypt(&client, &contact, second.enc_type, &second.payload)
            .await
            .expect("the client reads it");
        assert_eq!(plain.text.as_deref(), Some("two"));
        // A payload of an unknown type, or garbage, is an error, not a panic.
        assert!(matches!(
            contacts.decrypt(&client, &contact, "skmsg", b"x").await,
            Err(DecryptError::UnknownType(_))
        ));
        assert!(matches!(
            contacts.decrypt(&client, &contact, "msg", b"garbage").await,
            Err(DecryptError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn each_bundle_hands_out_a_new_pre_key() {
        let contacts = Contacts::default();
        let contact = DeviceAddress::new("15550001111", 0);
        let a = contacts.bundle(&contact).await;
        let b = contacts.bundle(&contact).await;
        assert_eq!(a.identity_key, b.identity_key);
        assert_ne!(a.pre_key, b.pre_key);
        assert_eq!(contacts.unused_pre_keys(&contact).await, 2);
    }
}
