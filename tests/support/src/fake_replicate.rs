//! A fake of the platform's HTTP API, as `../shared/replicate-webhooks.md` describes it: the one
//! thing the tests fake. It creates predictions (by version, model or deployment), runs each
//! through `starting` → `processing` (logs, output) → a terminal status on timers, signs its
//! webhooks with the Standard Webhooks scheme and sends those the prediction's filter asks for
//! (retrying only the terminal one), answers reads, lists, cancels, version lookups and file
//! uploads, and checks the account's token. A test can make it drop, duplicate, reorder or delay
//! webhooks, answer `429` or `5xx`, and it counts every request it was sent.
//!
//! What a "model" does is read from the prediction's input:
//! - `steps` (default 2): output events, one every `step_ms` (default 50) after it starts;
//! - `start_ms` (default 20): how long it stays `starting`;
//! - `fail` (bool): ends `failed` with an `error` instead of `succeeded`;
//! - `output_file` (bool): the output is an `https://replicate.delivery/…` URL;
//! - `output` (any JSON): the output, as given (file URLs from [`FakeReplicate::serve_file`]);
//!   otherwise it is the list of the steps' strings, the last being `input.prompt` if given.
//!
//! Output files are served from an origin of their own, as `replicate.delivery` is
//! ([`FakeReplicate::files_url`]): made on the fly, of any size, and a test can make one expire
//! (`404`), fail, trickle or redirect.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prediction_inbox::verify::Secret;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The account's token the fake accepts.
pub const ACCOUNT_TOKEN: &str = "r8_fake-account-token-0123456789";
/// The signing secret the fake signs with (the tests' `SECRET`).
pub const SIGNING_SECRET: &str = super::SECRET;
/// A version id the fake knows, of the model `acme/echo`.
pub const VERSION: &str = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa";
pub const MODEL: &str = "acme/echo";

/// What the fake does to the next webhooks it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFault {
    /// Not sent at all (nor retried).
    Drop,
    /// Sent twice, with the same `webhook-id`.
    Duplicate,
    /// Held for this long, while later ones go ahead of it.
    Delay(Duration),
}

/// One attempt at a webhook.
#[derive(Debug, Clone)]
pub struct Sent {
    pub prediction_id: String,
    pub event: String,
    pub webhook_id: String,
    /// The answer's status; 0: none.
    pub status: u16,
    /// When the answer came: after the receiver's commit, for one that acknowledges only then.
    pub answered_at: std::time::SystemTime,
}

/// One request the fake was sent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: std::time::Instant,
    pub method: Method,
    /// The path as sent, undecoded.
    pub path: String,
    pub authorization: Option<String>,
    pub prefer: Option<String>,
    pub cancel_after: Option<String>,
    pub body: Bytes,
}

