//! The `churnwatch` command line: parses arguments, loads config, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use churnwatch::config;
use churnwatch::engine::clock::Stamp;
use churnwatch::mail::template::Templates;
use churnwatch::replay;

/// Event-driven churn alerts: win-back, apology and thank-you emails from purchase and
/// support events.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: config/churnwatch.toml if present, or $CHURNWATCH_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline over JSONL files; emails and alerts go into a folder.
    Replay {
        /// Event files (JSONL), merged by occurred_at.
        #[arg(long, required = true, num_args = 1..)]
        events: Vec<PathBuf>,
        /// Output folder (its earlier replay results are replaced).
        #[arg(long, default_value = "outbox")]
        outbox: PathBuf,
        /// After the last event, advance the clock to this RFC 3339 instant.
        #[arg(long, value_parser = parse_stamp)]
        until: Option<Stamp>,
        /// Write every customer's final state (JSONL, sorted by id) to this file.
        #[arg(long)]
        export_customers: Option<PathBuf>,
        /// Records per batch (decisions do not depend on it).
        #[arg(long, default_value_t = 4096)]
        batch_size: usize,
    },
    /// Validate the config and render every template in every locale.
    Check,
}

fn parse_stamp(s: &str) -> Result<Stamp, String> {
    Stamp::parse_rfc3339(s)
}

fn load_templates(cfg: &config::Config) -> Result<Templates, Vec<String>> {
    let t = Templates::load(&cfg.mail)?;
    let problems = t.check(&cfg.engine.template_names());
    if problems.is_empty() {
        Ok(t)
    } else {
        Err(problems)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration\n{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check => match load_templates(&cfg) {
            Ok(t) => {
                println!(
                    "config OK ({}); {} templates OK in {}",
                    cfg.path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "embedded defaults".into()),
                    t.names().count(),
                    cfg.mail.templates_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                ExitCode::from(1)
            }
        },
        Command::Replay {
            events,
            outbox,
            until,
            export_customers,
            batch_size,
        } => {
            let templates = match load_templates(&cfg) {
                Ok(t) => t,
                Err(problems) => {
                    eprintln!("error: templates are not valid");
                    for p in problems {
                        eprintln!("{p}");
                    }
                    return ExitCode::from(2);
                }
            };
            let opts = replay::Options {
                outbox,
                until,
                export_customers,
                batch_size,
                ..replay::Options::new(events)
            };
            match replay::run(&cfg, Some(&templates), &opts) {
                Ok(summary) => {
                    print!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
