//! The PostgreSQL wire door (`serve --pg-listen`, default 127.0.0.1:5433): psql, DBeaver,
//! pandas (psycopg), Metabase and Grafana's PostgreSQL data source connect as they would to
//! PostgreSQL. It only translates: every statement goes to [`crate::engine`], which applies
//! the same roles, scopes, read-only rules, limits, timeout and audit as `/v1/sql`.
//!
//! - **Sign-in.** The password is a careledger token (the user name is free). Analyst and
//!   admin tokens are let in; dashboard and source tokens are refused at sign-in. A
//!   connection from another host must use TLS (`--pg-tls-cert`/`--pg-tls-key`; the server
//!   does not start on a non-loopback address without them).
//! - **Catalog.** `pg_catalog` and `information_schema` are emulated over the caller's own
//!   tables (datafusion-pg-catalog), enough for psql's `\dt` and `\d`, and the catalog
//!   queries of BI tools; their SQL is rewritten into what DataFusion plans.
//! - **Session.** `SET careledger.known_at = '…'` (an RFC 3339 instant or a date; `DEFAULT`
//!   clears it) sets the knowledge instant of the statements after it, and `SHOW
//!   careledger.known_at` reads it back. A few client housekeeping settings are accepted and
//!   ignored; every other `SET` is refused. `BEGIN`/`COMMIT`/`ROLLBACK` are accepted: every
//!   statement is read-only.
//! - **Reports.** A named report is a table function: `SELECT * FROM stock(as_of =>
//!   '2024-06-30', level => 'county')`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_schema::{DataType, SchemaRef};
use async_trait::async_trait;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, MemoryCatalogProvider};
use datafusion::common::ParamValues;
use datafusion::datasource::TableType;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables,
};
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::AppState;
use crate::auth::Principal;
use crate::engine::{self, Ask, Door, Ran, Want};
use crate::problem::Problem;

/// Where the PostgreSQL door listens, and its TLS certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub listen: SocketAddr,
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The session catalog with `pg_catalog` beside the caller's tables, in catalogs of its own
/// ([`crate::engine::own_catalogs`]): the snapshot's are left as they were.
pub(crate) async fn with_pg_catalog(
    ctx: &SessionContext,
) -> datafusion::error::Result<SessionContext> {
    let ctx = crate::engine::own_catalogs(ctx)?;
    // The functions PostgreSQL clients call (pg_table_is_visible, format_type, …), and a
    // pg_catalog schema, replaced at once by one that keeps every table's OID.
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(|e| *e)?;
    let provider = pg_catalog_for(&ctx).await?;
    if let Some(catalog) = ctx.catalog("datafusion") {
        catalog.register_schema("pg_catalog", provider)?;
    }
    Ok(ctx)
}

type PgCatalog = PgCatalogSchemaProvider<SortedCatalog, EmptyContextProvider>;

