//! Server configuration: command-line flags, `FHIRGATE_*` environment variables and an
//! optional TOML file, in that order of precedence, then the documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/fhirgate.db";
/// Largest request body accepted (a transaction Bundle from an agent can be large).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: only for local development on a loopback address.
    Off,
    /// SMART on FHIR backend services (bearer JWT).
    Smart,
}

/// `fhirgate serve` flags. Every value is optional here so that a value given nowhere on
/// the command line or in the environment can still come from the `--config` file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names, `-` or `_`).
    #[arg(long, env = "FHIRGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on for HTTP [default: 127.0.0.1:8080].
    #[arg(long, env = "FHIRGATE_LISTEN")]
    pub listen: Option<String>,
    /// `sqlite://PATH` (created when missing) or `postgres://…` [default: sqlite://data/fhirgate.db].
    #[arg(long, env = "FHIRGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `smart` (SMART on FHIR access tokens, the default) or `off` (loopback only, for
    /// local development).
    #[arg(long, env = "FHIRGATE_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Public base URL of the FHIR endpoint (e.g. `https://fhir.example.org/fhir`); by
    /// default it is derived from each request's Host header.
    #[arg(long, env = "FHIRGATE_BASE_URL")]
    pub base_url: Option<String>,
    /// HL7 v2 MLLP listener address (off unless given).
    #[arg(long, env = "FHIRGATE_MLLP")]
    pub mllp: Option<String>,
    /// MQTT broker URL to subscribe to (off unless given).
    #[arg(long, env = "FHIRGATE_MQTT")]
    pub mqtt: Option<String>,
    /// DICOM C-STORE SCP address, AE title FHIRGATE (off unless given).
    #[arg(long, env = "FHIRGATE_DICOM")]
    pub dicom: Option<String>,
    /// Comma-separated CIDRs or host names outbound requests may reach although private.
    #[arg(long, env = "FHIRGATE_OUTBOUND_ALLOW")]
    pub outbound_allow: Option<String>,
    /// Largest accepted request body in bytes [default: 16 MiB].
    #[arg(long, env = "FHIRGATE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long failed subscription notifications are retried before the subscription
    /// stays in `error` until its client re-activates it, e.g. `3d`, `12h`, `90s`
    /// [default: 3d].
    #[arg(long, env = "FHIRGATE_SUBSCRIPTION_RETRY_HORIZON")]
    pub subscription_retry_horizon: Option<String>,
    /// How long an instance's claim on a subscription's delivery lasts without renewal;
    /// another instance sharing the database takes over after it [default: 30s].
    #[arg(long, env = "FHIRGATE_DELIVERY_LEASE")]
    pub delivery_lease: Option<String>,
    /// How long delivered subscription events stay available to `$events`, and delivery
    /// attempts in the log [default: 7d]. Undelivered events are kept regardless.
    #[arg(long, env = "FHIRGATE_SUBSCRIPTION_EVENT_RETENTION")]
    pub subscription_event_retention: Option<String>,
    /// An external identity provider whose access tokens are accepted: its issuer (`iss`).
    /// Needs --auth-jwks-url and --auth-audience too.
    #[arg(long, env = "FHIRGATE_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// The external identity provider's JWKS URL (fetched under the --outbound-allow rules).
    #[arg(long, env = "FHIRGATE_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// The audience (`aud`) the external identity provider's tokens must carry.
    #[arg(long, env = "FHIRGATE_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Create a Patient for a device message naming a patient identifier no Patient has
    /// (else such messages are refused and kept as dead letters).
    #[arg(long, env = "FHIRGATE_DEVICE_CREATE_PATIENTS")]
    pub device_create_patients: Option<bool>,
    /// The UTC offset of device times sent without one, e.g. `+01:00` [default: UTC].
    #[arg(long, env = "FHIRGATE_DEVICE_TIME_ZONE")]
    pub device_time_zone: Option<String>,
    /// How far ahead of the server's clock a reading's time may be before the message is
    /// refused, e.g. `5m` [default: 5m].
    #[arg(long, env = "FHIRGATE_DEVICE_FUTURE_TOLERANCE")]
    pub device_future_tolerance: Option<String>,
    /// A device that sent heartbeats and then fell silent this long is marked offline
    /// (`Device.status` inactive, reason `offline`), e.g. `2m` [default: 5m].
    #[arg(long, env = "FHIRGATE_DEVICE_OFFLINE_AFTER")]
    pub device_offline_after: Option<String>,
    /// MQTT topics are `<prefix>/<template>[/…]` [default: fhirgate/ingest].
    #[arg(long, env = "FHIRGATE_MQTT_TOPIC_PREFIX")]
    pub mqtt_topic_prefix: Option<String>,
    /// A folder of JSON mapping templates (`<name>.toml`), besides the shipped ones.
    #[arg(long, env = "FHIRGATE_DEVICE_TEMPLATES")]
    pub device_templates: Option<PathBuf>,
}

