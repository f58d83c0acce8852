//! Real proxies on loopback for the end-to-end tests: a small SOCKS5 server written here
//! ([`Socks5Proxy`], RFC 1928 with RFC 1929 username/password) and Debian's tinyproxy as an
//! HTTP `CONNECT` proxy ([`Tinyproxy`]).
//!
//! Both make their outbound connections from a chosen loopback address (Linux answers on all of
//! 127.0.0.0/8), so a server on 127.0.0.1 can tell by its peer's IP which proxy a connection
//! came through.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// How long the SOCKS5 proxy waits for a target to accept before answering "host
/// unreachable".
const SOCKS5_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `user:pass@` for a proxy URL, or nothing.
fn userinfo(auth: Option<(&str, &str)>) -> String {
    auth.map(|(user, pass)| format!("{user}:{pass}@"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// SOCKS5

/// One `CONNECT` the SOCKS5 proxy carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks5Conn {
    /// The target as the client asked for it: `host:port` for a domain name, `ip:port` (IPv6
    /// in brackets) for an address.
    pub target: String,
    /// The client sent a domain name (ATYP 3), i.e. left resolving to the proxy.
    pub domain: bool,
    /// The local address of the proxy's outbound socket (its IP is the proxy's `outbound_ip`
    /// for IPv4 targets).
    pub outbound: SocketAddr,
    /// The user the client authenticated as, when the proxy requires authentication.
    pub user: Option<String>,
}

/// What the SOCKS5 proxy has seen.
#[derive(Debug, Default)]
struct Socks5Record {
    conns: Vec<Socks5Conn>,
    auth_failures: usize,
}

/// A SOCKS5 server on 127.0.0.1 (CONNECT only). Dropping it stops it and cuts every tunnel.
pub struct Socks5Proxy {
    addr: SocketAddr,
    /// The record, shared with the connection tasks; every change wakes the waiters.
    record: Arc<watch::Sender<Socks5Record>>,
    /// The accept loop, which owns the connection tasks (aborting it drops them all).
    accept: AbortHandle,
}

impl Socks5Proxy {
    /// Starts a SOCKS5 proxy on 127.0.0.1 that requires `auth` (username/password) when given
    /// and no authentication otherwise, and connects to targets from `outbound_ip`.
    pub async fn start(auth: Option<(&str, &str)>, outbound_ip: Ipv4Addr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(watch::Sender::new(Socks5Record::default()));
        let auth: Option<Arc<(String, String)>> =
            auth.map(|(u, p)| Arc::new((u.to_owned(), p.to_owned())));
        let shared = record.clone();
        let accept = tokio::spawn(async move {
            let mut tunnels = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let auth = auth.clone();
                        let record = shared.clone();
                        tunnels.spawn(async move {
                            let _ = socks5_serve(client, auth.as_deref(), outbound_ip, &record)
                                .await;
                        });
                    }
                    Some(_) = tunnels.join_next() => {}
                }
            }
        })
        .abort_handle();
        Self {
            addr,
            record,
            accept,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `socks5://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url_with("socks5", None)
    }

    /// `SCHEME://[user:pass@]127.0.0.1:PORT`, e.g. `url_with("socks5h", Some(("u", "p")))`.
    /// The credentials are written as given (no percent-encoding).
    pub fn url_with(&self, scheme: &str, auth: Option<(&str, &str)>) -> String {
        format!("{scheme}://{}{}", userinfo(auth), self.addr)
    }

    /// Every successful CONNECT so far, in order.
    pub fn connections(&self) -> Vec<Socks5Conn> {
        self.record.borrow().conns.clone()
    }

    /// How many username/password authentications were refused.
    pub fn auth_failures(&self) -> usize {
        self.record.borrow().auth_failures
    }

    /// Waits until at least `n` CONNECTs succeeded and returns them all; panics with what it
    /// saw if that takes longer than `within`.
    pub async fn await_connections(&self, n: usize, within: Duration) -> Vec<Socks5Conn> {
        let mut rx = self.record.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|r| r.conns.len() >= n)).await;
        if reached.is_err() {
            panic!(
                "the SOCKS5 proxy {} saw {} CONNECT(s) within {within:?}, not {n}: {:#?}",
                self.addr,
                self.connections().len(),
                self.connections()
            );
        }
        self.connections()
    }

    /// Waits until at least `n` authentications were refused; panics if that takes longer
    /// than `within`.
    pub async fn await_auth_failures(&self, n: usize, within: Duration) {
        let mut rx = self.record.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|r| r.auth_failures >= n)).await;
        if reached.is_err() {
            panic!(
                "the SOCKS5 proxy {} refused {} authentication(s) within {within:?}, not {n}",
                self.addr,
                self.auth_failures()
            );
        }
    }
}

