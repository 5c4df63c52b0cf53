//! `rewind ui`: a web view of the fleet, releases, runs and drills, served
//! on loopback by the operator's own `rewind`, which talks to the
//! coordinator with the operator's own certificate. The page therefore
//! shows and does only what that operator's role allows, and the
//! coordinator checks every action again.
//!
//! Pages are rendered on the server (`pages`); a run's page follows the run
//! through server-sent events fed by the coordinator's Watch stream, and
//! re-renders its live part as events arrive. The assets are compiled into
//! the binary: the page needs nothing from the internet.
//!
//! A local web server acting with a certificate's authority must not be
//! usable by other web pages: it answers only requests whose Host is its
//! own address (no DNS rebinding), and an action (approve, cancel) needs a
//! token that only its own pages carry, in a header that another site
//! cannot send without a CORS preflight this server never grants.

pub mod pages;

use crate::cli::client::{Client, Connection, PREVIEW, QUICK, refused, request};
use crate::cli::drill::fetch_report;
use crate::runner::now_ms;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use pages::Viewer;
use rewind_proto::v1::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");
/// The header an action must carry, with the page's token.
pub const TOKEN_HEADER: &str = "x-rewind-token";

struct Ui {
    client: Client,
    operator: String,
    role: String,
    token: String,
    /// The Host values this server answers to.
    hosts: Vec<String>,
    plans: PathBuf,
}

type Shared = Arc<Ui>;

impl Ui {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            operator: &self.operator,
            role: &self.role,
            token: &self.token,
        }
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// A page saying why what was asked could not be shown.
    fn failure(&self, title: &str, status: tonic::Status) -> Response {
        let code = http_status(&status);
        let message = refused(status).to_string();
        (
            code,
            Html(pages::error_page(&self.viewer(), title, &message).0),
        )
            .into_response()
    }

    /// The plan files (*.toml) of the plans directory, by name.
    fn plans(&self) -> Vec<String> {
        let mut plans: Vec<String> = std::fs::read_dir(&self.plans)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.ends_with(".toml") && !name.starts_with('.'))
            .collect();
        plans.sort();
        plans
    }
}

/// The HTTP status that says what a gRPC refusal said.
fn http_status(status: &tonic::Status) -> StatusCode {
    use tonic::Code;
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// A call to the coordinator with a deadline, on both sides.
async fn call<T>(
    limit: Duration,
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(limit, future).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer from the coordinator within {}",
            humantime::format_duration(limit)
        ))),
    }
}

fn page(markup: Markup) -> Response {
    Html(markup.0).into_response()
}

/// Serve the web view on `listen` (loopback only) until ctrl-c or SIGTERM;
/// `ready` is told the address it listens on.
pub async fn serve(
    connection: &Connection,
    listen: SocketAddr,
    plans: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "rewind ui acts with your certificate, so it listens on loopback only; {listen} is not a loopback address \
             (others watch with their own `rewind ui`, or over an SSH tunnel to yours)"
        );
    }
    let mut client = connection.connect().await?;
    let who = call(QUICK, client.who_am_i(request(WhoAmIRequest {}, QUICK)))
        .await
        .map_err(refused)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr()?;
    let port = local.port();
    let hosts = vec![
        local.to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    let token = hex::encode(rand::random::<[u8; 32]>());
    let ui = Arc::new(Ui {
        client,
        operator: who.operator,
        role: who.role,
        token,
        hosts,
        plans,
    });
    println!(
        "rewind ui at http://{local}/ as operator {} (role {}), coordinator {}",
        ui.operator, ui.role, connection.coordinator
    );
    axum::serve(listener, router(ui))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("the web view stopped: {e}"))
}

fn router(ui: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/fleet") }))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/fleet", get(fleet))
        .route("/releases", get(releases))
        .route("/preview", get(preview))
        .route("/runs", get(runs))
        .route("/runs/{run}", get(run))
        .route("/runs/{run}/live", get(live))
        .route("/runs/{run}/report", get(report))
        .route("/runs/{run}/events", get(events))
        .route("/runs/{run}/approve", post(approve))
        .route("/runs/{run}/cancel", post(cancel))
        .route("/drills", get(drills))
        .route("/drills/{drill}", get(drill))
        .route("/drills/{drill}/runs/{run}", get(drill_report))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

