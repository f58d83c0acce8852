//! The devices the server has paired, so later logins can be checked.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::signal::SignalKeys;

/// A companion device paired by this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedDevice {
    /// Phone number (JID user) of the account.
    pub phone: String,
    /// Companion device number.
    pub device: u16,
    /// LID user of the account.
    pub lid: String,
    /// The client's static Noise key: its login credential.
    pub noise_key: [u8; 32],
    /// The client's identity key.
    pub identity_key: [u8; 32],
    /// The Signal keys it announced when it registered, or uploaded since (what contacts
    /// encrypt to).
    pub signal: Option<SignalKeys>,
    /// The one-time pre-keys it uploaded and no contact has used yet: (id, public key).
    pub pre_keys: Vec<(u32, [u8; 32])>,
    /// When the pairing completed.
    pub paired_at: SystemTime,
}

impl PairedDevice {
    /// The device JID, `phone:device@s.whatsapp.net`.
    pub fn jid(&self) -> String {
        format!("{}:{}@s.whatsapp.net", self.phone, self.device)
    }
}

/// Shared registry of paired devices and the pool of phone numbers to hand out.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    devices: Vec<PairedDevice>,
    next_phone: u64,
}

impl Registry {
    /// An empty registry handing out phone numbers from `first_phone` upwards.
    pub fn new(first_phone: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                devices: Vec::new(),
                next_phone: first_phone,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Chooses the phone and device for a new pairing.
    pub fn allocate(&self, phone: Option<&str>, device: Option<u16>) -> (String, u16) {
        let mut inner = self.lock();
        let phone = match phone {
            Some(p) => p.to_string(),
            None => loop {
                let candidate = inner.next_phone.to_string();
                inner.next_phone += 1;
                if !inner.devices.iter().any(|d| d.phone == candidate) {
                    break candidate;
                }
            },
        };
        let device = device.unwrap_or_else(|| {
            let used = |n: u16| {
                inner
                    .devices
                    .iter()
                    .any(|d| d.phone == phone && d.device == n)
            };
            (1..=u16::MAX).find(|n| !used(*n)).unwrap_or(u16::MAX)
        });
        (phone, device)
    }

    /// Records a completed pairing, replacing an earlier device with the same JID.
    pub fn insert(&self, device: PairedDevice) {
        let mut inner = self.lock();
        inner
            .devices
            .retain(|d| !(d.phone == device.phone && d.device == device.device));
        inner.devices.push(device);
    }

    /// Whether `phone:device` was paired here with this Noise key.
    pub fn is_known(&self, phone: &str, device: u16, noise_key: &[u8; 32]) -> bool {
        self.lock()
            .devices
            .iter()
            .any(|d| d.phone == phone && d.device == device && &d.noise_key == noise_key)
    }

    /// The Signal keys of `phone:device`, if it was paired here and announced them.
    pub fn signal_keys(&self, phone: &str, device: u16) -> Option<SignalKeys> {
        self.lock()
            .devices
            .iter()
            .find(|d| d.phone == phone && d.device == device)
            .and_then(|d| d.signal.clone())
    }

    /// Keeps what `phone:device` uploaded (`<iq xmlns="encrypt" type="set">`): its keys, and
    /// one-time pre-keys added to those not used yet. `false` when the device is not paired here.
    pub fn store_upload(
        &self,
        phone: &str,
        device: u16,
        keys: Option<SignalKeys>,
        pre_keys: Vec<(u32, [u8; 32])>,
    ) -> bool {
        let mut inner = self.lock();
        let Some(d) = inner
            .devices
            .iter_mut()
            .find(|d| d.phone == phone && d.device == device)
        else {
            return false;
        };
        if let Some(keys) = keys {
            d.signal = Some(keys);
        }
        d.pre_keys.extend(pre_keys);
        true
    }

    /// Takes one unused one-time pre-key of `phone:device`, for a contact starting a session.
    pub fn take_pre_key(&self, phone: &str, device: u16) -> Option<(u32, [u8; 32])> {
        let mut inner = self.lock();
        let d = inner
            .devices
            .iter_mut()
            .find(|d| d.phone == phone && d.device == device)?;
        if d.pre_keys.is_empty() {
            None
        } else {
            Some(d.pre_keys.remove(0))
        }
    }

    /// The companion device numbers paired here for `phone`, in order.
    pub fn companions_of(&self, phone: &str) -> Vec<u16> {
        let mut devices: Vec<u16> = self
            .lock()
            .devices
            .iter()
            .filter(|d| d.phone == phone)
            .map(|d| d.device)
            .collect();
        devices.sort_unstable();
        devices
    }

    /// Whether `phone:device` is a companion paired here.
    pub fn is_companion(&self, phone: &str, device: u16) -> bool {
        self.lock()
            .devices
            .iter()
            .any(|d| d.phone == phone && d.device == device)
    }

    /// The account a Noise key was paired as, if any.
    pub fn phone_of(&self, noise_key: &[u8; 32]) -> Option<String> {
        self.lock()
            .devices
            .iter()
            .find(|d| &d.noise_key == noise_key)
            .map(|d| d.phone.clone())
    }

    /// Removes every device of `phone`; returns how many there were.
    pub fn forget(&self, phone: &str) -> usize {
        let mut inner = self.lock();
        let before = inner.devices.len();
        inner.devices.retain(|d| d.phone != phone);
        before - inner.devices.len()
    }

    /// All paired devices, oldest first.
    pub fn devices(&self) -> Vec<PairedDevice> {
        self.lock().devices.clone()
    }
}

/// The LID user the server gives the account `phone`.
pub fn lid_for(phone: &str) -> String {
    format!("2{phone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(phone: &str, device: u16, key: u8) -> PairedDevice {
        PairedDevice {
            phone: phone.into(),
            device,
            lid: lid_for(phone),
            noise_key: [key; 32],
            identity_key: [key; 32],
            signal: None,
            pre_keys: Vec::new(),
            paired_at: SystemTime::now(),
        }
    }

    #[test]
    fn allocates_fresh_phones_and_devices() {
        let r = Registry::new(15550000001);
        assert_eq!(r.allocate(None, None), ("15550000001".into(), 1));
        r.insert(dev("15550000002", 1, 1));
        // 15550000002 is taken, so the pool skips it.
        assert_eq!(r.allocate(None, None), ("15550000003".into(), 1));
        assert_eq!(
            r.allocate(Some("15550000002"), None),
            ("15550000002".into(), 2)
        );
        assert_eq!(
            r.allocate(Some("15550000002"), Some(7)),
            ("15550000002".into(), 7)
        );
    }

    #[test]
    fn knows_devices_by_noise_key() {
        let r = Registry::new(1);
        r.insert(dev("100", 1, 5));
        assert!(r.is_known("100", 1, &[5; 32]));
        assert!(!r.is_known("100", 1, &[6; 32]));
        assert!(!r.is_known("100", 2, &[5; 32]));
        assert_eq!(r.phone_of(&[5; 32]).as_deref(), Some("100"));
        assert_eq!(r.devices()[0].jid(), "100:1@s.whatsapp.net");
        assert_eq!(r.forget("100"), 1);
        assert!(r.devices().is_empty());
    }
}
