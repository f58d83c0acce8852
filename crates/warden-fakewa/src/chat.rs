//! The server's side of a chat with the client: the device lists it asks for (`usync`), the
//! pre-key bundles it fetches, and the messages it sends, which the fake recipients decrypt,
//! the server records and acknowledges, and the recipient answers with receipts.
//!
//! Every user is a contact with the devices [`Contacts::devices_of`] gives, plus the
//! companions paired here for that number (an account's own devices). Fake devices'
//! bundles come from [`Contacts`]; a paired companion's from the keys it announced.

use serde::{Deserialize, Serialize};
use wa_rs_binary::builder::NodeBuilder;
use wa_rs_binary::node::{Node, NodeContent};

use crate::conn::Shared;
use crate::nodes::{self, attr};
use crate::record::{ConnId, ServerEvent};
use crate::scenario::RefuseSpec;
use crate::signal::{Bundle, DeviceAddress, Plaintext, SignalKeys};

/// What a contact's phone sends back once it has decrypted a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Receipts {
    /// Nothing.
    None,
    /// A delivery receipt.
    #[default]
    Delivered,
    /// A delivery receipt, then a read receipt.
    Read,
}

/// The answer to a `usync` device-list query, or `None` when `iq` is not one.
pub(crate) fn device_lists(shared: &Shared, iq: &Node) -> Option<Node> {
    let id = attr(iq, "id")?;
    let list = iq.get_optional_child_by_tag(&["usync", "list"])?;
    let users = list
        .get_children_by_tag("user")
        .filter_map(|user| attr(user, "jid"))
        .map(|jid| {
            let devices = DeviceAddress::parse(&jid)
                .map(|a| devices_of(shared, &a.user))
                .unwrap_or_default();
            device_list_node(&jid, &devices)
        })
        .collect::<Vec<_>>();
    let usync = NodeBuilder::new("usync")
        .children([NodeBuilder::new("list").children(users).build()])
        .build();
    Some(nodes::iq_result_with(&id, vec![usync]))
}

/// The devices of `user`: its fake ones and the companions paired here.
fn devices_of(shared: &Shared, user: &str) -> Vec<u16> {
    let mut devices = shared.contacts.devices_of(user);
    devices.extend(shared.registry.companions_of(user));
    devices.sort_unstable();
    devices.dedup();
    devices
}

fn device_list_node(jid: &str, devices: &[u16]) -> Node {
    let list = devices
        .iter()
        .map(|d| NodeBuilder::new("device").attr("id", d.to_string()).build())
        .collect::<Vec<_>>();
    NodeBuilder::new("user")
        .attr("jid", jid)
        .children([NodeBuilder::new("devices")
            .children([NodeBuilder::new("device-list")
                .attr("hash", format!("2:fakewa{}", devices.len()))
                .children(list)
                .build()])
            .build()])
        .build()
}

/// The answer to a pre-key fetch (`<iq xmlns="encrypt" type="get"><key><user jid=…/>…`), or
/// `None` when `iq` is not one.
pub(crate) async fn pre_key_bundles(shared: &Shared, iq: &Node) -> Option<Node> {
    let id = attr(iq, "id")?;
    let key = iq.get_optional_child("key")?;
    let mut users = Vec::new();
    for jid in key
        .get_children_by_tag("user")
        .filter_map(|u| attr(u, "jid"))
    {
        let bundle = match DeviceAddress::parse(&jid) {
            Some(a) => bundle_for(shared, &a).await,
            None => None,
        };
        users.push(match bundle {
            Some(b) => bundle_node(&jid, &b),
            None => NodeBuilder::new("user")
                .attr("jid", jid.as_str())
                .children([NodeBuilder::new("error")
                    .attrs([("code", "404"), ("text", "item-not-found")])
                    .build()])
                .build(),
        });
    }
    Some(nodes::iq_result_with(
        &id,
        vec![NodeBuilder::new("list").children(users).build()],
    ))
}

