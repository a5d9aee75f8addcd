//! The Arrow Flight SQL door (`serve --flight-listen`, default 127.0.0.1:50051): ADBC's
//! Flight SQL driver, pyarrow.flight and JDBC's Flight SQL driver fetch answers as Arrow.
//! Like the PostgreSQL door it only translates; [`crate::engine`] decides and audits.
//!
//! - **Sign-in.** Every call carries `authorization: Bearer <token>`. A handshake with basic
//!   auth (any user name, the token as password) answers with that bearer token, for clients
//!   that sign in that way. Analyst and admin tokens only.
//! - **Statements.** `CommandStatementQuery` (GetFlightInfo, then DoGet on its ticket) and
//!   prepared statements without parameters. The ticket carries the statement itself, so
//!   DoGet authenticates and runs it again as its caller: a ticket is worth nothing without
//!   a token. Header `careledger-known-at` sets the knowledge instant.
//! - **SqlInfo** names the server and says it is read-only.
//! - **TLS** with `--flight-tls-cert`/`--flight-tls-key` (`grpc+tls://`); required when the
//!   door listens beyond loopback.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetSqlInfo, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use arrow_schema::{Schema, SchemaRef};
use base64::Engine as _;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::auth::Principal;
use crate::engine::{self, Ask, Door, Ran, Want};
use crate::problem::Problem;

/// Serves Flight SQL on `listener` until the task is dropped, over TLS when `tls` names a
/// certificate and key (PEM). A door on an address other hosts can reach must have TLS: the
/// token crosses the network with every call. The certificate is read here, so a bad one
/// stops the server at start, not at the first call.
pub fn serve_flight(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send, String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the Flight SQL listener: {e}"))?;
    if !addr.ip().is_loopback() && tls.is_none() {
        return Err(format!(
            "--flight-listen {addr} is reachable from other hosts: give --flight-tls-cert and --flight-tls-key (tokens must not cross the network in clear), or listen on 127.0.0.1"
        ));
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        // tonic asks rustls for the process's crypto provider; two are linked into this
        // binary (ring and aws-lc-rs through other crates), so one must be named. An error
        // here means one was installed already, which is as good.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
        let identity = tonic::transport::Identity::from_pem(read(&cert)?, read(&key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| {
                format!(
                    "--flight-tls-cert {} / --flight-tls-key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
    }
    let door = FlightDoor { state };
    Ok(builder
        .add_service(FlightServiceServer::new(door))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)))
}

#[derive(Debug)]
struct FlightDoor {
    state: Arc<AppState>,
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "careledger");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.build().expect("static SqlInfo")
});

/// The engine's problem as a gRPC status.
fn status(p: Problem) -> Status {
    use axum::http::StatusCode;
    match p.status {
        StatusCode::UNAUTHORIZED => Status::unauthenticated(p.detail),
        StatusCode::FORBIDDEN => Status::permission_denied(p.detail),
        StatusCode::NOT_FOUND => Status::not_found(p.detail),
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
            Status::invalid_argument(p.detail)
        }
        StatusCode::UNPROCESSABLE_ENTITY => Status::resource_exhausted(p.detail),
        StatusCode::SERVICE_UNAVAILABLE if p.slug == "query-timeout" => {
            Status::deadline_exceeded(p.detail)
        }
        StatusCode::SERVICE_UNAVAILABLE if p.slug != "unavailable" => {
            Status::resource_exhausted(p.detail)
        }
        _ => Status::unavailable(p.detail),
    }
}

