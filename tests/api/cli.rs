//! The `fhirgate` binary: defaults, configuration sources, migrations and graceful
//! shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fhirgate-cli-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn fhirgate(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    command
        .current_dir(dir)
        .env_remove("FHIRGATE_DATABASE_URL")
        .env_remove("FHIRGATE_LISTEN")
        .env("FHIRGATE_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

/// Starts `fhirgate serve` and returns it with the address it reports.
pub(super) fn serve(mut command: Command) -> (Child, String) {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn fhirgate serve");
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on http://".len()..];
                let addr = rest.split('/').next().unwrap_or_default().to_string();
                let _ = sender.send(addr);
            }
        }
    });
    let addr = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("server reports its address");
    (child, addr)
}

fn http(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "fhirgate did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_creates_the_default_sqlite_database_and_stops_gracefully() {
    let dir = temp_dir("default");
    let mut command = fhirgate(&dir);
    command.args(["serve", "--listen", "127.0.0.1:0", "--auth", "off"]);
    let (mut child, addr) = serve(command);
    assert!(
        dir.join("data/fhirgate.db").exists(),
        "default database file"
    );

    // An in-flight request: headers and half the body now, the rest after SIGTERM.
    let body = r#"{"resourceType":"Patient","gender":"female"}"#;
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        &body[..10]
    )
    .unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    terminate(&child);
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&body.as_bytes()[10..]).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    let status = wait_for_exit(&mut child);
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    assert!(TcpStream::connect(&addr).is_err(), "no longer listening");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn config_file_and_environment_are_used() {
    let dir = temp_dir("config");
    std::fs::write(
        dir.join("fhirgate.toml"),
        "listen = \"127.0.0.1:0\"\ndatabase-url = \"sqlite://from-file/db.sqlite\"\n",
    )
    .unwrap();
    // The environment overrides the file.
    let mut command = fhirgate(&dir);
    command
        .args(["serve", "--config", "fhirgate.toml"])
        .env("FHIRGATE_DATABASE_URL", "sqlite://from-env/db.sqlite");
    let (mut child, addr) = serve(command);
    assert!(dir.join("from-env/db.sqlite").exists());
    assert!(!dir.join("from-file").exists());
    let response = http(
        &addr,
        &format!("GET /fhir/metadata HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Authentication is on by default: data needs a token.
    let response = http(
        &addr,
        &format!("GET /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("www-authenticate: Bearer"), "{response}");
    terminate(&child);
    assert!(wait_for_exit(&mut child).success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn auth_off_is_refused_on_a_non_loopback_address() {
    let dir = temp_dir("auth");
    let output = fhirgate(&dir)
        .args(["serve", "--listen", "0.0.0.0:0", "--auth", "off"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_malformed_outbound_allow_list_stops_the_start() {
    let dir = temp_dir("outbound");
    let output = fhirgate(&dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--outbound-allow", "127.0.0.1,10.0.0.0/8,not a host!"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--outbound-allow") && stderr.contains("not a host!"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn migrate_is_safe_to_run_twice() {
    let dir = temp_dir("migrate");
    for _ in 0..2 {
        let output = fhirgate(&dir)
            .args(["migrate", "--database-url", "sqlite://nested/folder/m.db"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(dir.join("nested/folder/m.db").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn clients_are_registered_listed_and_removed() {
    let dir = temp_dir("clients");
    let url = format!("sqlite://{}/fhirgate.db", dir.display());
    let jwks = dir.join("ehr.jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", "alg": "ES384",
            "x": "mPUKT_bAWGHIhg0TpjjqVsP1rXWQu_vwVOHHtNkdYoA9GlSEX3cEBxx91ufg0pWe",
            "y": "jRbvj5FGXWvCdNLKL-HgmsDxc2bwfmHfk4DSfGXeuSCmdMaD1lCklsQi9OeNe-wg"}]}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = fhirgate(&dir)
            .args(["clients", "--database-url", &url])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let jwks_path = jwks.display().to_string();
    let (ok, out, err) = run(&[
        "add",
        "--id",
        "ehr-1",
        "--jwks",
        &jwks_path,
        "--scope",
        "system/Observation.rs system/Device.rs",
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = run(&[
        "add",
        "--id",
        "cuff-7",
        "--jwks-url",
        "https://keys.example.org/jwks.json",
        "--scope",
        "patient/Observation.cruds",
        "--patient",
        "p-42",
    ]);
    assert!(ok);
    let (ok, out_list, _) = run(&["list"]);
    assert!(ok);
    assert!(
        out_list.contains("ehr-1\t1 key(s)\tsystem/Observation.rs system/Device.rs"),
        "{out_list}"
    );
    assert!(
        out_list.contains(
            "cuff-7\thttps://keys.example.org/jwks.json\tpatient/Observation.cruds\tpatient p-42"
        ),
        "{out_list}{out}"
    );
    let (ok, _, err) = run(&[
        "add",
        "--id",
        "bad",
        "--jwks",
        &jwks_path,
        "--scope",
        "system/Observation.rsx",
    ]);
    assert!(!ok);
    assert!(err.contains("rsx"), "{err}");
    let (ok, _, _) = run(&["remove", "--id", "ehr-1"]);
    assert!(ok);
    let (ok, _, err) = run(&["remove", "--id", "ehr-1"]);
    assert!(!ok);
    assert!(err.contains("no client"), "{err}");
    let (_, out_list, _) = run(&["list"]);
    assert!(!out_list.contains("ehr-1"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_agent_explains_a_bad_configuration_and_stops_on_sigterm() {
    let dir = temp_dir("agent");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "server = \"ftp://fhir.example\"\nqueue = \"q.db\"\n").unwrap();
    let output = fhirgate(&dir)
        .args(["agent", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must be the FHIR base URL"), "{stderr}");

    // A good one runs (the server it names may be away) until the service manager stops it.
    let good = dir.join("agent.toml");
    std::fs::write(
        &good,
        format!(
            "server = \"http://127.0.0.1:9/fhir\"\nqueue = \"{}\"\n",
            dir.join("queue.db").display()
        ),
    )
    .unwrap();
    let mut child = fhirgate(&dir)
        .args(["agent", "--config", good.to_str().unwrap()])
        .spawn()
        .unwrap();
    let queue = dir.join("queue.db");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !queue.exists() {
        assert!(
            Instant::now() < deadline,
            "the agent did not open its queue"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent keeps running"
    );
    terminate(&child);
    assert!(wait_for_exit(&mut child).success());
}