#[derive(Default)]
struct Faults {
    /// Answered in turn to the next API requests, instead of doing them: status and
    /// `Retry-After`.
    answers: VecDeque<(StatusCode, Option<&'static str>)>,
    webhooks: VecDeque<WebhookFault>,
    /// How long an API answer is held before it is sent.
    slow: Option<Duration>,
    /// Webhooks never sent: given the prediction's id and the event.
    dropped: Option<WebhookFilter>,
}

/// Which webhooks to drop: given a prediction's id and the event (`start`, `logs`, `completed`).
pub type WebhookFilter = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

struct Inner {
    address: String,
    /// Where output files are served.
    files_address: String,
    files: Mutex<HashMap<String, FakeFile>>,
    secret: Secret,
    predictions: Mutex<HashMap<String, Value>>,
    /// In creation order, for the list.
    order: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
    faults: Mutex<Faults>,
    /// Signed webhooks sent, each attempt.
    sent: Mutex<Vec<Sent>>,
    changed: Notify,
    http: reqwest::Client,
    /// The terminal webhook's retry delays (the platform's span about a minute in all).
    retry_delays: Vec<Duration>,
}

/// The fake platform, served on a random local port until dropped.
#[derive(Clone)]
pub struct FakeReplicate(Arc<Inner>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeReplicate {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let files_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let files_address: SocketAddr = files_listener.local_addr().unwrap();
        let fake = Self(Arc::new(Inner {
            address: format!("http://{address}"),
            files_address: format!("http://{files_address}"),
            files: Mutex::default(),
            secret: SIGNING_SECRET.parse().unwrap(),
            predictions: Mutex::default(),
            order: Mutex::default(),
            seen: Mutex::default(),
            faults: Mutex::default(),
            sent: Mutex::default(),
            changed: Notify::new(),
            http: reqwest::Client::new(),
            retry_delays: [100, 200, 400, 800, 1600]
                .map(Duration::from_millis)
                .to_vec(),
        }));
        let app = Router::new()
            .route("/v1/predictions", post(create_by_version).get(list))
            .route(
                "/v1/models/{owner}/{name}/predictions",
                post(create_for_model),
            )
            .route(
                "/v1/deployments/{owner}/{name}/predictions",
                post(create_for_deployment),
            )
            .route("/v1/predictions/{id}", get(read))
            .route("/v1/trainings/{id}", get(read))
            .route("/v1/predictions/{id}/cancel", post(cancel))
            .route("/v1/models/{owner}/{name}/versions/{id}", get(version))
            .route("/v1/files", post(upload))
            .route("/v1/webhooks/default/secret", get(signing_secret))
            .fallback(|| async { problem(StatusCode::NOT_FOUND, "Not found.") })
            .layer(axum::middleware::from_fn_with_state(
                fake.clone(),
                gatekeeper,
            ))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let files = Router::new()
            .route("/files/{name}", get(serve_file))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(files_listener, files).await });
        fake
    }

    /// The fake on a runtime and threads of its own, for the life of the process: in a
    /// benchmark, the load's tasks then never wait in one runtime's queues behind the platform's
    /// work, which is on other machines in life.
    pub fn start_apart() -> Self {
        let (started, fake) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the fake");
            runtime.block_on(async {
                let _ = started.send(Self::start().await);
                std::future::pending::<()>().await
            })
        });
        fake.recv().expect("the fake started")
    }

    /// The base URL, as `INBOX_REPLICATE_API_URL`.
    pub fn url(&self) -> &str {
        &self.0.address
    }

    /// Every request sent so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.0.seen).clone()
    }

    /// How many requests were sent whose method and path are these.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method.as_str() == method && s.path == path)
            .count()
    }

    /// The prediction as the platform holds it now.
    pub fn prediction(&self, id: &str) -> Option<Value> {
        lock(&self.0.predictions).get(id).cloned()
    }

    /// The next API requests are answered with these statuses (and `Retry-After`) instead.
    pub fn answer_next(&self, answers: &[(StatusCode, Option<&'static str>)]) {
        lock(&self.0.faults).answers.extend(answers.iter().copied());
    }

    /// The next webhooks sent suffer these faults, one each, in turn.
    pub fn fault_next_webhooks(&self, faults: &[WebhookFault]) {
        lock(&self.0.faults).webhooks.extend(faults.iter().copied());
    }

    /// Every webhook for which `drop` says so is never sent (nor retried), from now on.
    pub fn drop_webhooks_where(&self, drop: impl Fn(&str, &str) -> bool + Send + Sync + 'static) {
        lock(&self.0.faults).dropped = Some(Box::new(drop));
    }

    /// Changes the fake's own copy of a prediction, as the platform's state moves on without
    /// telling anyone (its data removed, say).
    pub fn change(&self, id: &str, change: impl FnOnce(&mut Value)) {
        self.update(id, change);
    }

    /// Knows a prediction again, as it was (after `forget`).
    pub fn restore(&self, prediction: Value) {
        let id = prediction["id"].as_str().unwrap_or_default().to_owned();
        lock(&self.0.predictions).insert(id, prediction);
        self.0.changed.notify_waiters();
    }

    /// Forgets a prediction: reads of it are then `404`.
    pub fn forget(&self, id: &str) {
        lock(&self.0.predictions).remove(id);
    }

    /// A training of `acme/echo`, finished, readable at `/v1/trainings/{id}` (nothing runs it and
    /// no webhook is sent): its object, to deliver by hand.
    pub fn add_training(&self, status: &str) -> Value {
        let id = new_id();
        let base = &self.0.address;
        let training = json!({
            "id": id,
            "model": MODEL,
            "version": VERSION,
            "input": {"train_data": "https://example.com/data.zip"},
            "logs": "",
            "output": if terminal(&json!(status)) { json!({"version": "acme/echo:ffff", "weights": "https://replicate.delivery/w.tar"}) } else { Value::Null },
            "error": null,
            "status": status,
            "created_at": now_rfc3339(),
            "urls": {
                "get": format!("{base}/v1/trainings/{id}"),
                "cancel": format!("{base}/v1/trainings/{id}/cancel"),
            },
        });
        lock(&self.0.predictions).insert(id, training.clone());
        training
    }

    /// The most requests it was sent within any one second, by method and path prefix.
    pub fn most_in_a_second(&self, method: &str, prefix: &str) -> usize {
        let times: Vec<std::time::Instant> = self
            .seen()
            .iter()
            .filter(|s| s.method.as_str() == method && s.path.starts_with(prefix))
            .map(|s| s.at)
            .collect();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Creates a prediction at the platform as any client of it would, with the account's token:
    /// the prediction it answered.
    pub async fn create_directly(&self, body: Value) -> Value {
        self.0
            .http
            .post(format!("{}/v1/predictions", self.0.address))
            .bearer_auth(ACCOUNT_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every API answer is held this long first.
    pub fn answer_slowly(&self, delay: Option<Duration>) {
        lock(&self.0.faults).slow = delay;
    }

    /// Every attempt at a signed webhook so far.
    pub fn webhooks_sent(&self) -> Vec<Sent> {
        lock(&self.0.sent).clone()
    }

    /// Waits until prediction `id` is terminal at the fake, for at most 20 s.
    pub async fn finished(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.0.changed.notified();
            if let Some(prediction) = self.prediction(id).filter(|p| terminal(&p["status"])) {
                return prediction;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "the fake's prediction {id} never finished"
            );
        }
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let updated = {
            let mut predictions = lock(&self.0.predictions);
            let prediction = predictions.get_mut(id)?;
            change(prediction);
            prediction.clone()
        };
        self.0.changed.notify_waiters();
        Some(updated)
    }

    /// Runs prediction `id` on timers, sending its webhooks.
    async fn run(self, id: String) {
        // The input alone: a life that waits for minutes keeps no copy of the whole prediction.
        let Some(input) = self.prediction(&id).map(|p| p["input"].clone()) else {
            return;
        };
        let number = |key: &str, default: u64| input[key].as_u64().unwrap_or(default);
        let (steps, step, start) = (
            number("steps", 2),
            Duration::from_millis(number("step_ms", 50)),
            Duration::from_millis(number("start_ms", 20)),
        );
        tokio::time::sleep(start).await;
        let Some(started) = self.advance(&id, |p| {
            p["status"] = json!("processing");
            p["started_at"] = json!(now_rfc3339());
            p["logs"] = json!("starting\n");
        }) else {
            return;
        };
        // Each webhook boxed: a life waits for minutes at times, and its future would otherwise
        // hold a webhook's whole call (the HTTP client's) all along, some kilobytes each.
        Box::pin(self.webhook(&started, "start")).await;
        for i in 1..=steps {
            tokio::time::sleep(step).await;
            let Some(stepped) = self.advance(&id, |p| {
                let logs = format!("{}step {i}\n", p["logs"].as_str().unwrap_or_default());
                p["logs"] = json!(logs);
                let mut output = p["output"].as_array().cloned().unwrap_or_default();
                output.push(json!(format!("step {i}")));
                p["output"] = json!(output);
            }) else {
                return;
            };
            Box::pin(self.webhook(&stepped, "logs")).await;
        }
        let fail = input["fail"].as_bool().unwrap_or(false);
        let output = if !input["output"].is_null() {
            input["output"].clone()
        } else if input["output_file"].as_bool().unwrap_or(false) {
            json!(format!("https://replicate.delivery/xezq/{id}/out.png"))
        } else {
            let mut output: Vec<Value> = (1..=steps).map(|i| json!(format!("step {i}"))).collect();
            if let Some(prompt) = input["prompt"].as_str() {
                output.push(json!(prompt));
            }
            json!(output)
        };
        let Some(done) = self.advance(&id, |p| {
            p["completed_at"] = json!(now_rfc3339());
            p["metrics"] = json!({"predict_time": 0.1});
            if fail {
                p["status"] = json!("failed");
                p["error"] = json!("the model failed, as asked");
            } else {
                p["status"] = json!("succeeded");
                p["output"] = output;
            }
        }) else {
            return;
        };
        Box::pin(self.webhook(&done, "completed")).await;
    }

    /// Changes a prediction that is not terminal; `None` once it is (canceled meanwhile).
    fn advance(&self, id: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut finished = false;
        let updated = self.update(id, |p| {
            finished = terminal(&p["status"]);
            if !finished {
                change(p);
            }
        })?;
        (!finished).then_some(updated)
    }

    /// Sends the prediction to its webhook if its filter takes `event`, as the platform does:
    /// signed, the terminal one retried on failure.
    async fn webhook(&self, prediction: &Value, event: &str) {
        let Some(url) = prediction["webhook"].as_str().map(str::to_owned) else {
            return;
        };
        let filter = &prediction["webhook_events_filter"];
        let wanted = match filter.as_array() {
            Some(events) => events.iter().any(|e| e == event),
            None => true,
        };
        if !wanted {
            return;
        }
        let fault = {
            let mut faults = lock(&self.0.faults);
            let id = prediction["id"].as_str().unwrap_or_default();
            match &faults.dropped {
                Some(drop) if drop(id, event) => Some(WebhookFault::Drop),
                _ => faults.webhooks.pop_front(),
            }
        };
        let body = serde_json::to_vec(prediction).unwrap();
        let webhook_id = format!("msg_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let terminal = event == "completed";
        let fake = self.clone();
        let (prediction_id, event) = (
            prediction["id"].as_str().unwrap_or_default().to_owned(),
            event.to_owned(),
        );
        let send = async move {
            match fault {
                Some(WebhookFault::Drop) => return,
                Some(WebhookFault::Delay(delay)) => tokio::time::sleep(delay).await,
                _ => {}
            }
            let copies = if fault == Some(WebhookFault::Duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let sent = Sent {
                    prediction_id: prediction_id.clone(),
                    event: event.clone(),
                    webhook_id: webhook_id.clone(),
                    status: 0,
                    answered_at: std::time::SystemTime::now(),
                };
                fake.deliver(&url, sent, &body, terminal).await;
            }
        };
        match fault {
            // Sent in the background, so that what follows overtakes it.
            Some(WebhookFault::Delay(_)) => {
                tokio::spawn(send);
            }
            _ => send.await,
        }
    }

    async fn deliver(&self, url: &str, mut sent: Sent, body: &[u8], retried: bool) {
        let webhook_id = sent.webhook_id.clone();
        let attempts = if retried {
            self.0.retry_delays.len() + 1
        } else {
            1
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.0.retry_delays[attempt - 1]).await;
            }
            let timestamp = super::now();
            let signature = self.0.secret.sign(&webhook_id, timestamp, body);
            let answer = self
                .0
                .http
                .post(url)
                .header("webhook-id", &webhook_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let status = answer.as_ref().map_or(0, |a| a.status().as_u16());
            sent.status = status;
            sent.answered_at = std::time::SystemTime::now();
            lock(&self.0.sent).push(sent.clone());
            if (200..300).contains(&status) {
                return;
            }
        }
    }

    fn create(
        &self,
        model: Option<(&str, &str)>,
        deployment: Option<&str>,
        body: &Bytes,
        headers: &HeaderMap,
    ) -> Response {
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return problem(StatusCode::BAD_REQUEST, "The body is not JSON.");
        };
        if !request["input"].is_object() {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "- input: input is required",
            );
        }
        if request
            .get("stream")
            .is_some_and(|stream| !stream.is_boolean())
        {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "- stream: must be a boolean",
            );
        }
        let (model, version) = match (model, request["version"].as_str()) {
            (Some((owner, name)), _) => (format!("{owner}/{name}"), "hidden".to_owned()),
            (None, Some(version)) => match version.split_once(':') {
                Some((model, id)) => (model.to_owned(), id.to_owned()),
                None if version == VERSION => (MODEL.to_owned(), version.to_owned()),
                None if version.contains('/') => (version.to_owned(), "hidden".to_owned()),
                None => {
                    return problem(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid version or not permitted.",
                    );
                }
            },
            (None, None) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "- version: version is required",
                );
            }
        };
        let id = new_id();
        let base = &self.0.address;
        let mut prediction = json!({
            "id": id,
            "model": model,
            "version": version,
            "input": request.get("input").cloned().unwrap_or(json!({})),
            "logs": "",
            "output": null,
            "data_removed": false,
            "error": null,
            "status": "starting",
            "source": "api",
            "created_at": now_rfc3339(),
            "urls": {
                "get": format!("{base}/v1/predictions/{id}"),
                "cancel": format!("{base}/v1/predictions/{id}/cancel"),
                "stream": format!("https://stream.replicate.com/v1/files/{id}"),
                "web": format!("https://replicate.com/p/{id}"),
            },
        });
        for key in ["webhook", "webhook_events_filter"] {
            if let Some(value) = request.get(key) {
                prediction[key] = value.clone();
            }
        }
        if let Some(deployment) = deployment {
            prediction["deployment"] = json!(deployment);
        }
        if let Some(cancel_after) = headers.get("cancel-after") {
            prediction["cancel_after"] = json!(cancel_after.to_str().unwrap_or_default());
        }
        lock(&self.0.predictions).insert(id.clone(), prediction.clone());
        lock(&self.0.order).push(id.clone());
        tokio::spawn(self.clone().run(id));
        (StatusCode::CREATED, axum::Json(prediction)).into_response()
    }
}

