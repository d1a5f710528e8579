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
    /// Print the OpenAPI document (the content of openapi/openapi.json).
    Openapi,
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
    }
}
