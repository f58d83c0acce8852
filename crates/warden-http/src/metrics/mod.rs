//! Counters for `/metrics`, rendered in the Prometheus text format (version 0.0.4).
//!
//! Gauges (sessions per state, connection attempts in flight and queued) are read from the
//! supervisor's snapshot when scraped. Counters of things that happen to sessions
//! (disconnects by reason, restarts, logins, janitor reaps) are derived by [`collect`], a task
//! that follows the event bus and counts the changes of each session's lifetime counters and
//! state. HTTP requests are counted by the gateway itself; control-socket requests by the daemon,
//! through [`Metrics::record_socket_request`]. No metric has a per-session label.

mod collect;

pub use collect::collect;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use warden_control::protocol::OPS;
use warden_core::SessionState;

/// The disconnect reasons counted, in the supervisor's own codes, then the gateway's buckets:
/// `requested` (an operator's stop, restart, logout or cleanup), `reaped` (the janitor),
/// `unknown` (missed while the counter fell behind the event bus).
pub const DISCONNECT_REASONS: [&str; 20] = [
    "connection_lost",
    "connection_closed",
    "timed_out",
    "connect_failed",
    "proxy_unreachable",
    "proxy_auth_failed",
    "server_unavailable",
    "stream_error",
    "session_crashed",
    "restart_required",
    "logged_out",
    "replaced",
    "temporarily_banned",
    "client_outdated",
    "bad_credentials",
    "qr_expired",
    "stopped",
    "requested",
    "reaped",
    "unknown",
];

/// Upper bounds (seconds) of the HTTP latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

/// The counters behind `/metrics`. Cheap to share (`Arc<Metrics>`); every method is lock-free
/// except the HTTP request counts, whose short lock is never held across an await.
#[derive(Debug)]
pub struct Metrics {
    /// Disconnects per reason, indexed like [`DISCONNECT_REASONS`].
    disconnects: [AtomicU64; DISCONNECT_REASONS.len()],
    /// Connections started by the restart policy (retries, post-pairing restarts).
    restarts: AtomicU64,
    /// Connections that logged in.
    connects: AtomicU64,
    /// Sessions the janitor (or a reap request) stopped.
    reaps: AtomicU64,
    /// Control-socket requests per op (indexed like [`OPS`], then one for unknown ops), ok.
    socket_ok: [AtomicU64; OPS.len() + 1],
    /// Control-socket requests per op that failed.
    socket_err: [AtomicU64; OPS.len() + 1],
    /// HTTP requests by (method, route template, status). Route templates come from the
    /// router, so the label set is bounded.
    http: Mutex<HashMap<(&'static str, &'static str, u16), u64>>,
    /// HTTP latency histogram: counts per bucket (not cumulative), then +Inf.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of HTTP latencies, in microseconds.
    latency_sum_us: AtomicU64,
    /// Event streams (`/events`) open now.
    event_streams: AtomicI64,
    /// Event streams closed because their client fell behind.
    event_streams_lagged: AtomicU64,
    /// Gauges read from elsewhere at each render (see [`Metrics::with_gauge`]).
    gauges: Vec<Gauge>,
}

/// A gauge the embedder reads for `/metrics`: its name, its help text, and how to read it.
struct Gauge {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauge").field("name", &self.name).finish()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All counters at zero.
    pub fn new() -> Self {
        Self {
            disconnects: std::array::from_fn(|_| AtomicU64::new(0)),
            restarts: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            reaps: AtomicU64::new(0),
            socket_ok: std::array::from_fn(|_| AtomicU64::new(0)),
            socket_err: std::array::from_fn(|_| AtomicU64::new(0)),
            http: Mutex::new(HashMap::new()),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            event_streams: AtomicI64::new(0),
            event_streams_lagged: AtomicU64::new(0),
            gauges: Vec::new(),
        }
    }