fn terminal(status: &Value) -> bool {
    matches!(
        status.as_str(),
        Some("succeeded" | "failed" | "canceled" | "aborted")
    )
}

fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..26)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        json!({"title": status.canonical_reason(), "status": status.as_u16(), "detail": detail})
            .to_string(),
    )
        .into_response()
}

/// Records every request, checks the account's token, and plays the faults set for answers.
async fn gatekeeper(
    State(fake): State<FakeReplicate>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, "Too large.");
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    lock(&fake.0.seen).push(Seen {
        at: std::time::Instant::now(),
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        authorization: header("authorization"),
        prefer: header("prefer"),
        cancel_after: header("cancel-after"),
        // A copy: the body as read is a slice of the connection's read buffer, and a record that
        // kept it would keep the whole buffer alive (kilobytes for each request seen).
        body: Bytes::copy_from_slice(&body),
    });
    let slow = lock(&fake.0.faults).slow;
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    if header("authorization").as_deref() != Some(&format!("Bearer {ACCOUNT_TOKEN}")) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "You did not pass a valid authentication token",
        );
    }
    if let Some((status, retry_after)) = lock(&fake.0.faults).answers.pop_front() {
        let mut response = problem(status, "As the test asked.");
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", retry_after.parse().unwrap());
        }
        return response;
    }
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

