//! The `consolegate` command: parses arguments and calls into the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use consolegate::cli::Context;
use consolegate::config::{Config, LogFormat};
use consolegate::store::ConnectionFilter;
use consolegate::store::LifecycleState;
use tokio_util::sync::CancellationToken;

/// SSH serial-console gateway for virtual machines.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The gateway config file.
    #[arg(long, short, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Log format, overriding the config's [log] format.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Validate a config file; exits non-zero on any problem.
    Check,
    /// Show the running gateway's consoles and sessions (through its admin socket).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the running gateway re-read its config file (as SIGHUP does).
    Reload,
    /// Run the runbook's checks in order; exits non-zero if any fails.
    Doctor {
        /// Check only this instance's console and VNC target.
        #[arg(long)]
        instance: Option<String>,
        /// Check this console connection's record.
        #[arg(long)]
        connection: Option<String>,
        /// With --connection: whether this public key would be accepted.
        #[arg(long, requires = "connection")]
        public_key_file: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage console connections.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// The fleet of gateway nodes sharing this config's store.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Show the audit trail (attach, detach, force, break, refused attempts).
    Audit {
        /// Only this console connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// The newest this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the nodes: alive, missing (no heartbeat within the node
    /// timeout) or left, with when each was last seen.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConnectionCommand {
    /// Register a public key for an instance's console; prints the connection.
    Create {
        /// Instance id (as in gateway.toml).
        #[arg(long)]
        instance: String,
        /// OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).
        #[arg(long)]
        public_key_file: PathBuf,
        /// Free-form tag, key=value (repeatable).
        #[arg(long = "freeform-tag")]
        freeform_tags: Vec<String>,
    },
    /// List console connections.
    List {
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only this compartment.
        #[arg(long)]
        compartment: Option<String>,
        /// Only this lifecycle state (ACTIVE, DELETED, ...).
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one console connection.
    Get {
        /// Connection id.
        id: String,
    },
    /// Delete a console connection; its live sessions end.
    Delete {
        /// Connection id.
        id: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand; its exit status is failure only for `doctor` findings.
async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    // `doctor` reports a broken config as one of its findings; the others need one.
    let load = || Config::load(&cli.config);
    match cli.command {
        Command::Doctor {
            instance,
            connection,
            public_key_file,
            json,
        } => {
            let request = consolegate::ops::doctor::DoctorRequest {
                instance,
                connection,
                public_key: public_key_file.as_deref().map(read_key_file).transpose()?,
            };
            let report = consolegate::ops::doctor::run(&cli.config, &request).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            return Ok(if report.failed() {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            });
        }
        // The running gateway judges the file (and says so in /readyz).
        Command::Reload => {
            let data_dir = Config::data_dir_of(&cli.config);
            let outcome = consolegate::ops::admin::reload(&data_dir).await?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            if !outcome.ok {
                anyhow::bail!("{}", outcome.message);
            }
        }
        command => run_with_config(load()?, command).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run_with_config(config: Config, command: Command) -> anyhow::Result<()> {
    match command {
        // Handled by `run` before any config is loaded.
        Command::Doctor { .. } | Command::Reload => Ok(()),
        Command::Check => {
            let users = consolegate::api::auth::ApiUsers::from_config(&config.api_users)
                .map_err(anyhow::Error::msg)?;
            consolegate::api::tls::Tls::load(&config.api)?;
            print!("{}", consolegate::cli::summarize(&config));
            let mut key_ids: Vec<&str> = users.key_ids().collect();
            key_ids.sort_unstable();
            for key_id in key_ids {
                println!("  API key {key_id}");
            }
            Ok(())
        }
        Command::Serve { log_format } => serve(config, log_format).await,
        Command::Status { json } => {
            let status = consolegate::ops::admin::status(&config.data_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", consolegate::ops::status::table(&status));
            }
            Ok(())
        }
        Command::Connection(command) => connection(config, command).await,
        Command::Cluster(ClusterCommand::Status { json }) => {
            let (store, _) = consolegate::gateway::open_state(&config).await?;
            let nodes = store.list_nodes().await?;
            let leases = store.list_leases().await?;
            store.close().await;
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            let statuses = consolegate::ops::cluster::statuses(
                &nodes,
                &leases,
                now as i64,
                config.cluster.node_timeout_secs,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print!("{}", consolegate::ops::cluster::table(&statuses));
            }
            Ok(())
        }
        Command::Audit {
            connection,
            instance,
            limit,
        } => {
            let (store, _) = consolegate::gateway::open_state(&config).await?;
            let events = store
                .list_audit(connection.as_deref(), instance.as_deref(), limit)
                .await?;
            println!("{}", serde_json::to_string_pretty(&events)?);
            Ok(())
        }
    }
}

async fn serve(config: Config, log_format: Option<String>) -> anyhow::Result<()> {
    let format = match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => config.log.format,
    };
    let set_log_level = init_logging(format, &config.log.level)?;
    let listeners = consolegate::gateway::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    let options = consolegate::gateway::RunOptions {
        reload_on_sighup: true,
        set_log_level: Some(set_log_level),
    };
    consolegate::gateway::run_with(config, listeners, shutdown, options).await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Starts the log; returns what a reload calls to change `[log] level`
/// (which `RUST_LOG`, when set, overrides for the process's whole life).
fn init_logging(
    format: LogFormat,
    level: &str,
) -> anyhow::Result<consolegate::gateway::SetLogLevel> {
    use std::sync::Arc;
    let env = std::env::var("RUST_LOG").ok();
    let from_env = env.is_some();
    let filter = env
        .as_deref()
        .and_then(|env| log_filter(env).ok())
        .map_or_else(|| log_filter(level), Ok)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("[log] level `{level}` is not a valid filter"))?;
    let parse = log_filter;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    macro_rules! start {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Arc::new(move |level: &str| {
                let filter = parse(level)?;
                if from_env {
                    tracing::info!(level, "RUST_LOG is set: it keeps deciding the log level");
                    return Ok(());
                }
                handle.reload(filter).map_err(|e| e.to_string())
            }) as consolegate::gateway::SetLogLevel
        }};
    }
    Ok(match format {
        LogFormat::Json => start!(builder.json()),
        LogFormat::Text => start!(builder),
    })
}

/// The log filter for `level`. A bare `trace` does not reach the
/// WebSocket library's frame dumps, which hold what users type and see on
/// their consoles (passwords typed at a login prompt among them); naming
/// `tungstenite` in the filter does.
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let everything = level
        .split(',')
        .any(|d| d.trim().eq_ignore_ascii_case("trace"));
    if everything && !level.contains("tungstenite") {
        for cap in ["tungstenite=debug", "tokio_tungstenite=debug"] {
            filter = filter.add_directive(cap.parse().map_err(|e| format!("{e}"))?);
        }
    }
    Ok(filter)
}

async fn connection(config: Config, command: ConnectionCommand) -> anyhow::Result<()> {
    let ctx = Context::open(config).await?;
    let json = match command {
        ConnectionCommand::Create {
            instance,
            public_key_file,
            freeform_tags,
        } => {
            let key = read_key_file(&public_key_file)?;
            serde_json::to_string_pretty(&ctx.create(&instance, &key, &freeform_tags).await?)?
        }
        ConnectionCommand::List {
            instance,
            compartment,
            state,
        } => {
            let lifecycle_state = state
                .map(|s| s.to_ascii_uppercase().parse::<LifecycleState>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let filter = ConnectionFilter {
                compartment_id: compartment,
                instance_id: instance,
                lifecycle_state,
            };
            serde_json::to_string_pretty(&ctx.list(&filter).await?)?
        }
        ConnectionCommand::Get { id } => serde_json::to_string_pretty(&ctx.get(&id).await?)?,
        ConnectionCommand::Delete { id } => serde_json::to_string_pretty(&ctx.delete(&id).await?)?,
    };
    println!("{json}");
    Ok(())
}

fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read public key file {}", path.display()))?;
    let mut text = String::new();
    // A public key is a few KiB at most; do not read a huge file whole.
    file.take(consolegate::keys::MAX_PUBLIC_KEY_LEN as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("public key file {} is not text", path.display()))?;
    Ok(text)
}
