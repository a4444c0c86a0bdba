//! What the long-running roles share: their `--config` file and log format, logging, and the
//! signals that stop them.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::Cli;

/// Options of the long-running roles.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DaemonArgs {
    /// A TOML file of options: keys are the long flag names (`data-dir = "/var/lib/berth"`,
    /// `attr = ["zone=a"]`, `bootstrap = true`); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// How log lines are written to stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

pub(crate) fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `berth ROLE --config FILE …`: the file's options become flags placed before the command
/// line's own (with `args_override_self`, later flags win). Keys must be the role's long flags.
pub(crate) fn expand_config(
    args: Vec<std::ffi::OsString>,
) -> anyhow::Result<Vec<std::ffi::OsString>> {
    use clap::CommandFactory as _;
    let strings: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(role_at) = strings
        .iter()
        .position(|a| matches!(a.as_str(), "server" | "agent" | "dev"))
    else {
        return Ok(args);
    };
    let file = strings[role_at..].iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            strings.get(role_at + i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(file) = file else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read config file {file}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("config file {file}: {e}"))?;
    let cmd = Cli::command();
    let role = cmd
        .find_subcommand(&strings[role_at])
        .context("role subcommand")?;
    let known: Vec<&str> = role.get_arguments().filter_map(|a| a.get_long()).collect();
    let mut extra: Vec<String> = Vec::new();
    for (key, value) in table {
        if key == "config" || !known.contains(&key.as_str()) {
            anyhow::bail!(
                "config file {file}: unknown option {key:?}; use the long flag names of `berth {} --help`",
                strings[role_at]
            );
        }
        let flag = format!("--{key}");
        let scalar = |v: &toml::Value| -> anyhow::Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    anyhow::bail!("config file {file}: {key} = {other} is not a string or number")
                }
            })
        };
        match &value {
            toml::Value::Boolean(true) => extra.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    extra.push(flag.clone());
                    extra.push(scalar(item)?);
                }
            }
            other => {
                extra.push(flag);
                extra.push(scalar(other)?);
            }
        }
    }
    let mut out: Vec<std::ffi::OsString> = args[..=role_at].to_vec();
    out.extend(extra.into_iter().map(Into::into));
    out.extend(args[role_at + 1..].iter().cloned());
    Ok(out)
}

pub(crate) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("install SIGTERM handler: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