/// The same settings as they may appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    #[serde(alias = "database-url")]
    database_url: Option<String>,
    auth: Option<AuthMode>,
    #[serde(alias = "base-url")]
    base_url: Option<String>,
    mllp: Option<String>,
    mqtt: Option<String>,
    dicom: Option<String>,
    #[serde(alias = "outbound-allow")]
    outbound_allow: Option<String>,
    #[serde(alias = "max-body-bytes")]
    max_body_bytes: Option<usize>,
    #[serde(alias = "subscription-retry-horizon")]
    subscription_retry_horizon: Option<String>,
    #[serde(alias = "delivery-lease")]
    delivery_lease: Option<String>,
    #[serde(alias = "subscription-event-retention")]
    subscription_event_retention: Option<String>,
    #[serde(alias = "auth-issuer")]
    auth_issuer: Option<String>,
    #[serde(alias = "auth-jwks-url")]
    auth_jwks_url: Option<String>,
    #[serde(alias = "auth-audience")]
    auth_audience: Option<String>,
    #[serde(alias = "device-create-patients")]
    device_create_patients: Option<bool>,
    #[serde(alias = "device-time-zone")]
    device_time_zone: Option<String>,
    #[serde(alias = "device-future-tolerance")]
    device_future_tolerance: Option<String>,
    #[serde(alias = "device-offline-after")]
    device_offline_after: Option<String>,
    #[serde(alias = "mqtt-topic-prefix")]
    mqtt_topic_prefix: Option<String>,
    #[serde(alias = "device-templates")]
    device_templates: Option<PathBuf>,
}

/// Fully resolved server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: String,
    pub database_url: String,
    pub auth: AuthMode,
    pub base_url: Option<String>,
    pub mllp: Option<String>,
    pub mqtt: Option<String>,
    pub dicom: Option<String>,
    pub outbound_allow: Vec<String>,
    pub max_body_bytes: usize,
    pub subscription_retry_horizon: Duration,
    pub delivery_lease: Duration,
    pub subscription_event_retention: Duration,
    /// An external identity provider whose tokens are accepted.
    pub external_idp: Option<ExternalIdp>,
    pub device_create_patients: bool,
    /// The offset of device times sent without one.
    pub device_time_zone: chrono::FixedOffset,
    pub device_future_tolerance: Duration,
    /// Silence after which a device that sends heartbeats is offline.
    pub device_offline_after: Duration,
    pub mqtt_topic_prefix: String,
    pub device_templates: Option<PathBuf>,
}

/// An identity provider whose access tokens the server accepts besides its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdp {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
}

pub const DEFAULT_RETRY_HORIZON: Duration = Duration::from_secs(3 * 24 * 3600);
pub const DEFAULT_DELIVERY_LEASE: Duration = Duration::from_secs(30);
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MQTT_TOPIC_PREFIX: &str = "fhirgate/ingest";
pub const DEFAULT_DEVICE_FUTURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_DEVICE_OFFLINE_AFTER: Duration = Duration::from_secs(5 * 60);

/// A duration such as `3d`, `12h`, `15m`, `90s` or `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => return Some(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(number.checked_mul(seconds)?))
}

