//! `mqnamesrv` settings. TOML keys are RocketMQ-style camelCase (`listenPort`), every key
//! optional; unknown keys are an error so that a typo does not silently keep a default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::route_table::TableLimits;

/// Default name server port, as in RocketMQ.
pub const LISTEN_PORT_DEFAULT: u16 = 9876;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamesrvConfig {
    pub listen_port: u16,
    pub bind_address: IpAddr,
    /// A node that has not heartbeated for this long is dropped from every answer.
    /// Default: 3 × the brokers' 1 s heartbeat.
    pub broker_expiry_ms: u64,
    /// How often expired nodes are removed from memory (reads filter by age regardless).
    pub expiry_sweep_interval_ms: u64,
    /// Upper bound on registered nodes (all clusters together).
    pub brokers_max: usize,
    /// Upper bound on topics one node may report.
    pub topics_per_broker_max: usize,
    /// Written at startup (our pid), removed at clean exit; read by `mqshutdown namesrv`.
    pub pid_file: Option<std::path::PathBuf>,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        let limits = TableLimits::default();
        NamesrvConfig {
            listen_port: LISTEN_PORT_DEFAULT,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            broker_expiry_ms: 3_000,
            expiry_sweep_interval_ms: 500,
            brokers_max: limits.brokers_max,
            topics_per_broker_max: limits.topics_per_broker_max,
            pid_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parse {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Expiry below this would drop healthy brokers between two 1 s heartbeats.
const BROKER_EXPIRY_MS_MIN: u64 = 100;
const BROKER_EXPIRY_MS_MAX: u64 = 600_000;

impl NamesrvConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.display().to_string(), source },
            other => other,
        })
    }

    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: NamesrvConfig = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: "<string>".into(), source: Box::new(source) })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(BROKER_EXPIRY_MS_MIN..=BROKER_EXPIRY_MS_MAX).contains(&self.broker_expiry_ms) {
            return Err(ConfigError::Invalid(format!(
                "brokerExpiryMs = {} is outside [{BROKER_EXPIRY_MS_MIN}, {BROKER_EXPIRY_MS_MAX}]",
                self.broker_expiry_ms
            )));
        }
        if self.expiry_sweep_interval_ms == 0 || self.expiry_sweep_interval_ms > self.broker_expiry_ms {
            return Err(ConfigError::Invalid(format!(
                "expirySweepIntervalMs = {} must be in [1, brokerExpiryMs = {}]",
                self.expiry_sweep_interval_ms, self.broker_expiry_ms
            )));
        }
        if self.brokers_max == 0 || self.topics_per_broker_max == 0 {
            return Err(ConfigError::Invalid("brokersMax and topicsPerBrokerMax must be at least 1".into()));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.listen_port)
    }

    pub fn broker_expiry(&self) -> Duration {
        Duration::from_millis(self.broker_expiry_ms)
    }

    pub fn limits(&self) -> TableLimits {
        TableLimits {
            brokers_max: self.brokers_max,
            topics_per_broker_max: self.topics_per_broker_max,
            ..TableLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_defaults() {
        let config = NamesrvConfig::from_toml_str("").unwrap();
        assert_eq!(config, NamesrvConfig::default());
        assert_eq!(config.listen_addr().to_string(), "127.0.0.1:9876");
    }

    #[test]
    fn camel_case_keys_are_read() {
        let config =
            NamesrvConfig::from_toml_str("listenPort = 19876\nbindAddress = \"0.0.0.0\"\nbrokerExpiryMs = 1500\n")
                .unwrap();
        assert_eq!(config.listen_port, 19876);
        assert_eq!(config.listen_addr().to_string(), "0.0.0.0:19876");
        assert_eq!(config.broker_expiry(), Duration::from_millis(1500));
    }

    #[test]
    fn unknown_key_and_bad_expiry_are_rejected() {
        let err = NamesrvConfig::from_toml_str("listenPortt = 1\n").unwrap_err();
        assert!(err.to_string().contains("listenPortt"), "{err}");
        let err = NamesrvConfig::from_toml_str("brokerExpiryMs = 5\n").unwrap_err();
        assert!(err.to_string().contains("brokerExpiryMs"), "{err}");
    }
}
