//! The DICOM C-STORE SCP (`--dicom ADDR`, AE title `FHIRGATE`): modalities open an
//! association, send instances with C-STORE and check the connection with C-ECHO.
//!
//! Associations called to another AE title are rejected (A-ASSOCIATE-RJ, called AE title
//! not recognised); any calling AE title is accepted. Every SOP class is accepted (the
//! standard storage classes, private ones and those newer than this server alike), with
//! any transfer syntax the registry reads: the server reads only the attributes, never
//! the pixel data, so it needs no image codec. Each C-STORE is answered once the
//! instance is stored (0x0000), or with a failure status and a comment saying why:
//! 0xC000 for what cannot be read or cannot become FHIR, 0xA900 when the data set
//! contradicts its command, 0xA700 when the server cannot store it now (the modality
//! sends it again later). Refused instances and aborted associations are recorded as a
//! DetectedIssue on the modality's Device when the device is known, and logged.
//! Associations are independent: a slow or broken one holds up no other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::Association;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason, UserIdentity,
};
use dicom_ul::ServerAssociationOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::destination::{Destination, Refusal};
use super::instance::{self, DicomError, Instance};

/// The server's AE title.
pub const AE_TITLE: &str = "FHIRGATE";
/// Largest instance accepted over the network (a large multi-frame one is well under).
const MAX_INSTANCE: usize = 512 * 1024 * 1024;
/// Largest command set (a few hundred bytes in practice).
const MAX_COMMAND: usize = 64 * 1024;
/// An association silent this long is closed (the modality opens another when needed).
const IDLE: Duration = Duration::from_secs(300);
/// PDUs this server receives: larger than most modalities send, so few round trips.
const MAX_PDU: u32 = 256 * 1024;

/// DIMSE command fields.
const C_STORE_RQ: u16 = 0x0001;
const C_ECHO_RQ: u16 = 0x0030;
const C_CANCEL_RQ: u16 = 0x0FFF;
const NO_DATA_SET: u16 = 0x0101;

/// DIMSE statuses.
const SUCCESS: u16 = 0x0000;
const UNRECOGNIZED_OPERATION: u16 = 0x0211;
const OUT_OF_RESOURCES: u16 = 0xA700;
const DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
const CANNOT_UNDERSTAND: u16 = 0xC000;

/// A running SCP.
pub struct DicomListener {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DicomListener {
    /// Listens on `address` as `ae_title` (the server's is [`AE_TITLE`]).
    pub async fn start<D: Destination>(
        address: &str,
        ae_title: &str,
        destination: D,
    ) -> std::io::Result<DicomListener> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let ae_title = ae_title.to_string();
        tracing::info!("DICOM C-STORE SCP {ae_title} on {addr}");
        let task = tokio::spawn(accept(listener, ae_title, destination, stopped));
        Ok(DicomListener { addr, stop, task })
    }

    /// Stops accepting; associations finish the instance they are storing, then are
    /// aborted.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept<D: Destination>(
    listener: TcpListener,
    ae_title: String,
    adapter: D,
    mut stopped: watch::Receiver<bool>,
) {
    let mut associations = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    associations.spawn(association(stream, peer, ae_title.clone(), adapter.clone(), stopped.clone()));
                }
                Err(error) => {
                    tracing::warn!("DICOM accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = associations.join_next(), if !associations.is_empty() => {}
        }
    }
    while associations.join_next().await.is_some() {}
}

/// Accepts an association called to this server's AE title, from anyone; the padding
/// some modalities leave around AE titles does not count.
struct CalledAeTitle;

impl AccessControl for CalledAeTitle {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() == this_ae_title {
            Ok(())
        } else {
            tracing::warn!(
                "DICOM association from {:?} rejected: it calls AE title {:?}, this server is {this_ae_title}",
                calling_ae_title.trim(),
                called_ae_title.trim()
            );
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        }
    }
}

/// The C-STORE being received: its command and the data set so far.
struct Incoming {
    context: u8,
    message_id: u16,
    command_field: u16,
    sop_class: String,
    sop_instance: String,
    data: Vec<u8>,
    too_large: bool,
}

