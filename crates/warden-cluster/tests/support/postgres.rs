//! A real PostgreSQL server for one test: Debian's binaries (`apt-get install postgresql`;
//! `.ci/run` installs them), a fresh cluster in a temp folder, started as the `postgres` user
//! when the test runs as root (the server refuses root), on a free loopback port. Dropping it
//! kills the server and removes the folder.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running server.
pub struct Postgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder of Debian's server binaries, the newest version installed.
fn bindir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when this process is root, as itself otherwise.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Makes, in `dir`, a CA (`ca.pem`) and a server certificate it signed for `127.0.0.1` and
/// `localhost` (`server.pem`, `server.key`, readable by the server only); returns the CA file.
fn certificates(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=warden test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    for file in ["server.key", "server.pem"] {
        let path = dir.join(file);
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {file}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir.join("ca.pem")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// Starts a server, or `None` (with a note) if PostgreSQL is not installed and `CI` is not
    /// set. Under CI a missing server fails the test.
    pub fn start() -> Option<Self> {
        Self::launch(false).map(|(server, _)| server)
    }

    /// A server that takes TLS connections (and plain ones), with a certificate for
    /// `127.0.0.1` and `localhost` signed by a CA made for it: the server and the CA file
    /// (PEM). `None` as [`Postgres::start`], or when `openssl` is not installed.
    pub fn start_tls() -> Option<(Self, PathBuf)> {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!(
                "\n*** SKIPPED: openssl is not installed (it makes the test certificates) ***\n"
            );
            return None;
        }
        Self::launch(true).map(|(server, ca)| (server, ca.expect("made with TLS")))
    }

    fn launch(tls: bool) -> Option<(Self, Option<PathBuf>)> {
        let Some(bin) = bindir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed, and CI is set: apt-get install postgresql"
            );
            eprintln!(
                "\n*** SKIPPED: PostgreSQL is not installed (apt-get install postgresql; .ci/run \
                 installs it) ***\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the server's folder");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let init = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "warden",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-N",
            ])
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let ca = tls.then(|| certificates(dir.path()));
        let port = free_port();
        let mut server = as_server_user(&bin.join("postgres"));
        if tls {
            let file = |name: &str| dir.path().join(name).display().to_string();
            server
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", file("server.pem")))
                .arg("-c")
                .arg(format!("ssl_key_file={}", file("server.key")));
        }
        let mut child = server
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "fsync=off", "-c", "max_connections=100"])
            .args(["-c", "shared_buffers=16MB", "-c", "logging_collector=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("postgres starts");
        // Ready when the server says so on its log.
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut said = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !said && line.contains("ready to accept connections") {
                    said = true;
                    let _ = ready_tx.send(Ok(()));
                }
                if line.contains("FATAL") || line.contains("PANIC") {
                    let _ = ready_tx.send(Err(line.clone()));
                }
            }
        });
        match ready.recv_timeout(READY_WITHIN) {
            Ok(Ok(())) => {}
            Ok(Err(line)) => panic!("postgres failed: {line}"),
            Err(_) => panic!("postgres not ready within {READY_WITHIN:?}"),
        }
        Some((
            Self {
                child,
                port,
                _dir: dir,
            },
            ca,
        ))
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `port` (this server's, or a proxy's in front of it).
    pub fn url_via(&self, port: u16) -> String {
        format!("host=127.0.0.1 port={port} user=warden dbname=postgres connect_timeout=2")
    }

    /// The connection string of this server.
    pub fn url(&self) -> String {
        self.url_via(self.port)
    }
}
