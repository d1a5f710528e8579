//! The MLLP listener (`--mllp ADDR`): monitors and gateways connect over TCP and send
//! HL7 v2 messages framed `0x0B … 0x1C 0x0D`; each message is answered on the same
//! connection with its ACK, in order, once it is stored (original acknowledgement mode).
//! Connections are independent: a slow or broken one holds up no other.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::hl7_pipeline::Hl7Adapter;
use super::mllp::{frame, Decoded, Decoder};
use crate::metrics::{Adapter, DeviceOutcome};

/// Largest message accepted (a waveform message of a few seconds is well under it).
const MAX_FRAME: usize = 4 * 1024 * 1024;

/// A running listener.
pub struct MllpListener {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MllpListener {
    pub async fn start(address: &str, adapter: Hl7Adapter) -> std::io::Result<MllpListener> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept(listener, adapter, stopped));
        tracing::info!("MLLP listener on {addr}");
        Ok(MllpListener { addr, stop, task })
    }

    /// Stops accepting; connections finish the message they are handling.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept(listener: TcpListener, adapter: Hl7Adapter, mut stopped: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, peer, adapter.clone(), stopped.clone()));
                }
                Err(error) => {
                    tracing::warn!("MLLP accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    adapter: Hl7Adapter,
    mut stopped: watch::Receiver<bool>,
) {
    let mut decoder = Decoder::new(MAX_FRAME);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // Complete messages first, in order.
        while let Some(item) = decoder.next_item() {
            match item {
                Decoded::Frame(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let handled = adapter.handle(Adapter::Mllp, &text, false).await;
                    if stream
                        .write_all(&frame(handled.ack.as_bytes()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Decoded::Garbage(count) => {
                    tracing::debug!("MLLP {peer}: {count} bytes outside any frame skipped");
                }
                Decoded::TooLong(length) => {
                    tracing::warn!(
                        "MLLP {peer}: a message of {length} bytes or more was refused (at most {MAX_FRAME})"
                    );
                    adapter
                        .metrics
                        .device_message(Adapter::Mllp, DeviceOutcome::Refused, 0);
                }
            }
        }
        let read = tokio::select! {
            _ = stopped.changed() => return,
            read = stream.read(&mut buffer) => read,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => decoder.push(&buffer[..n]),
        }
    }
}
