//! What the PostgreSQL tests of the store share: a real server (`warden-cluster`'s test
//! harness), the cluster's tables with nodes that claim sessions, and stores on it.

#![allow(dead_code)]

#[path = "../../../warden-cluster/tests/support/postgres.rs"]
pub mod pg_server;

use std::time::Duration;

pub use pg_server::Postgres;
use warden_cluster::{NodeKey, Pg};
use warden_store::{Fence, PgDb, PgOptions};

/// How long a step may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// A deadline no step of a test should come near, even on a slow machine.
pub const PATIENT: Duration = Duration::from_secs(30);

/// The cluster's tables (memberships and leases) and a node `name` that holds `token`.
pub struct Cluster {
    pub pg: Pg,
}

impl Cluster {
    pub async fn start(server: &Postgres) -> Self {
        let pg = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
        pg.migrate().await.unwrap();
        Self { pg }
    }

    /// Registers incarnation `incarnation` of node `name`.
    pub async fn node(&self, name: &str, incarnation: i64) -> NodeKey {
        let key = NodeKey {
            node: name.to_owned(),
            incarnation,
        };
        self.pg.register(&key, None).await.unwrap();
        key
    }

    /// `me` claims `token` (added if new) and gets the fence to write under.
    pub async fn claim(&self, me: &NodeKey, token: &str) -> Fence {
        self.pg.add_session(token).await.unwrap();
        let seen = self
            .pg
            .claimable()
            .await
            .unwrap()
            .into_iter()
            .find(|(t, _)| t == token)
            .map(|(_, fence)| fence)
            .expect("the session is claimable");
        let fence = self
            .pg
            .claim(me, token, seen)
            .await
            .unwrap()
            .expect("the claim wins");
        Fence {
            node: me.node.clone(),
            incarnation: me.incarnation,
            fence,
        }
    }

    pub async fn release(&self, fence: &Fence, token: &str) {
        let me = NodeKey {
            node: fence.node.clone(),
            incarnation: fence.incarnation,
        };
        assert!(self.pg.release(&me, token, fence.fence).await.unwrap());
    }
}

pub async fn store(server: &Postgres) -> PgDb {
    store_with(server, PgOptions::default()).await
}

pub async fn store_with(server: &Postgres, options: PgOptions) -> PgDb {
    let url = server.url();
    tokio::task::spawn_blocking(move || PgDb::connect(&url, &options))
        .await
        .unwrap()
        .unwrap()
}

/// Polls `pg_stat_activity` (through `watcher`) until a backend waits for a lock.
pub async fn until_a_backend_waits_for_a_lock(watcher: &Pg) {
    let waiting = async {
        loop {
            let row = watcher
                .client()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("a backend waiting for a lock");
}
