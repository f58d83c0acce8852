//! The control socket when the process runs out of file descriptors: it keeps its listener,
//! warns once per episode (not once per try), and serves again as soon as descriptors are free.
//!
//! A file of its own: it lowers the test process's `RLIMIT_NOFILE`, which no other test in the
//! same process should see.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rlimit::Resource;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use warden_control::{ControlServer, ServerConfig};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{Supervisor, SupervisorConfig};

/// Every log line, as written.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines_with(&self, needle: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (on the log, polled) until a line contains `needle`.
    async fn wait_for(&self, needle: &str) {
        let found = async {
            while self.lines_with(needle) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), found)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_survives_running_out_of_descriptors() {
    let log = Captured::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let link = ScriptedLink::new(Script::login("15551234567@s.whatsapp.net"));
    let config = SupervisorConfig::new(dir.path().join("sessions"));
    let (supervisor, _) = Supervisor::start(config, Arc::new(link)).await.unwrap();
    let socket: PathBuf = dir.path().join("warden.sock");
    let server = ControlServer::bind(ServerConfig::new(&socket))
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.run(supervisor.clone(), async {
        let _ = stopped.await;
    }));

    // Take every descriptor but one: the next client's socket takes it, and the server's
    // accept finds none left.
    let (soft, hard) = Resource::NOFILE.get().unwrap();
    Resource::NOFILE.set(open_fds() + 32, hard).unwrap();
    let mut hogs = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "EMFILE: {e}");
                break;
            }
        }
    }
    hogs.pop();
    let client = UnixStream::connect(&socket).await.unwrap();
    log.wait_for("control socket: cannot accept clients").await;
    // Several retries later (100, 200, 400, 800 ms): still the one warning, and no reply.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        log.lines_with("cannot accept"),
        1,
        "one warning per episode"
    );
    assert_eq!(log.lines_with("accepting clients again"), 0);

    // Descriptors come back: the waiting client is accepted and served.
    hogs.truncate(hogs.len().saturating_sub(8));
    let (read, mut write) = client.into_split();
    write
        .write_all(b"{\"id\":1,\"op\":\"health\"}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("the socket accepts again")
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["result"]["status"], json!("ok"), "{reply}");
    log.wait_for("accepting clients again").await;
    assert_eq!(log.lines_with("cannot accept"), 1);

    drop(hogs);
    Resource::NOFILE.set(soft, hard).unwrap();
    let _ = stop.send(());
    served.await.unwrap();
    supervisor.shutdown().await.unwrap();
}
