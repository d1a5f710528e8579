//! Load generator for any FHIR server: N concurrent clients run a scenario for a while
//! and the tool reports throughput and latency percentiles.
//!
//! ```text
//! fhirgate-load --base http://127.0.0.1:8080/fhir --clients 32 --seconds 20 --scenario create
//! # repeatable data set: 1,000 patients, 10 devices, 5 codes, 1,000,000 Observations
//! fhirgate-load --base http://127.0.0.1:8080/fhir --seed-observations 1000000 --patients 1000
//! # any GET, {patient} replaced by a random seeded patient number
//! fhirgate-load --scenario query --query 'Observation?patient=Patient/bench-p{patient}&_count=50'
//! # subscription notifications: 100 rest-hook subscriptions, 1,000 writes/s, 30 s
//! fhirgate-load --scenario notify --subscriptions 100 --rate 1000 --seconds 30
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

#[path = "load/mllp.rs"]
mod mllp;
#[path = "load/notify.rs"]
mod notify;
use serde_json::json;

#[derive(Parser, Clone)]
#[command(
    name = "fhirgate-load",
    about = "FHIR load generator: throughput and p50/p95/p99"
)]
struct Args {
    /// FHIR base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    base: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to run, in seconds (after the warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up seconds not counted in the results.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, value_enum, default_value_t = Scenario::Create)]
    scenario: Scenario,
    /// Bearer token to send, if the server requires one.
    #[arg(long, env = "FHIRGATE_LOAD_TOKEN")]
    token: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Store a repeatable data set of this many Observations first (then exit unless a
    /// scenario is also asked for with --then-run).
    #[arg(long)]
    seed_observations: Option<u64>,
    /// Patients of the seeded data set (`Patient/bench-p0` …).
    #[arg(long, default_value_t = 1000)]
    patients: u64,
    /// Run the scenario after seeding.
    #[arg(long)]
    then_run: bool,
    /// The GET of the `query` scenario, relative to the base; `{patient}` is replaced by
    /// a random patient number below --patients.
    #[arg(
        long,
        default_value = "Observation?patient=Patient/bench-p{patient}&_count=50"
    )]
    query: String,
    /// `notify`: subscriptions to create (one patient each).
    #[arg(long, default_value_t = 100)]
    subscriptions: u64,
    /// `notify`: Observation writes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// `mllp`: the server's MLLP listener address.
    #[arg(long, default_value = "127.0.0.1:2575")]
    mllp: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST single vital-sign Observations.
    Create,
    /// GET Observations by id (created first).
    Read,
    /// Search the Observations of one patient by code, newest first, 10 per page.
    Search,
    /// GET the --query URL.
    Query,
    /// Write-to-receipt latency of subscription notifications (see `load/notify.rs`).
    Notify,
    /// PCD-01 messages over MLLP, `--clients` connections (see `load/mllp.rs`).
    Mllp,
}

