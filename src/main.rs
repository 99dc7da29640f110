//! The `churnwatch` command line: parses arguments, loads config, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use churnwatch::config;
use churnwatch::engine::clock::Stamp;
use churnwatch::health::Health;
use churnwatch::mail::template::Templates;
use churnwatch::replay;
use churnwatch::shutdown::Shutdown;
use churnwatch::worker;

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
    /// Run the service: consume Kafka, publish alerts, send emails (until SIGTERM).
    Run {
        /// At shutdown, write the state of every customer this worker holds (JSONL,
        /// sorted by id) to this file.
        #[arg(long)]
        export_customers: Option<PathBuf>,
    },
    /// Dry run over JSONL files with this config: what every rule would fire, for whom
    /// and why, and what the guards would hold back. Sends and writes nothing.
    Simulate {
        /// Event files (JSONL), merged by occurred_at.
        #[arg(long, required = true, num_args = 1..)]
        events: Vec<PathBuf>,
        /// After the last event, advance the clock to this RFC 3339 instant.
        #[arg(long, value_parser = parse_stamp)]
        until: Option<Stamp>,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Also simulate under this config and show both side by side.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Customers shown per rule.
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// Validate the config and render every template in every locale.
    Check,
    /// Render one email as a customer would get it (text to stdout).
    Preview {
        /// Template name (a folder of templates.dir).
        #[arg(long)]
        template: String,
        /// Locale (default: the customer's, or templates.default_locale).
        #[arg(long)]
        locale: Option<String>,
        /// Render for this customer, read from the store, instead of the sample.
        #[arg(long)]
        customer: Option<String>,
        /// Store folder for --customer (default: state.dir).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Also write the HTML part to this file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Show one customer's state from the store, explained (JSON).
    Inspect {
        /// The customer id.
        customer_id: String,
        /// Store folder (default: state.dir; a replay's is `<outbox>/state`).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Show email address and name instead of redacting them.
        #[arg(long)]
        personal: bool,
    },
}

/// Output format of `simulate`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

/// What the worker thread hands back: its outcome, or why it stopped.
type WorkerResult = anyhow::Result<worker::Outcome>;

/// Runs the worker on its own thread; signals ask it to stop within the grace period.
fn run_service(cfg: config::Config, templates: Templates, opts: worker::Options) -> ExitCode {
    let runtime = match service_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let shutdown = Arc::new(Shutdown::new());
    let health = Arc::new(Health::new());
    if let Some(listen) = cfg.admin_listen {
        let token = cfg.admin_token.clone().map(Arc::new);
        if let Err(code) = start_admin(&runtime, listen, token, &health, &opts) {
            return code;
        }
    }
    // Hot reload: SIGHUP, and any change to the config file's folder or the templates.
    let reload = opts.reload.clone();
    reload_on_sighup(&runtime, reload.clone());
    let _watcher = watch_for_changes(&cfg, reload);
    let grace = cfg.shutdown_grace;
    let done_rx = start_worker(cfg, templates, &shutdown, health, opts);
    stop_on_signal(&runtime, &shutdown, grace);
    let result = wait_for_worker(&done_rx, &shutdown);
    if matches!(&result, Some(Err(e)) if e.downcast_ref::<worker::Stopped>().is_some()) {
        stay_up_until_asked_to_stop(&shutdown);
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    service_exit(result, &shutdown)
}

/// One runtime thread is enough for the admin endpoint and the signals: the worker has
/// its own thread.
fn service_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

/// Binds `admin.listen` before the worker starts, so a taken port stops the service at once.
fn start_admin(
    runtime: &tokio::runtime::Runtime,
    listen: std::net::SocketAddr,
    token: Option<Arc<config::Secret>>,
    health: &Arc<Health>,
    opts: &worker::Options,
) -> Result<(), ExitCode> {
    match runtime.block_on(churnwatch::admin::bind(listen)) {
        Ok(listener) => {
            let shared = churnwatch::admin::Shared {
                health: health.clone(),
                metrics: opts.metrics.clone(),
                queries: opts.queries.clone(),
                token,
            };
            runtime.spawn(async move {
                if let Err(e) = churnwatch::admin::serve(listener, shared).await {
                    tracing::error!(error = %e, "admin endpoint stopped");
                }
            });
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Err(ExitCode::from(1))
        }
    }
}

/// SIGHUP asks for a reload (docs/design.md §14 Hot reload).
fn reload_on_sighup(runtime: &tokio::runtime::Runtime, reload: Arc<churnwatch::reload::Reload>) {
    runtime.spawn(async move {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the config");
                    reload.request();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
        }
    });
}

/// A changed config or template file asks for a reload too; without a watcher SIGHUP
/// still works, so its failure is only a warning.
fn watch_for_changes(
    cfg: &config::Config,
    reload: Arc<churnwatch::reload::Reload>,
) -> Option<notify::RecommendedWatcher> {
    match churnwatch::reload::watch(cfg.path.as_deref(), &cfg.mail.templates_dir, reload) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config and templates for changes; reload with SIGHUP");
            None
        }
    }
}

