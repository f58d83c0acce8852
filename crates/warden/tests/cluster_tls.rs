//! A `warden serve` node over TLS to PostgreSQL (a real server with a certificate made for the
//! test, skipped where PostgreSQL or openssl is missing): with `[cluster] tls = "verify"` and
//! the CA file, the node joins, creates and lists sessions, and every connection it holds to
//! the server is encrypted.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::Postgres;
use common::{Daemon, fake_whatsapp, workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_postgresql_only_over_verified_tls() {
    let Some((server, ca)) = Postgres::start_tls() else {
        return;
    };
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    let url = server.url();
    let ca = ca.display().to_string();
    let env = [
        ("WARDEN_CLUSTER_DATABASE_URL", url.as_str()),
        ("WARDEN_CLUSTER_NODE", "a"),
        ("WARDEN_CLUSTER_TIMING_SCALE", "0.2"),
        ("WARDEN_CLUSTER_TLS", "verify"),
        ("WARDEN_CLUSTER_CA_FILE", ca.as_str()),
    ];
    let daemon = Daemon::start_with(dir.path(), &env).await;
    assert!(
        daemon
            .startup_line("the session store is on PostgreSQL")
            .contains("tls=true"),
        "{}",
        daemon.startup.join("\n")
    );
    let (code, out, err) = daemon.cli(&["create", "--token", "shop1"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let list = daemon.json(&["sessions"]).await;
    assert_eq!(list["sessions"][0]["token"], "shop1", "{list}");

    // Every connection but this one, as the server sees them.
    let watcher = warden_cluster::Pg::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let row = watcher
        .client()
        .query_one(
            "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a \
             USING (pid) WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (all_encrypted, connections): (bool, i64) = (row.get(0), row.get(1));
    assert!(
        connections >= 3,
        "the node's own two, the store's and the requests': {connections}"
    );
    assert!(all_encrypted, "every connection of the node is encrypted");
}