/// A client's pre-key upload (`<iq xmlns="encrypt" type="set">` with `<list>`): its keys and
/// one-time pre-keys are kept for contacts to use. `None` when `iq` is not one.
pub(crate) fn pre_key_upload(
    shared: &Shared,
    conn: ConnId,
    client: Option<&DeviceAddress>,
    iq: &Node,
) -> Option<Node> {
    let id = attr(iq, "id")?;
    let list = iq.get_optional_child("list")?;
    let pre_keys: Vec<(u32, [u8; 32])> = list
        .get_children_by_tag("key")
        .filter_map(|k| {
            Some((
                id24(k.get_optional_child("id")?)?,
                key32(k.get_optional_child("value")?)?,
            ))
        })
        .collect();
    let keys = uploaded_keys(iq);
    let count = pre_keys.len();
    let kept = client.is_some_and(|c| {
        shared
            .registry
            .store_upload(&c.user, c.device, keys, pre_keys)
    });
    shared
        .recorder
        .event(conn, ServerEvent::PreKeysUploaded { count, kept });
    Some(nodes::iq_result(&id))
}

fn content(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(NodeContent::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn id24(node: &Node) -> Option<u32> {
    match content(node)? {
        [a, b, c] => Some(u32::from_be_bytes([0, *a, *b, *c])),
        _ => None,
    }
}

fn key32(node: &Node) -> Option<[u8; 32]> {
    content(node)?.try_into().ok()
}

/// The registration id, identity and signed pre-key of an upload, when all are there.
fn uploaded_keys(iq: &Node) -> Option<SignalKeys> {
    let registration = content(iq.get_optional_child("registration")?)?;
    let skey = iq.get_optional_child("skey")?;
    Some(SignalKeys {
        registration_id: u32::from_be_bytes(registration.try_into().ok()?),
        identity_key: key32(iq.get_optional_child("identity")?)?,
        signed_pre_key_id: id24(skey.get_optional_child("id")?)?,
        signed_pre_key: key32(skey.get_optional_child("value")?)?,
        signature: content(skey.get_optional_child("signature")?)?.to_vec(),
    })
}

/// A paired companion's announced keys (none if it announced none), or a fake device's bundle.
async fn bundle_for(shared: &Shared, address: &DeviceAddress) -> Option<Bundle> {
    if shared.registry.is_companion(&address.user, address.device) {
        let keys = shared.registry.signal_keys(&address.user, address.device)?;
        return Some(Bundle {
            pre_key: shared.registry.take_pre_key(&address.user, address.device),
            ..Bundle::from(&keys)
        });
    }
    if !devices_of(shared, &address.user).contains(&address.device) {
        return None;
    }
    Some(shared.contacts.bundle(address).await)
}

fn bytes(tag: &str, value: impl Into<Vec<u8>>) -> Node {
    NodeBuilder::new(tag).bytes(value.into()).build()
}

fn bundle_node(jid: &str, b: &Bundle) -> Node {
    let mut children = vec![
        bytes("registration", b.registration_id.to_be_bytes()),
        bytes("type", [5u8]),
        bytes("identity", b.identity_key),
    ];
    if let Some((id, key)) = b.pre_key {
        children.push(
            NodeBuilder::new("key")
                .children([bytes("id", &id.to_be_bytes()[1..]), bytes("value", key)])
                .build(),
        );
    }
    children.push(
        NodeBuilder::new("skey")
            .children([
                bytes("id", &b.signed_pre_key_id.to_be_bytes()[1..]),
                bytes("value", b.signed_pre_key),
                bytes("signature", b.signature.clone()),
            ])
            .build(),
    );
    NodeBuilder::new("user")
        .attr("jid", jid)
        .children(children)
        .build()
}

/// One encrypted copy in a client's `<message>`: for which device, of which type.
struct Copy<'a> {
    device: String,
    enc_type: String,
    payload: &'a [u8],
}

fn copies<'a>(message: &'a Node, chat: &str) -> Vec<Copy<'a>> {
    let payload = |enc: &'a Node| match &enc.content {
        Some(NodeContent::Bytes(b)) => b.as_slice(),
        _ => &[],
    };
    let copy = |device: String, enc: &'a Node| Copy {
        device,
        enc_type: attr(enc, "type").unwrap_or_default(),
        payload: payload(enc),
    };
    match message.get_optional_child("participants") {
        Some(participants) => participants
            .get_children_by_tag("to")
            .filter_map(|to| Some(copy(attr(to, "jid")?, to.get_optional_child("enc")?)))
            .collect(),
        None => message
            .get_children_by_tag("enc")
            .map(|enc| copy(chat.to_owned(), enc))
            .collect(),
    }
}