/// The worker blocks, so it gets a thread of its own; its result arrives on the channel.
fn start_worker(
    cfg: config::Config,
    templates: Templates,
    shutdown: &Arc<Shutdown>,
    health: Arc<Health>,
    opts: worker::Options,
) -> std::sync::mpsc::Receiver<WorkerResult> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("churnwatch-worker".into())
        .spawn(move || {
            let r = worker::run(&cfg, &templates, &shutdown, health, &opts);
            // The receiver may be gone if main already gave up; nothing to do then.
            let _ = done_tx.send(r);
        })
        .map_or_else(
            |e| eprintln!("error: cannot start the worker thread: {e}"),
            |_| (),
        );
    done_rx
}

/// SIGTERM or SIGINT starts the grace period: the batch in hand is finished, not dropped.
fn stop_on_signal(
    runtime: &tokio::runtime::Runtime,
    shutdown: &Arc<Shutdown>,
    grace: std::time::Duration,
) {
    let shutdown = shutdown.clone();
    runtime.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing the batch in hand"),
        }
        shutdown.request(grace);
    });
}

/// Waits for the worker; once a stop is asked for, at most the grace period (+ a second
/// for the final commit) before giving up on it (`None`).
fn wait_for_worker(
    done_rx: &std::sync::mpsc::Receiver<WorkerResult>,
    shutdown: &Shutdown,
) -> Option<WorkerResult> {
    loop {
        match done_rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(r) => return Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if shutdown.remaining().is_some_and(|r| r.is_zero()) {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    return done_rx.try_recv().ok();
                }
            }
        }
    }
}

