//! Watched folders: a device (or its software) drops files, the agent queues what they
//! hold and moves each file to `.done/` once queued, or to `.failed/` with a `.error`
//! file saying why. A file is taken once it has not changed for a second (so that one
//! being written is not read half-way); a crash between queueing and moving queues it
//! again on restart, which the conditional creates make harmless.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::sink::Sink;
use crate::devices::dicom;
use crate::devices::hl7::Message;
use crate::devices::pcd01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// HL7 v2 ORU messages, one or several per file.
    Hl7,
    /// DICOM Part 10 files.
    Dicom,
}

pub struct Folder {
    pub name: String,
    pub path: PathBuf,
    pub kind: FolderKind,
}

const POLL: Duration = Duration::from_millis(500);
const SETTLED: Duration = Duration::from_secs(1);

pub async fn run(folder: Folder, sink: Sink, mut shutdown: watch::Receiver<bool>) {
    for sub in [".done", ".failed"] {
        if let Err(e) = std::fs::create_dir_all(folder.path.join(sub)) {
            tracing::error!(path = %folder.path.display(), "cannot prepare the watched folder: {e}");
        }
    }
    loop {
        for file in settled_files(&folder.path) {
            let outcome = match folder.kind {
                FolderKind::Hl7 => hl7_file(&folder, &sink, &file).await,
                FolderKind::Dicom => dicom_file(&folder, &sink, &file).await,
            };
            finish(&folder.path, &file, outcome);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Regular files not changed for a while, oldest first.
fn settled_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?;
            let settled = now.duration_since(modified).unwrap_or_default() >= SETTLED;
            (meta.is_file() && settled).then(|| (modified, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, path)| path).collect()
}

/// Why a file was not taken.
enum NotTaken {
    /// Its content: it is set aside in `.failed/` with the reason.
    Refused(String),
    /// The queue cannot take it now (full): it stays where it is, tried again later.
    Later(String),
}

impl From<String> for NotTaken {
    fn from(why: String) -> NotTaken {
        NotTaken::Refused(why)
    }
}

/// Moves a handled file out of the way (a file to try again stays).
fn finish(dir: &Path, file: &Path, outcome: Result<(), NotTaken>) {
    let Some(name) = file.file_name() else {
        return;
    };
    let moved = match &outcome {
        Ok(()) => std::fs::rename(file, dir.join(".done").join(name)),
        Err(NotTaken::Later(why)) => {
            tracing::warn!(file = %file.display(), "file left for later: {why}");
            return;
        }
        Err(NotTaken::Refused(why)) => {
            tracing::warn!(file = %file.display(), "file not taken: {why}");
            let mut error_name = name.to_os_string();
            error_name.push(".error");
            let _ = std::fs::write(dir.join(".failed").join(error_name), why);
            std::fs::rename(file, dir.join(".failed").join(name))
        }
    };
    if let Err(e) = moved {
        tracing::error!(file = %file.display(), "cannot move a handled file: {e}");
    }
}

async fn hl7_file(folder: &Folder, sink: &Sink, file: &Path) -> Result<(), NotTaken> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let settings = pcd01::Settings {
        zone: *chrono::Local::now().offset(),
    };
    // Every message is read before any is queued: a file is taken whole or not at all.
    let mut messages = Vec::new();
    for (index, payload) in split_messages(&text).into_iter().enumerate() {
        let message = Message::parse(&payload)
            .map_err(|e| format!("message {}: cannot be parsed: {e}", index + 1))?;
        let parsed = pcd01::read(&message, settings).map_err(|(_, problems)| {
            let texts: Vec<String> = problems
                .iter()
                .map(|p| match &p.location {
                    Some(at) => format!("{} (at {at})", p.text),
                    None => p.text.clone(),
                })
                .collect();
            format!("message {}: {}", index + 1, texts.join("; "))
        })?;
        messages.push(parsed.message);
    }
    if messages.is_empty() {
        return Err(NotTaken::Refused("the file holds no HL7 message".into()));
    }
    // One queue item: the file's messages are uploaded together, or not yet.
    sink.all_readings(&folder.name, &messages)
        .await
        .map_err(|e| NotTaken::Later(format!("cannot queue the file's readings: {e}")))
}

/// The messages of a file: each starts with `MSH`; MLLP framing bytes are ignored.
fn split_messages(text: &str) -> Vec<String> {
    let cleaned: String = text
        .chars()
        .filter(|c| !matches!(c, '\u{0b}' | '\u{1c}'))
        .collect();
    let mut messages: Vec<String> = Vec::new();
    for segment in cleaned.split(['\r', '\n']).filter(|s| !s.trim().is_empty()) {
        if segment.starts_with("MSH") || messages.is_empty() {
            messages.push(String::new());
        }
        if let Some(current) = messages.last_mut() {
            current.push_str(segment);
            current.push('\r');
        }
    }
    messages
}

/// A DICOM Part-10 file: checked to be an instance the server can map, then queued
/// without its pixel data (the server stores none, and the upload stays small).
async fn dicom_file(folder: &Folder, sink: &Sink, file: &Path) -> Result<(), NotTaken> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read the file: {e}"))?;
    let stripped = dicom::strip_pixel_data(&bytes).map_err(|e| e.to_string())?;
    dicom::read_part10(&stripped).map_err(|e| e.to_string())?;
    sink.file(&folder.name, "dicom", &stripped)
        .await
        .map_err(|e| NotTaken::Later(format!("cannot queue the instance: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_splits_into_messages() {
        let text = "\u{0b}MSH|^~\\&|A\rPID|1\rOBX|1\r\u{1c}\r\nMSH|^~\\&|B\nOBX|1\n";
        let messages = split_messages(text);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], "MSH|^~\\&|A\rPID|1\rOBX|1\r");
        assert_eq!(messages[1], "MSH|^~\\&|B\rOBX|1\r");
    }
}
