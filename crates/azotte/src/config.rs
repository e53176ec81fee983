//! Configuration: embedded defaults, then an optional TOML file, then `AZOTTE_*` environment
//! variables (`AZOTTE_<KEY>_FILE` reads a secret from a file), then command-line flags.
//! Every value is validated at start; an error names the key and where the value came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use azotte_domain::Secret;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, pretty when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Whether this is a production installation (stricter checks) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Development,
    Production,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: Secret<String>,
    pub database_max_connections: u32,
    /// How long a cached API key or customer's grants may be served without reading the
    /// database again (zero: no caching). Changes made through the database are applied sooner:
    /// see docs/decisions/0011-read-cache.md.
    pub read_cache_max_age: Duration,
    /// Entries per read cache (API keys; customers' grants).
    pub read_cache_entries: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub body_limit_bytes: usize,
    pub mode: RunMode,
    pub housekeeping_interval: Duration,
    /// How long `Idempotency-Key` records are kept and replayed (expired ones are purged).
    pub idempotency_retention: Duration,
    pub shutdown_timeout: Duration,
    /// Root secret (64 hex characters) from which the password pepper, API key hashing key and
    /// sealing keys derive. Generated under `data_dir` when absent outside production mode.
    pub secret_key: Option<Secret<String>>,
    /// Platform master key (64 hex characters) wrapping the tenant data keys. Required in
    /// production mode; otherwise generated under `data_dir` when absent.
    pub master_key: Option<Secret<String>>,
    /// Former master keys, still accepted for unwrapping until `azotte keys rotate-master` has
    /// re-wrapped everything under `master_key`.
    pub previous_master_keys: Vec<Secret<String>>,
    /// Where the embedded installation keeps generated files.
    pub data_dir: std::path::PathBuf,
    /// `iss` of issued access tokens.
    pub issuer: String,
    /// Stripe's API (a test server in tests): HTTPS, or HTTP to a loopback address only.
    pub stripe_base_url: String,
    /// How long after an attempt a PSP lookup that finds nothing proves nothing was charged
    /// (PSP search indexes lag); also how long an attempt may stay unrecorded before
    /// reconciliation asks the PSP about it.
    pub reconcile_grace: Duration,
    /// When invoices get their gapless number: `auto` (in the issuing transaction unless the
    /// series is busy, then by the numbering pass) or `deferred` (always by the pass).
    pub invoice_numbering: azotte_service::invoices::Numbering,
    /// How often the numbering pass numbers queued drafts.
    pub invoice_numbering_interval: Duration,
}

/// A configuration error, naming the key and the source of the bad value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key} (from {source_name}): {reason}")]
pub struct ConfigError {
    pub key: String,
    pub source_name: String,
    pub reason: String,
}

struct Key {
    name: &'static str,
    default: &'static str,
    secret: bool,
}

const KEYS: &[Key] = &[
    Key { name: "listen", default: "127.0.0.1:8080", secret: false },
    Key { name: "database_url", default: "sqlite://./azotte-data/azotte.db", secret: true },
    Key { name: "database_max_connections", default: "10", secret: false },
    Key { name: "read_cache_max_age_ms", default: "2000", secret: false },
    Key { name: "read_cache_entries", default: "20000", secret: false },
    Key { name: "log_format", default: "auto", secret: false },
    Key { name: "log_level", default: "info", secret: false },
    Key { name: "body_limit_bytes", default: "1048576", secret: false },
    Key { name: "mode", default: "development", secret: false },
    Key { name: "housekeeping_interval_secs", default: "60", secret: false },
    Key { name: "idempotency_retention_secs", default: "86400", secret: false },
    Key { name: "shutdown_timeout_secs", default: "30", secret: false },
    Key { name: "secret_key", default: "", secret: true },
    Key { name: "master_key", default: "", secret: true },
    Key { name: "previous_master_keys", default: "", secret: true },
    Key { name: "data_dir", default: "./azotte-data", secret: false },
    Key { name: "issuer", default: "azotte", secret: false },
    Key { name: "stripe_base_url", default: "https://api.stripe.com", secret: false },
    Key { name: "reconcile_grace_secs", default: "600", secret: false },
    Key { name: "invoice_numbering", default: "auto", secret: false },
    Key { name: "invoice_numbering_interval_ms", default: "200", secret: false },
];

