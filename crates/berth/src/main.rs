//! `berth`: one binary, five roles — `server`, `agent`, `dev`, `ingress`, and every other
//! subcommand is the admin CLI. Each long-running role has its module (`server`, `agent`,
//! `dev`, `ingress`; `daemon` for what they share); this file parses the command line and
//! dispatches.

mod agent;
mod daemon;
mod dev;
mod ingress;
mod server;

use std::path::PathBuf;

use anyhow::Context as _;
use berth_server::Server;
use clap::Parser;

use agent::{run_agent, AgentArgs};
use daemon::{expand_config, init_logging, shutdown_signal, LogFormat};
use dev::{run_dev, DevArgs};
use ingress::{run_ingress, IngressArgs};
use server::ServerArgs;

/// Every berth process allocates with mimalloc: under load, glibc's malloc took about a fifth
/// of the leader's CPU (see BENCHMARKS.md). Transparent huge pages are turned off for the
/// process (`no_huge_pages`): with them, mimalloc's heap holds about 10% more memory. The
/// `system-allocator` feature leaves the system's malloc in place, for heap profilers.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Asks Linux not to back this process's memory with transparent huge pages
/// (`PR_SET_THP_DISABLE`, inherited by children). Best effort: an error leaves them as the
/// system has them.
fn no_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    args_override_self = true,
    about = "A self-hosted, Fargate-style container task scheduler"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: berth_cli::GlobalArgs,
    #[command(subcommand)]
    command: Role,
}

#[derive(Debug, clap::Subcommand)]
enum Role {
    /// Run a control node (Raft member, API, agent endpoint, controllers).
    Server(ServerArgs),
    /// Run a node agent that runs tasks through containerd.
    Agent(AgentArgs),
    /// Run a server and an agent in one process, with their own containerd and registry.
    Dev(DevArgs),
    /// Run an ingress: an HTTP/HTTPS and TCP reverse proxy to the healthy tasks of services.
    Ingress(IngressArgs),
    /// (internal) The log driver containerd's shim runs for each container: MAX_BYTES:PATH.
    #[command(hide = true)]
    LogDriver { spec: String },
    /// Print a shell completion script: `source <(berth completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the client's version and the answering server's.
    Version,
    /// (internal) Print the CLI reference in Markdown, as README.md carries it.
    #[command(hide = true)]
    CliReference,
    #[command(flatten)]
    Client(berth_cli::Command),
}

fn main() {
    // First: the heap grows from here on.
    no_huge_pages();
    let args = match expand_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    // The log driver starts with every container (its start is part of the container's):
    // plain threads, no runtime.
    if let Role::LogDriver { spec } = &cli.command {
        std::process::exit(exit_code(log_driver(spec)));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(cli));
    std::process::exit(code);
}

/// `berth log-driver MAX_BYTES:PATH`.
fn log_driver(spec: &str) -> anyhow::Result<i32> {
    let (max, path) = spec
        .split_once(':')
        .and_then(|(max, path)| Some((max.parse::<u64>().ok()?, PathBuf::from(path))))
        .context("log-driver expects MAX_BYTES:PATH")?;
    berth_agent::logfile::run_driver(&path, max)
        .with_context(|| format!("log to {}", path.display()))?;
    Ok(0)
}

async fn run(cli: Cli) -> i32 {
    match cli.command {
        Role::Server(args) => {
            init_logging("info,openraft=warn", args.daemon.log_format);
            let result = async {
                let server = Server::start(args.config()?).await?;
                server.serve(shutdown_signal()).await
            }
            .await;
            exit_code(result.map(|()| 0))
        }
        Role::Agent(args) => {
            init_logging("info,openraft=warn", args.daemon.log_format);
            exit_code(run_agent(args).await.map(|()| 0))
        }
        Role::Dev(args) => {
            init_logging("info,openraft=warn", args.daemon.log_format);
            exit_code(run_dev(args).await.map(|()| 0))
        }
        Role::Ingress(args) => {
            init_logging("info", args.daemon.log_format);
            exit_code(run_ingress(args).await.map(|()| 0))
        }
        Role::LogDriver { spec } => exit_code(log_driver(&spec)),
        Role::Completion { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            0
        }
        Role::CliReference => {
            print!("{}", cli_reference());
            0
        }
        Role::Version => {
            init_logging("warn", LogFormat::Text);
            println!("client: berth {}", env!("CARGO_PKG_VERSION"));
            exit_code(berth_cli::server_version(&cli.global).await.map(|v| {
                println!("server: berth {v}");
                0
            }))
        }
        Role::Client(command) => {
            init_logging("warn", LogFormat::Text);
            exit_code(berth_cli::run(cli.global, command).await)
        }
    }
}

