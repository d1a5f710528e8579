//! Counters for `/metrics` (Prometheus text format 0.0.4), kept in atomics: the few
//! figures an operator watches do not justify a metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the delivery latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0,
];

/// What a notification was.
#[derive(Debug, Clone, Copy)]
pub enum NotificationKind {
    Handshake = 0,
    Heartbeat = 1,
    Event = 2,
}

const KINDS: [&str; 3] = ["handshake", "heartbeat", "event-notification"];

#[derive(Default)]
pub struct Metrics {
    /// Notifications answered with a 2xx, by kind.
    delivered: [AtomicU64; 3],
    /// Notifications that failed (error status, timeout, refused address), by kind.
    failed: [AtomicU64; 3],
    /// Events delivered.
    events_delivered: AtomicU64,
    /// From an event's commit to its delivery, per event.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// Device messages by adapter and outcome, Observations stored by adapter.
    device_messages: [[AtomicU64; DEVICE_OUTCOMES.len()]; ADAPTERS.len()],
    device_observations: [AtomicU64; ADAPTERS.len()],
}

/// The device adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Mllp = 0,
    Mqtt = 1,
    Http = 2,
    /// The DICOM C-STORE SCP (`--dicom`); one message per instance.
    Dicom = 3,
}

const ADAPTERS: [&str; 4] = ["mllp", "mqtt", "http", "dicom"];

impl Adapter {
    pub fn name(self) -> &'static str {
        ADAPTERS[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Adapter> {
        match name {
            "mllp" => Some(Adapter::Mllp),
            "mqtt" => Some(Adapter::Mqtt),
            "http" => Some(Adapter::Http),
            "dicom" => Some(Adapter::Dicom),
            _ => None,
        }
    }
}

/// What became of a device message.
#[derive(Debug, Clone, Copy)]
pub enum DeviceOutcome {
    /// Stored (or already stored: a duplicate).
    Stored = 0,
    /// Refused for its content (kept as a dead letter).
    Refused = 1,
    /// Not stored because of the server (the database).
    Failed = 2,
}

const DEVICE_OUTCOMES: [&str; 3] = ["stored", "refused", "failed"];

/// Figures read from the database at scrape time.
#[derive(Debug, Default)]
pub struct QueueFigures {
    /// Live subscriptions by status.
    pub subscriptions: Vec<(String, i64)>,
    /// Events recorded and not yet delivered, over all live subscriptions.
    pub undelivered_events: i64,
    /// Age in seconds of the oldest undelivered event.
    pub oldest_undelivered_seconds: f64,
}

impl Metrics {
    pub fn notification(&self, kind: NotificationKind, ok: bool) {
        let counters = if ok { &self.delivered } else { &self.failed };
        counters[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One event delivered `latency_micros` after it was recorded.
    pub fn event_delivered(&self, latency_micros: i64) {
        let micros = latency_micros.max(0) as u64;
        self.events_delivered.fetch_add(1, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
        let seconds = micros as f64 / 1e6;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A device message handled by an adapter, with the Observations it stored.
    pub fn device_message(&self, adapter: Adapter, outcome: DeviceOutcome, observations: usize) {
        self.device_messages[adapter as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.device_observations[adapter as usize]
            .fetch_add(observations as u64, Ordering::Relaxed);
    }

    pub fn render(&self, queue: &QueueFigures) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fhirgate_device_messages_total Device messages by adapter and outcome (refused: kept as a dead letter).\n\
             # TYPE fhirgate_device_messages_total counter"
        );
        for (a, adapter) in ADAPTERS.iter().enumerate() {
            for (o, outcome) in DEVICE_OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "fhirgate_device_messages_total{{adapter=\"{adapter}\",outcome=\"{outcome}\"}} {}",
                    self.device_messages[a][o].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP fhirgate_device_observations_total Observations stored from device messages, by adapter.\n\
             # TYPE fhirgate_device_observations_total counter"
        );
        for (a, adapter) in ADAPTERS.iter().enumerate() {
            let _ = writeln!(
                out,
                "fhirgate_device_observations_total{{adapter=\"{adapter}\"}} {}",
                self.device_observations[a].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscription_notifications_total Notifications sent to subscribers, by kind and outcome.\n\
             # TYPE fhirgate_subscription_notifications_total counter"
        );
        for (i, kind) in KINDS.iter().enumerate() {
            for (outcome, counters) in [("delivered", &self.delivered), ("failed", &self.failed)] {
                let _ = writeln!(
                    out,
                    "fhirgate_subscription_notifications_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {}",
                    counters[i].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscription_delivery_failures_total Failed notification attempts.\n\
             # TYPE fhirgate_subscription_delivery_failures_total counter\n\
             fhirgate_subscription_delivery_failures_total {}",
            self.failed
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
        );
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscription_events_delivered_total Events delivered to subscribers.\n\
             # TYPE fhirgate_subscription_events_delivered_total counter\n\
             fhirgate_subscription_events_delivered_total {}",
            self.events_delivered.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscription_delivery_latency_seconds From the commit of a change to the delivery of its event.\n\
             # TYPE fhirgate_subscription_delivery_latency_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "fhirgate_subscription_delivery_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "fhirgate_subscription_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             fhirgate_subscription_delivery_latency_seconds_sum {}\n\
             fhirgate_subscription_delivery_latency_seconds_count {count}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscription_queue_depth Events recorded and not yet delivered.\n\
             # TYPE fhirgate_subscription_queue_depth gauge\n\
             fhirgate_subscription_queue_depth {}",
            queue.undelivered_events
        );
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscription_oldest_undelivered_seconds Age of the oldest undelivered event.\n\
             # TYPE fhirgate_subscription_oldest_undelivered_seconds gauge\n\
             fhirgate_subscription_oldest_undelivered_seconds {}",
            queue.oldest_undelivered_seconds
        );
        let _ = writeln!(
            out,
            "# HELP fhirgate_subscriptions Subscriptions by status.\n\
             # TYPE fhirgate_subscriptions gauge"
        );
        for (status, count) in &queue.subscriptions {
            let _ = writeln!(out, "fhirgate_subscriptions{{status=\"{status}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.event_delivered(3_000);
        metrics.event_delivered(40_000);
        metrics.event_delivered(40_000_000);
        metrics.notification(NotificationKind::Event, false);
        let text = metrics.render(&QueueFigures::default());
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("latency_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("latency_seconds_bucket{le=\"60\"} 3\n"));
        assert!(text.contains("latency_seconds_count 3\n"));
        assert!(text.contains("fhirgate_subscription_delivery_failures_total 1\n"));
        assert!(text
            .contains("notifications_total{kind=\"event-notification\",outcome=\"failed\"} 1\n"));
    }
}