/// A raw value and where it came from.
struct Raw {
    value: String,
    source: String,
}

impl Config {
    /// Loads the configuration from defaults, `file`, the environment `env` and `overrides`
    /// (command-line flags, as key → value).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&'static str, String)],
    ) -> Result<Config, ConfigError> {
        let mut raw: BTreeMap<&'static str, Raw> = KEYS
            .iter()
            .map(|k| (k.name, Raw { value: k.default.to_owned(), source: "defaults".into() }))
            .collect();

        if let Some(path) = file {
            let source = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| err("--config", &source, e.to_string()))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| err("--config", &source, e.to_string()))?;
            for (k, v) in table {
                let key = KEYS
                    .iter()
                    .find(|key| key.name == k)
                    .ok_or_else(|| err(&k, &source, format!("unknown key; known keys: {}", key_names())))?;
                let value = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(err(
                            &k,
                            &source,
                            format!("expected a string or number, got {}", other.type_str()),
                        ))
                    }
                };
                raw.insert(key.name, Raw { value, source: source.clone() });
            }
        }

        for (var, value) in env {
            let Some(rest) = var.strip_prefix("AZOTTE_") else { continue };
            let lower = rest.to_ascii_lowercase();
            if let Some(key) = KEYS.iter().find(|k| k.name == lower) {
                raw.insert(key.name, Raw { value, source: var });
            } else if let Some(key) =
                lower.strip_suffix("_file").and_then(|n| KEYS.iter().find(|k| k.name == n && k.secret))
            {
                let content = std::fs::read_to_string(&value)
                    .map_err(|e| err(key.name, &var, format!("cannot read {value}: {e}")))?;
                raw.insert(
                    key.name,
                    Raw { value: content.trim_end_matches(['\n', '\r']).to_owned(), source: var },
                );
            } else if !lower.starts_with("test_") {
                eprintln!("azotte: warning: ignoring unknown environment variable {var}");
            }
        }

        for (k, v) in overrides {
            raw.insert(k, Raw { value: v.clone(), source: "command line".into() });
        }

        let get = |k: &'static str| &raw[k];
        let mode = parse(get("mode"), "mode", |v| match v {
            "development" => Ok(RunMode::Development),
            "production" => Ok(RunMode::Production),
            _ => Err("expected development or production".into()),
        })?;
        let master_key = parse(get("master_key"), "master_key", |v| {
            if v.is_empty() && mode == RunMode::Production {
                Err(format!(
                    "required when mode = production (mode from {}): set AZOTTE_MASTER_KEY or \
                     AZOTTE_MASTER_KEY_FILE to 64 hexadecimal characters, e.g. from `openssl rand -hex 32`",
                    get("mode").source
                ))
            } else {
                hex_key(v)
            }
        })?;
        let previous_master_keys = parse(get("previous_master_keys"), "previous_master_keys", |v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .enumerate()
                .map(|(i, k)| match hex_key(k) {
                    Ok(Some(key)) => Ok(key),
                    _ => Err(format!(
                        "entry {} of the comma-separated list: expected 64 hexadecimal characters (32 bytes)",
                        i + 1
                    )),
                })
                .collect::<Result<Vec<_>, String>>()
        })?;
        Ok(Config {
            listen: parse(get("listen"), "listen", |v| {
                v.parse::<SocketAddr>().map_err(|_| "expected an address like 127.0.0.1:8080".into())
            })?,
            database_url: parse(get("database_url"), "database_url", |v| {
                let ok = v.starts_with("sqlite:")
                    || v.starts_with("postgres://")
                    || v.starts_with("postgresql://");
                if ok {
                    Ok(Secret::new(v.to_owned()))
                } else {
                    Err("must start with sqlite:// or postgres://".into())
                }
            })?,
            database_max_connections: parse(
                get("database_max_connections"),
                "database_max_connections",
                |v| range(v, 1, 1000),
            )?,
            read_cache_max_age: Duration::from_millis(parse(
                get("read_cache_max_age_ms"),
                "read_cache_max_age_ms",
                |v| range(v, 0, 60_000),
            )?),
            read_cache_entries: parse(get("read_cache_entries"), "read_cache_entries", |v| {
                range(v, 1, 10_000_000)
            })?,
            log_format: parse(get("log_format"), "log_format", |v| match v {
                "auto" => Ok(LogFormat::Auto),
                "json" => Ok(LogFormat::Json),
                "pretty" => Ok(LogFormat::Pretty),
                _ => Err("expected auto, json or pretty".into()),
            })?,
            log_level: parse(get("log_level"), "log_level", |v| {
                tracing_subscriber::EnvFilter::try_new(v).map(|_| v.to_owned()).map_err(|e| e.to_string())
            })?,
            body_limit_bytes: parse(get("body_limit_bytes"), "body_limit_bytes", |v| {
                range(v, 1024, 100 * 1024 * 1024)
            })?,
            mode,
            housekeeping_interval: Duration::from_secs(parse(
                get("housekeeping_interval_secs"),
                "housekeeping_interval_secs",
                |v| range(v, 1, 86_400),
            )?),
            idempotency_retention: Duration::from_secs(parse(
                get("idempotency_retention_secs"),
                "idempotency_retention_secs",
                |v| range(v, 60, 30 * 86_400),
            )?),
            shutdown_timeout: Duration::from_secs(parse(
                get("shutdown_timeout_secs"),
                "shutdown_timeout_secs",
                |v| range(v, 1, 3_600),
            )?),
            secret_key: parse(get("secret_key"), "secret_key", hex_key)?,
            master_key,
            previous_master_keys,
            data_dir: parse(get("data_dir"), "data_dir", |v| {
                if v.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(std::path::PathBuf::from(v))
                }
            })?,
            issuer: parse(get("issuer"), "issuer", |v| {
                if v.is_empty() || v.len() > 200 {
                    Err("must be 1 to 200 characters".into())
                } else {
                    Ok(v.to_owned())
                }
            })?,
            stripe_base_url: parse(get("stripe_base_url"), "stripe_base_url", |v| {
                let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"];
                if v.starts_with("https://") || loopback.iter().any(|p| v.starts_with(p)) {
                    Ok(v.trim_end_matches('/').to_owned())
                } else {
                    Err("expected an https:// URL (http:// only to a loopback address, for tests)".into())
                }
            })?,
            reconcile_grace: Duration::from_secs(parse(
                get("reconcile_grace_secs"),
                "reconcile_grace_secs",
                |v| range(v, 1, 86_400),
            )?),
            invoice_numbering: parse(get("invoice_numbering"), "invoice_numbering", |v| match v {
                "auto" => Ok(azotte_service::invoices::Numbering::Auto),
                "deferred" => Ok(azotte_service::invoices::Numbering::Deferred),
                _ => Err("expected auto or deferred".into()),
            })?,
            invoice_numbering_interval: Duration::from_millis(parse(
                get("invoice_numbering_interval_ms"),
                "invoice_numbering_interval_ms",
                |v| range(v, 10, 3_600_000),
            )?),
        })
    }
}

