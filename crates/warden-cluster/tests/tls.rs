//! TLS to PostgreSQL against a real server with a certificate made for the test: connections
//! are encrypted and the server verified; a server the CA did not sign, and a server without
//! TLS, are refused with errors that say why.

mod support;

use std::time::Duration;

use support::postgres::Postgres;
use warden_cluster::{Pg, PgTls};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the connection `pg` is encrypted, as the server sees it.
async fn encrypted(pg: &Pg) -> bool {
    let row = pg
        .client()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn connections_are_encrypted_and_the_server_verified_against_the_ca_file() {
    let Some((server, ca)) = Postgres::start_tls() else {
        return;
    };
    let tls = PgTls::new(Some(&ca)).unwrap();
    let pg = Pg::connect_with(&server.url(), TIMEOUT, Some(&tls))
        .await
        .unwrap();
    assert!(encrypted(&pg).await, "over TLS");
    pg.migrate().await.unwrap();
    assert!(pg.add_session("s1").await.unwrap(), "statements work");

    // The same server, plainly: the server takes it, and it is not encrypted.
    let plain = Pg::connect(&server.url(), TIMEOUT).await.unwrap();
    assert!(!encrypted(&plain).await);

    // Verified against the public web roots, the test CA is unknown: refused.
    let web = PgTls::new(None).unwrap();
    let refused = Pg::connect_with(&server.url(), TIMEOUT, Some(&web))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("certificate"), "{refused}");

    // The right server under a name its certificate does not carry: refused. (Reached at
    // `hostaddr`, verified as `host`.)
    let url = server
        .url()
        .replace("host=127.0.0.1", "host=db.example hostaddr=127.0.0.1");
    let misnamed = Pg::connect_with(&url, TIMEOUT, Some(&tls))
        .await
        .unwrap_err()
        .to_string();
    assert!(misnamed.contains("certificate"), "{misnamed}");
    // As `localhost`, which it carries: fine.
    let url = server.url().replace("host=127.0.0.1", "host=localhost");
    let named = Pg::connect_with(&url, TIMEOUT, Some(&tls)).await.unwrap();
    assert!(encrypted(&named).await);
}

#[tokio::test]
async fn a_server_without_tls_is_refused_when_tls_is_asked_for() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let no_ca = dir.path().join("none.pem");
    let missing = PgTls::new(Some(&no_ca)).unwrap_err().to_string();
    assert!(missing.contains("none.pem"), "{missing}");
    std::fs::write(&no_ca, "not a certificate").unwrap();
    let empty = PgTls::new(Some(&no_ca)).unwrap_err().to_string();
    assert!(empty.contains("no certificate"), "{empty}");

    let tls = PgTls::new(None).unwrap();
    let refused = Pg::connect_with(&server.url(), TIMEOUT, Some(&tls))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.to_lowercase().contains("tls") || refused.contains("SSL"),
        "{refused}"
    );
}
