//! `quorumkv server` and `quorumkv config dump`: every config key is also a flag.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use quorumkv_node::NodeConfig;

/// Arguments shared by `server` and `config dump`: `--config FILE` and one flag per key.
#[derive(Debug, Clone, Default)]
pub struct ConfigArgs {
    /// The TOML file.
    pub file: Option<PathBuf>,
    /// Keys given as flags, with their text.
    pub flags: Vec<(String, String)>,
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out =
            ConfigArgs { file: m.get_one::<PathBuf>("config").cloned(), flags: Vec::new() };
        for (key, _) in NodeConfig::keys() {
            if let Some(v) = m.get_one::<String>(&key) {
                out.flags.push((key.clone(), v.clone()));
            }
        }
        Ok(out)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML config file (see config/quorumkv.toml); flags and QUORUMKV_* variables override it"),
        );
        for (key, default) in NodeConfig::keys() {
            let flag = key.replace('_', "-");
            let shown = match &default {
                toml::Value::String(s) if s.is_empty() => "unset".to_string(),
                other => other.to_string(),
            };
            let help = format!(
                "config key `{key}` (env QUORUMKV_{}; default {shown})",
                key.to_uppercase()
            );
            cmd = cmd.arg(
                Arg::new(key).long(flag).value_name("VALUE").action(ArgAction::Set).help(help),
            );
        }
        cmd
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl ConfigArgs {
    /// The effective configuration.
    pub fn load(&self) -> anyhow::Result<NodeConfig> {
        let env: BTreeMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("QUORUMKV_")).collect();
        Ok(NodeConfig::load(self.file.as_deref(), &env, &self.flags)?)
    }
}

fn init_logging(cfg: &NodeConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match cfg.log_format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result =
        if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    let _ = result;
}

/// Runs one node until SIGINT/SIGTERM or a fatal storage error.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let cfg = args.load()?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let node = quorumkv_node::start(cfg).await?;
        let node_id = node.config.id;
        let span = tracing::info_span!("node", id = node_id);
        let _enter = span.enter();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let result = tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
            why = node.failed() => Err(anyhow::anyhow!("stopped after a fatal error: {why}")),
        };
        tracing::info!("shutting down");
        node.shutdown();
        result
    })
}

/// `quorumkv config dump`.
pub fn dump(args: ConfigArgs) -> anyhow::Result<()> {
    let cfg = args.load()?;
    print!("{}", cfg.to_toml());
    Ok(())
}