/// Only requests addressed to this server, and actions only from its own
/// pages; every answer tells the browser to load nothing from elsewhere.
async fn guard(State(ui): State<Shared>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !ui.hosts.contains(&host) {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "refused: this web view answers at http://{}/ only (the request was for host `{host}`)",
                ui.hosts[0]
            ),
        )
            .into_response();
    }
    // A preview makes every host of the plan run its plugins: an action,
    // though a GET (a form's), so it carries the page's token too.
    let acts = request.method() != Method::GET && request.method() != Method::HEAD;
    if request.uri().path() == "/preview" {
        let token = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="));
        if token != Some(ui.token.as_str()) {
            return (
                StatusCode::FORBIDDEN,
                "refused: a preview must come from this web view's own page (its token is missing or wrong)",
            )
                .into_response();
        }
    }
    if acts {
        let token = request
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|h| h.to_str().ok());
        if token != Some(ui.token.as_str()) {
            return (
                StatusCode::FORBIDDEN,
                "refused: an action must come from this web view's own page (its token is missing or wrong)",
            )
                .into_response();
        }
        if let Some(origin) = request.headers().get(header::ORIGIN)
            && origin.as_bytes() != format!("http://{host}").as_bytes()
        {
            return (
                StatusCode::FORBIDDEN,
                "refused: an action must come from this web view's own page (another origin sent it)",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn fleet(State(ui): State<Shared>) -> Response {
    match call(QUICK, ui.client().fleet(request(FleetRequest {}, QUICK))).await {
        Ok(reply) => page(pages::fleet(&ui.viewer(), &reply, now_ms())),
        Err(status) => ui.failure("Fleet", status),
    }
}

async fn releases(State(ui): State<Shared>) -> Response {
    let mut client = ui.client();
    match call(
        QUICK,
        client.list_releases(request(ListReleasesRequest {}, QUICK)),
    )
    .await
    {
        Ok(reply) => page(pages::releases(&ui.viewer(), &reply, &ui.plans())),
        Err(status) => ui.failure("Releases", status),
    }
}

#[derive(serde::Deserialize)]
struct PreviewQuery {
    plan: String,
    release: String,
    /// Empty: the plan's environment, or the fleet's only one.
    #[serde(default)]
    env: String,
}

async fn preview(State(ui): State<Shared>, Query(query): Query<PreviewQuery>) -> Response {
    // Only a plan file listed in the plans directory, by its exact name.
    if !ui.plans().contains(&query.plan) {
        let message = format!("no plan file {} in {}", query.plan, ui.plans.display());
        return (
            StatusCode::NOT_FOUND,
            page(pages::error_page(&ui.viewer(), "Preview", &message)),
        )
            .into_response();
    }
    let path = ui.plans.join(&query.plan);
    let plan_toml = match crate::cli::read_plan(&path) {
        Ok(text) => text,
        Err(e) => {
            let message = format!("{e:#}");
            return (
                StatusCode::BAD_REQUEST,
                page(pages::error_page(&ui.viewer(), "Preview", &message)),
            )
                .into_response();
        }
    };
    let asked = PlanRequest {
        plan_toml,
        plan_path: path.display().to_string(),
        release: query.release.clone(),
        env: query.env.clone(),
    };
    match call(PREVIEW, ui.client().preview(request(asked, PREVIEW))).await {
        Ok(reply) => page(pages::preview(
            &ui.viewer(),
            &query.plan,
            &query.release,
            &query.env,
            &reply,
        )),
        Err(status) => ui.failure("Preview", status),
    }
}

async fn runs(State(ui): State<Shared>) -> Response {
    let asked = HistoryRequest { limit: 100 };
    match call(QUICK, ui.client().history(request(asked, QUICK))).await {
        Ok(reply) => page(pages::history(&ui.viewer(), &reply, now_ms())),
        Err(status) => ui.failure("Runs", status),
    }
}

async fn get_run(ui: &Ui, run_id: String) -> Result<RunReport, tonic::Status> {
    call(
        QUICK,
        ui.client().get_run(request(RunRef { run_id }, QUICK)),
    )
    .await
}

async fn run(State(ui): State<Shared>, Path(run): Path<String>) -> Response {
    match get_run(&ui, run.clone()).await {
        Ok(report) => page(pages::run(&ui.viewer(), &report, now_ms())),
        Err(status) => ui.failure(&format!("Run {run}"), status),
    }
}

async fn live(State(ui): State<Shared>, Path(run): Path<String>) -> Response {
    match get_run(&ui, run).await {
        Ok(report) => page(pages::live(&ui.viewer(), &report, now_ms())),
        Err(status) => (http_status(&status), refused(status).to_string()).into_response(),
    }
}

async fn report(State(ui): State<Shared>, Path(run): Path<String>) -> Response {
    match get_run(&ui, run.clone()).await {
        Ok(report) => page(pages::report(&ui.viewer(), &report, now_ms())),
        Err(status) => ui.failure(&format!("Report of run {run}"), status),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

/// The run's events as server-sent events (id = the event's sequence
/// number, so a reconnecting browser resumes where it was), then `end`.
async fn events(
    State(ui): State<Shared>,
    Path(run): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let after_seq = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse().ok())
        .unwrap_or(query.after);
    let asked = WatchRequest {
        run_id: run,
        after_seq,
    };
    let mut stream = match call(QUICK, ui.client().watch(asked)).await {
        Ok(stream) => stream,
        Err(status) => {
            return (http_status(&status), refused(status).to_string()).into_response();
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        loop {
            let event = match stream.message().await {
                Ok(Some(e)) => Event::default().id(e.seq.to_string()).data(
                    serde_json::json!({
                        "seq": e.seq,
                        "unix_ms": e.unix_ms,
                        "kind": e.kind,
                        "stage": e.stage,
                        "agent": e.agent,
                        "target": e.target,
                        "step_id": e.step_id,
                        "message": e.message,
                    })
                    .to_string(),
                ),
                Ok(None) => {
                    let _ = tx
                        .send(Ok(Event::default().event("end").data("ended")))
                        .await;
                    return;
                }
                Err(status) => {
                    let message = refused(status).to_string();
                    let _ = tx
                        .send(Ok(Event::default().event("failure").data(message)))
                        .await;
                    return;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
                // The page went away.
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn approve(State(ui): State<Shared>, Path(run): Path<String>) -> Response {
    let asked = RunRef { run_id: run };
    match call(QUICK, ui.client().approve(request(asked, QUICK))).await {
        Ok(reply) => format!(
            "run {}: {} (failed steps are retried)",
            reply.run_id, reply.status
        )
        .into_response(),
        Err(status) => (http_status(&status), refused(status).to_string()).into_response(),
    }
}

async fn cancel(State(ui): State<Shared>, Path(run): Path<String>) -> Response {
    let asked = RunRef { run_id: run };
    match call(QUICK, ui.client().cancel(request(asked, QUICK))).await {
        Ok(reply) => format!(
            "run {}: {} (steps in flight finish; nothing new starts)",
            reply.run_id, reply.status
        )
        .into_response(),
        Err(status) => (http_status(&status), refused(status).to_string()).into_response(),
    }
}

async fn drills(State(ui): State<Shared>) -> Response {
    let mut client = ui.client();
    match call(
        QUICK,
        client.list_drills(request(ListDrillsRequest {}, QUICK)),
    )
    .await
    {
        Ok(reply) => page(pages::drills(&ui.viewer(), &reply, now_ms())),
        Err(status) => ui.failure("Drills", status),
    }
}

async fn drill(State(ui): State<Shared>, Path(drill): Path<String>) -> Response {
    let title = format!("Drill {drill}");
    let mut client = ui.client();
    let listing = call(
        QUICK,
        client.list_drills(request(ListDrillsRequest {}, QUICK)),
    );
    let summary = match listing.await {
        Ok(reply) => reply.drills.into_iter().find(|d| d.name == drill),
        Err(status) => return ui.failure(&title, status),
    };
    let asked = DrillHistoryRequest {
        drill: drill.clone(),
        limit: 100,
    };
    match call(QUICK, ui.client().drill_history(request(asked, QUICK))).await {
        Ok(reply) => page(pages::drill(
            &ui.viewer(),
            &drill,
            summary.as_ref(),
            &reply.runs,
            now_ms(),
        )),
        Err(status) => ui.failure(&title, status),
    }
}

async fn drill_report(
    State(ui): State<Shared>,
    Path((_drill, run)): Path<(String, String)>,
) -> Response {
    match fetch_report(&mut ui.client(), &run).await {
        Ok(report) => page(pages::drill_report(&ui.viewer(), &report)),
        Err(e) => {
            let code = if e.downcast_ref::<crate::cli::client::Refused>().is_some() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_GATEWAY
            };
            let message = format!("{e:#}");
            (
                code,
                page(pages::error_page(
                    &ui.viewer(),
                    &format!("Drill run {run}"),
                    &message,
                )),
            )
                .into_response()
        }
    }
}