impl Drop for Socks5Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// SOCKS5 reply codes (RFC 1928 §6).
mod rep {
    pub const SUCCEEDED: u8 = 0x00;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// Serves one SOCKS5 client: negotiation, optional RFC 1929 authentication, one CONNECT, then
/// the relay until either side closes.
async fn socks5_serve(
    mut client: TcpStream,
    auth: Option<&(String, String)>,
    outbound_ip: Ipv4Addr,
    record: &watch::Sender<Socks5Record>,
) -> io::Result<()> {
    // Method negotiation: VER, NMETHODS, METHODS.
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Ok(());
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    let wanted = if auth.is_some() { 0x02 } else { 0x00 };
    if !methods.contains(&wanted) {
        client.write_all(&[5, 0xFF]).await?;
        return Ok(());
    }
    client.write_all(&[5, wanted]).await?;

    // RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD.
    let mut user = None;
    if let Some((want_user, want_pass)) = auth {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await?;
        if head[0] != 1 {
            return Ok(());
        }
        let mut name = vec![0u8; usize::from(head[1])];
        client.read_exact(&mut name).await?;
        let plen = client.read_u8().await?;
        let mut pass = vec![0u8; usize::from(plen)];
        client.read_exact(&mut pass).await?;
        if name != want_user.as_bytes() || pass != want_pass.as_bytes() {
            record.send_modify(|r| r.auth_failures += 1);
            client.write_all(&[1, 1]).await?;
            return Ok(());
        }
        client.write_all(&[1, 0]).await?;
        user = Some(want_user.clone());
    }

    // Request: VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
    let mut head = [0u8; 4];
    client.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Ok(());
    }
    let (cmd, atyp) = (head[1], head[3]);
    enum Dst {
        Ip(IpAddr),
        Name(String),
    }
    let dst = match atyp {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            Dst::Ip(Ipv4Addr::from(ip).into())
        }
        3 => {
            let len = client.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await?;
            Dst::Name(String::from_utf8_lossy(&name).into_owned())
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            Dst::Ip(Ipv6Addr::from(ip).into())
        }
        _ => return socks5_refuse(&mut client, rep::ADDRESS_TYPE_NOT_SUPPORTED).await,
    };
    let port = client.read_u16().await?;
    if cmd != 1 {
        return socks5_refuse(&mut client, rep::COMMAND_NOT_SUPPORTED).await;
    }

    // IPv4 candidates first, so that a name like "localhost" goes out from `outbound_ip`.
    let (target, candidates) = match dst {
        Dst::Ip(ip) => (
            SocketAddr::new(ip, port).to_string(),
            vec![SocketAddr::new(ip, port)],
        ),
        Dst::Name(name) => {
            let mut found: Vec<SocketAddr> =
                match tokio::net::lookup_host((name.as_str(), port)).await {
                    Ok(found) => found.collect(),
                    Err(_) => Vec::new(),
                };
            found.sort_by_key(|a| a.is_ipv6());
            (format!("{name}:{port}"), found)
        }
    };
    let mut failure = rep::HOST_UNREACHABLE;
    let mut server = None;
    for candidate in candidates {
        match socks5_connect(candidate, outbound_ip).await {
            Ok(stream) => {
                server = Some(stream);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                failure = rep::CONNECTION_REFUSED;
            }
            Err(_) => {}
        }
    }
    let Some(mut server) = server else {
        return socks5_refuse(&mut client, failure).await;
    };
    let outbound = server.local_addr()?;

    // Recorded before the client hears of it, so a client that saw success finds it here.
    record.send_modify(|r| {
        r.conns.push(Socks5Conn {
            target,
            domain: atyp == 3,
            outbound,
            user,
        })
    });
    let mut reply = vec![5, rep::SUCCEEDED, 0];
    match outbound.ip() {
        IpAddr::V4(ip) => {
            reply.push(1);
            reply.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            reply.push(4);
            reply.extend_from_slice(&ip.octets());
        }
    }
    reply.extend_from_slice(&outbound.port().to_be_bytes());
    client.write_all(&reply).await?;

    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// Connects to `target`, from `outbound_ip` when the target is IPv4.
