//! The dashboard in a real headless Chromium, driven over the Chrome DevTools Protocol, against
//! the real `warden` daemon on a fake WhatsApp server: load the page (the daemon has an API key,
//! so it asks for one), create a session, see its QR code, see it turn connected once the fake
//! server pairs it, click force cleanup. Screenshots go to the workspace's target folder
//! (`dashboard-key.png`, `dashboard-qr.png`, `dashboard.png`, `dashboard-cleanup.png`).
//!
//! Without Chromium the test is skipped with a loud message, unless `CI` is set: then it fails.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Limits, MaybeTlsStream, Message, WebSocketStream};
use warden_fakewa::{Plan, QrSpec, Scenario, Step};

use common::{Daemon, PHONE, fake_whatsapp_with, pairing, workspace};

/// The key the daemon is started with.
const KEY: &str = "dashboard-key-0123456789abcdef";
/// The bound on any one wait in the browser.
const WAIT_MS: u64 = 15_000;

/// A registration that only shows QR codes (two of 50 s), long enough that nobody has to hurry.
fn qr_only() -> Scenario {
    Scenario::new([Step::Qr(QrSpec::new(
        2,
        Duration::from_secs(50),
        Duration::from_secs(50),
    ))])
}

fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from));
    candidates.into_iter().find(|p| p.exists())
}

