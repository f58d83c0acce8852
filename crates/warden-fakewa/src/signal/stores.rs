//! In-memory Signal stores for one fake device: its sessions, identity, pre-keys and signed
//! pre-key. Each is its own type, because libsignal borrows them separately and at once.

use std::collections::HashMap;

use async_trait::async_trait;
use wa_rs_libsignal::protocol::{
    Direction, IdentityChange, IdentityKey, IdentityKeyPair, IdentityKeyStore, PreKeyId,
    PreKeyRecord, PreKeyStore, ProtocolAddress, SessionRecord, SessionStore, SignalProtocolError,
    SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore,
};

/// A device's Signal sessions, by the remote address.
#[derive(Default)]
pub(super) struct Sessions {
    records: HashMap<ProtocolAddress, SessionRecord>,
}

impl Sessions {
    /// Whether a session with `address` exists.
    pub(super) fn has(&self, address: &ProtocolAddress) -> bool {
        self.records.contains_key(address)
    }
}

#[async_trait]
impl SessionStore for Sessions {
    async fn load_session(
        &self,
        address: &ProtocolAddress,
    ) -> Result<Option<SessionRecord>, SignalProtocolError> {
        Ok(self.records.get(address).cloned())
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: &SessionRecord,
    ) -> Result<(), SignalProtocolError> {
        self.records.insert(address.clone(), record.clone());
        Ok(())
    }
}

/// A device's identity, and the identities of the devices it has talked to. A fake device
/// trusts every identity: it plays a phone whose user accepts key changes.
pub(super) struct Identity {
    pub(super) pair: IdentityKeyPair,
    pub(super) registration_id: u32,
    known: HashMap<ProtocolAddress, IdentityKey>,
}

impl Identity {
    pub(super) fn new(pair: IdentityKeyPair, registration_id: u32) -> Self {
        Self {
            pair,
            registration_id,
            known: HashMap::new(),
        }
    }
}

#[async_trait]
impl IdentityKeyStore for Identity {
    async fn get_identity_key_pair(&self) -> Result<IdentityKeyPair, SignalProtocolError> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> Result<u32, SignalProtocolError> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<IdentityChange, SignalProtocolError> {
        match self.known.insert(address.clone(), *identity) {
            Some(old) if old != *identity => Ok(IdentityChange::ReplacedExisting),
            _ => Ok(IdentityChange::NewOrUnchanged),
        }
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

/// A device's unused one-time pre-keys; a pre-key message consumes its key.
#[derive(Default)]
pub(super) struct PreKeys {
    records: HashMap<PreKeyId, PreKeyRecord>,
}

impl PreKeys {
    /// How many are unused.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }
}

#[async_trait]
impl PreKeyStore for PreKeys {
    async fn get_pre_key(&self, id: PreKeyId) -> Result<PreKeyRecord, SignalProtocolError> {
        self.records
            .get(&id)
            .cloned()
            .ok_or(SignalProtocolError::InvalidPreKeyId)
    }

    async fn save_pre_key(
        &mut self,
        id: PreKeyId,
        record: &PreKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        self.records.insert(id, record.clone());
        Ok(())
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> Result<(), SignalProtocolError> {
        self.records.remove(&id);
        Ok(())
    }
}

/// A device's one signed pre-key.
pub(super) struct SignedPreKey {
    pub(super) id: SignedPreKeyId,
    pub(super) record: SignedPreKeyRecord,
}

#[async_trait]
impl SignedPreKeyStore for SignedPreKey {
    async fn get_signed_pre_key(
        &self,
        id: SignedPreKeyId,
    ) -> Result<SignedPreKeyRecord, SignalProtocolError> {
        if id == self.id {
            Ok(self.record.clone())
        } else {
            Err(SignalProtocolError::InvalidSignedPreKeyId)
        }
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        self.id = id;
        self.record = record.clone();
        Ok(())
    }
}
