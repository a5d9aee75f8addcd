//! The `careledger` command: the gateway server on an embedded local store, and token admin.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use careledger_gateway::{
    AppState, CommitConfig, GatewayConfig, Role, ServeLimits, TokenRegistry, router,
};
use careledger_model::PseudonymKey;
use careledger_store::Store;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use rand::RngCore;

/// jemalloc, not glibc's malloc: glibc's per-thread arenas kept freed memory, so the server
/// held two to three times what it used (settings in `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod client;
mod demo;
mod derive;
mod maintain;
mod push;
mod shell;
mod simulate;
mod table;

/// careledger: data-sync gateway and warehouse for the dynamic ledger of rural left-behind women.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway on a store (a local directory by default).
    Serve(ServeArgs),
    /// Start the server and let the simulated departments push a realistic history through
    /// the HTTP API, then print a few reports and the URLs to try next.
    Demo(DemoArgs),
    /// Run read-only SQL on a server or a local store; with no statement, an interactive shell
    /// (history, tab completion of tables and columns; `\help` lists its commands).
    Sql {
        /// The statement, e.g. "SELECT entry_reason, count(*) FROM status_episodes GROUP BY 1".
        #[arg(conflicts_with = "file")]
        statement: Option<String>,
        /// Run the statements and shell commands of this file (`;` ends a statement), stopping
        /// at the first that fails.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Ask as the warehouse knew things at this instant (RFC 3339 or a date).
        #[arg(long)]
        known_at: Option<String>,
        #[command(flatten)]
        target: client::Target,
        #[command(flatten)]
        output: client::Output,
    },
    /// Run a named report (`careledger sql` then `\reports` lists them).
    Report {
        name: String,
        /// A parameter, name=value (repeatable), e.g. --param as_of=2024-12-31.
        #[arg(long = "param")]
        params: Vec<String>,
        #[command(flatten)]
        target: client::Target,
        #[command(flatten)]
        output: client::Output,
    },
    /// Send CSV / NDJSON / JSON files to a server in batches, with idempotency keys, retries
    /// and a file listing the rejected rows.
    Push(push::PushArgs),
    /// Compact small files, write checkpoints and vacuum replaced files.
    Maintain(maintain::MaintainArgs),
    /// Bring the derived ledger of a local store up to date, or rebuild it (no server running).
    Derive(derive::DeriveArgs),
    /// Print a shell completion script: `careledger completions bash > /etc/bash_completion.d/careledger`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (careledger.1 and one per command) into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(default_value = "man")]
        dir: PathBuf,
    },
    /// Write the simulated departments' rows to files (<out>/<source>/<table>.ndjson).
    Simulate(simulate::SimulateArgs),
    /// Manage bearer tokens (kept hashed in <state-dir>/tokens.json).
    Token {
        #[command(subcommand)]
        action: TokenAction,
        /// Directory holding tokens.json (before or after the action: `token create X
        /// --state-dir DIR` works too).
        #[arg(
            long,
            global = true,
            env = "CARELEDGER_STATE_DIR",
            default_value = "./careledger-data"
        )]
        state_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file with any of these settings by their long names (store, state_dir, listen,
    /// commit_window_ms, max_body_mib, …); flags and environment variables win over it.
    #[arg(long, env = "CARELEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// Store location: a directory, file:///abs/dir, memory:// (nothing kept).
    #[arg(long, env = "CARELEDGER_STORE", default_value = "./careledger-data")]
    store: String,
    /// Directory for the pseudonym secret and the token file (the store directory by default).
    #[arg(long, env = "CARELEDGER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Address to listen on (loopback by default).
    #[arg(long, env = "CARELEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Group-commit window in milliseconds: how long a batch waits for others to share its
    /// commit (those that arrived while the last commit ran join at once). 0 suits one bulk
    /// loader (its batches commit at once); the default suits many small steady senders.
    #[arg(long, env = "CARELEDGER_COMMIT_WINDOW_MS", default_value_t = 50)]
    commit_window_ms: u64,
    /// Background compaction: a pushed table, `batches`, `rejects` or `audit` with more data
    /// files than this is compacted (looked at every 5 s). 0 turns it off. Only the process
    /// that holds a local store's deriver lock compacts; on S3 run `careledger maintain`.
    #[arg(long, env = "CARELEDGER_COMPACT_MAX_FILES", default_value_t = 64)]
    compact_max_files: usize,
    /// Largest accepted request body, in MiB.
    #[arg(long, env = "CARELEDGER_MAX_BODY_MIB", default_value_t = 64)]
    max_body_mib: usize,
    /// Seconds a request may take, body included (a slower one gets 408).
    #[arg(long, env = "CARELEDGER_REQUEST_TIMEOUT_S", default_value_t = 60)]
    request_timeout_s: u64,
    /// Seconds a connection has to send a request's head before it is closed.
    #[arg(long, env = "CARELEDGER_HEADER_TIMEOUT_S", default_value_t = 10)]
    header_timeout_s: u64,
    /// Connections served at once (more wait to be accepted).
    #[arg(long, env = "CARELEDGER_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Bytes per second a request body must average once the grace period has passed (a
    /// slower one gets 408 and the connection is closed); 0 turns the minimum off.
    #[arg(long, env = "CARELEDGER_MIN_BODY_RATE", default_value_t = 1024)]
    min_body_rate: u64,
    /// Seconds from the start of a request before the minimum body rate applies.
    #[arg(long, env = "CARELEDGER_BODY_GRACE_S", default_value_t = 2)]
    body_grace_s: u64,
    /// Requests one token may have in flight at once (past it, 429 with Retry-After); 0: no cap.
    #[arg(long, env = "CARELEDGER_MAX_IN_FLIGHT_PER_TOKEN", default_value_t = 32)]
    max_in_flight_per_token: usize,
    /// MiB of ingest bodies held at once, all senders together (each reserves its length, or
    /// the body limit when compressed); a body that finds no room within a second gets 503
    /// with Retry-After.
    #[arg(long, env = "CARELEDGER_INGEST_BUDGET_MIB", default_value_t = 1024)]
    ingest_budget_mib: usize,
    /// Report answers kept for repeated requests (by ETag); 0 computes every request.
    #[arg(long, env = "CARELEDGER_REPORT_CACHE_ENTRIES", default_value_t = 64)]
    report_cache_entries: usize,
    /// Memory all queries together (and the snapshots they build) may use, in MiB; past it,
    /// 503. One user SQL batch may hold an eighth of it (8 to 256 MiB).
    #[arg(long, env = "CARELEDGER_QUERY_MEMORY_MIB", default_value_t = 2048)]
    query_memory_mib: usize,
    /// Seconds one query (and the snapshot it builds) may run; past it, 503.
    #[arg(long, env = "CARELEDGER_QUERY_TIMEOUT_S", default_value_t = 30)]
    query_timeout_s: u64,
    /// SQL queries (`POST /v1/sql`) run at once; past it, 503 with Retry-After.
    #[arg(long, env = "CARELEDGER_MAX_QUERIES", default_value_t = 4)]
    max_queries: usize,
    /// Every query waits (up to the query timeout) until the derived ledger reflects every
    /// commit made before it arrived, as if it asked `wait_for=latest`. Off: a query answers
    /// at once with what the deriver has reached, and says so in its headers.
    #[arg(long, env = "CARELEDGER_READ_YOUR_WRITES")]
    read_your_writes: bool,
    /// The IANA time zone of every "day": future dates at ingest, a date-only known_at,
    /// source health's lags and frozen periods.
    #[arg(long, env = "CARELEDGER_TIME_ZONE", default_value = careledger_model::LocalZone::DEFAULT)]
    time_zone: String,
    /// The PostgreSQL wire door, for psql, DBeaver, pandas and Grafana (the password is a
    /// careledger token), or `off`. Without this flag: 127.0.0.1:5433, and a server that
    /// finds that port taken starts without the door and says so.
    #[arg(long, env = "CARELEDGER_PG_LISTEN")]
    pg_listen: Option<String>,
    /// TLS certificate of the PostgreSQL door (PEM); with --pg-tls-key. Required when the
    /// door listens beyond loopback.
    #[arg(long, env = "CARELEDGER_PG_TLS_CERT", requires = "pg_tls_key")]
    pg_tls_cert: Option<PathBuf>,
    /// TLS private key of the PostgreSQL door (PEM).
    #[arg(long, env = "CARELEDGER_PG_TLS_KEY", requires = "pg_tls_cert")]
    pg_tls_key: Option<PathBuf>,
    /// The Arrow Flight SQL door, for ADBC and pyarrow.flight (bearer token, or basic auth
    /// with the token as password), or `off`. Without this flag: 127.0.0.1:50051, started
    /// only if that port is free.
    #[arg(long, env = "CARELEDGER_FLIGHT_LISTEN")]
    flight_listen: Option<String>,
    /// TLS certificate of the Flight SQL door (PEM); with --flight-tls-key. Required when
    /// the door listens beyond loopback; clients then connect to grpc+tls://.
    #[arg(long, env = "CARELEDGER_FLIGHT_TLS_CERT", requires = "flight_tls_key")]
    flight_tls_cert: Option<PathBuf>,
    /// TLS private key of the Flight SQL door (PEM).
    #[arg(long, env = "CARELEDGER_FLIGHT_TLS_KEY", requires = "flight_tls_cert")]
    flight_tls_key: Option<PathBuf>,
    /// Browser origins allowed to call the HTTP API (CORS), comma-separated, or `*`. Off
    /// unless given.
    #[arg(long, env = "CARELEDGER_CORS_ORIGIN")]
    cors_origin: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    sim: simulate::SimArgs,
    /// Requests in flight at once (the gateway commits what arrives together as one group).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Stop the server after printing the reports instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a token and print it once. Roles: source:<id>, analyst, dashboard, admin.
    Create {
        name: String,
        #[arg(long)]
        role: String,
        /// Region code prefix the token is limited to.
        #[arg(long)]
        scope: Option<String>,
        /// The token is refused from this instant on (RFC 3339, or a date meaning its start
        /// in UTC), or after this many days (e.g. 90d).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (names, roles, scopes; never the tokens).
    List,
    /// Revoke a token by name.
    Revoke { name: String },
}

fn main() -> Result<()> {
    private_umask();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,careledger=info,buoyant_kernel=off".into()),
        )
        .init();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Serve(serve) | Command::Demo(DemoArgs { serve, .. }), Some((_, sub))) =
        (&mut cli.command, matches.subcommand())
    {
        apply_config_file(serve, sub)?;
    }
    match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(args)),
        Command::Demo(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(demo::run(args)),
        Command::Sql {
            statement,
            file,
            known_at,
            target,
            output,
        } => current_thread()?.block_on(async {
            let backend = client::Backend::connect(&target).await?;
            if let Some(statement) = statement {
                let body = backend
                    .sql(&statement, known_at.as_deref(), output.wire_format()?)
                    .await?;
                return output.deliver(&body);
            }
            if !matches!(output.format.as_str(), "table" | "csv" | "json") {
                anyhow::bail!(
                    "--format {} answers one statement: give it as the argument",
                    output.format
                );
            }
            let mut session = shell::Session::new(backend, output, known_at).await?;
            match file {
                Some(path) => session.file(&path).await.map(|_| ()),
                None => shell::run(session).await,
            }
        }),
        Command::Report {
            name,
            params,
            target,
            output,
        } => current_thread()?.block_on(async {
            let backend = client::Backend::connect(&target).await?;
            let body = backend
                .report(
                    &name,
                    &client::parse_params(&params)?,
                    output.wire_format()?,
                )
                .await?;
            output.deliver(&body)
        }),
        Command::Simulate(args) => simulate::run(args),
        Command::Push(args) => current_thread()?.block_on(push::run(args)),
        Command::Maintain(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(maintain::run(args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "careledger",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        Command::Derive(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(derive::run(args)),
        Command::Token { action, state_dir } => token(action, &state_dir),
    }
}

/// Settings of `serve` that a config file may give.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    store: Option<String>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    commit_window_ms: Option<u64>,
    compact_max_files: Option<usize>,
    max_body_mib: Option<usize>,
    request_timeout_s: Option<u64>,
    header_timeout_s: Option<u64>,
    max_connections: Option<usize>,
    min_body_rate: Option<u64>,
    body_grace_s: Option<u64>,
    max_in_flight_per_token: Option<usize>,
    ingest_budget_mib: Option<usize>,
    report_cache_entries: Option<usize>,
    query_memory_mib: Option<usize>,
    query_timeout_s: Option<u64>,
    max_queries: Option<usize>,
    read_your_writes: Option<bool>,
    time_zone: Option<String>,
    pg_listen: Option<String>,
    pg_tls_cert: Option<PathBuf>,
    pg_tls_key: Option<PathBuf>,
    flight_listen: Option<String>,
    flight_tls_cert: Option<PathBuf>,
    flight_tls_key: Option<PathBuf>,
    cors_origin: Option<String>,
}

/// Fills the settings that neither a flag nor an environment variable gave from `--config`.
fn apply_config_file(args: &mut ServeArgs, matches: &clap::ArgMatches) -> Result<()> {
    let Some(path) = &args.config else {
        return Ok(());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ServeFile =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    let unset = |id: &str| {
        matches!(
            matches.value_source(id),
            None | Some(clap::parser::ValueSource::DefaultValue)
        )
    };
    if let Some(v) = file.store.filter(|_| unset("store")) {
        args.store = v;
    }
    if let Some(v) = file.state_dir.filter(|_| unset("state_dir")) {
        args.state_dir = Some(v);
    }
    if let Some(v) = file.listen.filter(|_| unset("listen")) {
        args.listen = v;
    }
    if let Some(v) = file.commit_window_ms.filter(|_| unset("commit_window_ms")) {
        args.commit_window_ms = v;
    }
    if let Some(v) = file
        .compact_max_files
        .filter(|_| unset("compact_max_files"))
    {
        args.compact_max_files = v;
    }
    if let Some(v) = file.max_body_mib.filter(|_| unset("max_body_mib")) {
        args.max_body_mib = v;
    }
    if let Some(v) = file
        .request_timeout_s
        .filter(|_| unset("request_timeout_s"))
    {
        args.request_timeout_s = v;
    }
    if let Some(v) = file.header_timeout_s.filter(|_| unset("header_timeout_s")) {
        args.header_timeout_s = v;
    }
    if let Some(v) = file.max_connections.filter(|_| unset("max_connections")) {
        args.max_connections = v;
    }
    if let Some(v) = file.min_body_rate.filter(|_| unset("min_body_rate")) {
        args.min_body_rate = v;
    }
    if let Some(v) = file.body_grace_s.filter(|_| unset("body_grace_s")) {
        args.body_grace_s = v;
    }
    if let Some(v) = file
        .max_in_flight_per_token
        .filter(|_| unset("max_in_flight_per_token"))
    {
        args.max_in_flight_per_token = v;
    }
    if let Some(v) = file
        .ingest_budget_mib
        .filter(|_| unset("ingest_budget_mib"))
    {
        args.ingest_budget_mib = v;
    }
    if let Some(v) = file
        .report_cache_entries
        .filter(|_| unset("report_cache_entries"))
    {
        args.report_cache_entries = v;
    }
    if let Some(v) = file.query_memory_mib.filter(|_| unset("query_memory_mib")) {
        args.query_memory_mib = v;
    }
    if let Some(v) = file.query_timeout_s.filter(|_| unset("query_timeout_s")) {
        args.query_timeout_s = v;
    }
    if let Some(v) = file.max_queries.filter(|_| unset("max_queries")) {
        args.max_queries = v;
    }
    if let Some(v) = file.read_your_writes.filter(|_| unset("read_your_writes")) {
        args.read_your_writes = v;
    }
    if let Some(v) = file.time_zone.filter(|_| unset("time_zone")) {
        args.time_zone = v;
    }
    if let Some(v) = file.pg_listen.filter(|_| unset("pg_listen")) {
        args.pg_listen = Some(v);
    }
    if let Some(v) = file.pg_tls_cert.filter(|_| unset("pg_tls_cert")) {
        args.pg_tls_cert = Some(v);
    }
    if let Some(v) = file.pg_tls_key.filter(|_| unset("pg_tls_key")) {
        args.pg_tls_key = Some(v);
    }
    if let Some(v) = file.flight_listen.filter(|_| unset("flight_listen")) {
        args.flight_listen = Some(v);
    }
    if let Some(v) = file.flight_tls_cert.filter(|_| unset("flight_tls_cert")) {
        args.flight_tls_cert = Some(v);
    }
    if let Some(v) = file.flight_tls_key.filter(|_| unset("flight_tls_key")) {
        args.flight_tls_key = Some(v);
    }
    if let Some(v) = file.cors_origin.filter(|_| unset("cors_origin")) {
        args.cors_origin = Some(v);
    }
    Ok(())
}

/// `token create --scope`: a prefix of the codes of real regions, written at its own level (a
/// city is `4501`, not `450100`, which would name no county and see nothing).
fn check_scope(scope: &str) -> Result<()> {
    if scope.is_empty() || scope.len() > 12 || !scope.bytes().all(|b| b.is_ascii_digit()) {
        bail!(
            "--scope {scope:?}: give a region code prefix of up to 12 digits, e.g. 4501 (a city) or 450123 (a county)"
        );
    }
    let regions = careledger_model::regions();
    if !regions.iter().any(|r| r.code.starts_with(scope)) {
        bail!("--scope {scope}: no Guangxi region code starts with it");
    }
    let padded = format!("{scope:0<12}");
    if let Some(r) = regions.get(&padded)
        && r.level.prefix_len() < scope.len()
    {
        bail!(
            "--scope {scope} is {} ({}), written with trailing zeros: use --scope {}",
            r.name,
            r.level.as_str(),
            &scope[..r.level.prefix_len()]
        );
    }
    Ok(())
}

/// The zone of every "day" outside `serve` (token expiry dates, a local store's date-only
/// known_at): `CARELEDGER_TIME_ZONE`, Asia/Shanghai by default.
pub(crate) fn configured_zone() -> Result<careledger_model::LocalZone> {
    let name = std::env::var("CARELEDGER_TIME_ZONE")
        .unwrap_or_else(|_| careledger_model::LocalZone::DEFAULT.to_string());
    careledger_model::LocalZone::parse(&name)
        .map_err(anyhow::Error::msg)
        .context("CARELEDGER_TIME_ZONE")
}

/// `--expires`: an RFC 3339 instant, a date (the start of that day in the configured zone), or
/// `N d` days from now.
fn parse_expiry(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Some(days) = text
        .strip_suffix('d')
        .and_then(|d| d.trim().parse::<u32>().ok())
    {
        return chrono::Utc::now()
            .checked_add_signed(chrono::Duration::days(i64::from(days)))
            .with_context(|| format!("--expires {text}: too far in the future"));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(configured_zone()?.start_of(d));
    }
    bail!("--expires {text:?}: give an RFC 3339 instant, a date (2027-01-01) or days (90d)")
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)?;
    Ok(())
}

/// Everything this process creates is its user's alone (files 0600, directories 0700), whatever
/// the umask it was started with: the store holds pseudonymised person-level data, the state
/// directory the pseudonym secret and the tokens. A stricter umask is kept.
#[cfg(unix)]
fn private_umask() {
    use rustix::fs::Mode;
    use rustix::process::umask;
    let old = umask(Mode::from_raw_mode(0o077));
    umask(old | Mode::from_raw_mode(0o077));
}

#[cfg(not(unix))]
fn private_umask() {}

/// Creates `dir` and its missing parents with mode 0700; warns if an existing one is open to
/// other users.
fn create_private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = %format_args!("{:o}", mode & 0o777), "this directory is open to other users; `chmod 700` it");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

/// Loads the pseudonym secret, creating it (0600) on first start.
fn load_or_create_key(state_dir: &Path) -> Result<PseudonymKey> {
    let path = state_dir.join("pseudonym.key");
    if !path.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        write_private(&path, &format!("{}\n", hex::encode(bytes)))?;
        tracing::info!(path = %path.display(), "created the pseudonym secret; back it up: without it, person keys cannot be linked to new pushes");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    PseudonymKey::from_hex(&text).map_err(anyhow::Error::msg)
}

/// On first start: an admin token and one token per source, written once to a 0600 file.
fn ensure_initial_tokens(tokens: &TokenRegistry, state_dir: &Path) -> Result<Option<PathBuf>> {
    if !tokens.is_empty() {
        return Ok(None);
    }
    let mut lines = vec![
        "# careledger initial tokens: shown once, stored only hashed. name<TAB>role<TAB>token"
            .to_string(),
    ];
    let admin = tokens.create("admin", &Role::Admin, None)?;
    lines.push(format!("admin\tadmin\t{admin}"));
    for code in &careledger_model::vocabulary().list("sources").codes {
        let role = Role::Source(code.code.clone());
        let t = tokens.create(&code.code, &role, None)?;
        lines.push(format!("{}\t{}\t{t}", code.code, role.as_string()));
    }
    let path = state_dir.join("tokens-initial.txt");
    write_private(&path, &(lines.join("\n") + "\n"))?;
    Ok(Some(path))
}

/// A running server: its state, address and the task serving it.
pub(crate) struct Running {
    state: Arc<AppState>,
    addr: std::net::SocketAddr,
    tokens: Arc<TokenRegistry>,
    state_dir: PathBuf,
    initial: Option<PathBuf>,
    store_url: String,
    /// Where the PostgreSQL and Flight SQL doors listen (None: not open).
    pg_addr: Option<std::net::SocketAddr>,
    flight_addr: Option<std::net::SocketAddr>,
    /// Whether the Flight SQL door speaks TLS (`grpc+tls://`).
    flight_tls: bool,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    /// This server derives the store's ledger: no other process may (held until exit; None
    /// when another process held it at start).
    _deriver_lock: Option<derive::DeriverLock>,
}

pub(crate) async fn start(args: &ServeArgs) -> Result<Running> {
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None if args.store.contains("://") && !args.store.starts_with("file://") => {
            PathBuf::from("./careledger-data")
        }
        None => PathBuf::from(args.store.strip_prefix("file://").unwrap_or(&args.store)),
    };
    create_private_dir(&state_dir)?;
    // A local store's directory too (Store::open would create it with the umask alone).
    if !args.store.contains("://") || args.store.starts_with("file://") {
        create_private_dir(Path::new(
            args.store.strip_prefix("file://").unwrap_or(&args.store),
        ))?;
    }
    let key = load_or_create_key(&state_dir)?;
    let tokens = Arc::new(TokenRegistry::load(&state_dir.join("tokens.json"))?);
    let initial = ensure_initial_tokens(&tokens, &state_dir)?;
    let store = Arc::new(
        Store::open(&args.store)
            .await
            .with_context(|| format!("opening store {}", args.store))?,
    );
    // One process derives a store: a second server on it (a rolling restart, two gateways)
    // serves and ingests, and reads what the first derives.
    let deriver_lock = match derive::DeriverLock::take(&store) {
        Ok(lock) => Some(lock),
        Err(e) => {
            tracing::warn!(%e, "not deriving: another process derives this store");
            None
        }
    };
    let config = GatewayConfig {
        max_body_bytes: args.max_body_mib * 1024 * 1024,
        request_timeout: Duration::from_secs(args.request_timeout_s.max(1)),
        min_body_rate: args.min_body_rate,
        body_grace: Duration::from_secs(args.body_grace_s),
        max_in_flight_per_token: args.max_in_flight_per_token,
        ingest_budget_bytes: args.ingest_budget_mib.max(1) * 1024 * 1024,
        commit: CommitConfig {
            window: Duration::from_millis(args.commit_window_ms),
            ..CommitConfig::default()
        },
        query: careledger_gateway::QueryConfig {
            cache_entries: args.report_cache_entries,
            memory_limit: args.query_memory_mib.max(1) * 1024 * 1024,
            timeout: Duration::from_secs(args.query_timeout_s.max(1)),
            max_concurrent: args.max_queries.max(1),
            read_your_writes: args.read_your_writes,
            ..Default::default()
        },
        time_zone: careledger_model::LocalZone::parse(&args.time_zone)
            .map_err(anyhow::Error::msg)
            .context("--time-zone")?,
        derive: deriver_lock.is_some() || store.local_dir().is_none(),
        // The compaction lock is a local file lock: on S3 two servers could overlap.
        compaction: careledger_gateway::compact_task::CompactionConfig {
            enabled: args.compact_max_files > 0
                && deriver_lock.is_some()
                && store.local_dir().is_some(),
            max_files: args.compact_max_files,
            ..Default::default()
        },
        ..GatewayConfig::default()
    };
    let state = AppState::start(store.clone(), tokens.clone(), key, config).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let pg = open_door(args.pg_listen.as_deref(), "127.0.0.1:5433", "PostgreSQL").await?;
    let pg_addr = match pg {
        Some(pg_listener) => {
            let pg_addr = pg_listener.local_addr()?;
            let tls = args.pg_tls_cert.clone().zip(args.pg_tls_key.clone());
            careledger_gateway::pg::check_listen(&careledger_gateway::pg::PgConfig {
                listen: pg_addr,
                tls: tls.clone(),
            })
            .map_err(anyhow::Error::msg)?;
            let door = careledger_gateway::pg::serve_pg(state.clone(), pg_listener, tls);
            tokio::spawn(async move {
                if let Err(e) = door.await {
                    tracing::error!(error = %e, "the PostgreSQL door stopped");
                }
            });
            Some(pg_addr)
        }
        None => None,
    };
    let flight = open_door(
        args.flight_listen.as_deref(),
        "127.0.0.1:50051",
        "Flight SQL",
    )
    .await?;
    let flight_addr = match flight {
        Some(flight_listener) => {
            let flight_addr = flight_listener.local_addr()?;
            let tls = args
                .flight_tls_cert
                .clone()
                .zip(args.flight_tls_key.clone());
            let door =
                careledger_gateway::flight::serve_flight(state.clone(), flight_listener, tls)
                    .map_err(anyhow::Error::msg)?;
            tokio::spawn(async move {
                if let Err(e) = door.await {
                    tracing::error!(error = %e, "the Flight SQL door stopped");
                }
            });
            Some(flight_addr)
        }
        None => None,
    };
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let app = router(state.clone());
    let app = match &args.cors_origin {
        Some(origins) => app.layer(careledger_gateway::cors(origins).map_err(anyhow::Error::msg)?),
        None => app,
    };
    let limits = ServeLimits {
        header_read_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
        max_connections: args.max_connections.max(1),
    };
    // The signal handlers are installed here, before the address is announced: a SIGINT
    // right after it then shuts down gracefully instead of killing the process.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let server = tokio::spawn(careledger_gateway::serve(
        listener,
        app,
        limits,
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = stop => {}
            }
        },
    ));
    Ok(Running {
        state,
        addr,
        pg_addr,
        flight_addr,
        flight_tls: args.flight_tls_cert.is_some(),
        tokens,
        state_dir,
        initial,
        store_url: store.url().to_string(),
        server,
        shutdown,
        _deriver_lock: deriver_lock,
    })
}

