//! The MQTT subscriber (`--mqtt mqtt://host:1883`): wearables and gateways publish JSON
//! to `<prefix>/<template>[/anything]` (prefix `fhirgate/ingest` by default), and each
//! payload is mapped with that template and stored.
//!
//! Subscriptions are QoS 1 and acknowledged by hand, in the order received, only once the
//! payload is stored (or kept as a dead letter): a payload the server did not keep is not
//! acknowledged, and the broker sends it again after a reconnect.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::json_pipeline::JsonAdapter;
use crate::metrics::Adapter;

pub struct MqttSubscriber {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The topic filter for a prefix: every template, with or without more levels.
pub fn topic_filter(prefix: &str) -> String {
    format!("{}/+/#", prefix.trim_end_matches('/'))
}

/// The template a topic names (`fhirgate/ingest/smartwatch/watch-7` → `smartwatch`).
pub fn template_of<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    let rest = topic
        .strip_prefix(prefix.trim_end_matches('/'))?
        .strip_prefix('/')?;
    rest.split('/').next().filter(|t| !t.is_empty())
}

impl MqttSubscriber {
    pub fn start(
        url: &str,
        prefix: &str,
        instance: &str,
        adapter: JsonAdapter,
    ) -> Result<MqttSubscriber, String> {
        // rumqttc wants the client id in the URL.
        let separator = if url.contains('?') { '&' } else { '?' };
        let with_id = if url.contains("client_id=") {
            url.to_string()
        } else {
            format!("{url}{separator}client_id=fhirgate-{instance}")
        };
        let mut options = MqttOptions::parse_url(&with_id).map_err(|e| {
            format!("--mqtt {url:?} is not an MQTT URL such as mqtt://127.0.0.1:1883: {e}")
        })?;
        options.set_manual_acks(true);
        options.set_keep_alive(Duration::from_secs(30));
        // A session that survives reconnects: unacknowledged payloads come again.
        options.set_clean_session(false);
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (stop, mut stopped) = watch::channel(false);
        let (queue, mut received) = mpsc::channel::<Publish>(256);
        let filter = topic_filter(prefix);
        let subscriber = client.clone();
        // The event loop must keep running (keep-alives, acks going out) while payloads
        // are stored, so it only hands them on.
        let poller = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            tracing::info!("MQTT connected; subscribing to {filter}");
                            if let Err(error) = subscriber.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                                tracing::warn!("MQTT subscribe failed: {error}");
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            if queue.send(publish).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!("MQTT connection: {error}; reconnecting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            let _ = subscriber.disconnect().await;
        });
        let prefix = prefix.to_string();
        let acker = client;
        let worker = tokio::spawn(async move {
            while let Some(publish) = received.recv().await {
                let topic = publish.topic.clone();
                let Some(template) = template_of(&prefix, &topic) else {
                    tracing::warn!("MQTT topic {topic} names no template; ignored");
                    let _ = acker.ack(&publish).await;
                    continue;
                };
                let outcome = adapter
                    .handle(Adapter::Mqtt, template, &publish.payload, None, false)
                    .await;
                let kept = outcome.problems.is_empty() || outcome.dead_letter.is_some();
                if kept {
                    if let Err(error) = acker.ack(&publish).await {
                        tracing::warn!("MQTT ack failed: {error}");
                    }
                } else {
                    tracing::error!(
                        "an MQTT payload on {topic} was neither stored nor kept; it is left \
                         unacknowledged for the broker to send again"
                    );
                }
            }
        });
        Ok(MqttSubscriber {
            stop,
            tasks: vec![poller, worker],
        })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_template() {
        assert_eq!(topic_filter("fhirgate/ingest/"), "fhirgate/ingest/+/#");
        assert_eq!(
            template_of("fhirgate/ingest", "fhirgate/ingest/smartwatch/watch-7"),
            Some("smartwatch")
        );
        assert_eq!(
            template_of("fhirgate/ingest", "fhirgate/ingest/bp-cuff"),
            Some("bp-cuff")
        );
        assert_eq!(template_of("fhirgate/ingest", "other/bp-cuff"), None);
        assert_eq!(template_of("fhirgate/ingest", "fhirgate/ingestx/a"), None);
    }
}