/// One association's state.
struct Session<D> {
    peer: SocketAddr,
    calling: String,
    adapter: D,
    /// The command set being received (commands may come in fragments).
    command: Vec<u8>,
    incoming: Option<Incoming>,
    /// The last instance read on this association: its device carries the faults of
    /// what cannot be read, and of an association that breaks.
    last_instance: Option<Arc<Instance>>,
    /// The association ended before its release: an instance may be lost.
    broken: bool,
    stored: usize,
}

async fn association<D: Destination>(
    stream: TcpStream,
    peer: SocketAddr,
    ae_title: String,
    adapter: D,
    mut stopped: watch::Receiver<bool>,
) {
    let options = ServerAssociationOptions::new()
        .ae_access_control(CalledAeTitle)
        .ae_title(ae_title)
        .promiscuous(true)
        .strict(false)
        .max_pdu_length(MAX_PDU)
        .read_timeout(IDLE)
        .write_timeout(Duration::from_secs(60));
    let mut association = match options.establish_async(stream).await {
        Ok(association) => association,
        // A rejection was logged with its reason by the access control.
        Err(error @ dicom_ul::association::Error::Rejected { .. }) => {
            tracing::debug!("DICOM association from {peer} not established: {error}");
            return;
        }
        Err(error) => {
            tracing::warn!("DICOM association from {peer} not established: {error}");
            return;
        }
    };
    let mut session = Session {
        peer,
        calling: association.peer_ae_title().trim().to_string(),
        adapter,
        command: Vec::new(),
        incoming: None,
        last_instance: None,
        broken: false,
        stored: 0,
    };
    tracing::debug!("DICOM association from {} ({peer})", session.calling);
    loop {
        let received = tokio::select! {
            _ = stopped.changed() => {
                tracing::info!("DICOM association from {} aborted: the server is stopping", session.calling);
                let _ = association.abort().await;
                return;
            }
            received = association.receive() => received,
        };
        match received {
            Ok(Pdu::PData { data }) => {
                for value in data {
                    let context = value.presentation_context_id;
                    let transfer_syntax = association
                        .presentation_contexts()
                        .iter()
                        .find(|pc| {
                            pc.id == context
                                && pc.reason == PresentationContextResultReason::Acceptance
                        })
                        .map(|pc| pc.transfer_syntax.clone());
                    if let Some(response) = session.receive(value, transfer_syntax).await {
                        if let Err(error) = association.send(&response).await {
                            tracing::warn!(
                                "DICOM association from {} ({peer}): the response could not be sent: {error}",
                                session.calling
                            );
                            session.broken = true;
                            break;
                        }
                    }
                }
                if session.broken {
                    break;
                }
            }
            Ok(Pdu::ReleaseRQ) => {
                let _ = association.send(&Pdu::ReleaseRP).await;
                tracing::debug!(
                    "DICOM association from {} released after {} instance(s)",
                    session.calling,
                    session.stored
                );
                return;
            }
            Ok(Pdu::AbortRQ { source }) => {
                // Some modalities end every association with an abort rather than a
                // release: only an instance cut off is a fault.
                tracing::info!(
                    "DICOM association from {} ({peer}) aborted by the peer: {source:?}",
                    session.calling
                );
                session.broken = session.incoming.is_some();
                break;
            }
            Ok(other) => {
                tracing::warn!(
                    "DICOM association from {} ({peer}): unexpected {:?}; aborting",
                    session.calling,
                    pdu_name(&other)
                );
                session.broken = true;
                let _ = association.abort().await;
                break;
            }
            Err(error) => {
                tracing::warn!(
                    "DICOM association from {} ({peer}) failed: {error}",
                    session.calling
                );
                // A connection closed or gone silent between instances lost nothing.
                session.broken = session.incoming.is_some();
                break;
            }
        }
    }
    if session.broken {
        session.association_fault().await;
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
        Pdu::Unknown { .. } => "unknown PDU",
    }
}