/// A 32-byte key as 64 hex characters, or `None` for an empty value. The value is never
/// echoed: it is a secret.
fn hex_key(v: &str) -> Result<Option<Secret<String>>, String> {
    if v.is_empty() {
        Ok(None)
    } else if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(Secret::new(v.to_owned())))
    } else {
        Err("expected 64 hexadecimal characters (32 bytes), e.g. from `openssl rand -hex 32`".into())
    }
}

fn key_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn err(key: &str, source: &str, reason: String) -> ConfigError {
    ConfigError { key: key.to_owned(), source_name: source.to_owned(), reason }
}

fn parse<T>(raw: &Raw, key: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
    f(raw.value.trim()).map_err(|reason| err(key, &raw.source, reason))
}

fn range<T: std::str::FromStr + PartialOrd + std::fmt::Display>(v: &str, lo: T, hi: T) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(format!("expected a whole number from {lo} to {hi}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::load(None, vec![], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url.expose(), "sqlite://./azotte-data/azotte.db");
        assert_eq!(c.body_limit_bytes, 1024 * 1024);
        assert!(c.secret_key.is_none());
        assert_eq!(c.idempotency_retention, Duration::from_secs(24 * 60 * 60));
    }

    #[test]
    fn idempotency_retention_is_bounded() {
        let c = Config::load(None, env(&[("AZOTTE_IDEMPOTENCY_RETENTION_SECS", "3600")]), &[]).unwrap();
        assert_eq!(c.idempotency_retention, Duration::from_secs(3600));
        for bad in ["0", "59", "2592001", "a day"] {
            let e = Config::load(None, env(&[("AZOTTE_IDEMPOTENCY_RETENTION_SECS", bad)]), &[]).unwrap_err();
            assert_eq!(e.key, "idempotency_retention_secs");
        }
    }

    #[test]
    fn secret_key_must_be_32_hex_bytes() {
        let e = Config::load(None, env(&[("AZOTTE_SECRET_KEY", "abc")]), &[]).unwrap_err();
        assert_eq!(e.key, "secret_key");
        assert!(!e.to_string().contains("abc"), "a bad secret is not echoed: {e}");
        let c = Config::load(None, env(&[("AZOTTE_SECRET_KEY", &"ab".repeat(32))]), &[]).unwrap();
        assert!(c.secret_key.is_some());
    }

    #[test]
    fn master_keys_are_hex_and_required_in_production() {
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let c = Config::load(None, vec![], &[]).unwrap();
        assert!(c.master_key.is_none() && c.previous_master_keys.is_empty());
        let e = Config::load(None, env(&[("AZOTTE_MASTER_KEY", "abc")]), &[]).unwrap_err();
        assert_eq!(e.key, "master_key");
        let c = Config::load(
            None,
            env(&[("AZOTTE_MASTER_KEY", &a), ("AZOTTE_PREVIOUS_MASTER_KEYS", &format!("{b}, {a},"))]),
            &[],
        )
        .unwrap();
        assert_eq!(c.master_key.unwrap().expose(), &a);
        assert_eq!(
            c.previous_master_keys.iter().map(|k| k.expose().clone()).collect::<Vec<_>>(),
            [b.clone(), a]
        );
        let e = Config::load(None, env(&[("AZOTTE_PREVIOUS_MASTER_KEYS", &format!("{b},secret"))]), &[])
            .unwrap_err();
        assert_eq!(e.key, "previous_master_keys");
        assert!(e.to_string().contains("entry 2") && !e.to_string().contains("secret"), "{e}");

        let e = Config::load(None, env(&[("AZOTTE_MODE", "production")]), &[]).unwrap_err();
        assert_eq!(e.key, "master_key");
        assert!(e.to_string().contains("required when mode = production (mode from AZOTTE_MODE)"), "{e}");
        let c = Config::load(None, env(&[("AZOTTE_MODE", "production"), ("AZOTTE_MASTER_KEY", &b)]), &[]);
        assert!(c.is_ok());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("azotte.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nbody_limit_bytes = 2048\nlog_format = \"json\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[("AZOTTE_BODY_LIMIT_BYTES", "4096")]), &[]).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.body_limit_bytes, 4096);
        assert_eq!(c.log_format, LogFormat::Json);
        let c = Config::load(Some(&file), vec![], &[("listen", "127.0.0.1:9100".into())]).unwrap();
        assert_eq!(c.listen.port(), 9100);
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("db");
        std::fs::write(&f, "postgres://u:pw@localhost/azotte\n").unwrap();
        let c = Config::load(None, env(&[("AZOTTE_DATABASE_URL_FILE", f.to_str().unwrap())]), &[]).unwrap();
        assert_eq!(c.database_url.expose(), "postgres://u:pw@localhost/azotte");
        assert!(!format!("{c:?}").contains("pw@"));
    }

    #[test]
    fn errors_name_the_key_and_source() {
        let e = Config::load(None, env(&[("AZOTTE_LISTEN", "nonsense")]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: listen (from AZOTTE_LISTEN): expected an address like 127.0.0.1:8080"
        );
        let e = Config::load(None, env(&[("AZOTTE_DATABASE_URL", "mysql://x")]), &[]).unwrap_err();
        assert_eq!(e.key, "database_url");
        let e = Config::load(None, env(&[("AZOTTE_BODY_LIMIT_BYTES", "0")]), &[]).unwrap_err();
        assert_eq!(e.key, "body_limit_bytes");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("azotte.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let e = Config::load(Some(&file), vec![], &[]).unwrap_err();
        assert_eq!(e.key, "lisen");
        assert!(e.to_string().contains("unknown key"));
    }
}
