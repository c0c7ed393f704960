//! Node configuration: one flat set of keys, each settable in the TOML file, as an environment
//! variable `QUORUMKV_<KEY>` and as a flag `--<key-with-dashes>`. Flags override the
//! environment, which overrides the file, which overrides the defaults. A key the file names
//! that does not exist stops start-up with its name.
//!
//! Every key is listed once, in [`NodeConfig`]'s serde form; the flag and environment layers
//! are derived from it, so a new key needs no extra code to become a flag or a variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key that does not exist.
    #[error("unknown config key `{key}` in {source_name}; `quorumkv config dump` lists every key")]
    UnknownKey {
        /// The key.
        key: String,
        /// Where it came from (file, flag).
        source_name: String,
    },
    /// A value that cannot be parsed as the key's type.
    #[error("config key `{key}` from {source_name}: cannot use {value:?} as {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// Where it came from.
        source_name: String,
        /// The text given.
        value: String,
        /// The type expected.
        expected: &'static str,
    },
    /// The values do not make a working node.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The configuration of one node. Field docs are the reference for every key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Human-readable member name (shown by `status` and etcd's MemberList).
    pub name: String,
    /// This node's id: a non-zero integer, unique in the cluster.
    pub id: u64,
    /// Cluster name; a node refuses peers that belong to another cluster.
    pub cluster: String,
    /// Data directory: the MVCC store, snapshots, and the WAL unless `wal_dir` is set.
    pub data_dir: PathBuf,
    /// Separate directory for the write-ahead log (e.g. a faster disk); default `<data_dir>/wal`.
    pub wal_dir: Option<PathBuf>,
    /// Address the client port (etcd v3 gRPC API) listens on.
    pub client_addr: String,
    /// Address the peer port (Raft traffic) listens on.
    pub peer_addr: String,
    /// Address the HTTP port (/livez, /readyz, /metrics, /status) listens on.
    pub http_addr: String,
    /// Client address other nodes and clients should use (default: `client_addr`).
    pub advertise_client_addr: Option<String>,
    /// Peer address other nodes should use (default: `peer_addr`).
    pub advertise_peer_addr: Option<String>,
    /// The initial members as `id=peer_address` (empty: a one-node cluster of this node).
    pub initial_cluster: Vec<String>,
    /// Start empty and wait to be added by `quorumkv admin add-node` instead of bootstrapping.
    pub join: bool,
    /// Length of one logical tick in milliseconds.
    pub tick_ms: u64,
    /// Minimum election timeout in ticks (the maximum is twice this).
    pub election_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// Compact the log every this many applied entries (etcd's `--snapshot-count` default
    /// too): the store is synced and the log dropped behind it; no image is encoded unless a
    /// follower needs one.
    pub snapshot_entries: u64,
    /// Serve linearizable reads from a leader lease instead of a heartbeat round.
    pub lease_reads: bool,
    /// Clock-rate drift bound assumed by lease reads, in ticks.
    pub lease_drift_ticks: u64,
    /// Largest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Largest request accepted on the client port, in bytes.
    pub max_request_bytes: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Most proposals waiting to commit before new writes are refused.
    pub max_inflight_proposals: usize,
    /// Most operations in one transaction.
    pub max_txn_ops: usize,
    /// Log format: `auto` (readable on a terminal, JSON lines otherwise), `text` or `json`.
    pub log_format: String,
    /// Log filter, e.g. `info` or `quorumkv_node=debug,info`.
    pub log_level: String,
    /// Allow the `unsafe_*` settings below (for fault-injection tests only).
    pub unsafe_test_settings: bool,
    /// UNSAFE: answer linearizable reads from local state without ReadIndex.
    pub unsafe_stale_reads: bool,
    /// UNSAFE: offset this node's lease clock by this many milliseconds.
    pub unsafe_clock_offset_ms: i64,
    /// UNSAFE: with `lease_reads`, a leader's read lease never ends, not even when it loses
    /// leadership (shows that the checkers catch a broken lease).
    pub unsafe_lease_never_expires: bool,
    /// UNSAFE: compact the log without syncing the store first (shows that a power cut after
    /// such a compaction is caught).
    pub unsafe_compact_before_store_sync: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "node1".into(),
            id: 1,
            cluster: "quorumkv".into(),
            data_dir: PathBuf::from("quorumkv-data/node1"),
            wal_dir: None,
            client_addr: "127.0.0.1:2379".into(),
            peer_addr: "127.0.0.1:2380".into(),
            http_addr: "127.0.0.1:2381".into(),
            advertise_client_addr: None,
            advertise_peer_addr: None,
            initial_cluster: Vec::new(),
            join: false,
            tick_ms: 10,
            election_ticks: 50,
            heartbeat_ticks: 5,
            snapshot_entries: 100_000,
            lease_reads: false,
            lease_drift_ticks: 10,
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            max_request_bytes: 4 << 20,
            max_connections: 1024,
            max_inflight_proposals: 10_000,
            max_txn_ops: 128,
            log_format: "auto".into(),
            log_level: "info".into(),
            unsafe_test_settings: false,
            unsafe_stale_reads: false,
            unsafe_clock_offset_ms: 0,
            unsafe_lease_never_expires: false,
            unsafe_compact_before_store_sync: false,
        }
    }
}