/// One `pg_catalog` per set of tables a caller can see, kept for the life of the process:
/// psql finds a table's OID in one statement and asks for its columns by that OID in the
/// next, each on a snapshot of its own, so the OIDs must outlive a snapshot. It describes
/// the tables' names and columns only (empty tables of the same schemas): no data, no
/// snapshot is held.
async fn pg_catalog_for(
    ctx: &SessionContext,
) -> datafusion::error::Result<Arc<dyn datafusion::catalog::SchemaProvider>> {
    static CATALOGS: std::sync::LazyLock<Mutex<std::collections::HashMap<String, Arc<PgCatalog>>>> =
        std::sync::LazyLock::new(Default::default);
    static STATIC_TABLES: std::sync::OnceLock<Arc<PgCatalogStaticTables>> =
        std::sync::OnceLock::new();
    let Some(public) = ctx.catalog("datafusion").and_then(|c| c.schema("public")) else {
        return Err(datafusion::error::DataFusionError::Plan(
            "no public schema".into(),
        ));
    };
    let mut names = public.table_names();
    names.sort();
    let key = names.join(",");
    if let Some(p) = CATALOGS.lock().expect("lock").get(&key) {
        return Ok(p.clone());
    }
    let shape = MemoryCatalogProvider::new();
    let tables = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
    for name in &names {
        if let Some(t) = public.table(name).await? {
            let empty = datafusion::datasource::empty::EmptyTable::new(t.schema());
            datafusion::catalog::SchemaProvider::register_table(
                tables.as_ref(),
                name.clone(),
                Arc::new(empty),
            )?;
        }
    }
    shape.register_schema("public", tables)?;
    let list = Arc::new(MemoryCatalogProviderList::new());
    list.register_catalog("datafusion".into(), Arc::new(shape));
    let static_tables = match STATIC_TABLES.get() {
        Some(t) => t.clone(),
        None => {
            let t = Arc::new(PgCatalogStaticTables::try_new()?);
            STATIC_TABLES.get_or_init(|| t).clone()
        }
    };
    let provider = Arc::new(PgCatalogSchemaProvider::try_new(
        SortedCatalog(list as Arc<dyn CatalogProviderList>),
        static_tables,
        EmptyContextProvider,
    )?);
    let mut catalogs = CATALOGS.lock().expect("lock");
    Ok(catalogs.entry(key).or_insert(provider).clone())
}

/// The catalog as `pg_catalog` sees it: names in sorted order (OIDs are handed out in that
/// order), and the ledger's tables shown as tables (`\dt`), whatever views build them.
#[derive(Debug, Clone)]
struct SortedCatalog(Arc<dyn CatalogProviderList>);

#[async_trait]
impl CatalogInfo for SortedCatalog {
    async fn catalog_names(&self) -> datafusion::error::Result<Vec<String>> {
        let mut names = CatalogProviderList::catalog_names(self.0.as_ref());
        names.sort();
        Ok(names)
    }

    async fn schema_names(&self, catalog: &str) -> datafusion::error::Result<Option<Vec<String>>> {
        Ok(self.0.catalog(catalog).map(|c| {
            let mut names = c.schema_names();
            names.sort();
            names
        }))
    }

    async fn table_names(
        &self,
        catalog: &str,
        schema: &str,
    ) -> datafusion::error::Result<Option<Vec<String>>> {
        Ok(self
            .0
            .catalog(catalog)
            .and_then(|c| c.schema(schema))
            .map(|s| {
                let mut names = s.table_names();
                names.sort();
                names
            }))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> datafusion::error::Result<Option<SchemaRef>> {
        CatalogInfo::table_schema(&self.0, catalog, schema, table).await
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> datafusion::error::Result<Option<TableType>> {
        let t = CatalogInfo::table_type(&self.0, catalog, schema, table).await?;
        Ok(t.map(|t| {
            if schema == "public" {
                TableType::Base
            } else {
                t
            }
        }))
    }
}

/// Starts the door on `listener`; runs until the task is dropped.
pub async fn serve_pg(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<(PathBuf, PathBuf)>,
) -> std::io::Result<()> {
    let acceptor = match &tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let door = Arc::new(PgDoor::new(state));
    loop {
        let (socket, _) = listener.accept().await?;
        let (door, acceptor) = (door.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, door).await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended with an error");
            }
        });
    }
}

