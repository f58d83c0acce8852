//! What the cluster tests of the daemon share: a real PostgreSQL (`warden-cluster`'s test
//! harness), sessions added to the cluster, and what the fake server and the daemons say.

#![allow(dead_code)]

#[path = "../../../warden-cluster/tests/support/postgres.rs"]
pub mod pg_server;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use warden_control::{ControlClient, Op};
use warden_core::Desired;
use warden_core::store::SessionRecord;
use warden_fakewa::ServerEvent;
use warden_store::{PgDb, PgOptions};

use crate::common::Daemon;
pub use pg_server::Postgres;

/// Bound on each wait; nothing normally comes close.
pub const LIMIT: Duration = Duration::from_secs(90);

pub fn phone_of(jid: &str) -> &str {
    jid.split([':', '@']).next().unwrap_or(jid)
}

/// Adds `count` sessions to the cluster, meant to run; returns their tokens.
pub async fn add_sessions(server: &Postgres, count: usize) -> Vec<String> {
    // The cluster's tables first (a node makes them too), then the store's.
    let pg = warden_cluster::Pg::connect(&server.url(), Duration::from_secs(10))
        .await
        .unwrap();
    pg.migrate().await.unwrap();
    let url = server.url();
    let db = tokio::task::spawn_blocking(move || PgDb::connect(&url, &PgOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let mut tokens = Vec::new();
    for n in 0..count {
        let token = format!("shop{n}");
        let mut record = SessionRecord::new(token.clone(), SystemTime::now());
        record.desired = Desired::Running;
        assert!(
            db.create_session(&token, &record.encode().unwrap())
                .await
                .unwrap()
        );
        tokens.push(token);
    }
    tokens
}

/// Waits until each of `phones` went online on a connection the server accepted after
/// `boundary` (one of `whose` sessions, online again elsewhere).
pub async fn until_online_after(
    recorder: &warden_fakewa::Recorder,
    boundary: u64,
    phones: &BTreeSet<String>,
    whose: &str,
) {
    recorder
        .wait_until(LIMIT, |s| {
            phones.iter().all(|phone| {
                s.records().iter().any(|r| {
                    r.conn > boundary
                        && r.account.as_deref() == Some(phone.as_str())
                        && r.event == ServerEvent::Online
                })
            })
        })
        .await
        .unwrap_or_else(|_| panic!("every one of {whose} sessions online again on another node"));
}

/// What the daemons logged since they became ready (for a failure's message).
pub fn said(daemons: &mut [Daemon]) -> String {
    let mut out = String::new();
    for (name, daemon) in ["a", "b", "c"].iter().zip(daemons.iter_mut()) {
        while let Ok(line) = daemon.log.try_recv() {
            out.push_str(&format!("\n{name}: {line}"));
        }
    }
    out
}

/// The sessions `daemon` runs, with their account (once linked).
pub async fn held(daemon: &Daemon) -> BTreeMap<String, Option<String>> {
    let mut control = ControlClient::connect(&daemon.socket).await.unwrap();
    let list: Value = control.call(&Op::List {}).await.expect("list");
    list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["token"].as_str().unwrap().to_owned(),
                s["jid"].as_str().map(str::to_owned),
            )
        })
        .collect()
}
