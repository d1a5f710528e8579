//! The `fhirgate` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use fhirgate::config::{AuthMode, ServeArgs, ServeConfig};
use fhirgate::{api, db, server};

#[derive(Parser)]
#[command(
    name = "fhirgate",
    version,
    about = "FHIR R4 interoperability server for connected medical devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate {
        /// `sqlite://PATH` or `postgres://…`
        #[arg(long, env = "FHIRGATE_DATABASE_URL", default_value = fhirgate::config::DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Run the edge agent next to devices: read their ports and folders, queue what they
    /// measure, and upload it to a fhirgate server.
    Agent {
        /// The agent's configuration (server, queue, [auth], [[source]]).
        #[arg(long, env = "FHIRGATE_AGENT_CONFIG")]
        config: std::path::PathBuf,
    },
    /// Print the OpenAPI document (the content of openapi/openapi.json).
    Openapi,
    /// Register SMART backend-services clients.
    Clients {
        /// `sqlite://PATH` or `postgres://…`
        #[arg(long, env = "FHIRGATE_DATABASE_URL", default_value = fhirgate::config::DEFAULT_DATABASE_URL, global = true)]
        database_url: String,
        #[command(subcommand)]
        action: ClientsAction,
    },
}

#[derive(Subcommand)]
enum ClientsAction {
    /// Register a client (or replace its registration).
    Add {
        /// The client id (the `iss` and `sub` of its assertions).
        #[arg(long)]
        id: String,
        /// A file holding the client's public keys as a JWKS.
        #[arg(
            long,
            conflicts_with = "jwks_url",
            required_unless_present = "jwks_url"
        )]
        jwks: Option<std::path::PathBuf>,
        /// A URL serving the client's JWKS (fetched under the --outbound-allow rules).
        #[arg(long)]
        jwks_url: Option<String>,
        /// The scopes the client may be granted, space-separated, e.g. "system/Observation.rs".
        #[arg(long)]
        scope: String,
        /// The one patient the client's tokens are about (for patient/ scopes).
        #[arg(long)]
        patient: Option<String>,
    },
    /// List the registered clients.
    List,
    /// Remove a client.
    Remove {
        #[arg(long)]
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FHIRGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fhirgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fhirgate: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => {
            let config = ServeConfig::resolve(*args).map_err(|e| e.to_string())?;
            if config.auth == AuthMode::Off {
                tracing::warn!(
                    "authentication is OFF (--auth off): anyone who can reach {} can read and write all data",
                    config.listen
                );
            }
            let server = server::start(config).await.map_err(|e| e.to_string())?;
            tracing::info!("fhirgate listening on {}", server.base_url());
            server.run_until_signal().await.map_err(|e| e.to_string())
        }
        Command::Agent { config } => {
            let config = fhirgate::agent::config::AgentConfig::load(&config)?;
            fhirgate::agent::run(config).await
        }
        Command::Migrate { database_url } => {
            let connection = db::connect(&database_url)
                .await
                .map_err(|e| format!("database: {e}"))?;
            db::migrate(&connection)
                .await
                .map_err(|e| format!("migration failed: {e}"))?;
            println!("migrations applied");
            Ok(())
        }
        Command::Openapi => {
            print!("{}", api::openapi::document_json());
            Ok(())
        }
        Command::Clients {
            database_url,
            action,
        } => run_clients(&database_url, action).await,
    }
}

async fn run_clients(database_url: &str, action: ClientsAction) -> Result<(), String> {
    use fhirgate::auth::clients::{self, Client, KeySource};
    let connection = db::connect(database_url)
        .await
        .map_err(|e| format!("database: {e}"))?;
    db::migrate(&connection)
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    match action {
        ClientsAction::Add {
            id,
            jwks,
            jwks_url,
            scope,
            patient,
        } => {
            let keys = match (jwks, jwks_url) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let jwks = serde_json::from_str(&text)
                        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
                    KeySource::Jwks(jwks)
                }
                (None, Some(url)) => KeySource::JwksUrl(url),
                (None, None) => return Err("give --jwks FILE or --jwks-url URL".into()),
            };
            let client = Client {
                id,
                keys,
                scopes: scope,
                patient,
            };
            clients::add(&connection, &client)
                .await
                .map_err(|e| e.message())?;
            println!("client {} registered", client.id);
        }
        ClientsAction::List => {
            for client in clients::list(&connection).await.map_err(|e| e.message())? {
                let keys = match &client.keys {
                    KeySource::Jwks(jwks) => {
                        format!("{} key(s)", jwks["keys"].as_array().map_or(0, Vec::len))
                    }
                    KeySource::JwksUrl(url) => url.clone(),
                };
                let patient = client
                    .patient
                    .map(|p| format!("\tpatient {p}"))
                    .unwrap_or_default();
                println!("{}\t{keys}\t{}{patient}", client.id, client.scopes);
            }
        }
        ClientsAction::Remove { id } => {
            if !clients::remove(&connection, &id)
                .await
                .map_err(|e| e.message())?
            {
                return Err(format!("there is no client {id:?}"));
            }
            println!("client {id} removed");
        }
    }
    let _ = connection.close().await;
    Ok(())
}