async fn create_by_version(
    State(fake): State<FakeReplicate>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.create(None, None, &body, &headers)
}

async fn create_for_model(
    State(fake): State<FakeReplicate>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.create(Some((&owner, &name)), None, &body, &headers)
}

async fn create_for_deployment(
    State(fake): State<FakeReplicate>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let deployment = format!("{owner}/{name}");
    fake.create(Some((&owner, &name)), Some(&deployment), &body, &headers)
}

async fn read(State(fake): State<FakeReplicate>, Path(id): Path<String>) -> Response {
    match fake.prediction(&id) {
        Some(prediction) => axum::Json(prediction).into_response(),
        None => problem(StatusCode::NOT_FOUND, "Not found."),
    }
}

/// The list, newest first, a hundred a page, as the platform pages it: the cursor is a place in
/// creation order, so a prediction created meanwhile neither shifts a page nor repeats one, and a
/// page costs its own hundred whatever the account holds. `created_after` (inclusive) and
/// `created_before` (exclusive) bound it, and the next page keeps them.
async fn list(
    State(fake): State<FakeReplicate>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    let bound = |key: &str| match query.get(key) {
        None => Ok(None),
        Some(text) => time::OffsetDateTime::parse(text, &Rfc3339)
            .map(Some)
            .map_err(|_| key.to_owned()),
    };
    let (after, before) = match (bound("created_after"), bound("created_before")) {
        (Ok(after), Ok(before)) => (after, before),
        (Err(key), _) | (_, Err(key)) => {
            return problem(StatusCode::BAD_REQUEST, &format!("{key}: not ISO 8601"));
        }
    };
    let order = lock(&fake.0.order);
    let predictions = lock(&fake.0.predictions);
    let mut place = query
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .map_or(order.len(), |c: usize| c.min(order.len()));
    let mut page = Vec::new();
    while place > 0 && page.len() < 100 {
        place -= 1;
        let Some(prediction) = predictions.get(&order[place]) else {
            continue;
        };
        let created = prediction["created_at"]
            .as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok());
        if before.is_some_and(|before| created.is_none_or(|c| c >= before)) {
            continue;
        }
        // In creation order: nothing before this one is after the bound either.
        if after.is_some_and(|after| created.is_none_or(|c| c < after)) {
            place = 0;
            break;
        }
        page.push(prediction.clone());
    }
    let next = (place > 0).then(|| {
        let mut next = url::Url::parse(&format!("{}{}", fake.0.address, uri.path()))
            .expect("the fake's own address");
        next.query_pairs_mut()
            .extend_pairs(
                ["created_after", "created_before"]
                    .into_iter()
                    .filter_map(|key| Some((key, query.get(key)?))),
            )
            .append_pair("cursor", &place.to_string());
        next.to_string()
    });
    axum::Json(json!({"previous": null, "next": next, "results": page})).into_response()
}

