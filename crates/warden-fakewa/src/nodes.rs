//! Builders for the stanzas the server sends, and small readers for the ones
//! it receives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use thiserror::Error;
use wa_rs_binary::builder::NodeBuilder;
use wa_rs_binary::node::Node;
use wa_rs_libsignal::protocol::KeyPair;
use wa_rs_proto::whatsapp as wa;

/// The server's JID, used as `from` on everything it sends.
pub const SERVER: &str = "s.whatsapp.net";

/// Prefix of the message an account key signs to vouch for a companion device.
const ADV_ACCOUNT_SIGNATURE_PREFIX: [u8; 2] = [6, 0];

/// A stanza could not be built.
#[derive(Debug, Error)]
pub enum NodeError {
    /// Signing the device identity failed.
    #[error("signing the device identity failed: {0}")]
    Signature(String),
}

/// The string value of attribute `key`.
pub fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs.get(key).map(|v| v.to_string_value())
}

/// A one-line rendering of a stanza: tag, attributes and child tags.
pub fn summary(node: &Node) -> String {
    let mut s = format!("<{}", node.tag);
    for (k, v) in node.attrs.iter() {
        s.push_str(&format!(" {k}={}", v.to_string_value()));
    }
    s.push('>');
    for child in node.children().unwrap_or_default().iter().take(4) {
        s.push_str(&format!("<{}/>", child.tag));
    }
    s
}

/// An empty `<iq type="result">` answering request `id`.
pub fn iq_result(id: &str) -> Node {
    iq_result_with(id, Vec::new())
}

/// An `<iq type="result">` answering request `id` with `children`.
pub fn iq_result_with(id: &str, children: Vec<Node>) -> Node {
    let b = NodeBuilder::new("iq").attrs([("from", SERVER), ("id", id), ("type", "result")]);
    if children.is_empty() {
        b.build()
    } else {
        b.children(children).build()
    }
}

/// `<count value=N/>`: the pre-key count reply.
pub fn prekey_count(n: u32) -> Node {
    NodeBuilder::new("count")
        .attr("value", n.to_string())
        .build()
}

/// The link-code (pair code) registration reply.
pub fn link_code_reply(id: &str) -> Node {
    iq_result_with(
        id,
        vec![
            NodeBuilder::new("link_code_companion_reg")
                .children([NodeBuilder::new("link_code_pairing_ref")
                    .bytes(b"fakewa-link-code-ref".to_vec())
                    .build()])
                .build(),
        ],
    )
}

/// `<success>`: the login is accepted.
pub fn success(lid: &str) -> Node {
    NodeBuilder::new("success")
        .attrs([
            ("t", unix_now().as_secs().to_string()),
            ("lid", lid.to_string()),
            ("props", "1".to_string()),
            ("location", "frc".to_string()),
        ])
        .build()
}

/// `<ib><offline count=N/></ib>`: the offline backlog is delivered.
pub fn offline_done(count: u32) -> Node {
    NodeBuilder::new("ib")
        .attr("from", SERVER)
        .children([NodeBuilder::new("offline")
            .attr("count", count.to_string())
            .build()])
        .build()
}

/// `<iq xmlns="md"><pair-device><ref/>…</pair-device></iq>`: QR references.
///
/// With no refs at all, wa-rs runs its "all QR codes expired" path at once.
pub fn pair_device(id: &str, refs: &[String]) -> Node {
    NodeBuilder::new("iq")
        .attrs([
            ("from", SERVER),
            ("id", id),
            ("type", "set"),
            ("xmlns", "md"),
        ])
        .children([NodeBuilder::new("pair-device")
            .children(
                refs.iter()
                    .map(|r| NodeBuilder::new("ref").bytes(r.as_bytes().to_vec()).build()),
            )
            .build()])
        .build()
}

/// The device a pairing creates.
#[derive(Debug, Clone)]
pub struct PairTarget<'a> {
    /// Phone number (JID user) of the account.
    pub phone: &'a str,
    /// Companion device number.
    pub device: u16,
    /// LID user of the account.
    pub lid: &'a str,
    /// Platform name of the "phone" (e.g. `android`).
    pub platform: &'a str,
    /// Business name; wa-rs stores it as the push name when not empty.
    pub business_name: &'a str,
}

/// `<iq xmlns="md"><pair-success>`: what the phone sends after scanning the QR.
///
/// The account key is made up here. wa-rs 0.2.0 skips the HMAC check and
/// verifies the account signature against the key carried in the same message,
/// so signing over the client's identity key (taken from its registration
/// payload) is enough for it to accept the pairing.
pub fn pair_success(
    id: &str,
    identity_key: &[u8; 32],
    target: &PairTarget<'_>,
) -> Result<Node, NodeError> {
    let mut rng = rand::rng();
    let account = KeyPair::generate(&mut rng);
    let details = wa::AdvDeviceIdentity {
        raw_id: Some(rand::random::<u32>() >> 1),
        timestamp: Some(unix_now().as_secs()),
        key_index: Some(1),
        ..Default::default()
    }
    .encode_to_vec();
    let mut msg = ADV_ACCOUNT_SIGNATURE_PREFIX.to_vec();
    msg.extend_from_slice(&details);
    msg.extend_from_slice(identity_key);
    let signature = account
        .private_key
        .calculate_signature(&msg, &mut rng)
        .map_err(|e| NodeError::Signature(e.to_string()))?;
    let signed = wa::AdvSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(account.public_key.public_key_bytes().to_vec()),
        account_signature: Some(signature.to_vec()),
        device_signature: None,
    }
    .encode_to_vec();
    let container = wa::AdvSignedDeviceIdentityHmac {
        details: Some(signed),
        hmac: Some(vec![0; 32]),
        ..Default::default()
    }
    .encode_to_vec();

    let mut children = vec![
        NodeBuilder::new("device-identity").bytes(container).build(),
        NodeBuilder::new("platform")
            .attr("name", target.platform)
            .build(),
        NodeBuilder::new("device")
            .attrs([
                (
                    "jid",
                    format!("{}:{}@s.whatsapp.net", target.phone, target.device),
                ),
                ("lid", format!("{}:{}@lid", target.lid, target.device)),
            ])
            .build(),
    ];
    if !target.business_name.is_empty() {
        children.push(
            NodeBuilder::new("biz")
                .attr("name", target.business_name)
                .build(),
        );
    }
    Ok(NodeBuilder::new("iq")
        .attrs([
            ("from", SERVER),
            ("id", id),
            ("type", "set"),
            ("xmlns", "md"),
        ])
        .children([NodeBuilder::new("pair-success").children(children).build()])
        .build())
}