impl Running {
    fn announce(&self) {
        println!("careledger listening on http://{}", self.addr);
        if let Some(a) = self.pg_addr {
            println!("PostgreSQL wire: postgresql://{a} (any user name; the password is a token)");
        }
        if let Some(a) = self.flight_addr {
            let scheme = if self.flight_tls { "grpc+tls" } else { "grpc" };
            println!(
                "Arrow Flight SQL: {scheme}://{a} (bearer token, or basic auth with the token as password)"
            );
        }
        println!("store: {}", self.store_url);
        match &self.initial {
            Some(p) => println!("tokens (first start): {}", p.display()),
            None => println!(
                "tokens: {} (hashed); create more with `careledger token create`",
                self.state_dir.join("tokens.json").display()
            ),
        }
    }

    /// Waits for the server to stop (Ctrl-C, or at once with `stop_now`), then commits what
    /// is pending.
    async fn finish(self, stop_now: bool) -> Result<()> {
        if stop_now {
            let _ = self.shutdown.send(());
        }
        self.server.await??;
        tracing::info!("draining pending commits");
        self.state.drain().await;
        Ok(())
    }
}

/// Binds a door's listener: `off` closes it; an address given is bound or the start fails;
/// without one, `default` is tried and a port already taken leaves the door closed (said in
/// the log).
async fn open_door(
    given: Option<&str>,
    default: &str,
    what: &str,
) -> Result<Option<tokio::net::TcpListener>> {
    match given.map(str::trim) {
        Some("off") => Ok(None),
        Some(addr) => Ok(Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} door on {addr}"))?,
        )),
        None => match tokio::net::TcpListener::bind(default).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::warn!(error = %e, "the {what} door is not open: {default} is taken; give another address");
                eprintln!("careledger: the {what} door is not open ({default}: {e})");
                Ok(None)
            }
        },
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let running = start(&args).await?;
    running.announce();
    running.finish(false).await
}