async fn cancel(State(fake): State<FakeReplicate>, Path(id): Path<String>) -> Response {
    let canceled = fake.update(&id, |p| {
        if !terminal(&p["status"]) {
            p["status"] = json!("canceled");
            p["completed_at"] = json!(now_rfc3339());
        }
    });
    match canceled {
        Some(prediction) => {
            if prediction["status"] == "canceled" {
                let fake = fake.clone();
                let sent = prediction.clone();
                tokio::spawn(async move { fake.webhook(&sent, "completed").await });
            }
            axum::Json(prediction).into_response()
        }
        None => problem(StatusCode::NOT_FOUND, "Not found."),
    }
}

async fn version(Path((owner, name, id)): Path<(String, String, String)>) -> Response {
    if format!("{owner}/{name}") != MODEL || id != VERSION {
        return problem(StatusCode::NOT_FOUND, "Not found.");
    }
    axum::Json(json!({
        "id": VERSION,
        "created_at": "2026-01-01T00:00:00Z",
        "cog_version": "0.9.0",
        "openapi_schema": {"components": {"schemas": {"Output": {"type": "array", "items": {"type": "string"}}}}},
    }))
    .into_response()
}

async fn upload(State(fake): State<FakeReplicate>, headers: HeaderMap, body: Bytes) -> Response {
    let multipart = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        return problem(StatusCode::BAD_REQUEST, "Expected multipart/form-data.");
    }
    let parts = multipart_parts(&headers, &body);
    if !parts.iter().any(|(name, _)| name == "content") {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "- content: content is required",
        );
    }
    let metadata_is_an_object =
        parts
            .iter()
            .filter(|(name, _)| name == "metadata")
            .all(|(_, value)| {
                serde_json::from_slice::<Value>(value).is_ok_and(|v| v.is_object() || v.is_null())
            });
    if !metadata_is_an_object {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "- metadata: must be a JSON object",
        );
    }
    let id = new_id();
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "id": id,
            "name": "upload",
            "content_type": "application/octet-stream",
            "size": body.len(),
            "etag": "fake",
            "checksums": {},
            "metadata": {},
            "created_at": now_rfc3339(),
            "expires_at": null,
            "urls": {"get": format!("{}/v1/files/{id}", fake.0.address)},
        })),
    )
        .into_response()
}