impl<D: Destination> Session<D> {
    /// Takes one P-DATA value; returns the response to send once a message is complete.
    async fn receive(&mut self, value: PDataValue, transfer_syntax: Option<String>) -> Option<Pdu> {
        let context = value.presentation_context_id;
        match value.value_type {
            PDataValueType::Command => {
                if self.command.len() + value.data.len() > MAX_COMMAND {
                    tracing::warn!(
                        "DICOM {}: a command set over {MAX_COMMAND} bytes was ignored",
                        self.calling
                    );
                    self.command.clear();
                    return None;
                }
                self.command.extend_from_slice(&value.data);
                if !value.is_last {
                    return None;
                }
                let command = std::mem::take(&mut self.command);
                self.command_received(context, &command)
            }
            PDataValueType::Data => {
                let incoming = self.incoming.as_mut()?;
                if !incoming.too_large {
                    if incoming.data.len() + value.data.len() > MAX_INSTANCE {
                        incoming.too_large = true;
                        incoming.data = Vec::new();
                    } else {
                        incoming.data.extend_from_slice(&value.data);
                    }
                }
                if !value.is_last {
                    return None;
                }
                let incoming = self.incoming.take()?;
                Some(self.data_set_received(incoming, transfer_syntax).await)
            }
        }
    }

    fn command_received(&mut self, context: u8, bytes: &[u8]) -> Option<Pdu> {
        // Command sets are always Implicit VR Little Endian.
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let command = match InMemDicomObject::read_dataset_with_ts(bytes, &ts) {
            Ok(command) => command,
            Err(error) => {
                tracing::warn!(
                    "DICOM {}: a command set that cannot be read was ignored: {error}",
                    self.calling
                );
                return None;
            }
        };
        let number = |tag| command.get(tag).and_then(|e| e.to_int::<u16>().ok());
        let text = |tag| {
            command
                .get(tag)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default()
        };
        let field = number(tags::COMMAND_FIELD).unwrap_or_default();
        let message_id = number(tags::MESSAGE_ID).unwrap_or_default();
        let has_data = number(tags::COMMAND_DATA_SET_TYPE) != Some(NO_DATA_SET);
        let sop_class = text(tags::AFFECTED_SOP_CLASS_UID);
        let sop_instance = text(tags::AFFECTED_SOP_INSTANCE_UID);
        match field {
            C_ECHO_RQ => Some(response(
                context, 0x8030, message_id, &sop_class, None, SUCCESS, None,
            )),
            C_CANCEL_RQ => None,
            _ if has_data => {
                // A C-STORE (or another request with a data set, refused once it is in).
                self.incoming = Some(Incoming {
                    context,
                    message_id,
                    command_field: field,
                    sop_class,
                    sop_instance,
                    data: Vec::new(),
                    too_large: false,
                });
                None
            }
            _ => Some(response(
                context,
                field | 0x8000,
                message_id,
                &sop_class,
                None,
                UNRECOGNIZED_OPERATION,
                Some("this SCP serves C-STORE and C-ECHO only"),
            )),
        }
    }