fn token(action: TokenAction, state_dir: &Path) -> Result<()> {
    create_private_dir(state_dir)?;
    let tokens = TokenRegistry::load(&state_dir.join("tokens.json"))?;
    match action {
        TokenAction::Create {
            name,
            role,
            scope,
            expires,
        } => {
            let Some(role) = Role::parse(&role) else {
                bail!("unknown role {role:?}: use source:<id>, analyst, dashboard or admin");
            };
            if let Some(scope) = &scope {
                check_scope(scope)?;
            }
            let expires_at = expires.as_deref().map(parse_expiry).transpose()?;
            println!(
                "{}",
                tokens.create_with_expiry(&name, &role, scope.as_deref(), expires_at)?
            );
        }
        TokenAction::List => {
            let zone = configured_zone()?;
            for t in tokens.list() {
                let state = if t.revoked {
                    "revoked".to_string()
                } else {
                    match t.expires_at {
                        Some(e) if e <= chrono::Utc::now() => {
                            format!("expired {}", zone.display(e))
                        }
                        Some(e) => format!("active until {}", zone.display(e)),
                        None => "active".to_string(),
                    }
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.name,
                    t.role,
                    t.scope.unwrap_or_default(),
                    state,
                    t.created_at
                );
            }
        }
        TokenAction::Revoke { name } => {
            if !tokens.revoke(&name)? {
                bail!("no active token named {name}");
            }
            println!("revoked {name}");
        }
    }
    Ok(())
}