/// The named parts of a `multipart/form-data` body, roughly as a server reads them.
fn multipart_parts(headers: &HeaderMap, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let Some(boundary) = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("boundary=").nth(1))
        .map(|b| format!("--{}", b.trim_matches('"')))
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(body);
    text.split(boundary.as_str())
        .filter_map(|part| {
            let (head, value) = part.split_once("\r\n\r\n")?;
            let name = head.split("name=\"").nth(1)?.split('"').next()?.to_owned();
            Some((name, value.trim_end_matches("\r\n").as_bytes().to_vec()))
        })
        .collect()
}

/// What an attacker who could make the inbox call this with the account's token would get.
async fn signing_secret() -> Response {
    axum::Json(json!({"key": SIGNING_SECRET})).into_response()
}

/// An output file the fake serves, and what it does to the next requests for it.
#[derive(Debug, Clone, Default)]
struct FakeFile {
    size: u64,
    /// Answered `404`, as the platform's files are after about an hour.
    expired: bool,
    /// The next this many requests are answered `500`.
    failing: u32,
    /// Bytes a second, when it trickles.
    rate: Option<u64>,
    /// Answered `302` to here.
    redirect: Option<String>,
    requests: usize,
}

/// The byte at `offset` of the file called `name`: files are made on the fly, and a test checks
/// what arrived against this.
pub fn file_byte(name: &str, offset: u64) -> u8 {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (offset.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) as u8
}