/// A minimal CDP client: one page session over the browser's WebSocket.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    /// Exceptions the page threw, from `Runtime.exceptionThrown`.
    exceptions: Vec<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Self {
        let (ws, _) = ClientBuilder::new()
            .uri(url)
            .unwrap()
            .limits(Limits::unlimited())
            .connect()
            .await
            .expect("connect to Chromium's DevTools");
        Self {
            ws,
            next_id: 0,
            session: None,
            exceptions: Vec::new(),
        }
    }

    /// Sends a command (to the page session once attached) and waits for its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        let waiting = async {
            loop {
                let frame = self.ws.next().await.expect("DevTools open").unwrap();
                let Some(text) = frame.as_text() else {
                    continue;
                };
                let reply: Value = serde_json::from_str(text).unwrap();
                if reply["method"] == "Runtime.exceptionThrown" {
                    self.exceptions
                        .push(reply["params"]["exceptionDetails"].clone());
                }
                if reply["id"] == id {
                    if let Some(error) = reply.get("error") {
                        panic!("{method}: {error}");
                    }
                    return reply["result"].clone();
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(WAIT_MS + 5_000), waiting)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer"))
    }

    /// Evaluates `expression` in the page (awaiting a promise) and answers its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(details) = result.get("exceptionDetails") {
            panic!("{expression}: {details}");
        }
        result["result"]["value"].clone()
    }

    /// Waits, inside the page, until `condition` (a JS expression) is truthy.
    async fn wait_until(&mut self, condition: &str) {
        let script = format!(
            "new Promise((resolve, reject) => {{
                const started = Date.now();
                const tick = () => {{
                    let ok = false;
                    try {{ ok = Boolean({condition}); }} catch (_) {{}}
                    if (ok) return resolve(true);
                    if (Date.now() - started > {WAIT_MS}) return reject(new Error('timed out'));
                    setTimeout(tick, 25);
                }};
                tick();
            }})"
        );
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": script, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if result.get("exceptionDetails").is_some() {
            let page = self.eval("document.body.innerText").await;
            panic!("the page never showed `{condition}`; it shows:\n{page}");
        }
    }

    async fn screenshot(&mut self, path: &PathBuf) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_links_a_phone_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("Chromium is not installed, and CI is set: install Debian's `chromium` package");
        }
        eprintln!(
            "\n\n========================================================================\n\
             SKIPPED the_dashboard_links_a_phone_in_a_real_browser: no Chromium found\n\
             (apt-get install -y chromium, or set CHROMIUM=/path/to/chromium)\n\
             ========================================================================\n"
        );
        return;
    };

    // Until the browser has shown the QR code, registrations only show one; nothing pairs.
    let whatsapp = fake_whatsapp_with(Plan::always(qr_only())).await;
    let dir = workspace(&whatsapp.url());
    let daemon = Daemon::start_with(dir.path(), &[("WARDEN_HTTP_API_KEY", KEY)]).await;
    let base = format!("http://{}", daemon.http);

    // Neighbours, so the page shows a realistic mix: one stopped, one showing its QR code.
    daemon
        .json(&["create", "--token", "warehouse", "--name", "Warehouse"])
        .await;
    daemon
        .json(&["create", "--token", "sales", "--name", "Sales desk"])
        .await;
    let (code, out, err) = daemon.cli(&["start", "sales", "--no-wait"]).await;
    assert_eq!(code, 0, "{out}\n{err}");

    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start Chromium");
    let mut stderr = BufReader::new(browser.stderr.take().unwrap()).lines();
    let ws_url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("Chromium exited before listening");
    })
    .await
    .expect("Chromium listens in time");
    // Keep draining its stderr so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    let mut cdp = Cdp::connect(&ws_url).await;
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call("Page.navigate", json!({"url": format!("{base}/")}))
        .await;

    // The daemon has a key: the page asks for it.
    cdp.wait_until("document.getElementById('key-dialog').open")
        .await;
    cdp.screenshot(&target_dir().join("dashboard-key.png"))
        .await;
    cdp.eval(&format!(
        "document.getElementById('key-input').value = {}; document.getElementById('key-submit').click(); true",
        json!(KEY)
    ))
    .await;
    cdp.wait_until("document.getElementById('live').textContent === 'live'")
        .await;
    cdp.wait_until("document.querySelector('[data-token=\"sales\"] .qr-img').naturalWidth > 0")
        .await;
    assert_eq!(
        cdp.eval("sessionStorage.getItem('warden.apiKey')").await,
        json!(KEY)
    );

    // Create "Phone 1" from the form, started at once: its QR code appears.
    cdp.eval(
        "{ const f = document.getElementById('create-form');
           f.elements.name.value = 'Phone 1';
           f.elements.token.value = 'phone1';
           document.getElementById('create-button').click(); true }",
    )
    .await;
    let qr = "document.querySelector('[data-token=\"phone1\"] .qr-img')";
    cdp.wait_until(&format!(
        "{qr}.complete && {qr}.naturalWidth > 0 && !{qr}.closest('.qr').hidden"
    ))
    .await;
    assert_eq!(
        cdp.eval("document.querySelector('[data-token=\"phone1\"] .badge').dataset.state")
            .await,
        json!("waiting_for_scan")
    );
    cdp.screenshot(&target_dir().join("dashboard-qr.png")).await;

    // The phone scans it: from now on the fake server pairs a registration right after its QR
    // code, and "Refresh QR" on the card opens a new one.
    whatsapp.update_script(|script| script.registration = Plan::always(pairing()));
    cdp.eval("document.querySelector('[data-token=\"phone1\"] button[data-action=\"refresh\"]').click(); true")
        .await;
    cdp.wait_until(
        "document.querySelector('[data-token=\"phone1\"] .badge').dataset.state === 'connected'",
    )
    .await;
    cdp.wait_until("document.querySelector('[data-token=\"phone1\"] .qr').hidden")
        .await;
    let account = cdp
        .eval("document.querySelector('[data-token=\"phone1\"] .account').textContent")
        .await;
    assert!(
        account.as_str().unwrap().contains(&format!("+{PHONE}")),
        "the card shows the linked account: {account}"
    );
    let status = daemon.json(&["status", "phone1"]).await;
    assert_eq!(status["state"], json!("connected"));
    // Its timeline, from the journal: opened on the card, newest first.
    cdp.eval("document.querySelector('[data-token=\"phone1\"] .history').open = true; true")
        .await;
    cdp.wait_until(
        "(document.querySelector('[data-token=\"phone1\"] .timeline li') || {}).textContent?.includes('→ connected')",
    )
    .await;
    let timeline = cdp
        .eval("document.querySelector('[data-token=\"phone1\"] .timeline').textContent")
        .await;
    for step in [
        "QR code issued",
        "→ pairing",
        "created → stopped",
        "start asked (http)",
    ] {
        assert!(
            timeline.as_str().unwrap().contains(step),
            "the timeline shows {step:?}: {timeline}"
        );
    }
    cdp.screenshot(&target_dir().join("dashboard.png")).await;

    // Force cleanup from its card.
    cdp.eval("window.confirm = () => true; document.querySelector('[data-token=\"phone1\"] button[data-action=\"force-cleanup\"]').click(); true")
        .await;
    cdp.wait_until(
        "document.querySelector('[data-token=\"phone1\"] .badge').dataset.state === 'stopped'",
    )
    .await;
    let status = daemon.json(&["status", "phone1"]).await;
    assert_eq!(status["state"], json!("stopped"));
    assert_eq!(status["reason"], json!("force cleanup"));
    cdp.wait_until(
        "[...document.querySelectorAll('.toast')].some(t => t.textContent.includes('Cleaned up'))",
    )
    .await;
    cdp.screenshot(&target_dir().join("dashboard-cleanup.png"))
        .await;

    assert!(
        cdp.exceptions.is_empty(),
        "the page threw: {:#?}",
        cdp.exceptions
    );
    // Close the browser through the protocol, so its helper processes go with it.
    cdp.session = None;
    let close = json!({"id": 0, "method": "Browser.close", "params": {}});
    let _ = cdp.ws.send(Message::text(close.to_string())).await;
    if tokio::time::timeout(Duration::from_secs(10), browser.wait())
        .await
        .is_err()
    {
        let _ = browser.kill().await;
    }
    drop(daemon);
    whatsapp.shutdown().await;
}