    /// Adds a gauge read at each render: `name` (a valid metric name), its help text, and
    /// how to read it (cheap, and never blocking: it runs on the request's task).
    pub fn with_gauge(
        mut self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.gauges.push(Gauge {
            name,
            help,
            read: Box::new(read),
        });
        self
    }

    /// Counts one control-socket request: `op` is the request's op name (one of the control
    /// protocol's ops; anything else is counted as `other`), `ok` whether it succeeded.
    pub fn record_socket_request(&self, op: &str, ok: bool) {
        let index = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len());
        let counters = if ok {
            &self.socket_ok
        } else {
            &self.socket_err
        };
        counters[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one HTTP request.
    pub(crate) fn record_http(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        took: Duration,
    ) {
        {
            let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
            *http.entry((method, route, status)).or_insert(0) += 1;
        }
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn event_stream_opened(&self) {
        self.event_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn event_stream_closed(&self, lagged: bool) {
        self.event_streams.fetch_sub(1, Ordering::Relaxed);
        if lagged {
            self.event_streams_lagged.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_disconnects(&self, reason: &str, n: u64) {
        let index = DISCONNECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(DISCONNECT_REASONS.len() - 1);
        self.disconnects[index].fetch_add(n, Ordering::Relaxed);
    }

    /// The whole exposition, with the gauges read from `list`.
    pub fn render(&self, counts: &BTreeMap<SessionState, usize>) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);

        family(&mut out, "warden_sessions", "gauge", "Sessions per state.");
        for state in SessionState::ALL {
            let n = counts.get(&state).copied().unwrap_or(0);
            let _ = writeln!(out, "warden_sessions{{state=\"{state}\"}} {n}");
        }
        let count = |s: SessionState| counts.get(&s).copied().unwrap_or(0);
        family(
            &mut out,
            "warden_connect_attempts_in_flight",
            "gauge",
            "Connection attempts in their handshake (sessions connecting or pairing).",
        );
        let in_flight = count(SessionState::Connecting) + count(SessionState::Pairing);
        let _ = writeln!(out, "warden_connect_attempts_in_flight {in_flight}");
        family(
            &mut out,
            "warden_connect_attempts_queued",
            "gauge",
            "Connection attempts waiting for admission control.",
        );
        let _ = writeln!(
            out,
            "warden_connect_attempts_queued {}",
            count(SessionState::Queued)
        );

        // The runtime's tasks: flat at rest, whatever the sessions have been through (the
        // soak run checks it); `render` runs on the runtime, so the handle is there.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            family(
                &mut out,
                "warden_runtime_tasks",
                "gauge",
                "Tasks alive in the daemon's async runtime.",
            );
            let _ = writeln!(
                out,
                "warden_runtime_tasks {}",
                runtime.metrics().num_alive_tasks()
            );
        }
        for gauge in &self.gauges {
            family(&mut out, gauge.name, "gauge", gauge.help);
            let _ = writeln!(out, "{} {}", gauge.name, (gauge.read)());
        }
        family(
            &mut out,
            "warden_session_disconnects_total",
            "counter",
            "Connections that ended, by reason.",
        );
        for (reason, n) in DISCONNECT_REASONS.iter().zip(&self.disconnects) {
            let _ = writeln!(
                out,
                "warden_session_disconnects_total{{reason=\"{reason}\"}} {}",
                get(n)
            );
        }
        for (name, help, n) in [
            (
                "warden_session_restarts_total",
                "Connections started by the restart policy (retries and post-pairing restarts).",
                &self.restarts,
            ),
            (
                "warden_session_connects_total",
                "Connections that logged in.",
                &self.connects,
            ),
            (
                "warden_janitor_reaps_total",
                "Sessions stopped because they were stuck connecting or showing a QR code.",
                &self.reaps,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", get(n));
        }

        family(
            &mut out,
            "warden_socket_requests_total",
            "counter",
            "Control-socket requests, by op and outcome.",
        );
        for (i, op) in OPS.iter().copied().chain(["other"]).enumerate() {
            for (outcome, counters) in [("ok", &self.socket_ok), ("error", &self.socket_err)] {
                let _ = writeln!(
                    out,
                    "warden_socket_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}} {}",
                    get(&counters[i])
                );
            }
        }

        family(
            &mut out,
            "warden_http_requests_total",
            "counter",
            "HTTP requests, by method, route and status code.",
        );
        let mut http: Vec<_> = {
            let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
            http.iter().map(|(k, v)| (*k, *v)).collect()
        };
        http.sort_unstable();
        for ((method, route, code), n) in http {
            let _ = writeln!(
                out,
                "warden_http_requests_total{{method=\"{method}\",route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        family(
            &mut out,
            "warden_http_request_duration_seconds",
            "histogram",
            "HTTP request latency, until the response head (event streams: until they open).",
        );
        let mut cumulative = 0;
        for (le, n) in LATENCY_BUCKETS.iter().zip(&self.latency) {
            cumulative += get(n);
            let _ = writeln!(
                out,
                "warden_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.latency[LATENCY_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "warden_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = get(&self.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "warden_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "warden_http_request_duration_seconds_count {cumulative}"
        );

        family(
            &mut out,
            "warden_event_streams",
            "gauge",
            "Event streams (GET /events) open now.",
        );
        let _ = writeln!(
            out,
            "warden_event_streams {}",
            self.event_streams.load(Ordering::Relaxed).max(0)
        );
        family(
            &mut out,
            "warden_event_streams_lagged_total",
            "counter",
            "Event streams closed because their client fell behind.",
        );
        let _ = writeln!(
            out,
            "warden_event_streams_lagged_total {}",
            get(&self.event_streams_lagged)
        );
        family(
            &mut out,
            "warden_build_info",
            "gauge",
            "Always 1; the version is a label.",
        );
        let _ = writeln!(
            out,
            "warden_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

/// Appends the journal's metric to `out`: entries dropped because the database could not keep
/// up (65,536 waiting).
pub(crate) fn render_journal(out: &mut String, dropped: u64) {
    family(
        out,
        "warden_journal_dropped_total",
        "counter",
        "Journal entries dropped because the database could not keep up.",
    );
    let _ = writeln!(out, "warden_journal_dropped_total {dropped}");
}

/// Appends the supervisor's queued timers to `out` (at most two per session).
pub(crate) fn render_timers(out: &mut String, queued: usize) {
    family(
        out,
        "warden_supervisor_timers",
        "gauge",
        "Timers the supervisor has queued: retries, ban and quarantine ends, stability timers.",
    );
    let _ = writeln!(out, "warden_supervisor_timers {queued}");
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_requests_are_counted_per_op() {
        let metrics = Metrics::new();
        metrics.record_socket_request("status", true);
        metrics.record_socket_request("status", false);
        metrics.record_socket_request("explode", true);
        let text = metrics.render(&BTreeMap::new());
        assert!(text.contains("warden_socket_requests_total{op=\"status\",outcome=\"ok\"} 1"));
        assert!(text.contains("warden_socket_requests_total{op=\"status\",outcome=\"error\"} 1"));
        assert!(text.contains("warden_socket_requests_total{op=\"other\",outcome=\"ok\"} 1"));
    }

    #[test]
    fn an_added_gauge_is_read_at_each_render() {
        let value = std::sync::Arc::new(AtomicU64::new(3));
        let read = value.clone();
        let metrics = Metrics::new().with_gauge("warden_things", "Things.", move || {
            read.load(Ordering::Relaxed)
        });
        let text = metrics.render(&BTreeMap::new());
        assert!(text.contains("# HELP warden_things Things.\n# TYPE warden_things gauge\n"));
        assert!(text.contains("\nwarden_things 3\n"));
        value.store(5, Ordering::Relaxed);
        assert!(
            metrics
                .render(&BTreeMap::new())
                .contains("\nwarden_things 5\n")
        );
    }
}