/// A `<message>` from the client: every copy for a fake device is decrypted and recorded.
/// The answer is the server's `<ack>`, then the recipient's receipts when one of its devices
/// read the message.
pub(crate) async fn client_message(
    shared: &Shared,
    conn: ConnId,
    client: Option<&DeviceAddress>,
    message: &Node,
    refusal: Option<RefuseSpec>,
) -> Vec<Node> {
    let id = attr(message, "id").unwrap_or_default();
    let chat = attr(message, "to").unwrap_or_default();
    if let Some(refusal) = refusal {
        tracing::info!(conn, id = %id, code = refusal.code, "refusing a message");
        shared.recorder.event(
            conn,
            ServerEvent::MessageRefused {
                id: id.clone(),
                chat: chat.clone(),
                code: refusal.code,
            },
        );
        return vec![refusal_ack(&id, &chat, &refusal)];
    }
    let mut delivered = false;
    for copy in copies(message, &chat) {
        let plaintext = decrypt_copy(shared, client, &copy).await;
        // A copy with an id this device already read is a resend: recipients drop it.
        let duplicate = plaintext.is_ok()
            && !shared
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((
                    client.map(DeviceAddress::jid).unwrap_or_default(),
                    copy.device.clone(),
                    id.clone(),
                ));
        match &plaintext {
            Ok(p) => {
                delivered |= !p.device_sent;
                tracing::info!(
                    conn,
                    id = %id,
                    to = %copy.device,
                    kind = %p.kind,
                    "decrypted message: {}",
                    p.text.as_deref().unwrap_or("")
                );
            }
            Err(e) => {
                tracing::warn!(conn, id = %id, to = %copy.device, "message not decrypted: {e}")
            }
        }
        shared.recorder.event(
            conn,
            ServerEvent::ClientMessage {
                id: id.clone(),
                chat: chat.clone(),
                device: copy.device,
                enc_type: copy.enc_type,
                plaintext,
                duplicate,
            },
        );
    }
    let mut out = vec![message_ack(&id, &chat)];
    if delivered {
        out.extend(receipts(shared.options.receipts, &id, &chat));
    }
    out
}

async fn decrypt_copy(
    shared: &Shared,
    client: Option<&DeviceAddress>,
    copy: &Copy<'_>,
) -> Result<Plaintext, String> {
    let client = client.ok_or("the sender is not a logged-in device")?;
    let to = DeviceAddress::parse(&copy.device).ok_or("not a device JID")?;
    if shared.registry.is_companion(&to.user, to.device) {
        return Err("a companion device: only it can decrypt its copy".into());
    }
    shared
        .contacts
        .decrypt(&to, client, &copy.enc_type, copy.payload)
        .await
        .map_err(|e| e.to_string())
}

/// `<ack class="message" id=… from=chat error=code [expiration=…]/>`: the server refuses it.
fn refusal_ack(id: &str, chat: &str, refusal: &RefuseSpec) -> Node {
    let mut b = NodeBuilder::new("ack").attrs([
        ("class", "message".to_string()),
        ("id", id.to_string()),
        ("from", chat.to_string()),
        ("error", refusal.code.to_string()),
        ("t", nodes::unix_now().as_secs().to_string()),
    ]);
    if let Some(expire) = refusal.expire {
        b = b.attr(
            "expiration",
            (nodes::unix_now() + expire).as_secs().to_string(),
        );
    }
    b.build()
}

/// `<ack class="message" id=… from=chat t=…/>`: the server has the message.
fn message_ack(id: &str, chat: &str) -> Node {
    NodeBuilder::new("ack")
        .attrs([
            ("class", "message".to_string()),
            ("id", id.to_string()),
            ("from", chat.to_string()),
            ("t", nodes::unix_now().as_secs().to_string()),
        ])
        .build()
}

fn receipts(kind: Receipts, id: &str, chat: &str) -> Vec<Node> {
    let receipt = |kind: Option<&str>| {
        let mut b = NodeBuilder::new("receipt").attrs([
            ("from", chat.to_string()),
            ("id", id.to_string()),
            ("t", nodes::unix_now().as_secs().to_string()),
        ]);
        if let Some(kind) = kind {
            b = b.attr("type", kind);
        }
        b.build()
    };
    match kind {
        Receipts::None => Vec::new(),
        Receipts::Delivered => vec![receipt(None)],
        Receipts::Read => vec![receipt(None), receipt(Some("read"))],
    }
}
