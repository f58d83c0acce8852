//! Slow and hostile HTTP clients (#13 item 6) at a size CI affords: clients trickling their
//! headers are cut at the header-read timeout while the gateway keeps answering others, and
//! an oversized body is refused with `413 too_large`. The full-size run (1,000 trickling
//! clients, the status route's latency under them) is `benches/slowloris.py`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_http::{HttpConfig, Metrics};

/// Trickling clients in the CI run.
const SLOW_CLIENTS: usize = 200;

/// A gateway with `config` (on a free loopback port) in front of a bare supervisor.
async fn gateway(config: HttpConfig) -> (SocketAddr, warden_core::Supervisor, tempfile::TempDir) {
    let (supervisor, listener, dir) = common::bare_supervisor_and_listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warden_http::serve(
        listener,
        supervisor.clone(),
        HttpConfig {
            bind: addr,
            ..config
        },
        Arc::new(Metrics::new()),
        std::future::pending(),
    ));
    (addr, supervisor, dir)
}

/// Sends one request on a fresh connection and answers the status line.
async fn status_line(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_headers_are_cut_and_others_are_still_answered() {
    let (addr, supervisor, _dir) = gateway(HttpConfig {
        max_connections: SLOW_CLIENTS + 16,
        header_read_timeout: Duration::from_secs(1),
        ..HttpConfig::default()
    })
    .await;
    supervisor.create(None, Some("s1")).await.unwrap();

    // Each slow client sends a request line, then one header byte every 100 ms, for ever.
    let (cut_tx, mut cut) = tokio::sync::mpsc::unbounded_channel();
    let mut trickling = Vec::new();
    for _ in 0..SLOW_CLIENTS {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let cut_tx = cut_tx.clone();
        trickling.push(tokio::spawn(async move {
            stream
                .write_all(b"GET /session/status/s1 HTTP/1.1\r\nX-Slow: ")
                .await
                .unwrap();
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if stream.write_all(b"a").await.is_err() {
                            break;
                        }
                    }
                    read = stream.read(&mut buf) => {
                        // The server closed it, or reset it.
                        if matches!(read, Ok(0) | Err(_)) {
                            break;
                        }
                    }
                }
            }
            let _ = cut_tx.send(());
        }));
    }
    drop(cut_tx);

    // Meanwhile the gateway answers others.
    for _ in 0..20 {
        let line = status_line(addr, "/session/status/s1").await;
        assert!(line.contains("200"), "{line:?}");
    }
    // Every trickling client is cut: none is left holding its slot.
    let mut closed = 0;
    let all_cut = async {
        while cut.recv().await.is_some() {
            closed += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_cut)
        .await
        .unwrap_or_else(|_| panic!("only {closed} of {SLOW_CLIENTS} slow clients were cut"));
    assert_eq!(closed, SLOW_CLIENTS);
    assert!(status_line(addr, "/healthz").await.contains("200"));
    supervisor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_too_large() {
    let (addr, supervisor, _dir) = gateway(HttpConfig {
        max_body_bytes: 8 * 1024,
        ..HttpConfig::default()
    })
    .await;
    let post = |body: String| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /session HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(body.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(16 * 1024));
    let answer = post(big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    assert!(supervisor.list().sessions.is_empty(), "nothing was created");
    let answer = post("{\"token\":\"small\"}".into()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    supervisor.shutdown().await.unwrap();
}