fn duration_setting(
    flag: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--{flag} {text:?} is not a duration such as 3d, 12h, 15m, 90s or 500ms"
                ))
            }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ServeConfig {
    /// Settings for a test or embedded server with everything at its defaults.
    pub fn for_database(database_url: &str) -> Self {
        ServeConfig {
            listen: "127.0.0.1:0".into(),
            database_url: database_url.into(),
            auth: AuthMode::Off,
            base_url: None,
            mllp: None,
            mqtt: None,
            dicom: None,
            outbound_allow: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            subscription_retry_horizon: DEFAULT_RETRY_HORIZON,
            delivery_lease: DEFAULT_DELIVERY_LEASE,
            subscription_event_retention: DEFAULT_EVENT_RETENTION,
            external_idp: None,
            device_create_patients: false,
            device_time_zone: chrono::FixedOffset::east_opt(0).expect("UTC"),
            device_future_tolerance: DEFAULT_DEVICE_FUTURE_TOLERANCE,
            device_offline_after: DEFAULT_DEVICE_OFFLINE_AFTER,
            mqtt_topic_prefix: DEFAULT_MQTT_TOPIC_PREFIX.into(),
            device_templates: None,
        }
    }

    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let config = ServeConfig {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            database_url: args
                .database_url
                .or(file.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            // SMART on FHIR unless told otherwise; `off` only for local development.
            auth: args.auth.or(file.auth).unwrap_or(AuthMode::Smart),
            base_url: args
                .base_url
                .or(file.base_url)
                .map(|url| url.trim_end_matches('/').to_string()),
            mllp: args.mllp.or(file.mllp),
            mqtt: args.mqtt.or(file.mqtt),
            dicom: args.dicom.or(file.dicom),
            outbound_allow: args
                .outbound_allow
                .or(file.outbound_allow)
                .map(|list| {
                    list.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            subscription_retry_horizon: duration_setting(
                "subscription-retry-horizon",
                args.subscription_retry_horizon
                    .or(file.subscription_retry_horizon),
                DEFAULT_RETRY_HORIZON,
            )?,
            delivery_lease: duration_setting(
                "delivery-lease",
                args.delivery_lease.or(file.delivery_lease),
                DEFAULT_DELIVERY_LEASE,
            )?,
            subscription_event_retention: duration_setting(
                "subscription-event-retention",
                args.subscription_event_retention
                    .or(file.subscription_event_retention),
                DEFAULT_EVENT_RETENTION,
            )?,
            external_idp: match (
                args.auth_issuer.or(file.auth_issuer),
                args.auth_jwks_url.or(file.auth_jwks_url),
                args.auth_audience.or(file.auth_audience),
            ) {
                (None, None, None) => None,
                (Some(issuer), Some(jwks_url), Some(audience)) => Some(ExternalIdp {
                    issuer,
                    jwks_url,
                    audience,
                }),
                _ => {
                    return Err(ConfigError::Invalid(
                        "an external identity provider needs --auth-issuer, --auth-jwks-url \
                         and --auth-audience together"
                            .into(),
                    ))
                }
            },
            device_create_patients: args
                .device_create_patients
                .or(file.device_create_patients)
                .unwrap_or(false),
            device_time_zone: match args.device_time_zone.or(file.device_time_zone) {
                None => chrono::FixedOffset::east_opt(0).expect("UTC"),
                Some(text) => crate::devices::hl7time::parse_offset(&text).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "--device-time-zone {text:?} is not a UTC offset such as +01:00, -05:00 or UTC"
                    ))
                })?,
            },
            device_future_tolerance: duration_setting(
                "device-future-tolerance",
                args.device_future_tolerance
                    .or(file.device_future_tolerance),
                DEFAULT_DEVICE_FUTURE_TOLERANCE,
            )?,
            device_offline_after: duration_setting(
                "device-offline-after",
                args.device_offline_after.or(file.device_offline_after),
                DEFAULT_DEVICE_OFFLINE_AFTER,
            )?,
            mqtt_topic_prefix: args
                .mqtt_topic_prefix
                .or(file.mqtt_topic_prefix)
                .unwrap_or_else(|| DEFAULT_MQTT_TOPIC_PREFIX.into()),
            device_templates: args.device_templates.or(file.device_templates),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "--listen {:?} is not an address such as 127.0.0.1:8080",
                self.listen
            ))
        })?;
        if self.auth == AuthMode::Off && !addr.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "--auth off is only allowed on a loopback address, not {addr}: \
                 listen on 127.0.0.1 or enable authentication"
            )));
        }
        // Checked now so that a typo stops the start, not a delivery days later.
        crate::outbound::OutboundPolicy::parse(&self.outbound_allow)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("fhirgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fhirgate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndatabase-url = \"sqlite://x.db\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:7777".into()),
            ..Default::default()
        };
        let config = ServeConfig::resolve(args).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7777");
        assert_eq!(config.database_url, "sqlite://x.db");
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3d"), Some(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("3 days"), None);
        assert_eq!(parse_duration("s"), None);
        let args = ServeArgs {
            subscription_retry_horizon: Some("soon".into()),
            ..Default::default()
        };
        let err = ServeConfig::resolve(args).unwrap_err();
        assert!(
            err.to_string().contains("subscription-retry-horizon"),
            "{err}"
        );
    }

    #[test]
    fn an_identity_provider_needs_all_three_settings() {
        let args = ServeArgs {
            auth_issuer: Some("https://idp.example".into()),
            ..Default::default()
        };
        let err = ServeConfig::resolve(args).unwrap_err();
        assert!(err.to_string().contains("--auth-jwks-url"), "{err}");
    }

    #[test]
    fn auth_off_is_refused_on_a_public_address() {
        let args = ServeArgs {
            listen: Some("0.0.0.0:8080".into()),
            auth: Some(AuthMode::Off),
            ..Default::default()
        };
        let err = ServeConfig::resolve(args).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_reported() {
        let dir = std::env::temp_dir().join(format!("fhirgate-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = ServeConfig::resolve(args).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