/// The help of every visible subcommand, as Markdown.
fn cli_reference() -> String {
    use clap::CommandFactory as _;
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        let mut subs: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .cloned()
            .collect();
        for sub in &mut subs {
            let full = format!("{path} {}", sub.get_name());
            if sub.has_subcommands() {
                walk(sub, &full, out);
                continue;
            }
            let mut sub = sub.clone().bin_name(full.clone()).term_width(0);
            let help = sub.render_help().to_string();
            out.push_str(&format!(
                "#### `{full}`\n\n```text\n{}\n```\n\n",
                help.trim_end()
            ));
        }
    }
    let mut cmd = Cli::command();
    let mut out = String::new();
    walk(&mut cmd, "berth", &mut out);
    out
}

fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_shipped_config_files_parse() {
        use clap::Parser as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
        for role in ["server", "agent"] {
            let f = dir.join(format!("{role}.toml")).display().to_string();
            let expanded = super::expand_config(args(&["berth", role, "--config", &f]))
                .unwrap_or_else(|e| panic!("{role}: {e:#}"));
            super::Cli::try_parse_from(&expanded).unwrap_or_else(|e| panic!("{role}: {e}"));
        }
    }

    #[test]
    fn a_config_file_becomes_flags_that_the_command_line_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "data-dir = \"/var/lib/berth\"\nservers = \"10.0.0.1:7400,10.0.0.2:7400\"\nattr = [\"zone=a\", \"disk=ssd\"]\ncpu = 2048\ninsecure-registry = []\n",
        )
        .expect("write");
        let f = file.display().to_string();
        let expanded =
            super::expand_config(args(&["berth", "agent", "--config", &f, "--cpu", "512"]))
                .expect("expands");
        let expanded: Vec<String> = expanded
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            expanded,
            [
                "berth",
                "agent",
                "--attr",
                "zone=a",
                "--attr",
                "disk=ssd",
                "--cpu",
                "2048",
                "--data-dir",
                "/var/lib/berth",
                "--servers",
                "10.0.0.1:7400,10.0.0.2:7400",
                "--config",
                &f,
                "--cpu",
                "512",
            ]
        );
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from(&expanded).expect("parses");
        let super::Role::Agent(a) = cli.command else {
            panic!("agent")
        };
        assert_eq!(a.cpu, Some(512), "the command line wins");
        std::fs::write(&file, "cpus = 4\n").expect("write");
        let err = super::expand_config(args(&["berth", "agent", "--config", &f])).unwrap_err();
        assert!(err.to_string().contains("unknown option \"cpus\""), "{err}");
    }

    /// README.md's CLI reference is generated from the clap definitions; keep it current with
    /// `BERTH_UPDATE_GOLDEN=1 cargo test -p berth`.
    #[test]
    fn the_readme_carries_the_current_cli_reference() {
        const START: &str = "<!-- cli-reference:start -->\n";
        const END: &str = "<!-- cli-reference:end -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let (head, rest) = readme
            .split_once(START)
            .expect("README.md has the start marker");
        let (current, tail) = rest.split_once(END).expect("README.md has the end marker");
        let generated = super::cli_reference();
        if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, format!("{head}{START}{generated}{END}{tail}"))
                .expect("write README.md");
            return;
        }
        assert!(
            current == generated,
            "README.md's CLI reference is stale; run BERTH_UPDATE_GOLDEN=1 cargo test -p berth"
        );
    }
}
