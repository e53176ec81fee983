//! `azotte`: the subscription orchestration platform.

use std::path::PathBuf;
use std::process::ExitCode;

use azotte::{app, telemetry, Application, Config};
use azotte_domain::Clock;
use clap::{Parser, Subcommand};

/// Azotte: subscription orchestration platform and transaction trust center.
///
/// With no configuration, `azotte serve` keeps its data in SQLite under ./azotte-data/ and
/// listens on 127.0.0.1:8080. Configure with --config FILE (TOML) or AZOTTE_* variables,
/// e.g. AZOTTE_DATABASE_URL=postgres://… (or AZOTTE_DATABASE_URL_FILE for a secret file).
#[derive(Parser)]
#[command(name = "azotte", version, about, long_about)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the background workers (migrates first).
    Serve {
        /// Address to listen on (also AZOTTE_LISTEN); default 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Migrate and create the first platform administrator, printing its one-time secret.
    Init,
    /// Print the OpenAPI document.
    Openapi,
    /// Manage the installation's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify or export the tamper-evident journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Pause (or resume) all money movement of a tenant: payments and refunds are queued, not
    /// sent, until safe mode is lifted.
    SafeMode {
        /// Tenant id (`ten_…`).
        #[arg(long)]
        tenant: String,
        #[command(subcommand)]
        action: SafeModeAction,
    },
}

