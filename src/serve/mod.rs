//! `tinyllm serve`: an OpenAI-compatible HTTP server for a trained model.
//!
//! The model is loaded once, on a thread of its own ([`engine`]); the HTTP side runs on a small
//! tokio runtime and only parses, queues and streams. A completion's text is the text `tinyllm
//! sample` prints for the same prompt, seed and settings: both go through
//! [`crate::generate::generate_ids`] with the same options.
//!
//! Routes: `POST /v1/completions` (OpenAI's completions, streamed as server-sent events when
//! asked), `GET /v1/models`, `GET /health` and the playground page at `/`. Every error is JSON in
//! OpenAI's shape ([`api::ApiError`]), unknown routes and methods included.

pub mod api;
pub mod engine;
mod stop;

use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::engine::{Device, Precision};
use crate::generate::folder::ModelFolder;
use crate::generate::{GenerateError, GenerateOptions, SampleError, prompt_ids};
use api::{ApiError, CompletionRequest};
use engine::{EngineJob, Event, Finish, Job, Queue, Refused};

const PLAYGROUND: &str = include_str!("playground.html");

/// How much of a body over the limit is read (and dropped) before the 413 is sent: a client
/// that is still sending when the server answers and closes sees a broken pipe, not the
/// answer.
const DRAIN_LIMIT: usize = 64 << 20;

/// How the server is set up; the command line checks the values' bounds.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub device: Device,
    pub precision: Precision,
    pub model_name: String,
    /// Completions generated at once, each on its own worker thread.
    pub parallel: usize,
    /// Completions that may wait for a worker; more are refused with 429.
    pub queue: usize,
    pub max_tokens_limit: usize,
    /// The largest request body, in bytes (413 beyond it).
    pub body_limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] SampleError),
    #[error("the model engine stopped before the model was loaded")]
    EngineLost,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The model id a checkpoint is served as when `--model-name` is not given: its run's pipeline
/// and variant (`runs/quickstart/default` → `quickstart-default`), else its folder's name.
pub fn default_model_name(checkpoint: &Path) -> String {
    let absolute = std::path::absolute(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    let mut names: Vec<String> = absolute
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if names.len() >= 2 && names[names.len() - 2..] == ["artifacts", "train"] {
        names.truncate(names.len() - 2);
    }
    match names.as_slice() {
        [.., pipeline, variant] => format!("{pipeline}-{variant}"),
        [only] => only.clone(),
        [] => "tinyllm".to_string(),
    }
}

/// Binds the address, loads the model, prints `listening on http://ADDRESS` on `out`, then
/// serves until Ctrl-C or SIGTERM; the completions under way and queued are finished first.
pub fn serve(
    folder: ModelFolder,
    config: ServeConfig,
    out: &mut dyn Write,
) -> Result<(), ServeError> {
    // An IPv6 address is written in brackets before its port.
    let address = if config.host.contains(':') && !config.host.starts_with('[') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    };
    let bind_error = |source| ServeError::Bind {
        address: address.clone(),
        source,
    };
    let listener = TcpListener::bind(address.as_str()).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;

    let folder = Arc::new(folder);
    let (queue, jobs) = Queue::bounded(config.parallel, config.queue);
    let queue = Arc::new(queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let engine = scope.spawn(|| {
            crate::model::run_model(
                config.device,
                folder.dims(),
                EngineJob {
                    folder: &folder,
                    precision: config.precision,
                    parallel: config.parallel,
                    jobs,
                    load: &queue.load,
                    ready: ready_tx,
                },
            )
        });
        if ready_rx.recv().is_err() {
            // The engine ended without loading the model: its error says why.
            return Err(match engine.join() {
                Ok(Err(e)) => ServeError::Model(e),
                Ok(Ok(())) | Err(_) => ServeError::EngineLost,
            });
        }
        let state = Arc::new(AppState {
            context: folder.dims().max_seq_len,
            folder: folder.clone(),
            queue: queue.clone(),
            config: config.clone(),
            created: unix_secs(),
        });
        let served = run_http(listener, local, state, out);
        // However the server ended, the workers finish what is queued and stop.
        queue.close();
        let engine = engine.join().map_err(|_| ServeError::EngineLost)?;
        served?;
        Ok(engine?)
    })
}

