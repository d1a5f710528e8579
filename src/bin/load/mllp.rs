//! The `mllp` scenario: monitors sending IHE PCD-01 ORU^R01 over MLLP.
//!
//! `--clients` connections each send messages one after the other (original mode: the
//! next message after the ACK), each message a snapshot of one bed (its own patient and
//! monitor EUI-64) with 10 numeric rows that become 8 Observations (the three blood
//! pressure rows are one panel), one second of device time after the previous snapshot.
//! Reports messages and Observations stored per second and the ACK latency. The server
//! must run `--mllp` and create the patients (`--device-create-patients true`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Observations each message becomes.
pub const OBSERVATIONS_PER_MESSAGE: u64 = 8;

pub struct Settings {
    pub address: String,
    pub connections: usize,
    pub seconds: u64,
    pub warmup: u64,
}

/// A snapshot of bed `bed` at second `n` of its run.
fn message(bed: usize, n: u64) -> String {
    // Device time: from 2024-01-01 on, one second per snapshot, never in the future.
    let time = chrono::DateTime::from_timestamp(1_704_067_200 + n as i64, 0)
        .unwrap_or_default()
        .format("%Y%m%d%H%M%S")
        .to_string();
    let eui = format!("0800190000{bed:06X}");
    let rows = [
        (
            "147842^MDC_ECG_HEART_RATE",
            "1.5.1.1",
            60 + n % 40,
            "264864^MDC_DIM_BEAT_PER_MIN",
        ),
        (
            "149530^MDC_PULS_OXIM_PULS_RATE",
            "1.22.1.1",
            61 + n % 40,
            "264864^MDC_DIM_BEAT_PER_MIN",
        ),
        (
            "150456^MDC_PULS_OXIM_SAT_O2",
            "1.22.1.2",
            90 + n % 10,
            "262688^MDC_DIM_PERCENT",
        ),
        (
            "151562^MDC_RESP_RATE",
            "1.20.1.1",
            12 + n % 10,
            "264928^MDC_DIM_RESP_PER_MIN",
        ),
        (
            "150364^MDC_TEMP_BODY",
            "1.26.1.1",
            36 + n % 2,
            "268192^MDC_DIM_DEGC",
        ),
        (
            "150021^MDC_PRESS_BLD_NONINV_SYS",
            "1.9.1.1",
            110 + n % 30,
            "266016^MDC_DIM_MMHG",
        ),
        (
            "150022^MDC_PRESS_BLD_NONINV_DIA",
            "1.9.1.2",
            70 + n % 20,
            "266016^MDC_DIM_MMHG",
        ),
        (
            "150023^MDC_PRESS_BLD_NONINV_MEAN",
            "1.9.1.3",
            85 + n % 20,
            "266016^MDC_DIM_MMHG",
        ),
        (
            "150488^MDC_BLD_PERF_INDEX",
            "1.22.1.3",
            3 + n % 5,
            "262688^MDC_DIM_PERCENT",
        ),
        (
            "188736^MDC_MASS_BODY_ACTUAL",
            "1.30.1.1",
            70 + n % 3,
            "263875^MDC_DIM_KILO_G",
        ),
    ];
    let mut text = format!(
        "MSH|^~\\&|LOAD^{eui}^EUI-64|fhirgate-load|||{time}||ORU^R01^ORU_R01|B{bed}-{n}|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
         PID|||BED-{bed}^^^LOAD^MR\r\
         OBR|1|{bed}-{n}^LOAD^{eui}^EUI-64||182777000^monitoring of patient^SCT|||{time}\r\
         OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X\r"
    );
    for (i, (code, path, value, unit)) in rows.iter().enumerate() {
        text.push_str(&format!(
            "OBX|{}|NM|{code}^MDC|{path}|{value}|{unit}^MDC|||||R|||||||{eui}^EUI-64\r",
            i + 2
        ));
    }
    text
}

fn frame(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 3);
    bytes.push(0x0b);
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&[0x1c, 0x0d]);
    bytes
}

async fn exchange(
    stream: &mut TcpStream,
    message: &[u8],
    buffer: &mut Vec<u8>,
) -> Result<String, String> {
    stream.write_all(message).await.map_err(|e| e.to_string())?;
    buffer.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(2).position(|w| w == [0x1c, 0x0d]) {
            let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
            return Ok(text);
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

pub async fn run(settings: &Settings) -> Value {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for bed in 0..settings.connections {
        let (measuring, stop, accepted, refused) = (
            measuring.clone(),
            stop.clone(),
            accepted.clone(),
            refused.clone(),
        );
        let address = settings.address.clone();
        workers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&address).await.expect("MLLP connection");
            let _ = stream.set_nodelay(true);
            let mut latencies = Vec::with_capacity(16_384);
            let mut buffer = Vec::new();
            let mut first_error = None;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let bytes = frame(&message(bed, n));
                let started = Instant::now();
                let ack = exchange(&mut stream, &bytes, &mut buffer).await;
                let elapsed = started.elapsed();
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match ack {
                    Ok(ack) if ack.contains("MSA|AA|") => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        latencies.push(elapsed.as_micros() as u64);
                    }
                    Ok(ack) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(ack);
                    }
                    Err(error) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(error);
                        break;
                    }
                }
            }
            (latencies, first_error)
        }));
    }
    tokio::time::sleep(Duration::from_secs(settings.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut first_error = None;
    for worker in workers {
        if let Ok((mut l, e)) = worker.await {
            latencies.append(&mut l);
            first_error = first_error.or(e);
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1000.0
    };
    let messages = accepted.load(Ordering::Relaxed);
    json!({
        "scenario": "mllp",
        "connections": settings.connections,
        "seconds": elapsed,
        "messages_accepted": messages,
        "messages_refused": refused.load(Ordering::Relaxed),
        "messages_per_second": messages as f64 / elapsed,
        "observations_per_second": (messages * OBSERVATIONS_PER_MESSAGE) as f64 / elapsed,
        "ack_p50_ms": pct(50.0), "ack_p95_ms": pct(95.0), "ack_p99_ms": pct(99.0), "ack_max_ms": pct(100.0),
        "first_error": first_error,
    })
}