/// True if `reply` is the client's signed answer (`pair-device-sign`) to a pair-success.
pub fn is_pair_sign(reply: &Node) -> bool {
    reply
        .get_optional_child_by_tag(&["pair-device-sign", "device-identity"])
        .is_some()
}

/// `<failure reason=N …>`: the login is refused.
pub fn failure(
    reason: u16,
    code: Option<u32>,
    expire: Option<Duration>,
    message: Option<&str>,
) -> Node {
    let mut b = NodeBuilder::new("failure").attr("reason", reason.to_string());
    if let Some(code) = code {
        b = b.attr("code", code.to_string());
    }
    if let Some(expire) = expire {
        b = b.attr("expire", expire.as_secs().to_string());
    }
    if let Some(message) = message {
        b = b.attr("message", message);
    }
    b.build()
}

/// `<stream:error code=N/>`.
pub fn stream_error_code(code: u16) -> Node {
    NodeBuilder::new("stream:error")
        .attr("code", code.to_string())
        .build()
}

/// `<stream:error><conflict type=T/></stream:error>`.
pub fn stream_error_conflict(kind: &str) -> Node {
    NodeBuilder::new("stream:error")
        .children([NodeBuilder::new("conflict").attr("type", kind).build()])
        .build()
}

/// `<message from=… id=… type="text"><enc v="2" type="pkmsg|msg">…</enc></message>`: an
/// incoming message encrypted for the client (see [`crate::signal`]).
pub fn encrypted_message(from: &str, id: &str, enc_type: &str, payload: Vec<u8>) -> Node {
    incoming(from, id, enc_type, payload)
}

/// `<message from=… id=… type="text"><enc v="2" type="msg">…</enc></message>`: an incoming
/// message whose payload the client cannot decrypt.
pub fn message(from: &str, id: &str) -> Node {
    incoming(from, id, "msg", b"fakewa: no signal session".to_vec())
}

fn incoming(from: &str, id: &str, enc_type: &str, payload: Vec<u8>) -> Node {
    NodeBuilder::new("message")
        .attrs([
            ("from", from.to_string()),
            ("id", id.to_string()),
            ("type", "text".to_string()),
            ("t", unix_now().as_secs().to_string()),
            ("notify", "Fake Contact".to_string()),
        ])
        .children([NodeBuilder::new("enc")
            .attrs([("v", "2"), ("type", enc_type)])
            .bytes(payload)
            .build()])
        .build()
}

/// `<xmlstreamend/>`: the server ends the stream.
pub fn stream_end() -> Node {
    NodeBuilder::new("xmlstreamend").build()
}

/// The time since the Unix epoch, for `t` attributes.
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_ban_details() {
        let n = failure(402, Some(101), Some(Duration::from_secs(3600)), None);
        assert_eq!(attr(&n, "reason").as_deref(), Some("402"));
        assert_eq!(attr(&n, "code").as_deref(), Some("101"));
        assert_eq!(attr(&n, "expire").as_deref(), Some("3600"));
        assert_eq!(attr(&n, "message"), None);
    }

    #[test]
    fn pair_success_signature_verifies_over_the_identity_key() {
        let identity = KeyPair::generate(&mut rand::rng());
        let key: [u8; 32] = identity.public_key.public_key_bytes().try_into().unwrap();
        let target = PairTarget {
            phone: "15550000001",
            device: 2,
            lid: "25550000001",
            platform: "android",
            business_name: "",
        };
        let node = pair_success("p1", &key, &target).unwrap();
        let inner = node
            .get_optional_child_by_tag(&["pair-success", "device-identity"])
            .unwrap();
        let Some(wa_rs_binary::node::NodeContent::Bytes(bytes)) = &inner.content else {
            panic!("no bytes")
        };
        let container = wa::AdvSignedDeviceIdentityHmac::decode(bytes.as_slice()).unwrap();
        let signed = wa::AdvSignedDeviceIdentity::decode(container.details()).unwrap();
        let account = wa_rs_libsignal::protocol::PublicKey::from_djb_public_key_bytes(
            signed.account_signature_key(),
        )
        .unwrap();
        let mut msg = ADV_ACCOUNT_SIGNATURE_PREFIX.to_vec();
        msg.extend_from_slice(signed.details());
        msg.extend_from_slice(&key);
        assert!(account.verify_signature(&msg, signed.account_signature()));
        let device = node
            .get_optional_child_by_tag(&["pair-success", "device"])
            .unwrap();
        assert_eq!(
            attr(device, "jid").as_deref(),
            Some("15550000001:2@s.whatsapp.net")
        );
    }
}