/// What every request handler sees.
struct AppState {
    folder: Arc<ModelFolder>,
    queue: Arc<Queue>,
    config: ServeConfig,
    /// The model's context, in tokens.
    context: usize,
    /// When the model was loaded, as `/v1/models` reports it.
    created: u64,
}

type Shared = State<Arc<AppState>>;

/// The HTTP side: a small runtime (the work is parsing and streaming; the model has its own
/// threads) that serves until a shutdown signal.
fn run_http(
    listener: TcpListener,
    local: SocketAddr,
    state: Arc<AppState>,
    out: &mut dyn Write,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok(())
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(playground))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/completions", post(completions))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    futures_util::future::select(std::pin::pin!(interrupt), std::pin::pin!(terminate)).await;
    eprintln!("shutting down: finishing the completions under way and queued");
}

/// One line on stderr per request.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    eprintln!(
        "{method} {path} {} ({:.1} ms)",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

async fn playground() -> Html<&'static str> {
    Html(PLAYGROUND)
}

async fn health(State(state): Shared) -> Json<Value> {
    let load = &state.queue.load;
    Json(json!({
        "status": "ok",
        "model": state.config.model_name,
        "device": state.config.device.to_string(),
        "slots": state.config.parallel,
        "busy": load.busy.load(Ordering::SeqCst),
        "queued": load.queued.load(Ordering::SeqCst),
        "queue_capacity": state.config.queue,
        "completed": load.completed.load(Ordering::SeqCst),
        "cancelled": load.cancelled.load(Ordering::SeqCst),
    }))
}

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.config.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "tinyllm",
        "max_model_len": state.context,
    })
}

async fn models(State(state): Shared) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

async fn model(
    State(state): Shared,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_model(&state, &name)?;
    Ok(Json(model_object(&state)))
}

fn check_model(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.config.model_name {
        return Ok(());
    }
    Err(ApiError::invalid(
        Some("model"),
        format!(
            "the model `{name}` does not exist; this server has `{}`",
            state.config.model_name
        ),
    )
    .with_status(StatusCode::NOT_FOUND)
    .with_code("model_not_found"))
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!(
            "no route {} {}; the routes are POST /v1/completions, GET /v1/models, GET /health and GET /",
            request.method(),
            request.uri().path()
        ),
    )
    .with_status(StatusCode::NOT_FOUND)
    .with_code("unknown_url")
}

async fn wrong_method(request: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!(
            "{} does not take {}",
            request.uri().path(),
            request.method()
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .with_code("method_not_allowed")
}

/// What a completion's response says besides its text.
#[derive(Debug, Clone)]
struct Head {
    id: String,
    created: u64,
    model: String,
    seed: u64,
}

async fn completions(State(state): Shared, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, state.config.body_limit).await?;
    let request = api::parse_completion(&body, state.config.max_tokens_limit)?;
    if let Some(model) = &request.model {
        check_model(&state, model)?;
    }
    // Tokenizing a long prompt takes a while; the runtime's other tasks move to another thread.
    let ids = tokio::task::block_in_place(|| {
        prompt_ids(&state.folder.tokenizer, &request.prompt, state.context)
    })
    .map_err(|e| match e {
        GenerateError::PromptTooLong { .. } => {
            ApiError::invalid(Some("prompt"), e.to_string()).with_code("context_length_exceeded")
        }
        GenerateError::Model(_) => ApiError::server(e.to_string()),
    })?;
    let head = Head {
        id: completion_id(),
        created: unix_secs(),
        model: state.config.model_name.clone(),
        seed: request.seed.unwrap_or_else(random_seed),
    };
    let (events_tx, events) = unbounded_channel();
    let job = Job {
        id: head.id.clone(),
        ids,
        options: GenerateOptions {
            sampling: request.sampling,
            max_new_tokens: request.max_tokens,
            seed: head.seed,
            ignore_end_of_story: request.ignore_eos,
        },
        stops: request.stop.clone(),
        events: events_tx,
    };
    state.queue.submit(job).map_err(|refused| match refused {
        Refused::Full => ApiError::busy(format!(
            "all {} slots are busy and {} completions are queued; try again shortly",
            state.config.parallel, state.config.queue
        )),
        Refused::ShuttingDown => shutting_down(),
    })?;
    if request.stream {
        Ok(stream_response(head, events, &request))
    } else {
        whole_response(head, events).await
    }
}