/// A member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Node id.
    pub id: u64,
    /// Peer address.
    pub peer_addr: String,
}

impl NodeConfig {
    /// Every key with its default value, in file order.
    pub fn keys() -> Vec<(String, toml::Value)> {
        let table = toml::Value::try_from(NodeConfig::default())
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        let mut keys: Vec<(String, toml::Value)> = table.into_iter().collect();
        // Optional keys have no default in the table; list them too.
        for k in ["wal_dir", "advertise_client_addr", "advertise_peer_addr"] {
            if !keys.iter().any(|(n, _)| n == k) {
                keys.push((k.to_string(), toml::Value::String(String::new())));
            }
        }
        keys
    }

    /// Builds the effective configuration from an optional file, the environment and the
    /// flags given as (key, text) pairs.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let keys: BTreeMap<String, toml::Value> = Self::keys().into_iter().collect();
        let mut merged = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() }
            })?;
            for (k, v) in table {
                if !keys.contains_key(&k) {
                    return Err(ConfigError::UnknownKey {
                        key: k,
                        source_name: path.display().to_string(),
                    });
                }
                merged.insert(k, v);
            }
        }
        for (key, default) in &keys {
            let var = format!("QUORUMKV_{}", key.to_uppercase());
            if let Some(text) = env.get(&var) {
                merged.insert(key.clone(), parse_value(key, default, text, &var)?);
            }
        }
        for (key, text) in flags {
            let Some(default) = keys.get(key) else {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    source_name: "the command line".into(),
                });
            };
            let source = format!("--{}", key.replace('_', "-"));
            merged.insert(key.clone(), parse_value(key, default, text, &source)?);
        }
        // Empty strings for optional keys mean "not set".
        merged.retain(|_, v| !matches!(v, toml::Value::String(s) if s.is_empty()));
        let cfg: NodeConfig =
            toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| {
                ConfigError::Parse {
                    path: file.map_or_else(
                        || PathBuf::from("(flags and environment)"),
                        Path::to_path_buf,
                    ),
                    message: e.to_string(),
                }
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return bad("id must be a non-zero integer".into());
        }
        if self.tick_ms == 0 || self.tick_ms > 10_000 {
            return bad(format!("tick_ms must be between 1 and 10000, got {}", self.tick_ms));
        }
        if self.election_ticks <= self.heartbeat_ticks || self.heartbeat_ticks == 0 {
            return bad(
                "election_ticks must exceed heartbeat_ticks, which must be at least 1".into()
            );
        }
        if self.lease_reads && self.lease_drift_ticks >= self.election_ticks {
            return bad("lease_drift_ticks must be below election_ticks".into());
        }
        if self.unsafe_lease_never_expires && !self.lease_reads {
            return bad("unsafe_lease_never_expires needs lease_reads = true".into());
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 || self.max_request_bytes == 0 {
            return bad("size limits must be at least 1 byte".into());
        }
        if self.max_connections == 0 || self.max_inflight_proposals == 0 || self.max_txn_ops == 0 {
            return bad("count limits must be at least 1".into());
        }
        if !matches!(self.log_format.as_str(), "auto" | "text" | "json") {
            return bad(format!(
                "log_format must be auto, text or json, got {:?}",
                self.log_format
            ));
        }
        let unsafe_used = self.unsafe_stale_reads
            || self.unsafe_clock_offset_ms != 0
            || self.unsafe_lease_never_expires
            || self.unsafe_compact_before_store_sync;
        if unsafe_used && !self.unsafe_test_settings {
            return bad("unsafe_* settings need unsafe_test_settings = true (tests only)".into());
        }
        let members = self.initial_members()?;
        if !members.is_empty() && !self.join && !members.iter().any(|m| m.id == self.id) {
            return bad(format!("initial_cluster does not list this node's id {}", self.id));
        }
        Ok(())
    }

    /// The parsed `initial_cluster`; a one-node cluster of this node when empty.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let mut out = Vec::new();
        for item in self.initial_cluster.iter().flat_map(|s| s.split(',')).map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (id, addr) = item.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "initial_cluster entry {item:?} is not id=peer_address"
                ))
            })?;
            let id: u64 = id.trim().parse().ok().filter(|&i| i != 0).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "initial_cluster entry {item:?}: id must be a non-zero integer"
                ))
            })?;
            if out.iter().any(|m: &InitialMember| m.id == id) {
                return Err(ConfigError::Invalid(format!("initial_cluster names id {id} twice")));
            }
            out.push(InitialMember { id, peer_addr: addr.trim().to_string() });
        }
        if out.is_empty() && !self.join {
            out.push(InitialMember { id: self.id, peer_addr: self.advertised_peer_addr() });
        }
        Ok(out)
    }

    /// A 64-bit cluster id derived from the cluster name (FNV-1a), stable across versions.
    pub fn cluster_id(&self) -> u64 {
        self.cluster
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    /// The peer address others should dial.
    pub fn advertised_peer_addr(&self) -> String {
        self.advertise_peer_addr.clone().unwrap_or_else(|| self.peer_addr.clone())
    }

    /// The client address others should use.
    pub fn advertised_client_addr(&self) -> String {
        self.advertise_client_addr.clone().unwrap_or_else(|| self.client_addr.clone())
    }

    /// Directory of the write-ahead log.
    pub fn wal_path(&self) -> PathBuf {
        self.wal_dir.clone().unwrap_or_else(|| self.data_dir.join("wal"))
    }

    /// The effective configuration as TOML (what `quorumkv config dump` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn parse_value(
    key: &str,
    default: &toml::Value,
    text: &str,
    source: &str,
) -> Result<toml::Value, ConfigError> {
    let bad = |expected| ConfigError::BadValue {
        key: key.to_string(),
        source_name: source.to_string(),
        value: text.to_string(),
        expected,
    };
    Ok(match default {
        toml::Value::Boolean(_) => match text.trim() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(bad("a boolean (true or false)")),
        },
        toml::Value::Integer(_) => {
            toml::Value::Integer(text.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Array(_) => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        _ => toml::Value::String(text.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn flags_override_env_override_file_override_defaults() {
        let f = write("name = \"from-file\"\ntick_ms = 20\nelection_ticks = 12\n");
        let e = env(&[("QUORUMKV_TICK_MS", "30"), ("QUORUMKV_NAME", "from-env")]);
        let flags = vec![("name".to_string(), "from-flag".to_string())];
        let c = NodeConfig::load(Some(f.path()), &e, &flags).unwrap();
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.tick_ms, 30);
        assert_eq!(c.election_ticks, 12);
        assert_eq!(c.heartbeat_ticks, NodeConfig::default().heartbeat_ticks);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let f = write("tick_ms = 10\nelectoin_ticks = 5\n");
        let err = NodeConfig::load(Some(f.path()), &env(&[]), &[]).unwrap_err().to_string();
        assert!(err.contains("electoin_ticks"), "{err}");
        let err = NodeConfig::load(None, &env(&[("QUORUMKV_TICK_MS", "fast")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tick_ms") && err.contains("integer"), "{err}");
        let err = NodeConfig::load(None, &env(&[]), &[("nope".into(), "1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let f = write("tick_ms = \"ten\"\n");
        assert!(NodeConfig::load(Some(f.path()), &env(&[]), &[]).is_err());
    }

    #[test]
    fn initial_cluster_is_parsed_and_checked() {
        let flags = vec![
            ("initial_cluster".to_string(), "1=127.0.0.1:1,2=127.0.0.1:2, 3=h:3".to_string()),
            ("id".to_string(), "2".to_string()),
        ];
        let c = NodeConfig::load(None, &env(&[]), &flags).unwrap();
        let m = c.initial_members().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[2], InitialMember { id: 3, peer_addr: "h:3".into() });
        let flags = vec![("initial_cluster".to_string(), "1=a,1=b".to_string())];
        assert!(NodeConfig::load(None, &env(&[]), &flags).is_err());
        let flags = vec![("initial_cluster".to_string(), "2=a,3=b".to_string())];
        assert!(
            NodeConfig::load(None, &env(&[]), &flags)
                .unwrap_err()
                .to_string()
                .contains("does not list")
        );
        let flags = vec![("initial_cluster".to_string(), "x=a".to_string())];
        assert!(NodeConfig::load(None, &env(&[]), &flags).is_err());
    }

    #[test]
    fn the_sample_config_parses_and_names_every_key() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/quorumkv.toml");
        let c = NodeConfig::load(Some(&path), &env(&[]), &[]).unwrap();
        assert_eq!(c, NodeConfig::default(), "the sample shows the defaults");
        let text = std::fs::read_to_string(&path).unwrap();
        for (key, _) in NodeConfig::keys() {
            assert!(
                text.contains(&format!("{key} =")),
                "config/quorumkv.toml does not document `{key}`"
            );
        }
    }

    #[test]
    fn unsafe_settings_need_the_test_switch_and_dump_round_trips() {
        let flags = vec![("unsafe_stale_reads".to_string(), "true".to_string())];
        assert!(NodeConfig::load(None, &env(&[]), &flags).is_err());
        let flags = vec![
            ("unsafe_stale_reads".to_string(), "true".to_string()),
            ("unsafe_test_settings".to_string(), "true".to_string()),
        ];
        let c = NodeConfig::load(None, &env(&[]), &flags).unwrap();
        let f = write(&c.to_toml());
        assert_eq!(NodeConfig::load(Some(f.path()), &env(&[]), &[]).unwrap(), c);
        assert_ne!(NodeConfig::default().cluster_id(), 0);
    }
}