#[derive(Subcommand)]
enum SafeModeAction {
    /// Switch safe mode on.
    On {
        /// Why money movement is paused (journaled, shown to the tenant).
        #[arg(long)]
        reason: String,
    },
    /// Lift safe mode; the queue is sent by the running workers.
    Off,
    /// Print whether safe mode is on.
    Status,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Seal what is pending, then recompute every chain (or one tenant's) and check every
    /// checkpoint signature; exits non-zero on any problem.
    Verify {
        /// Tenant id (`ten_…`), or `platform`.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print a self-contained export of one chain as JSON.
    Export {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "production")]
        environment: String,
    },
    /// Verify an export file offline (no database, no configuration).
    VerifyExport {
        /// The file `azotte journal export` or `GET /v1/journal/export` produced.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new JWT signing key; tokens signed by the previous one stay valid until they
    /// expire (15 minutes), then it is unpublished.
    Rotate,
    /// Re-wrap every tenant data key under the active master key (`master_key`), unwrapping
    /// with the one in `previous_master_keys` its row names; encrypted data is not touched.
    /// Idempotent; exits non-zero if any key could not be re-wrapped.
    RotateMaster,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", azotte_api::openapi_json());
        return ExitCode::SUCCESS;
    }
    if let Command::Journal(JournalCommand::VerifyExport { file }) = &cli.command {
        return verify_export(file);
    }
    let mut overrides = Vec::new();
    if let Command::Serve { listen: Some(l) } = &cli.command {
        overrides.push(("listen", l.clone()));
    }
    let config = match Config::load(
        cli.config.as_deref(),
        std::env::vars().filter(|(k, _)| k != BENCH_UNJOURNALED_VAR),
        &overrides,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("azotte: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, &config.log_level, std::io::stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("azotte: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("azotte: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the one-time bootstrap secret straight to the terminal, never through the logger.
fn print_bootstrap_secret(secret: &str) {
    println!();
    println!("  First start: a platform administrator was created.");
    println!("  Its one-time bootstrap secret (shown only now):");
    println!();
    println!("      {secret}");
    println!();
    println!("  Exchange it for your email and a password:");
    println!("      POST /v1/auth/bootstrap {{\"bootstrap_secret\": \"…\", \"email\": \"…\", \"password\": \"…\"}}");
    println!();
}

/// Set to `yes` to let a `bench-unjournaled` build serve (read here, not by the configuration).
const BENCH_UNJOURNALED_VAR: &str = "AZOTTE_BENCH_UNJOURNALED";

/// A `bench-unjournaled` build writes no journal entries: it serves only when told to, loudly.
fn bench_unjournaled_guard() -> Result<(), String> {
    if !cfg!(feature = "bench-unjournaled") {
        return Ok(());
    }
    if std::env::var(BENCH_UNJOURNALED_VAR).as_deref() != Ok("yes") {
        return Err(format!(
            "this binary was built with the `bench-unjournaled` feature: mutations write NO journal \
             entries. It exists only for bench/journal_write.sh; set {BENCH_UNJOURNALED_VAR}=yes to serve anyway"
        ));
    }
    let msg = "BENCHMARK BUILD (bench-unjournaled): mutations write NO journal entries and nothing is \
               sealed; never use this binary for real data";
    eprintln!("azotte: WARNING: {msg}");
    tracing::warn!("{msg}");
    Ok(())
}

/// A file to write the sandbox PSP's ledger to (tab-separated, one money movement a line) once
/// the server has stopped; read here, not by the configuration. For bench/renewals.sh, which
/// compares it with the invoices: the sandbox keeps its ledger in memory only.
const BENCH_SANDBOX_LEDGER_VAR: &str = "AZOTTE_BENCH_SANDBOX_LEDGER";

fn write_sandbox_ledger(
    write: impl FnOnce(std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), String> {
    let Some(path) = std::env::var_os(BENCH_SANDBOX_LEDGER_VAR) else { return Ok(()) };
    let path = path.to_string_lossy().into_owned();
    let file = std::fs::File::create(&path)
        .map_err(|e| format!("{BENCH_SANDBOX_LEDGER_VAR}: cannot create {path}: {e}"))?;
    write(std::io::BufWriter::new(file))
        .map_err(|e| format!("{BENCH_SANDBOX_LEDGER_VAR}: cannot write {path}: {e}"))?;
    tracing::info!(path = %path, "sandbox ledger written");
    Ok(())
}

async fn run(command: Command, config: Config) -> Result<(), String> {
    match command {
        Command::Migrate => {
            app::migrate(&config).await.map_err(|e| e.to_string())?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Init => {
            let app = Application::build(&config, Clock::system()).await.map_err(|e| e.to_string())?;
            match app.bootstrap().await.map_err(|e| e.to_string())? {
                Some(secret) => {
                    print_bootstrap_secret(secret.expose());
                    Ok(())
                }
                None => Err("already initialised: a platform administrator exists".into()),
            }
        }
        Command::Serve { .. } => {
            bench_unjournaled_guard()?;
            let app = Application::build(&config, Clock::system()).await.map_err(|e| e.to_string())?;
            if let Some(secret) = app.bootstrap().await.map_err(|e| e.to_string())? {
                print_bootstrap_secret(secret.expose());
            }
            let ledger = app.ctx().psp.sandbox.ledger();
            app.run_until(app::shutdown_signal()).await.map_err(|e| e.to_string())?;
            write_sandbox_ledger(|w| ledger.write_tsv(w))
        }
        Command::Openapi => Ok(()),
        Command::Journal(cmd) => {
            let ctx = cli_context(&config).await?;
            match cmd {
                JournalCommand::Verify { tenant } => {
                    azotte_service::seal::seal_once(&ctx).await.map_err(|e| e.to_string())?;
                    let reports = azotte_service::seal::verify(&ctx, tenant.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                    let bad = reports.iter().filter(|r| !r.findings.is_empty()).count();
                    println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
                    if bad > 0 {
                        return Err(format!("journal verification found problems in {bad} chain(s)"));
                    }
                    Ok(())
                }
                JournalCommand::Export { tenant, environment } => {
                    let e = azotte_service::seal::export(&ctx, &tenant, &environment)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
                    Ok(())
                }
                JournalCommand::VerifyExport { .. } => Ok(()),
            }
        }
        Command::Keys(KeysCommand::Rotate) => {
            let ctx = cli_context(&config).await?;
            let kid = azotte_service::auth::rotate_signing_key(&ctx).await.map_err(|e| e.to_string())?;
            println!("new JWT signing key: {kid}");
            Ok(())
        }
        Command::SafeMode { tenant, action } => {
            let ctx = cli_context(&config).await?;
            let tenant_id = tenant.parse().map_err(|_| format!("`{tenant}` is not a tenant id (ten_…)"))?;
            // Journaled in the tenant's production chain, by the operator's CLI.
            let scope = azotte_store::auth::system_scope(
                &ctx.db,
                tenant_id,
                azotte_domain::tenant::Environment::Production,
                "cli",
            )
            .await
            .map_err(|e| format!("tenant {tenant}: {e}"))?;
            let change = match action {
                SafeModeAction::On { reason } => {
                    Some(azotte_service::payments::SafeModeChange { enabled: true, reason })
                }
                SafeModeAction::Off => {
                    Some(azotte_service::payments::SafeModeChange { enabled: false, reason: String::new() })
                }
                SafeModeAction::Status => None,
            };
            let mode = match change {
                Some(c) => azotte_service::payments::set_safe_mode(&ctx, &scope, c).await,
                None => azotte_service::payments::safe_mode(&ctx, &scope).await,
            }
            .map_err(|e| e.to_string())?;
            match mode {
                Some(m) => println!(
                    "safe mode: on since {} by {}: {}",
                    m.enabled_at.to_rfc3339(),
                    m.enabled_by,
                    m.reason
                ),
                None => println!("safe mode: off"),
            }
            Ok(())
        }
        Command::Keys(KeysCommand::RotateMaster) => {
            let ctx = cli_context(&config).await?;
            let r = azotte_service::vault::rotate_master(&ctx).await.map_err(|e| e.to_string())?;
            println!("active master key: {}", r.active_master_kid);
            println!("rewrapped: {}", r.rewrapped);
            println!("already current: {}", r.already_current);
            println!("failed: {}", r.failed.len());
            for f in &r.failed {
                println!("  tenant {} key {} (under {}): {}", f.tenant_id, f.kid, f.master_kid, f.reason);
            }
            if r.failed.is_empty() {
                Ok(())
            } else {
                Err(format!("{} tenant key(s) could not be re-wrapped; see above", r.failed.len()))
            }
        }
    }
}

/// The services' context of a one-shot command (system clock, messages to the console).
async fn cli_context(config: &Config) -> Result<azotte_service::Ctx, String> {
    app::context(config, Clock::system(), std::sync::Arc::new(azotte_service::mail::ConsoleMailer))
        .await
        .map_err(|e| e.to_string())
}

/// Offline verification of an export file.
fn verify_export(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("azotte: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let export: azotte_crypto::chain::Export = match serde_json::from_str(&text) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("azotte: {} is not a journal export: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let report = azotte_crypto::chain::verify_export(&export);
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
