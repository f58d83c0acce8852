//! Each webhook's counters, shown by `/metrics` and `warden webhooks`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the delivery latency histogram: from the event to its delivery.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// One webhook's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events given up on (dead letters).
    pub dead: AtomicU64,
    /// Events read from the journal and not yet done.
    pub queued: AtomicI64,
    /// Events done (delivered or given up on, and recorded) since the start.
    pub done: tokio::sync::watch::Sender<u64>,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ms: AtomicU64,
}

impl Stats {
    /// Counts a delivery that took `latency` from the event.
    pub fn delivered(&self, latency: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(
            u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends this webhook's lines of the Prometheus exposition (without the families'
    /// headers, see [`render`]).
    fn lines(&self, hook: &str, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hook = hook.replace('\\', "\\\\").replace('"', "\\\"");
        for (outcome, n) in [
            ("delivered", get(&self.delivered)),
            ("retried", get(&self.retried)),
            ("dead", get(&self.dead)),
        ] {
            let _ = writeln!(
                out,
                "warden_webhook_deliveries_total{{hook=\"{hook}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "warden_webhook_queue_depth{{hook=\"{hook}\"}} {}",
            self.queued.load(Ordering::Relaxed).max(0)
        );
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.latency) {
            cumulative += get(n);
            let _ = writeln!(
                out,
                "warden_webhook_delivery_seconds_bucket{{hook=\"{hook}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.latency[LATENCY_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "warden_webhook_delivery_seconds_bucket{{hook=\"{hook}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "warden_webhook_delivery_seconds_sum{{hook=\"{hook}\"}} {}",
            get(&self.latency_sum_ms) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "warden_webhook_delivery_seconds_count{{hook=\"{hook}\"}} {cumulative}"
        );
    }
}

/// The webhooks' part of `/metrics`.
pub fn render(hooks: &[(&str, &Stats)], out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP warden_webhook_deliveries_total Webhook events delivered, attempts retried, events given up on (dead letters).\n# TYPE warden_webhook_deliveries_total counter"
    );
    let mut rest = String::new();
    for (hook, stats) in hooks {
        let mut lines = String::new();
        stats.lines(hook, &mut lines);
        for line in lines.lines() {
            if line.starts_with("warden_webhook_deliveries_total") {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(rest, "{line}");
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP warden_webhook_queue_depth Events read from the journal and not yet delivered or given up on.\n# TYPE warden_webhook_queue_depth gauge"
    );
    for line in rest
        .lines()
        .filter(|l| l.starts_with("warden_webhook_queue_depth"))
    {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "# HELP warden_webhook_delivery_seconds Time from an event to its delivery.\n# TYPE warden_webhook_delivery_seconds histogram"
    );
    for line in rest
        .lines()
        .filter(|l| l.starts_with("warden_webhook_delivery_seconds"))
    {
        let _ = writeln!(out, "{line}");
    }
}
