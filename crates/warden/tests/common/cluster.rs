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
    let tokens: Vec<String> = (0..count).map(|n| format!("shop{n}")).collect();
    add_tokens(server, &tokens).await;
    tokens
}

/// Adds the sessions `tokens` to the cluster, meant to run.
pub async fn add_tokens(server: &Postgres, tokens: &[String]) {
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
    for token in tokens {
        let mut record = SessionRecord::new(token.clone(), SystemTime::now());
        record.desired = Desired::Running;
        assert!(
            db.create_session(token, &record.encode().unwrap())
                .await
                .unwrap()
        );
    }
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

/// The node name `daemon` joined the cluster as (from its startup log).
pub fn node_of(daemon: &Daemon) -> String {
    let line = daemon.startup_line("joined the cluster");
    line.split("node=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no node name in {line:?}"))
        .trim_matches('"')
        .to_owned()
}

/// The sessions `daemon` runs, with their account (once linked): its part of the cluster's
/// list.
pub async fn held(daemon: &Daemon) -> BTreeMap<String, Option<String>> {
    let me = node_of(daemon);
    let mut control = ControlClient::connect(&daemon.socket).await.unwrap();
    let list: Value = control.call(&Op::List {}).await.expect("list");
    list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["node"].as_str() == Some(me.as_str()))
        .map(|s| {
            (
                s["token"].as_str().unwrap().to_owned(),
                s["jid"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Starts `warden serve` as node `name` of the cluster on `database_url`, dialing WhatsApp at
/// `whatsapp_url`, with `extra` environment (`WARDEN_CLUSTER_TIMING_SCALE`, ...); the daemon
/// and its folder.
pub async fn start_node(
    whatsapp_url: &str,
    database_url: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> (Daemon, tempfile::TempDir) {
    let dir = crate::common::workspace(whatsapp_url);
    let mut env = vec![
        ("WARDEN_CLUSTER_DATABASE_URL", database_url),
        ("WARDEN_CLUSTER_NODE", name),
    ];
    env.extend_from_slice(extra);
    let daemon = Daemon::start_with(dir.path(), &env).await;
    (daemon, dir)
}

/// Starts one node per name in `names`, as [`start_node`] does, one after the other; the
/// daemons and their folders (kept alive by the caller), in the same order.
pub async fn start_nodes(
    whatsapp_url: &str,
    database_url: &str,
    names: &[&str],
    extra: &[(&str, &str)],
) -> (Vec<Daemon>, Vec<tempfile::TempDir>) {
    let mut daemons = Vec::new();
    let mut dirs = Vec::new();
    for name in names {
        let (daemon, dir) = start_node(whatsapp_url, database_url, name, extra).await;
        daemons.push(daemon);
        dirs.push(dir);
    }
    (daemons, dirs)
}

/// Waits until `count` accounts went online at the server (each session linked and logged
/// in), within `within`; a failure's message has what the daemons said.
pub async fn until_online(
    recorder: &warden_fakewa::Recorder,
    count: usize,
    within: Duration,
    daemons: &mut [Daemon],
) {
    recorder
        .wait_until(within, |s| {
            let online: BTreeSet<&str> = s
                .records()
                .iter()
                .filter(|r| r.event == ServerEvent::Online)
                .filter_map(|r| r.account.as_deref())
                .collect();
            online.len() == count
        })
        .await
        .unwrap_or_else(|_| panic!("{count} sessions linked and online; {}", said(daemons)));
}

/// The registrations (QR linking) and pairings the server saw on connections after
/// `boundary`: `(0, 0)` when every session logged in from its credentials.
pub fn links_after(recorder: &warden_fakewa::Recorder, boundary: u64) -> (usize, usize) {
    recorder.inspect(|s| {
        let registrations = s
            .connections()
            .iter()
            .filter(|c| c.id > boundary)
            .filter(|c| {
                matches!(
                    c.client.as_ref().map(|c| &c.kind),
                    Some(warden_fakewa::ClientKind::Registration { .. })
                )
            })
            .count();
        let pairings = s
            .records()
            .iter()
            .filter(|r| r.conn > boundary)
            .filter(|r| matches!(r.event, ServerEvent::Paired { .. }))
            .count();
        (registrations, pairings)
    })
}