fn shutting_down() -> ApiError {
    ApiError::server("the server is shutting down".to_string())
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
}

/// The body, up to `limit` bytes; a larger one is 413, after reading (and dropping) the rest of
/// it up to [`DRAIN_LIMIT`] so that the client gets to read the answer.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut read = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::invalid(None, format!("could not read the request body: {e}"))
        })?;
        read = read.saturating_add(chunk.len());
        if read <= limit {
            bytes.extend_from_slice(&chunk);
        } else if read > DRAIN_LIMIT {
            break;
        } else {
            bytes = Vec::new();
        }
    }
    if read > limit {
        return Err(ApiError::invalid(
            None,
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_code("request_too_large"));
    }
    Ok(bytes)
}

fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    })
}

/// The completion as one JSON response once it is finished.
async fn whole_response(
    head: Head,
    mut events: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Failed(message) => return Err(ApiError::server(message)),
            Event::Done(finish) => {
                let body = json!({
                    "id": head.id,
                    "object": "text_completion",
                    "created": head.created,
                    "model": head.model,
                    "seed": head.seed,
                    "choices": [{
                        "text": text,
                        "index": 0,
                        "logprobs": null,
                        "finish_reason": finish.reason.as_str(),
                    }],
                    "usage": usage(&finish),
                });
                return Ok(Json(body).into_response());
            }
        }
    }
    Err(shutting_down())
}

/// One chunk of a stream: a piece of text, or the end with its finish reason.
fn chunk(head: &Head, text: &str, finish: Option<&Finish>) -> String {
    let mut chunk = json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish.map(|f| f.reason.as_str()),
        }],
    });
    if finish.is_some() {
        chunk["seed"] = json!(head.seed);
    }
    chunk.to_string()
}

/// The completion as server-sent events: a chunk per piece of text, a last chunk with the
/// finish reason (and one with the token counts when asked), then `[DONE]`. Dropping the stream
/// (the client left) drops `events`, which tells the worker to stop.
fn stream_response(
    head: Head,
    events: UnboundedReceiver<Event>,
    request: &CompletionRequest,
) -> Response {
    use futures_util::StreamExt;
    let with_usage = request.stream_usage;
    let data = stream::unfold(Some(events), move |events| {
        let head = head.clone();
        async move {
            let mut events = events?;
            let (data, events) = match events.recv().await {
                Some(Event::Text(piece)) => (vec![chunk(&head, &piece, None)], Some(events)),
                Some(Event::Done(finish)) => {
                    let mut data = vec![chunk(&head, "", Some(&finish))];
                    if with_usage {
                        let counts = json!({
                            "id": head.id,
                            "object": "text_completion",
                            "created": head.created,
                            "model": head.model,
                            "choices": [],
                            "usage": usage(&finish),
                        });
                        data.push(counts.to_string());
                    }
                    data.push("[DONE]".to_string());
                    (data, None)
                }
                Some(Event::Failed(message)) => {
                    (vec![ApiError::server(message).body().to_string()], None)
                }
                None => (vec![shutting_down().body().to_string()], None),
            };
            Some((stream::iter(data), events))
        }
    });
    let events = data
        .flatten()
        .map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
    sse(events)
}

fn sse<S>(events: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events).into_response();
    // Proxies that buffer (nginx) would hold the pieces back.
    response
        .headers_mut()
        .insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    response
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A number no two calls in this process share, mixed so that ids and seeds look unrelated.
fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn completion_id() -> String {
    format!("cmpl-{:016x}", unique())
}

/// The seed of a request that gives none (the response says which, so it can be repeated).
fn random_seed() -> u64 {
    unique()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_is_the_run_s_pipeline_and_variant() {
        for path in [
            "runs/quickstart/default",
            "runs/quickstart/default/artifacts/train",
            "/abs/runs/quickstart/default/",
        ] {
            assert_eq!(
                default_model_name(Path::new(path)),
                "quickstart-default",
                "{path}"
            );
        }
    }
}
