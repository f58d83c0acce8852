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

/// The metric families of the webhooks, in the order they are shown: name, type, help.
const FAMILIES: [(&str, &str, &str); 3] = [
    (
        "warden_webhook_deliveries_total",
        "counter",
        "Webhook events delivered, attempts retried, events given up on (dead letters).",
    ),
    (
        "warden_webhook_queue_depth",
        "gauge",
        "Events read from the journal and not yet delivered or given up on.",
    ),
    (
        "warden_webhook_delivery_seconds",
        "histogram",
        "Time from an event to its delivery.",
    ),
];

/// The webhooks' part of `/metrics`: each family's header, then its lines for every hook.
pub fn render(hooks: &[(&str, &Stats)], out: &mut String) {
    let mut all = String::new();
    for (hook, stats) in hooks {
        stats.lines(hook, &mut all);
    }
    for (name, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in all.lines().filter(|l| l.starts_with(name)) {
            let _ = writeln!(out, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_has_one_header_then_every_hooks_lines() {
        let (a, b) = (Stats::default(), Stats::default());
        a.delivered(Duration::from_millis(3));
        let mut out = String::new();
        render(&[("a", &a), ("b", &b)], &mut out);
        let mut at = 0;
        for (name, kind, _) in FAMILIES {
            let header = format!("# TYPE {name} {kind}");
            assert_eq!(out.matches(&header).count(), 1, "{out}");
            let here = out.find(&header).unwrap();
            assert!(here >= at, "{name} out of order:\n{out}");
            at = here;
            for hook in ["a", "b"] {
                let line = out[here..]
                    .lines()
                    .find(|l| l.starts_with(name) && l.contains(&format!("hook=\"{hook}\"")));
                assert!(line.is_some(), "{name} of {hook}:\n{out}");
            }
        }
        assert!(
            out.contains("warden_webhook_deliveries_total{hook=\"a\",outcome=\"delivered\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("warden_webhook_delivery_seconds_count{hook=\"a\"} 1"),
            "{out}"
        );
    }
}
