use std::{process::ExitCode, time::Duration};

use blastgate::{
    commands::{self, cli::Cli, cli::Command},
    config::Config,
    daemon,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLASTGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("blastgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Daemon {
            config,
            detach_on_exit,
            deadline,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::run(daemon::Options {
                config_path: config,
                detach_on_exit,
                deadline: deadline.map(Duration::from_secs),
            }))?;
        }
        Command::Run {
            agent,
            oidc_token_file,
            oidc_token_env,
            user,
            config,
            command,
        } => {
            let config = commands::client_config(config.as_deref())?;
            let mut trust =
                blastgate::tls::trust::agent_env(&config.tls.ca_dir).unwrap_or_default();
            trust.extend(blastgate::protocols::http::aws::placeholder_env(&config));
            let token =
                commands::run::read_token(oidc_token_file.as_deref(), oidc_token_env.as_deref())?;
            commands::run::run(
                &config.control.socket,
                &agent,
                token,
                oidc_token_env.as_deref(),
                user.as_deref(),
                &trust,
                &command,
            )?;
        }
        Command::Status { config, json } => {
            let config = commands::client_config(config.as_deref())?;
            return commands::status::run(&config, json);
        }
        Command::Events {
            config,
            follow,
            json,
            last,
        } => {
            let config = commands::client_config(config.as_deref())?;
            commands::events::run(&config, follow, json, last)?;
        }
        Command::Install {
            config,
            enrol_user,
            agent,
        } => commands::install::run(commands::install::Request {
            config: config.as_deref(),
            enrol_users: &enrol_user,
            agent: agent.as_deref(),
        })?,
        Command::Uninstall {
            config,
            undo_install,
        } => {
            let config = commands::client_config(config.as_deref())?;
            commands::uninstall::run(&config)?;
            if undo_install {
                commands::install::undo()?;
            }
        }
        Command::Egress(commands::cli::EgressCommand::Suggest { config, agent }) => {
            let config = commands::client_config(config.as_deref())?;
            let events = commands::events::all(&config.records.spool_dir)?;
            let entries = blastgate::egress::suggest::suggest(&events, agent.as_deref());
            if entries.is_empty() {
                eprintln!("blastgate: no egress connections outside the targets in the spool");
            }
            print!("{}", blastgate::egress::suggest::as_toml(&entries));
        }
        Command::Policy(cmd) => return commands::policy::run(cmd),
        Command::Approvals(cmd) => commands::approvals::run(cmd)?,
        Command::Job(cmd) => commands::job::run(cmd)?,
        Command::Ca(cmd) => commands::ca::run(cmd)?,
        Command::Sessions(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(commands::sessions::run(cmd))?;
        }
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