/// The whole file called `name` of `size` bytes.
pub fn file_bytes(name: &str, size: u64) -> Vec<u8> {
    (0..size).map(|offset| file_byte(name, offset)).collect()
}

impl FakeReplicate {
    /// The origin output files are served from, for `INBOX_ARCHIVE_HOSTS`.
    pub fn files_url(&self) -> &str {
        &self.0.files_address
    }

    /// Serves a file of `size` bytes called `name` (its extension gives its type): its URL.
    pub fn serve_file(&self, name: &str, size: u64) -> String {
        lock(&self.0.files).insert(
            name.to_owned(),
            FakeFile {
                size,
                ..FakeFile::default()
            },
        );
        format!("{}/files/{name}", self.0.files_address)
    }

    fn change_file(&self, name: &str, change: impl FnOnce(&mut FakeFile)) {
        change(lock(&self.0.files).entry(name.to_owned()).or_default());
    }

    /// File `name` is answered `404` from now on.
    pub fn expire_file(&self, name: &str) {
        self.change_file(name, |file| file.expired = true);
    }

    /// The next `times` requests for file `name` are answered `500`.
    pub fn fail_file(&self, name: &str, times: u32) {
        self.change_file(name, |file| file.failing = times);
    }

    /// File `name` comes at `bytes_per_second`.
    pub fn trickle_file(&self, name: &str, bytes_per_second: u64) {
        self.change_file(name, |file| file.rate = Some(bytes_per_second));
    }

    /// Requests for file `name` are redirected to `location`.
    pub fn redirect_file(&self, name: &str, location: &str) {
        let location = location.to_owned();
        self.change_file(name, |file| file.redirect = Some(location));
    }

    /// Requests made for file `name`.
    pub fn file_requests(&self, name: &str) -> usize {
        lock(&self.0.files)
            .get(name)
            .map_or(0, |file| file.requests)
    }
}

async fn serve_file(State(fake): State<FakeReplicate>, Path(name): Path<String>) -> Response {
    let file = {
        let mut files = lock(&fake.0.files);
        let Some(file) = files.get_mut(&name) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        file.requests += 1;
        let answered = file.clone();
        file.failing = file.failing.saturating_sub(1);
        answered
    };
    if let Some(location) = file.redirect {
        return (StatusCode::FOUND, [("location", location)]).into_response();
    }
    if file.expired {
        return StatusCode::NOT_FOUND.into_response();
    }
    if file.failing > 0 {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let content_type = match name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("txt") => "text/plain",
        Some("html") => "text/html",
        Some("wav") => "audio/wav",
        _ => "application/octet-stream",
    };
    const CHUNK: u64 = 64 * 1024;
    let (size, rate) = (file.size, file.rate);
    let chunks = futures_util::stream::unfold(0u64, move |offset| {
        let name = name.clone();
        async move {
            if offset >= size {
                return None;
            }
            let len = CHUNK.min(size - offset);
            if let Some(rate) = rate {
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / rate as f64)).await;
            }
            let chunk: Vec<u8> = (offset..offset + len)
                .map(|at| file_byte(&name, at))
                .collect();
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), offset + len))
        }
    });
    (
        [
            ("content-type", content_type.to_owned()),
            ("content-length", size.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}