async fn socks5_connect(target: SocketAddr, outbound_ip: Ipv4Addr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind((outbound_ip, 0).into())?;
            socket
        }
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    tokio::time::timeout(SOCKS5_CONNECT_TIMEOUT, socket.connect(target))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Answers a request with the failure `code` and closes.
async fn socks5_refuse(client: &mut TcpStream, code: u8) -> io::Result<()> {
    client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    client.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// tinyproxy

const TINYPROXY: &str = "/usr/bin/tinyproxy";

/// What tinyproxy 1.11 logs (at `LogLevel Connect`) once it has opened the connection to a
/// request's target: `Established connection to host "127.0.0.1" using file descriptor 6.`
/// It logs it for every request it forwards (CONNECT or plain HTTP); nothing is logged for one
/// refused for its credentials (401/407) or whose target refused the connection.
const ESTABLISHED: &str = "]: Established connection to host ";

/// What it logs for every request line it reads, before checking credentials:
/// `Request (file descriptor 5): CONNECT 127.0.0.1:19999 HTTP/1.1`.
const REQUEST_CONNECT: &str = "): CONNECT ";

/// Debian's tinyproxy, started on its own port with its own config, log and pid file in a
/// temporary folder. Dropping it kills the process.
pub struct Tinyproxy {
    addr: SocketAddr,
    // Declared before `dir`: the process is killed before its folder goes.
    child: Child,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Whether tinyproxy is installed. Without it a test using it is skipped with a loud
    /// message, unless `CI` is set: then this fails.
    pub fn installed() -> bool {
        if Path::new(TINYPROXY).exists() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "tinyproxy is not installed, and CI is set: apt-get install tinyproxy"
        );
        eprintln!(
            "\n*** SKIPPED: tinyproxy is not installed (apt-get install tinyproxy; .ci/run \
             installs it) ***\n"
        );
        false
    }

    /// Starts tinyproxy on 127.0.0.1 (a free port) requiring `BasicAuth` `auth` when given;
    /// its outbound connections come from `bind_ip`.
    pub async fn start(auth: Option<(&str, &str)>, bind_ip: Ipv4Addr) -> Self {
        assert!(
            Path::new(TINYPROXY).exists(),
            "tinyproxy is not installed: apt-get install tinyproxy (.ci/run installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        // Another process may take the port between our probe and tinyproxy's bind: try again
        // with a new one.
        let mut failures = String::new();
        for _ in 0..3 {
            let port = {
                let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                probe.local_addr().unwrap().port()
            };
            match Self::launch(dir.path(), port, auth, bind_ip).await {
                Ok((child, log)) => {
                    return Self {
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        child,
                        log,
                        dir,
                    };
                }
                Err(why) => failures.push_str(&why),
            }
        }
        panic!("tinyproxy did not start:\n{failures}");
    }

    /// Writes the config for `port`, starts tinyproxy, and waits until it listens; on failure,
    /// says why with everything it printed and logged.
    async fn launch(
        dir: &Path,
        port: u16,
        auth: Option<(&str, &str)>,
        bind_ip: Ipv4Addr,
    ) -> Result<(Child, PathBuf), String> {
        let conf = dir.join("tinyproxy.conf");
        let log = dir.join("tinyproxy.log");
        let (stdout, stderr) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
        // Never a stale log from an earlier attempt.
        let _ = std::fs::remove_file(&log);
        // No `User`/`Group`: run as whoever runs the tests (as root it only warns "You SHOULD
        // set a UserName"), so the folder needs no permission changes. No `ConnectPort`: then
        // CONNECT may go to any port. No `Allow`: every client is allowed (it only listens on
        // loopback).
        let mut config = format!(
            "Port {port}\n\
             Listen 127.0.0.1\n\
             Bind {bind_ip}\n\
             Timeout 600\n\
             MaxClients 100\n\
             LogFile \"{log}\"\n\
             LogLevel Connect\n\
             PidFile \"{pid}\"\n",
            log = log.display(),
            pid = dir.join("tinyproxy.pid").display(),
        );
        if let Some((user, pass)) = auth {
            writeln!(config, "BasicAuth {user} {pass}").unwrap();
        }
        std::fs::write(&conf, &config).unwrap();

        let mut child = Command::new(TINYPROXY)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {TINYPROXY}: {e}"));

        let explain = |what: String| {
            let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
            format!(
                "{what}\n--- config\n{config}--- stdout\n{}--- stderr\n{}--- log\n{}\n",
                read(&stdout),
                read(&stderr),
                read(&log)
            )
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(explain(format!(
                    "tinyproxy on port {port} exited: {status}"
                )));
            }
            // Waiting for another process to come up: a short retry loop is all there is.
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return Ok((child, log));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(explain(format!(
                    "tinyproxy did not listen on port {port} within 10 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url_with(None)
    }

    /// `http://[user:pass@]127.0.0.1:PORT` (credentials written as given).
    pub fn url_with(&self, auth: Option<(&str, &str)>) -> String {
        format!("http://{}{}", userinfo(auth), self.addr)
    }

    /// The folder holding its config, log, pid file and output.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many connections to a target it established (see [`ESTABLISHED`]: every request it
    /// forwarded; the tests only send it CONNECTs).
    pub fn connects(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(ESTABLISHED))
            .count()
    }

    /// The target (`host:port`) of every CONNECT request it read, in order, including those it
    /// then refused (bad credentials, unreachable target).
    pub fn connect_requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once(REQUEST_CONNECT))
            .filter_map(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Waits until at least `n` connections were established; panics with the log if that
    /// takes longer than `within`. Polls the log file (another process writes it) every 50 ms.
    pub async fn await_connects(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.connects() < n {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "tinyproxy {} established {} connection(s) within {within:?}, not {n}; its log:\n{}",
                    self.addr,
                    self.connects(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
