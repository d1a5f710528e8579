//! An agent `dicom` source: a C-STORE SCP next to the modality (the same association
//! handling as the server's `--dicom`). Each instance is queued as a Part-10 file
//! without its pixel data and answered with success once queued; when the queue is full
//! the modality is told to send it again later (0xA700), so nothing is lost. Refused
//! instances and broken associations become faults on the modality's Device.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::sink::Sink;
use crate::devices::dicom::destination::{Destination, Refusal};
use crate::devices::dicom::instance::{part10_from_dataset, strip_pixel_data, Instance};
use crate::devices::dicom::mapping::device_identifier;
use crate::devices::reading::DeviceInfo;

/// Where the agent's SCP puts instances: its queue.
#[derive(Clone)]
pub struct AgentDicom {
    pub name: String,
    pub sink: Sink,
}

impl Destination for AgentDicom {
    fn keep<'a>(
        &'a self,
        instance: Arc<Instance>,
        data_set: &'a [u8],
        transfer_syntax: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let file = part10_from_dataset(
                data_set,
                transfer_syntax,
                &instance.sop_class_uid,
                &instance.sop_instance_uid,
            )
            .and_then(|file| strip_pixel_data(&file))
            .map_err(|e| Refusal::Content(e.to_string()))?;
            self.sink
                .file(&self.name, "dicom", &file)
                .await
                .map_err(|e| {
                    Refusal::Later(format!("the agent cannot queue the instance now: {e}"))
                })
        })
    }

    fn fault<'a>(
        &'a self,
        instance: &'a Instance,
        code: &'a str,
        detail: String,
        _key: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(identifier) = device_identifier(instance) else {
                tracing::warn!(source = %self.name, "{detail}");
                return;
            };
            let equipment = &instance.equipment;
            let device = DeviceInfo {
                key: "modality".into(),
                identifier,
                manufacturer: equipment.manufacturer.clone(),
                model: equipment.model.clone(),
                serial_number: equipment.serial_number.clone(),
                ..DeviceInfo::default()
            };
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            self.sink
                .fault(&self.name, &device, None, code, &detail, &now)
                .await;
        })
    }

    fn unreadable(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::health::Health;
    use crate::agent::queue::Queue;
    use crate::devices::dicom::instance::{read_dataset, read_part10, samples};
    use base64::Engine;
    use dicom_dictionary_std::{tags, uids};
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;

    #[tokio::test]
    async fn a_received_instance_is_queued_as_a_file_without_its_pixel_data() {
        let path = std::env::temp_dir().join(format!("agent-dicom-{}.db", uuid::Uuid::new_v4()));
        let queue = Arc::new(Queue::open(&path, 1 << 30).await.unwrap());
        let destination = AgentDicom {
            name: "dicom:test".into(),
            sink: Sink {
                queue: queue.clone(),
                pushed: Arc::default(),
                health: Health::default(),
            },
        };
        let object = samples::ct_image("1.2.3.4.5", "1.2.3.4", 1);
        let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .unwrap();
        let mut data_set = Vec::new();
        object.write_dataset_with_ts(&mut data_set, ts).unwrap();
        let instance = read_dataset(
            &data_set,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            uids::CT_IMAGE_STORAGE,
            "1.2.3.4.5",
        )
        .unwrap();
        destination
            .keep(
                Arc::new(instance.clone()),
                &data_set,
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
            )
            .await
            .unwrap();
        let items = queue.due(10).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].payload["kind"], "dicom");
        let file = base64::engine::general_purpose::STANDARD
            .decode(items[0].payload["file"].as_str().unwrap())
            .unwrap();
        assert!(file.len() < data_set.len() + 512, "{} bytes", file.len());
        let object = dicom_object::from_reader(&file[128..]).unwrap();
        assert!(object.get(tags::PIXEL_DATA).is_none());
        assert_eq!(read_part10(&file).unwrap(), instance);
        let _ = std::fs::remove_file(&path);
    }
}