struct Totals {
    ok: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    if args.scenario == Scenario::Mllp {
        let report = mllp::run(&mllp::Settings {
            address: args.mllp.clone(),
            connections: args.clients.max(1),
            seconds: args.seconds,
            warmup: args.warmup,
        })
        .await;
        println!("{report}");
        return;
    }
    if args.scenario == Scenario::Notify {
        let report = notify::run(
            &client,
            &notify::Settings {
                base: args.base.clone(),
                subscriptions: args.subscriptions,
                rate: args.rate,
                seconds: args.seconds,
                max_in_flight: args.clients.max(1),
                token: args.token.clone(),
            },
        )
        .await;
        println!("{report}");
        return;
    }
    if let Some(observations) = args.seed_observations {
        seed(&client, &args, observations).await;
        if !args.then_run {
            return;
        }
    }
    let ids = if args.scenario == Scenario::Read {
        seed_reads(&client, &args).await
    } else {
        Vec::new()
    };
    let ids = Arc::new(ids);
    let totals = Arc::new(Totals {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..args.clients {
        let (client, args, totals, measuring, stop, ids) = (
            client.clone(),
            args.clone(),
            totals.clone(),
            measuring.clone(),
            stop.clone(),
            ids.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(16_384);
            let mut n: u64 = 0;
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let started = Instant::now();
                let result = match args.scenario {
                    Scenario::Create => create(&client, &args, worker, n).await,
                    Scenario::Read => read(&client, &args, &ids, worker, n).await,
                    Scenario::Search => search(&client, &args, worker, n).await,
                    Scenario::Query | Scenario::Notify | Scenario::Mllp => {
                        query(&client, &args, worker, n).await
                    }
                };
                let elapsed = started.elapsed();
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(()) => {
                        totals.ok.fetch_add(1, Ordering::Relaxed);
                        latencies.push(elapsed.as_micros() as u64);
                    }
                    Err(error) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(error);
                    }
                }
            }
            (latencies, first_error)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut first_error = None;
    for worker in workers {
        if let Ok((mut l, e)) = worker.await {
            latencies.append(&mut l);
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    latencies.sort_unstable();
    let ok = totals.ok.load(Ordering::Relaxed);
    let errors = totals.errors.load(Ordering::Relaxed);
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1000.0
    };
    let throughput = ok as f64 / elapsed;
    if args.json {
        println!(
            "{}",
            json!({
                "scenario": match args.scenario {
                    Scenario::Create => "create",
                    Scenario::Read => "read",
                    Scenario::Search => "search",
                    Scenario::Query => "query",
                    Scenario::Notify => "notify",
                    Scenario::Mllp => "mllp",
                },
                "clients": args.clients, "seconds": elapsed, "ok": ok, "errors": errors,
                "per_second": throughput, "p50_ms": pct(50.0), "p95_ms": pct(95.0), "p99_ms": pct(99.0),
                "max_ms": pct(100.0)
            })
        );
    } else {
        println!(
            "{ok} ok, {errors} errors in {elapsed:.1} s with {} clients: {throughput:.0}/s; \
             latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            args.clients,
            pct(50.0),
            pct(95.0),
            pct(99.0),
            pct(100.0)
        );
    }
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
    }
    if ok == 0 {
        std::process::exit(1);
    }
}

fn authorized(builder: reqwest::RequestBuilder, args: &Args) -> reqwest::RequestBuilder {
    match &args.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

fn observation(worker: usize, n: u64) -> serde_json::Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [
            {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
            {"system": "urn:iso:std:iso:11073:10101", "code": "147842", "display": "MDC_ECG_HEART_RATE"}
        ]},
        "subject": {"reference": format!("Patient/load-{}", worker % 8)},
        "device": {"reference": format!("Device/monitor-{worker}")},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {"value": 60 + (n % 40), "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

async fn create(
    client: &reqwest::Client,
    args: &Args,
    worker: usize,
    n: u64,
) -> Result<(), String> {
    let response = authorized(client.post(format!("{}/Observation", args.base)), args)
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(observation(worker, n).to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().as_u16() == 201 {
        Ok(())
    } else {
        Err(format!(
            "{} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ))
    }
}

async fn seed_reads(client: &reqwest::Client, args: &Args) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..200 {
        let response = authorized(client.post(format!("{}/Observation", args.base)), args)
            .header("content-type", "application/fhir+json")
            .body(observation(0, n).to_string())
            .send()
            .await
            .expect("seed create");
        let body: serde_json::Value = response.json().await.expect("seed body");
        ids.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    ids
}

async fn read(
    client: &reqwest::Client,
    args: &Args,
    ids: &[String],
    worker: usize,
    n: u64,
) -> Result<(), String> {
    let id = &ids[(worker + n as usize) % ids.len()];
    get_ok(client, args, &format!("Observation/{id}")).await
}

async fn search(
    client: &reqwest::Client,
    args: &Args,
    worker: usize,
    n: u64,
) -> Result<(), String> {
    let patient = (worker + n as usize) % 8;
    get_ok(
        client,
        args,
        &format!(
            "Observation?subject=Patient/load-{patient}&code=http://loinc.org|8867-4&_sort=-date&_count=10"
        ),
    )
    .await
}

async fn query(client: &reqwest::Client, args: &Args, worker: usize, n: u64) -> Result<(), String> {
    let patient = spread(worker as u64 * 7919 + n) % args.patients.max(1);
    get_ok(
        client,
        args,
        &args.query.replace("{patient}", &patient.to_string()),
    )
    .await
}

/// GETs `path` below the base and reads the whole body; anything but 200 is an error.
async fn get_ok(client: &reqwest::Client, args: &Args, path: &str) -> Result<(), String> {
    let response = authorized(client.get(format!("{}/{path}", args.base)), args)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if status.as_u16() == 200 {
        Ok(())
    } else {
        Err(format!("{status} {}", String::from_utf8_lossy(&body)))
    }
}

/// A cheap deterministic scramble, so runs are repeatable but not sequential.
fn spread(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 17
}

/// The seeded codes: (LOINC code, display, UCUM unit, base value).
const SEED_CODES: &[(&str, &str, &str, u64)] = &[
    ("8867-4", "Heart rate", "/min", 60),
    ("2708-6", "Oxygen saturation in Arterial blood", "%", 90),
    ("9279-1", "Respiratory rate", "/min", 12),
    ("8310-5", "Body temperature", "Cel", 36),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100),
];
const SEED_DEVICES: u64 = 10;
/// Seeded Observations start here and are a minute apart per patient.
const SEED_START_SECONDS: i64 = 1_709_251_200; // 2024-03-01T00:00:00Z

/// Stores patients, devices and Observations through transaction Bundles of 250 entries,
/// `--clients` at a time. Ids are fixed (`bench-p7`, `bench-d3`, conditional creates on
/// Observation identifiers), so seeding twice stores nothing new.
async fn seed(client: &reqwest::Client, args: &Args, observations: u64) {
    let started = Instant::now();
    let mut fixed = Vec::new();
    for p in 0..args.patients {
        fixed.push(json!({
            "resource": {"resourceType": "Patient", "id": format!("bench-p{p}"),
                "identifier": [{"system": "http://fhirgate.example/bench", "value": format!("p{p}")}],
                "name": [{"family": format!("Bench{p}")}]},
            "request": {"method": "PUT", "url": format!("Patient/bench-p{p}")}
        }));
    }
    for d in 0..SEED_DEVICES {
        fixed.push(json!({
            "resource": {"resourceType": "Device", "id": format!("bench-d{d}"), "serialNumber": format!("SN{d}")},
            "request": {"method": "PUT", "url": format!("Device/bench-d{d}")}
        }));
    }
    for chunk in fixed.chunks(250) {
        post_bundle(client, args, chunk.to_vec()).await;
    }
    let batches: Vec<(u64, u64)> = (0..observations)
        .step_by(250)
        .map(|start| (start, (start + 250).min(observations)))
        .collect();
    let next = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(batches);
    let mut workers = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (client, next, batches) = (client.clone(), next.clone(), batches.clone());
        let args = args.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&(from, to)) = batches.get(i) else {
                    break;
                };
                let entries = (from..to)
                    .map(|k| seed_observation(k, args.patients))
                    .collect();
                post_bundle(&client, &args, entries).await;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    eprintln!(
        "seeded {} patients, {SEED_DEVICES} devices and {observations} Observations in {:.0} s",
        args.patients,
        started.elapsed().as_secs_f64()
    );
}

fn seed_observation(k: u64, patients: u64) -> serde_json::Value {
    let patients = patients.max(1);
    let patient = k % patients;
    let (code, display, unit, base) = SEED_CODES[(spread(k) % SEED_CODES.len() as u64) as usize];
    let minute = (k / patients) as i64;
    let effective = chrono::DateTime::from_timestamp(SEED_START_SECONDS + minute * 60, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "resource": {
            "resourceType": "Observation",
            "identifier": [{"system": "http://fhirgate.example/bench", "value": format!("o{k}")}],
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": format!("Patient/bench-p{patient}")},
            "device": {"reference": format!("Device/bench-d{}", k % SEED_DEVICES)},
            "effectiveDateTime": effective,
            "valueQuantity": {"value": base + spread(k) % 20, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        },
        "request": {"method": "POST", "url": "Observation",
            "ifNoneExist": format!("identifier=http://fhirgate.example/bench|o{k}")}
    })
}

async fn post_bundle(client: &reqwest::Client, args: &Args, entries: Vec<serde_json::Value>) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    for attempt in 0..5 {
        let result = authorized(client.post(&args.base), args)
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .body(bundle.to_string())
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                let status = response.status();
                eprintln!(
                    "seed bundle failed: {status} {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Err(err) => eprintln!("seed bundle failed: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    eprintln!("giving up on a seed bundle");
    std::process::exit(1);
}
