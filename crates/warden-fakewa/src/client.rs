//! What a connecting client claims to be, read from its `ClientPayload`.

use std::fmt;

use wa_rs_proto::whatsapp as wa;

use crate::signal::SignalKeys;

/// Whether the client logs in with credentials or registers a new device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// A device without credentials asking to be paired (QR / pair code).
    Registration {
        /// The client's identity public key (`device_pairing_data.e_ident`).
        identity_key: [u8; 32],
    },
    /// A paired device logging in as `phone:device`.
    Login {
        /// The account's phone number (JID user).
        phone: String,
        /// The companion device number.
        device: u16,
    },
}

/// The client of one connection, as decoded after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Registration or login.
    pub kind: ClientKind,
    /// The client's static Noise key; stable for the lifetime of a wa-rs device store.
    pub noise_key: [u8; 32],
    /// Whether the client connected in passive mode.
    pub passive: bool,
    /// The client's app version, `primary.secondary.tertiary`.
    pub version: Option<String>,
    /// The Signal keys a registering client announces (what contacts encrypt to).
    pub signal: Option<SignalKeys>,
}

/// The payload is neither a usable login nor a usable registration.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("client payload has neither a username nor usable pairing data")]
pub struct UnknownClient;

impl ClientInfo {
    /// Interprets a decoded payload and the client's static key.
    pub fn from_payload(
        payload: &wa::ClientPayload,
        noise_key: [u8; 32],
    ) -> Result<Self, UnknownClient> {
        let kind = if let Some(reg) = &payload.device_pairing_data {
            let identity_key = reg
                .e_ident
                .as_deref()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or(UnknownClient)?;
            ClientKind::Registration { identity_key }
        } else {
            let phone = payload.username.ok_or(UnknownClient)?.to_string();
            let device = u16::try_from(payload.device.unwrap_or(0)).map_err(|_| UnknownClient)?;
            ClientKind::Login { phone, device }
        };
        let version = payload
            .user_agent
            .as_ref()
            .and_then(|ua| ua.app_version.as_ref())
            .map(|v| format!("{}.{}.{}", v.primary(), v.secondary(), v.tertiary()));
        let signal = payload
            .device_pairing_data
            .as_ref()
            .and_then(SignalKeys::from_pairing_data);
        Ok(Self {
            kind,
            noise_key,
            passive: payload.passive.unwrap_or(false),
            version,
            signal,
        })
    }

    /// The phone number for a login, `None` for a registration.
    pub fn phone(&self) -> Option<&str> {
        match &self.kind {
            ClientKind::Login { phone, .. } => Some(phone),
            ClientKind::Registration { .. } => None,
        }
    }

    /// A short hex id of the noise key, to tell unpaired clients apart.
    pub fn client_id(&self) -> String {
        hex_prefix(&self.noise_key)
    }
}

impl fmt::Display for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ClientKind::Registration { .. } => {
                write!(f, "registration (client {})", self.client_id())
            }
            ClientKind::Login { phone, device } => write!(f, "login {phone}:{device}"),
        }
    }
}

/// The first 8 bytes of `key` in hex.
pub(crate) fn hex_prefix(key: &[u8]) -> String {
    key.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_registration_from_login() {
        let reg = wa::ClientPayload {
            device_pairing_data: Some(wa::client_payload::DevicePairingRegistrationData {
                e_ident: Some(vec![9; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = ClientInfo::from_payload(&reg, [1; 32]).unwrap();
        assert_eq!(
            info.kind,
            ClientKind::Registration {
                identity_key: [9; 32]
            }
        );
        assert_eq!(info.phone(), None);
        assert_eq!(info.client_id(), "0101010101010101");

        let login = wa::ClientPayload {
            username: Some(15551234567),
            device: Some(4),
            passive: Some(true),
            ..Default::default()
        };
        let info = ClientInfo::from_payload(&login, [1; 32]).unwrap();
        assert_eq!(info.phone(), Some("15551234567"));
        assert!(info.passive);
        assert_eq!(info.to_string(), "login 15551234567:4");

        assert_eq!(
            ClientInfo::from_payload(&wa::ClientPayload::default(), [0; 32]),
            Err(UnknownClient)
        );
    }
}
