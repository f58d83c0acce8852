//! A `warden serve` node over TLS to PostgreSQL (a real server with a certificate made for the
//! test, skipped where PostgreSQL or openssl is missing): with `[cluster] tls = "verify"` and
//! the CA file, the node joins, creates and lists sessions, and every connection it holds to
//! the server is encrypted.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::Postgres;
use common::{Daemon, fake_whatsapp, until, workspace};

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
    // Once the node claimed and adopted it (its status answers), the list has it.
    until(&daemon.socket, "shop1", |s| s.state == "stopped").await;
    let list = daemon.json(&["sessions"]).await;
    assert_eq!(list["sessions"][0]["token"], "shop1", "{list}");

    // The node's connections, as the server sees them: its heartbeat's, its ownership's and
    // its requests' (`warden-cluster`), and the store's (`warden-store`, made on first use).
    let watcher = warden_cluster::Pg::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let rows = watcher
        .client()
        .query(
            "SELECT a.application_name, bool_and(s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
             GROUP BY a.application_name ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "warden-cluster", "{seen:?}");
    assert_eq!(seen[0].2, 3, "{seen:?}");
    assert_eq!(seen[1].0, "warden-store", "{seen:?}");
    assert!((1..=4).contains(&seen[1].2), "{seen:?}");
    assert!(
        seen.iter().all(|(_, encrypted, _)| *encrypted),
        "every connection of the node is encrypted: {seen:?}"
    );
}