/// Checks the door's address before anything listens: another host may connect only over
/// TLS.
pub fn check_listen(cfg: &PgConfig) -> Result<(), String> {
    if !cfg.listen.ip().is_loopback() && cfg.tls.is_none() {
        return Err(format!(
            "--pg-listen {} is reachable from other hosts: give --pg-tls-cert and --pg-tls-key (tokens must not cross the network in clear), or listen on 127.0.0.1",
            cfg.listen
        ));
    }
    Ok(())
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<pgwire::tokio::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("reading the TLS certificate", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("reading the TLS certificate", cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("reading the TLS key", key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

/// The PostgreSQL version the door reports: psql and drivers pick their catalog queries by it.
const SERVER_VERSION: &str = "15.0 (careledger)";

/// Who a connection signed in as, and its knowledge instant.
#[derive(Debug)]
struct Session {
    principal: Principal,
    known_at: Mutex<Option<DateTime<Utc>>>,
}

/// The door's handlers: sign-in, simple and extended queries.
#[derive(Debug)]
struct PgDoor {
    state: Arc<AppState>,
    parser: Arc<PgParser>,
    params: Arc<DefaultServerParameterProvider>,
}

impl PgDoor {
    fn new(state: Arc<AppState>) -> PgDoor {
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = SERVER_VERSION.into();
        params.default_transaction_read_only = true;
        params.time_zone = state.config.time_zone.name().to_string();
        PgDoor {
            parser: Arc::new(PgParser {
                state: state.clone(),
                sql: PostgresCompatibilityParser::new(),
            }),
            state,
            params: Arc::new(params),
        }
    }
}

impl PgWireServerHandlers for PgDoor {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Queries {
            state: self.state.clone(),
            parser: self.parser.clone(),
        })
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Queries {
            state: self.state.clone(),
            parser: self.parser.clone(),
        })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(SignIn {
            state: self.state.clone(),
            params: self.params.clone(),
        })
    }
}

/// Cleartext password sign-in with a careledger token.
struct SignIn {
    state: Arc<AppState>,
    params: Arc<DefaultServerParameterProvider>,
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for SignIn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !client.socket_addr().ip().is_loopback() && !client.is_secure() {
                    return Err(fatal(
                        "28000",
                        "connections from other hosts must use TLS (sslmode=require)".into(),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let token = pwd.into_password()?.password;
                let principal = self
                    .state
                    .tokens
                    .authenticate_token(token.trim())
                    .map_err(|e| fatal("28P01", format!("careledger: {}", e.detail)))?;
                engine::may_run_sql(&principal)
                    .map_err(|e| fatal("28000", format!("careledger: {}", e.detail)))?;
                client.session_extensions().get_or_insert_with(|| Session {
                    principal,
                    known_at: Mutex::new(None),
                });
                finish_authentication(client, self.params.as_ref()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A statement as the door keeps it between Parse and Execute.
#[derive(Debug, Clone)]
enum PgStatement {
    /// Answered by the door (SET, SHOW, transaction control).
    Local(Box<Statement>),
    /// For the engine: the SQL as DataFusion will plan it, its columns and parameters.
    Query {
        sql: String,
        schema: SchemaRef,
        params: Vec<Option<DataType>>,
    },
}

#[derive(Debug)]
struct PgParser {
    state: Arc<AppState>,
    sql: PostgresCompatibilityParser,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn").finish_non_exhaustive()
    }
}

/// The signed-in session of a connection (every query handler is past sign-in).
fn session_of<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Session>()
        .ok_or_else(|| fatal("28000", "not signed in".into()))
}

impl PgParser {
    /// The statements of `sql`, rewritten where PostgreSQL clients' catalog SQL needs it.
    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        let head = sql.trim_start().get(..5).unwrap_or_default();
        if head.eq_ignore_ascii_case("copy ") || head.eq_ignore_ascii_case("copy\n") {
            return Err(user_error(
                "25006",
                "COPY is not available: careledger is read-only through SQL and answers leave by SELECT (in psql, \\pset format csv and \\o FILE write a SELECT's answer to a file)".into(),
            ));
        }
        let sql = search_path_answered(sql);
        self.sql
            .parse(&sql)
            .map_err(|e| user_error("42601", format!("syntax error: {e}")))
    }
}

/// The subquery by which Grafana's PostgreSQL data source resolves the session's
/// `search_path` into schema names, when it lists tables and columns.
const GRAFANA_SEARCH_PATH: &str = r#"SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM generate_series(
        array_lower(string_to_array(current_setting('search_path'),','),1),
        array_upper(string_to_array(current_setting('search_path'),','),1)
    ) as i, string_to_array(current_setting('search_path'),',') s"#;

/// Grafana's search-path subquery answered as PostgreSQL would answer it here: the search
/// path is `public`, where every table is. Grafana writes it inside `IN (…)`, so it becomes
/// the list `IN ('public')` (DataFusion plans no subquery inside an `ORDER BY`, where
/// Grafana also puts it). (DataFusion has no `current_setting` or
/// set-returning `string_to_array`; the compatibility parser's own rewrite of this subquery
/// matches nothing, which left Grafana's table names schema-qualified and its column list
/// empty.) Whitespace is ignored in the match, as Grafana indents it differently by version.
fn search_path_answered(sql: &str) -> std::borrow::Cow<'_, str> {
    let want: Vec<char> = GRAFANA_SEARCH_PATH
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut out = String::new();
    let mut rest = sql;
    let mut changed = false;
    'search: while let Some(start) = rest.to_ascii_lowercase().find("select") {
        let mut matched = 0;
        for (i, c) in rest[start..].char_indices() {
            if c.is_whitespace() {
                continue;
            }
            if !c.eq_ignore_ascii_case(&want[matched]) {
                break;
            }
            matched += 1;
            if matched == want.len() {
                let end = start + i + c.len_utf8();
                out.push_str(&rest[..start]);
                out.push_str("'public'");
                rest = &rest[end..];
                changed = true;
                continue 'search;
            }
        }
        out.push_str(&rest[..start + 6]);
        rest = &rest[start + 6..];
    }
    if !changed {
        return std::borrow::Cow::Borrowed(sql);
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Statements the door answers itself.
fn is_local(s: &Statement) -> bool {
    matches!(
        s,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Discard { .. }
    )
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse(sql)?;
        if statements.len() > 1 {
            return Err(user_error(
                "42601",
                "a prepared statement holds one statement".into(),
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        if is_local(&statement) {
            return Ok(Some(PgStatement::Local(Box::new(statement))));
        }
        let session = session_of(client)?;
        let sql = statement.to_string();
        let ask = Ask {
            sql: sql.clone(),
            params: None,
            params_text: None,
            known_at: *session.known_at.lock().expect("lock"),
            want: Want::Describe,
        };
        let (ran, _, _) = engine::run(
            &self.state.engine,
            &session.principal,
            Door::Postgres,
            ask,
            Instant::now(),
        )
        .await
        .map_err(pg_error)?;
        let Ran::Described(schema, params) = ran else {
            return Err(pg_error(Problem::internal("planning", &"not described")));
        };
        Ok(Some(PgStatement::Query {
            sql,
            schema,
            params,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        match stmt {
            PgStatement::Local(_) => Ok(vec![]),
            PgStatement::Query { params, .. } => params
                .iter()
                .map(|t| match t {
                    Some(t) => into_pg_type(&crate::output::plain_type(t)),
                    None => Ok(Type::UNKNOWN),
                })
                .collect(),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            PgStatement::Local(s) => Ok(local_fields(s)),
            PgStatement::Query { schema, .. } => arrow_schema_to_pg_fields(
                &crate::output::plain_schema(schema),
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
        }
    }
}

/// The handlers of statements, simple and extended.
struct Queries {
    state: Arc<AppState>,
    parser: Arc<PgParser>,
}

impl Queries {
    /// Runs one statement through the engine and streams its rows.
    async fn run(
        &self,
        session: &Session,
        sql: String,
        params: Option<ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let started = Instant::now();
        // `serve --read-your-writes` holds here too.
        crate::query::wait_if_asked(&self.state, None)
            .await
            .map_err(pg_error)?;
        let params_text = params.as_ref().map(|p| format!("{p:?}"));
        let ask = Ask {
            sql,
            params,
            params_text,
            known_at: *session.known_at.lock().expect("lock"),
            want: Want::Stream,
        };
        let (ran, _, audit) = engine::run(
            &self.state.engine,
            &session.principal,
            Door::Postgres,
            ask,
            started,
        )
        .await
        .map_err(pg_error)?;
        let Ran::Stream(stream, running) = ran else {
            return Err(pg_error(Problem::internal("the query", &"not streamed")));
        };
        let schema = crate::output::plain_schema(&stream.schema());
        let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, None)?);
        let batches = engine::pump(self.state.engine.clone(), stream, running, audit, started);
        Ok(Response::Query(QueryResponse::new(
            fields.clone(),
            rows(batches, fields),
        )))
    }
}

/// The rows of the engine's batches, encoded for the wire.
fn rows(
    batches: engine::Batches,
    fields: Arc<Vec<FieldInfo>>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    batches.flat_map(move |item| {
        let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> =
            match item.and_then(|b| crate::output::plain(&b)) {
                Ok(batch) => encode_recordbatch(fields.clone(), batch),
                Err(e) => Box::new(std::iter::once(Err(pg_error(e)))),
            };
        futures::stream::iter(rows)
    })
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let statements = self.parser.parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::new();
        for statement in statements {
            if is_local(&statement) {
                out.push(local(&session, self.state.warehouse.zone(), &statement)?);
            } else {
                out.push(
                    self.run(&session, statement.to_string(), None, &Format::UnifiedText)
                        .await?,
                );
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = PgStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = PgStatement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        match &portal.statement.statement {
            PgStatement::Local(s) => local(&session, self.state.warehouse.zone(), s),
            PgStatement::Query { sql, params, .. } => {
                let server: Vec<Type> = self
                    .parser
                    .get_parameter_types(&portal.statement.statement)?;
                let server: Vec<Option<&Type>> = server.iter().map(Some).collect();
                let inferred: Vec<Option<&DataType>> = params.iter().map(Option::as_ref).collect();
                let values = if params.is_empty() && portal.parameters.is_empty() {
                    None
                } else {
                    Some(deserialize_parameters_with_server_types(
                        portal, &inferred, &server,
                    )?)
                };
                self.run(&session, sql.clone(), values, &portal.result_column_format)
                    .await
            }
        }
    }
}

/// Settings clients send on their own, accepted and ignored (they change nothing careledger
/// computes).
const HOUSEKEEPING: [&str; 5] = [
    "application_name",
    "extra_float_digits",
    "client_encoding",
    "datestyle",
    "client_min_messages",
];

const KNOWN_AT: &str = "careledger.known_at";

/// Answers SET, SHOW and transaction control.
fn local(
    session: &Session,
    zone: &careledger_model::LocalZone,
    s: &Statement,
) -> PgWireResult<Response> {
    match s {
        Statement::StartTransaction { .. } => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
        Statement::Commit { .. } => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
        Statement::Rollback { .. } => Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))),
        Statement::Discard { .. } => Ok(Response::Execution(Tag::new("DISCARD ALL"))),
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) => {
            let name = variable.to_string().to_lowercase();
            if name == KNOWN_AT {
                let value = values.first().and_then(set_value);
                let known_at = match value.as_deref() {
                    None | Some("default") | Some("DEFAULT") | Some("") => None,
                    Some(text) => Some(
                        careledger_warehouse::reports::parse_instant(text, zone).ok_or_else(
                            || {
                                user_error(
                                    "22023",
                                    format!(
                                        "{KNOWN_AT} {text:?} is not an RFC 3339 instant or a date"
                                    ),
                                )
                            },
                        )?,
                    ),
                };
                *session.known_at.lock().expect("lock") = known_at;
                Ok(Response::Execution(Tag::new("SET")))
            } else if HOUSEKEEPING.contains(&name.as_str()) {
                Ok(Response::Execution(Tag::new("SET")))
            } else {
                Err(refuse_set(&name))
            }
        }
        // Isolation and access modes: every answer is a read of one snapshot already, and
        // writes are refused whatever the mode (Metabase and JDBC set these at sign-in).
        Statement::Set(Set::SetTransaction { .. }) => Ok(Response::Execution(Tag::new("SET"))),
        Statement::Set(other) => Err(refuse_set(&other.to_string())),
        Statement::ShowVariable { variable } => {
            let name = show_name(variable);
            let value = match name.as_str() {
                KNOWN_AT => session
                    .known_at
                    .lock()
                    .expect("lock")
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "now".into()),
                "transaction_read_only" | "default_transaction_read_only" => "on".into(),
                "transaction isolation level" | "transaction_isolation" => "read committed".into(),
                "standard_conforming_strings" => "on".into(),
                "server_version" => SERVER_VERSION.into(),
                "client_encoding" | "server_encoding" => "UTF8".into(),
                "timezone" | "time zone" => zone.name().into(),
                "search_path" => "public".into(),
                _ => {
                    return Err(user_error(
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    ));
                }
            };
            let fields = Arc::new(vec![FieldInfo::new(
                name,
                None,
                None,
                Type::TEXT,
                FieldFormat::Text,
            )]);
            let mut encoder = DataRowEncoder::new(fields.clone());
            encoder.encode_field(&value)?;
            let row = encoder.take_row();
            Ok(Response::Query(QueryResponse::new(
                fields,
                futures::stream::iter(vec![Ok(row)]),
            )))
        }
        _ => Err(user_error("0A000", format!("{s} is not supported"))),
    }
}

/// The setting `SHOW` names: `careledger.known_at` arrives as two names, `TRANSACTION
/// ISOLATION LEVEL` as three words.
fn show_name(variable: &[datafusion::sql::sqlparser::ast::Ident]) -> String {
    let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
    if words.len() == 2 {
        words.join(".")
    } else {
        words.join(" ")
    }
}

fn local_fields(s: &Statement) -> Vec<FieldInfo> {
    match s {
        Statement::ShowVariable { variable } => vec![FieldInfo::new(
            show_name(variable),
            None,
            None,
            Type::TEXT,
            FieldFormat::Text,
        )],
        _ => vec![],
    }
}

fn set_value(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            datafusion::sql::sqlparser::ast::Value::SingleQuotedString(s) => Some(s.clone()),
            other => Some(other.to_string()),
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        other => Some(other.to_string()),
    }
}

fn refuse_set(name: &str) -> PgWireError {
    user_error(
        "42501",
        format!(
            "SET {name} is not allowed: the one setting is {KNOWN_AT} (SET {KNOWN_AT} = '2024-06-30'); the server's limits are not the session's to change"
        ),
    )
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// The engine's problem as a PostgreSQL error, with the SQLSTATE a client can act on.
fn pg_error(p: Problem) -> PgWireError {
    let code = match (p.status, p.slug) {
        (_, "forbidden") => "42501",
        (_, "unauthorized") => "28000",
        (_, "query-timeout") => "57014",
        (_, "query-memory-limit") => "53200",
        (_, "too-many-queries") => "53300",
        (_, "query-limit" | "query-too-complex" | "too-many-rows" | "sql-too-long") => "54000",
        (_, "bad-parameter" | "outside-scope") => "22023",
        (_, "bad-query") if p.detail.contains("not supported") => "25006",
        (_, "bad-query") => "42601",
        (_, "query-failed") => "22000",
        (StatusCode::NOT_FOUND, _) => "42704",
        _ => "XX000",
    };
    let message = if code == "25006" {
        format!("careledger is read-only through SQL: {}", p.detail)
    } else {
        p.detail
    };
    user_error(code, message)
}

#[cfg(test)]
mod compat_tests {
    use super::search_path_answered;

    /// Grafana's subquery, indented as Grafana sends it, becomes `'public'`; the
    /// rest of the statement is left as it was, and other SQL is not touched.
    #[test]
    fn grafanas_search_path_subquery_is_answered_with_public() {
        let grafana = r#"SELECT quote_ident(table_name) FROM information_schema.tables WHERE quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              ) ORDER BY 1"#;
        assert_eq!(
            search_path_answered(grafana),
            "SELECT quote_ident(table_name) FROM information_schema.tables WHERE quote_ident(table_schema) IN (\n              'public'\n              ) ORDER BY 1"
        );
        let plain = "select 'SELECT CASE' AS x, 1";
        assert_eq!(search_path_answered(plain), plain);
    }
}