    async fn data_set_received(
        &mut self,
        incoming: Incoming,
        transfer_syntax: Option<String>,
    ) -> Pdu {
        let answer = |status: u16, comment: Option<&str>| {
            response(
                incoming.context,
                incoming.command_field | 0x8000,
                incoming.message_id,
                &incoming.sop_class,
                Some(&incoming.sop_instance),
                status,
                comment,
            )
        };
        if incoming.command_field != C_STORE_RQ {
            return answer(
                UNRECOGNIZED_OPERATION,
                Some("this SCP serves C-STORE and C-ECHO only"),
            );
        }
        let adapter = self.adapter.clone();
        if incoming.too_large {
            adapter.unreadable();
            let why = format!(
                "instance {} is larger than {} MiB",
                incoming.sop_instance,
                MAX_INSTANCE / (1024 * 1024)
            );
            tracing::warn!("DICOM {}: {why}; refused", self.calling);
            return answer(OUT_OF_RESOURCES, Some(&why));
        }
        let Some(transfer_syntax) = transfer_syntax else {
            adapter.unreadable();
            return answer(
                CANNOT_UNDERSTAND,
                Some("the data set came on a presentation context that was not accepted"),
            );
        };
        let read = instance::read_dataset(
            &incoming.data,
            &transfer_syntax,
            &incoming.sop_class,
            &incoming.sop_instance,
        );
        let instance = match read {
            Ok(instance) => Arc::new(instance),
            Err(error) => {
                adapter.unreadable();
                let status = match error {
                    DicomError::Incomplete(_) => DOES_NOT_MATCH_SOP_CLASS,
                    _ => CANNOT_UNDERSTAND,
                };
                tracing::warn!(
                    "DICOM {} ({}): instance {} refused: {error}",
                    self.calling,
                    self.peer,
                    incoming.sop_instance
                );
                // Its device is unknown; the association's last one, if any, sent it.
                if let Some(last) = self.last_instance.clone() {
                    self.fault(
                        &last,
                        "dicom-instance-unreadable",
                        format!(
                            "DICOM instance {} from AE {} could not be read: {error}",
                            incoming.sop_instance, self.calling
                        ),
                        format!("dicom-unreadable-{}", incoming.sop_instance),
                    )
                    .await;
                }
                return answer(status, Some(&error.to_string()));
            }
        };
        if instance.sop_class_uid != incoming.sop_class
            || instance.sop_instance_uid != incoming.sop_instance
        {
            adapter.unreadable();
            let why = format!(
                "the data set is SOP instance {} of class {}, the command says instance {} of class {}",
                instance.sop_instance_uid, instance.sop_class_uid, incoming.sop_instance, incoming.sop_class
            );
            tracing::warn!("DICOM {}: {why}; refused", self.calling);
            self.fault(
                &instance,
                "dicom-instance-refused",
                why.clone(),
                format!("dicom-refused-{}", incoming.sop_instance),
            )
            .await;
            return answer(DOES_NOT_MATCH_SOP_CLASS, Some(&why));
        }
        self.last_instance = Some(instance.clone());
        let kept = adapter
            .keep(instance.clone(), &incoming.data, &transfer_syntax)
            .await;
        drop(incoming.data);
        match kept {
            Ok(()) => {
                self.stored += 1;
                tracing::debug!(
                    "DICOM {}: instance {} kept",
                    self.calling,
                    instance.sop_instance_uid
                );
                answer(SUCCESS, None)
            }
            Err(Refusal::Later(why)) => answer(OUT_OF_RESOURCES, Some(&why)),
            Err(Refusal::Content(why)) => {
                tracing::warn!(
                    "DICOM {} ({}): instance {} refused: {why}",
                    self.calling,
                    self.peer,
                    instance.sop_instance_uid
                );
                self.fault(
                    &instance,
                    "dicom-instance-refused",
                    format!(
                        "DICOM instance {} from AE {} was refused: {why}",
                        instance.sop_instance_uid, self.calling
                    ),
                    format!("dicom-refused-{}", instance.sop_instance_uid),
                )
                .await;
                answer(CANNOT_UNDERSTAND, Some(&why))
            }
        }
    }

    /// An association that broke off in the middle of an instance (aborted, the
    /// connection lost, a response that could not be sent): that instance is lost.
    async fn association_fault(&self) {
        let Some(last) = self.last_instance.clone() else {
            return;
        };
        let key = format!(
            "dicom-association-aborted-{}",
            uuid::Uuid::now_v7().simple()
        );
        let detail = format!(
            "the DICOM association from AE {} ({}) ended without a release after {} instance(s){}",
            self.calling,
            self.peer,
            self.stored,
            match &self.incoming {
                Some(incoming) => format!(
                    ", in the middle of instance {} (not stored: the modality must send it again)",
                    incoming.sop_instance
                ),
                None => String::new(),
            }
        );
        self.fault(&last, "dicom-association-aborted", detail, key)
            .await;
    }

    async fn fault(&self, instance: &Instance, code: &str, detail: String, key: String) {
        self.adapter.fault(instance, code, detail, key).await;
    }
}

/// A DIMSE response command (Implicit VR Little Endian, as every command set); the
/// error comment is cut to its 64 characters.
fn response(
    context: u8,
    command_field: u16,
    message_id: u16,
    sop_class: &str,
    sop_instance: Option<&str>,
    status: u16,
    comment: Option<&str>,
) -> Pdu {
    let mut elements = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(command_field),
        ),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            PrimitiveValue::from(message_id),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(NO_DATA_SET),
        ),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(instance) = sop_instance {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ));
    }
    if let Some(comment) = comment {
        let comment: String = comment
            .chars()
            .filter(|c| !c.is_control() && *c != '\\')
            .take(64)
            .collect();
        elements.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(comment),
        ));
    }
    let command = InMemDicomObject::command_from_element_iter(elements);
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut data = Vec::new();
    if let Err(error) = command.write_dataset_with_ts(&mut data, &ts) {
        // Writing a handful of fixed elements to memory does not fail; should it, the
        // peer gets an empty command and aborts, and the log says why.
        tracing::error!("a DICOM response could not be encoded: {error}");
    }
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    }
}
