mod blocking;
mod chatstate;
mod contacts;
mod groups;
mod mex;
mod presence;
mod tctoken;

pub use blocking::{Blocking, BlocklistEntry};

pub use chatstate::{ChatStateType, Chatstate};

pub use contacts::{ContactInfo, Contacts, IsOnWhatsAppResult, ProfilePicture, UserInfo};

pub use groups::{
    CreateGroupResult, GroupCreateOptions, GroupDescription, GroupMetadata, GroupParticipant,
    GroupParticipantOptions, GroupSubject, Groups, MemberAddMode, MemberLinkMode,
    MembershipApprovalMode, ParticipantChangeResponse,
};

pub use mex::{Mex, MexError, MexErrorExtensions, MexGraphQLError, MexRequest, MexResponse};

pub use presence::{Presence, PresenceStatus};

pub use tctoken::TcToken;
