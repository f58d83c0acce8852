pub use wa_rs_core::{iq::privacy as privacy_settings, proto_helpers, store::traits};
pub use wa_rs_binary::builder::NodeBuilder;
pub use wa_rs_binary::jid::Jid;
pub use wa_rs_proto;

pub mod http;
pub mod types;

pub mod client;
pub use client::Client;
pub mod download;
pub mod handlers;
pub use handlers::chatstate::ChatStateEvent;
pub mod handshake;
pub mod jid_utils;
pub mod keepalive;
pub mod mediaconn;
pub mod message;
pub mod pair;
pub mod pair_code;
pub mod request;
pub mod send;
pub use send::{RevokeType, SendOptions};
pub mod session;
pub mod socket;
pub mod store;
pub mod transport;
pub mod upload;

pub mod pdo;
pub mod prekeys;
pub mod receipt;
pub mod retry;
pub mod unified_session;

pub mod appstate_sync;
pub mod history_sync;
pub mod usync;

pub mod features;
pub use features::{
    Blocking, BlocklistEntry, ChatStateType, Chatstate, ContactInfo, Contacts, CreateGroupResult,
    GroupCreateOptions, GroupDescription, GroupMetadata, GroupParticipant, GroupParticipantOptions,
    GroupSubject, Groups, IsOnWhatsAppResult, MemberAddMode, MemberLinkMode,
    MembershipApprovalMode, Mex, MexError, MexErrorExtensions, MexRequest, MexResponse,
    ParticipantChangeResponse, Presence, PresenceStatus, ProfilePicture, TcToken, UserInfo,
};

pub mod bot;
pub mod lid_pn_cache;
pub mod spam_report;
pub mod sync_task;
pub mod version;

pub use spam_report::{SpamFlow, SpamReportRequest, SpamReportResult};

#[cfg(test)]
pub mod test_utils;