/// After a full or read-only volume the admin endpoint stays up, not ready, until
/// SIGTERM, so an orchestrator does not restart the worker into the same fault again
/// and again (liveness stays 200).
fn stay_up_until_asked_to_stop(shutdown: &Shutdown) {
    while !shutdown.requested() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The exit summary and status: 75 (try again) when records will be read again.
fn service_exit(result: Option<WorkerResult>, shutdown: &Shutdown) -> ExitCode {
    match result {
        Some(Ok(outcome)) => {
            println!("{outcome}");
            if outcome.clean {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the grace period ran out before every effect was acknowledged; those records will be read again");
                ExitCode::from(75)
            }
        }
        // Logged once already, and said at `/readyz`.
        Some(Err(e)) if e.downcast_ref::<worker::Stopped>().is_some() => ExitCode::from(1),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        None if shutdown.requested() => {
            eprintln!("error: the worker did not finish within the grace period");
            ExitCode::from(75)
        }
        None => {
            eprintln!("error: the worker stopped unexpectedly (see the log above)");
            ExitCode::from(1)
        }
    }
}

/// `GET /customers/{id}` of the worker at `admin.listen`, on loopback; `None` for 404.
/// Personal data is asked for with the bearer token of `admin.token_file`.
fn ask_worker(
    listen: Option<std::net::SocketAddr>,
    token: Option<&config::Secret>,
    id: &str,
    personal: bool,
) -> Result<Option<String>, String> {
    let Some(mut addr) = listen else {
        return Err("admin.listen is off".into());
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    let url = format!(
        "http://{addr}/customers/{id}{}",
        if personal { "?personal=true" } else { "" }
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(&url);
    if let (true, Some(t)) = (personal, token) {
        req = req.header("Authorization", format!("Bearer {}", t.expose()));
    }
    let mut resp = req.call().map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        _ => Err(format!("{url}: {status} {}", body.trim())),
    }
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v)
        .map_or_else(|e| format!("{{\"error\": \"{e}\"}}\n"), |s| s + "\n")
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

/// Templates a command that writes emails needs; every problem printed, exit 2 if any.
fn templates_for_sending(cfg: &config::Config) -> Result<Templates, ExitCode> {
    load_templates(cfg).map_err(|problems| {
        eprintln!("error: templates are not valid");
        for p in problems {
            eprintln!("{p}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.command);
    let cfg = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration\n{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check => check(&cfg),
        Command::Simulate {
            events,
            until,
            format,
            compare,
            samples,
        } => {
            let opts = churnwatch::simulate::Options {
                events,
                until,
                samples,
            };
            simulate(&cfg, &opts, format, compare)
        }
        Command::Preview {
            template,
            locale,
            customer,
            state,
            html,
        } => preview(
            &cfg,
            &template,
            locale.as_deref(),
            customer.as_deref(),
            state,
            html,
        ),
        Command::Inspect {
            customer_id,
            state,
            personal,
        } => inspect(&cfg, &customer_id, state, personal),
        Command::Run { export_customers } => run(cfg, export_customers),
        Command::Replay {
            events,
            outbox,
            until,
            export_customers,
            batch_size,
        } => {
            let opts = replay::Options {
                outbox,
                until,
                export_customers,
                batch_size,
                ..replay::Options::new(events)
            };
            replay(&cfg, &opts)
        }
    }
}

/// Logs go to stderr, so stdout stays the command's output; the service logs at info,
/// the one-shot commands only warnings.
fn init_logs(command: &Command) {
    let service = matches!(command, Command::Run { .. });
    let default_level = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The service logs JSON lines for the log collector, unless a person is watching;
    // CHURNWATCH_LOG_FORMAT=json|human decides instead when set.
    let json = match std::env::var("CHURNWATCH_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("human") => false,
        _ => service && !terminal,
    };
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(terminal).init();
    }
}

/// `churnwatch check`: every template problem at once, so one run finds them all.
fn check(cfg: &config::Config) -> ExitCode {
    let (t, mut problems) = Templates::scan(&cfg.mail);
    problems.extend(t.check(&cfg.engine.template_names()));
    if problems.is_empty() {
        println!(
            "config OK ({}); {} templates OK in {}",
            cfg.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "embedded defaults".into()),
            t.names().count(),
            cfg.mail.templates_dir.display()
        );
        // Not a failure: replay, simulate and preview run with these; only `run` refuses.
        if !cfg.weak_secrets.is_empty() {
            eprintln!("note: `run` refuses to start with these secrets:");
            for line in &cfg.weak_secrets {
                eprintln!("{line}");
            }
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("error: templates are not valid");
        for p in problems {
            eprintln!("{p}");
        }
        ExitCode::from(1)
    }
}

/// `churnwatch simulate`: one report, or two side by side under `--compare`.
fn simulate(
    cfg: &config::Config,
    opts: &churnwatch::simulate::Options,
    format: Format,
    compare: Option<PathBuf>,
) -> ExitCode {
    let a = match simulate_one(cfg, opts) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let b = match compare {
        None => None,
        Some(path) => match simulate_other(&path, opts) {
            Ok(r) => Some(r),
            Err(code) => return code,
        },
    };
    let text = match (format, &b) {
        (Format::Table, None) => a.table(),
        (Format::Table, Some(b)) => churnwatch::simulate::compare_table(&a, b),
        (Format::Json, None) => json_text(&a),
        (Format::Json, Some(b)) => json_text(&churnwatch::simulate::compare_json(&a, b)),
    };
    print!("{text}");
    ExitCode::SUCCESS
}

/// One simulation under `cfg`, with the templates it would send.
fn simulate_one(
    cfg: &config::Config,
    opts: &churnwatch::simulate::Options,
) -> Result<churnwatch::simulate::Report, ExitCode> {
    let templates = templates_for_sending(cfg)?;
    churnwatch::simulate::run(cfg, &templates, opts).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}

/// The simulation under the `--compare` config; its own config errors exit 2 like the first's.
fn simulate_other(
    path: &std::path::Path,
    opts: &churnwatch::simulate::Options,
) -> Result<churnwatch::simulate::Report, ExitCode> {
    let other = config::load(Some(path)).map_err(|e| {
        eprintln!("error: invalid configuration to compare with\n{e}");
        ExitCode::from(2)
    })?;
    simulate_one(&other, opts)
}

/// `churnwatch preview`: the email as the customer (or the sample) would get it.
fn preview(
    cfg: &config::Config,
    template: &str,
    locale: Option<&str>,
    customer: Option<&str>,
    state: Option<PathBuf>,
    html: Option<PathBuf>,
) -> ExitCode {
    let templates = match templates_for_sending(cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let found = match customer {
        None => None,
        Some(id) => match stored_context(cfg, id, state) {
            Ok(ctx) => Some((id, ctx)),
            Err(code) => return code,
        },
    };
    let to = found.as_ref().map_or_else(
        || "sample@example.com".to_string(),
        |(_, c)| c.email.clone(),
    );
    match churnwatch::preview::render(cfg, &templates, template, locale, found) {
        Ok(r) => {
            println!(
                "From: {}\nTo: {to}\nSubject: {}\nLocale: {}\n\n{}",
                cfg.mail.from, r.subject, r.locale, r.text
            );
            if let Some(path) = html {
                if let Err(e) = std::fs::write(&path, &r.html) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// A stored customer's mail context for `preview --customer`; exit 3 when there is none.
fn stored_context(
    cfg: &config::Config,
    id: &str,
    state: Option<PathBuf>,
) -> Result<churnwatch::alert::MailContext, ExitCode> {
    let dir = state.unwrap_or_else(|| cfg.state.dir.clone());
    match churnwatch::preview::customer_context(cfg, &dir, id) {
        Ok(Some(ctx)) => Ok(ctx),
        Ok(None) => {
            eprintln!(
                "error: no customer {id:?} in the store at {}",
                dir.display()
            );
            Err(ExitCode::from(3))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// `churnwatch inspect`: one customer from the store, or from the worker holding it.
fn inspect(
    cfg: &config::Config,
    customer_id: &str,
    state: Option<PathBuf>,
    personal: bool,
) -> ExitCode {
    let dir = state.unwrap_or_else(|| cfg.state.dir.clone());
    match churnwatch::inspect::inspect(&cfg.engine, &dir, customer_id, personal) {
        Ok(Some(v)) => match serde_json::to_string_pretty(&v) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Ok(None) => {
            eprintln!(
                "error: no customer {customer_id:?} in the store at {}",
                dir.display()
            );
            ExitCode::from(3)
        }
        // A running worker holds the store: ask it instead (README "Admin endpoint and logs").
        Err(e @ churnwatch::store::StoreError::InUse { .. }) => {
            inspect_in_worker(cfg, customer_id, personal, &e)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `inspect` when a running worker holds the store: its answer, or both reasons it failed.
fn inspect_in_worker(
    cfg: &config::Config,
    customer_id: &str,
    personal: bool,
    in_use: &churnwatch::store::StoreError,
) -> ExitCode {
    if personal && cfg.admin_token.is_none() {
        tracing::warn!(
            "inspect --personal: no admin.token_file, so a running worker answers redacted"
        );
    }
    match ask_worker(
        cfg.admin_listen,
        cfg.admin_token.as_ref(),
        customer_id,
        personal,
    ) {
        Ok(Some(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("error: no customer {customer_id:?} in the running worker");
            ExitCode::from(3)
        }
        Err(why) => {
            eprintln!("error: {in_use}, and the running worker could not be asked: {why}");
            ExitCode::from(1)
        }
    }
}

/// `churnwatch run`: the service, once its templates are valid.
fn run(cfg: config::Config, export_customers: Option<PathBuf>) -> ExitCode {
    // Anyone who reads the repository knows the shipped keys: with them every customer's
    // offer code and alert id could be computed (README "Secrets").
    if !cfg.weak_secrets.is_empty() {
        eprintln!("error: run refuses to start with these secrets (replay, simulate and preview accept them)");
        for line in &cfg.weak_secrets {
            eprintln!("{line}");
        }
        return ExitCode::from(2);
    }
    let templates = match templates_for_sending(&cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    run_service(
        cfg,
        templates,
        worker::Options {
            export_customers,
            ..worker::Options::default()
        },
    )
}

/// `churnwatch replay`: the pipeline over files, then its summary.
fn replay(cfg: &config::Config, opts: &replay::Options) -> ExitCode {
    let templates = match templates_for_sending(cfg) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match replay::run(cfg, Some(&templates), opts) {
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