impl FlightDoor {
    /// The caller: `authorization: Bearer <token>`, analysts and admins.
    fn principal(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let value = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no authorization header: send authorization: Bearer <token>",
                )
            })?;
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => {
                return Err(Status::unauthenticated(
                    "authorization must be Bearer <token> (or sign in by handshake with basic auth)",
                ));
            }
        };
        let p = self
            .state
            .tokens
            .authenticate_token(token)
            .map_err(status)?;
        engine::may_run_sql(&p).map_err(status)?;
        Ok(p)
    }

    fn known_at(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
        let text = metadata
            .get("careledger-known-at")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        crate::engine::known_at_of(&self.state.engine, text.as_deref()).map_err(status)
    }

    /// Plans `sql` as the caller: its result's schema.
    async fn describe(&self, metadata: &MetadataMap, sql: &str) -> Result<SchemaRef, Status> {
        let p = self.principal(metadata)?;
        let ask = Ask {
            sql: sql.to_string(),
            params: None,
            params_text: None,
            known_at: self.known_at(metadata)?,
            want: Want::Describe,
        };
        let (ran, _, _) = engine::run(&self.state.engine, &p, Door::Flight, ask, Instant::now())
            .await
            .map_err(status)?;
        match ran {
            Ran::Described(schema, _) => Ok(Arc::new(crate::output::plain_schema(&schema))),
            _ => Err(Status::internal("the statement was not planned")),
        }
    }

    /// Runs `sql` as the caller and streams its batches as Flight data.
    async fn stream(
        &self,
        metadata: &MetadataMap,
        sql: String,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let started = Instant::now();
        let p = self.principal(metadata)?;
        crate::query::wait_if_asked(&self.state, None)
            .await
            .map_err(status)?;
        let ask = Ask {
            sql,
            params: None,
            params_text: None,
            known_at: self.known_at(metadata)?,
            want: Want::Stream,
        };
        let (ran, _, audit) = engine::run(&self.state.engine, &p, Door::Flight, ask, started)
            .await
            .map_err(status)?;
        let Ran::Stream(stream, running) = ran else {
            return Err(Status::internal("the statement was not streamed"));
        };
        let schema = Arc::new(crate::output::plain_schema(&stream.schema()));
        let batches = engine::pump(self.state.engine.clone(), stream, running, audit, started);
        let batches = batches.map(|item| {
            item.and_then(|b| crate::output::plain(&b))
                .map_err(|e| arrow_flight::error::FlightError::Tonic(Box::new(status(e))))
        });
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }

    fn info(
        &self,
        schema: &Schema,
        ticket: Ticket,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor)
            .with_ordered(true);
        Ok(Response::new(info))
    }
}

/// A statement handle: the statement's text (the door keeps no state between calls).
fn handle_sql(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec())
        .map_err(|_| Status::invalid_argument("the statement handle is not one this server made"))
}

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlightSqlService for FlightDoor {
    type FlightService = FlightDoor;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "sign in with basic auth (any user, the token as password) or send authorization: Bearer <token>",
                )
            })?
            .to_string();
        let token = match header.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
                use base64::engine::general_purpose::{
                    STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
                };
                let rest = rest.trim();
                let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                    .iter()
                    .find_map(|e| e.decode(rest).ok())
                    .ok_or_else(|| {
                        Status::unauthenticated(format!(
                            "basic auth is not base64 ({} characters)",
                            rest.len()
                        ))
                    })?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| Status::unauthenticated("basic auth is not UTF-8"))?;
                text.split_once(':')
                    .map(|(_, pass)| pass.to_string())
                    .ok_or_else(|| Status::unauthenticated("basic auth needs user:password"))?
            }
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                rest.trim().to_string()
            }
            _ => {
                return Err(Status::unauthenticated(
                    "authorization must be Basic or Bearer",
                ));
            }
        };
        let p = self
            .state
            .tokens
            .authenticate_token(&token)
            .map_err(status)?;
        engine::may_run_sql(&p).map_err(status)?;
        let bearer = format!("Bearer {token}");
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: bytes::Bytes::new(),
        };
        let mut resp: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter(vec![Ok(answer)])));
        resp.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?,
        );
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.describe(request.metadata(), &query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.clone().into(),
        };
        let ticket = Ticket::new(ticket.as_any().encode_to_vec());
        self.info(&schema, ticket, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let sql = handle_sql(&ticket.statement_handle)?;
        self.stream(request.metadata(), sql).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let schema = self.describe(request.metadata(), &query.query).await?;
        let IpcMessage(schema_bytes) =
            SchemaAsIpc::new(&schema, &arrow_ipc::writer::IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into(),
            dataset_schema: schema_bytes,
            parameter_schema: bytes::Bytes::new(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = handle_sql(&query.prepared_statement_handle)?;
        let schema = self.describe(request.metadata(), &sql).await?;
        let ticket = Ticket::new(query.as_any().encode_to_vec());
        self.info(&schema, ticket, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        let sql = handle_sql(&query.prepared_statement_handle)?;
        self.stream(request.metadata(), sql).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(request.metadata())?;
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        let ticket = Ticket::new(query.as_any().encode_to_vec());
        self.info(&schema, ticket, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        self.principal(request.metadata())?;
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        let batch = builder.build();
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoGetStream>,
        Status,
    > {
        Err(Status::unimplemented(format!(
            "careledger does not answer {} tickets; send CommandStatementQuery",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
