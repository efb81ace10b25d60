//! What the tests share: the real service on a random port over a fresh database — Postgres or
//! SQLite — and a client that signs deliveries the way the platform does; load, floods, and the
//! real binary in a process of its own.

pub mod bench;
pub mod fake_replicate;
pub mod flood;
pub mod limits;
pub mod load;
pub mod s3;
pub mod service;

mod throwaway;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use prediction_inbox::config::{Settings, Source};
use prediction_inbox::http::BodyBudget;
use prediction_inbox::ingest::{Faults, Writer};
use prediction_inbox::startup::{Application, StartupError};
use prediction_inbox::store::{NewDelivery, Store, StoreError};
use prediction_inbox::verify::Secret;
use prediction_inbox::waiters::Waiters;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const TOKEN: &str = "test-token-0123456789";
/// A token of `INBOX_CREATE_TOKENS` in the gateway's tests.
pub const CREATE_TOKEN: &str = "create-token-0123456789";

/// A database created for one test and dropped after it.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

/// Runs each named `async fn(Backend)` once on each backend, as the tests `name::postgres` and
/// `name::sqlite`. A test function left out of the list is dead code, which clippy refuses.
#[macro_export]
macro_rules! on_each_backend {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn postgres() {
                super::$test($crate::Backend::Postgres).await;
            }
            #[tokio::test]
            async fn sqlite() {
                super::$test($crate::Backend::Sqlite).await;
            }
        }
    )+};
}

/// Which store a test's service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

impl TestDatabase {
    /// On the server at `TEST_DATABASE_URL` (else 127.0.0.1:5432), or, if none answers there, on a
    /// throwaway server this test process starts.
    pub async fn create() -> Self {
        let server = throwaway::server().await;
        let mut admin = url::Url::parse(server).expect("the server's URL");
        admin.set_path("/postgres");
        let name = unique_name("inbox_test");
        let mut connection = PgConnection::connect(admin.as_str())
            .await
            .expect("connect to the test server");
        connection
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create the test database");
        let mut url = admin.clone();
        url.set_path(&format!("/{name}"));
        Self {
            url: url.to_string(),
            admin_url: admin.to_string(),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// Gives the database to a role of its own, named after it, that is no superuser: what a
    /// managed server gives a service. Answers the URL that connects as that role.
    pub async fn plain_owner(&self) -> String {
        self.admin(r#"CREATE ROLE "{db}" LOGIN; ALTER DATABASE "{db}" OWNER TO "{db}""#)
            .await;
        let mut url = url::Url::parse(&self.url).expect("the database's URL");
        url.set_username(&self.name).expect("a URL with a user");
        url.to_string()
    }

    /// Runs SQL as the server's administrator (outside the test database).
    pub async fn admin(&self, sql: &str) {
        let mut connection = PgConnection::connect(&self.admin_url)
            .await
            .expect("admin connection");
        connection
            .execute(sql.replace("{db}", &self.name).as_str())
            .await
            .expect(sql);
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                connection.execute(sql.as_str()).await.ok()?;
                // The database's own role, if it was given one (`plain_owner`).
                let sql = format!(r#"DROP ROLE IF EXISTS "{name}""#);
                connection.execute(sql.as_str()).await.ok()
            })
        })
        .join();
    }
}

/// A SQLite file made for one test and removed after it.
pub struct TestFile {
    pub path: PathBuf,
}

impl TestFile {
    pub fn create() -> Self {
        let folder = target_tmp().join("sqlite");
        std::fs::create_dir_all(&folder).expect("a folder for test databases");
        Self {
            path: folder.join(format!("{}.db", unique_name("inbox_test"))),
        }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A test's database, and a pool of its own onto it to look at what the service wrote.
pub enum TestStore {
    Postgres { db: TestDatabase, pool: PgPool },
    Sqlite { file: TestFile, pool: SqlitePool },
}

impl TestStore {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let db = TestDatabase::create().await;
                let pool = db.pool().await;
                Self::Postgres { db, pool }
            }
            Backend::Sqlite => {
                let file = TestFile::create();
                // The service creates the file; this pool opens it once the service has started.
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&file.path)
                    .create_if_missing(true);
                let pool = SqlitePool::connect_lazy_with(options);
                Self::Sqlite { file, pool }
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Postgres { db, .. } => db.url.clone(),
            Self::Sqlite { file, .. } => file.url(),
        }
    }

    /// Runs `sql` on the test's own connection to the database.
    pub async fn execute(&self, sql: &str) {
        match self {
            Self::Postgres { pool, .. } => pool.execute(sql).await.map(drop),
            Self::Sqlite { pool, .. } => pool.execute(sql).await.map(drop),
        }
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    /// The one text value `sql` selects, if it selects a row.
    pub async fn text(&self, sql: &str) -> Option<String> {
        match self {
            Self::Postgres { pool, .. } => sqlx::query_scalar(sql).fetch_optional(pool).await,
            Self::Sqlite { pool, .. } => sqlx::query_scalar(sql).fetch_optional(pool).await,
        }
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .flatten()
    }

    /// The rows of `table`.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        match self {
            Self::Postgres { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
            Self::Sqlite { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
        }
        .expect("count")
    }
}

/// A session holding the write lock; see `TestApp::block_writes`.
pub enum WriteBlock {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::SqliteConnection),
}

impl WriteBlock {
    pub async fn release(self) {
        match self {
            Self::Postgres(tx) => tx.rollback().await,
            Self::Sqlite(mut connection) => connection.execute("ROLLBACK").await.map(drop),
        }
        .expect("release the lock");
    }
}

pub struct TestApp {
    pub address: String,
    /// The waiters parked in this instance.
    pub waiters: Waiters,
    /// The budget of request bodies of this instance.
    pub bodies: BodyBudget,
    /// The queue of deliveries to write of this instance.
    pub writer: Writer,
    pub client: reqwest::Client,
    pub store: TestStore,
    secret: Secret,
}

/// Another instance of the service, over the same database as a `TestApp`.
pub struct Instance {
    pub address: String,
    pub waiters: Waiters,
    pub bodies: BodyBudget,
    pub writer: Writer,
}

pub async fn start(
    database_url: &str,
    overrides: &[(&str, &str)],
    faults: Option<Arc<dyn Faults>>,
) -> Instance {
    try_start(database_url, overrides, faults)
        .await
        .expect("build the app")
}

async fn try_start(
    database_url: &str,
    overrides: &[(&str, &str)],
    faults: Option<Arc<dyn Faults>>,
) -> Result<Instance, StartupError> {
    let app = Application::build_with_faults(settings(database_url, overrides), faults).await?;
    let instance = Instance {
        address: format!("http://{}", app.local_addr()),
        waiters: app.waiters(),
        bodies: app.bodies(),
        writer: app.writer(),
    };
    tokio::spawn(app.run_until(std::future::pending()));
    Ok(instance)
}

/// The plan Postgres keeps for `statement` once it stops planning each execution anew (the
/// generic plan of a prepared statement), made on `connection` as its tables are now, for the
/// arguments `arguments` (SQL literals, comma separated): EXPLAIN's lines, one text.
pub async fn generic_plan(
    connection: &mut PgConnection,
    statement: &str,
    arguments: &str,
) -> String {
    explain_generic(connection, statement, arguments, "").await
}

/// `generic_plan`, run in a transaction then rolled back, with the pages each step touched
/// (`EXPLAIN (ANALYZE, BUFFERS)`).
pub async fn generic_plan_run(
    connection: &mut PgConnection,
    statement: &str,
    arguments: &str,
) -> String {
    connection.execute("BEGIN").await.expect("begin");
    let plan = explain_generic(connection, statement, arguments, "(ANALYZE, BUFFERS) ").await;
    connection.execute("ROLLBACK").await.expect("roll back");
    plan
}

async fn explain_generic(
    connection: &mut PgConnection,
    statement: &str,
    arguments: &str,
    options: &str,
) -> String {
    connection
        .execute("SET plan_cache_mode = force_generic_plan")
        .await
        .expect("force generic plans");
    connection
        .execute(format!("PREPARE planned AS {statement}").as_str())
        .await
        .expect("prepare the statement");
    let lines: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN {options}EXECUTE planned({arguments})"))
            .fetch_all(&mut *connection)
            .await
            .expect("explain the statement");
    lines.join("\n")
}

/// Waits until `sql`, a count on Postgres, answers `expected`.
pub async fn eventually_counts(what: &str, pool: &PgPool, sql: &str, expected: i64) {
    eventually(what, || async {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .expect("the count")
            == expected
    })
    .await;
}

/// Sessions of the test's database waiting on a lock now.
pub const WAITING_ON_A_LOCK: &str = "SELECT count(*) FROM pg_stat_activity \
    WHERE datname = current_database() AND wait_event_type = 'Lock'";

/// Failures by prediction id, and the batches the writer took, by the ids in them.
#[derive(Default)]
pub struct Faulty {
    /// Any batch holding this prediction fails to record, or (`true`) panics recording.
    pub poison: Option<(&'static str, bool)>,
    /// The writer dies, once, taking a batch holding this prediction.
    pub killer: Option<&'static str>,
    pub killed: AtomicBool,
    pub taken: std::sync::Mutex<Vec<Vec<String>>>,
    /// While this says `false`, the writer takes no batch.
    pub gate: Option<tokio::sync::watch::Sender<bool>>,
}

impl Faulty {
    pub fn took(&self, id: &str) -> bool {
        self.taken
            .lock()
            .expect("the batches taken")
            .iter()
            .any(|batch| batch.iter().any(|i| i == id))
    }
}

impl Faults for Faulty {
    fn hold(&self) -> BoxFuture<'static, ()> {
        let mut open = self
            .gate
            .as_ref()
            .map(tokio::sync::watch::Sender::subscribe);
        Box::pin(async move {
            if let Some(open) = &mut open {
                let _ = open.wait_for(|open| *open).await;
            }
        })
    }

    fn take(&self, batch: &[&NewDelivery]) {
        let ids: Vec<String> = batch.iter().map(|d| d.prediction.id.to_string()).collect();
        let kill = self
            .killer
            .is_some_and(|killer| ids.iter().any(|id| id == killer));
        self.taken.lock().expect("the batches taken").push(ids);
        if kill && !self.killed.swap(true, Ordering::SeqCst) {
            panic!("the writer dies");
        }
    }

    fn record(&self, batch: &[NewDelivery]) -> Result<(), StoreError> {
        let Some((poison, panics)) = self.poison else {
            return Ok(());
        };
        if !batch.iter().any(|d| d.prediction.id.as_str() == poison) {
            return Ok(());
        }
        if panics {
            panic!("recording a batch with the poison delivery");
        }
        Err(StoreError::Refused(sqlx::Error::Protocol(
            "a value the database cannot hold".into(),
        )))
    }
}

/// Sends `deliveries` so that the writer takes them as one batch, in this order: behind an opener
/// the writer holds up (writes are blocked), each is queued before the next is sent. Answers each
/// one's status and text. `faults` must be the app's, to see the writer take the opener.
pub async fn send_as_one_batch(
    app: &TestApp,
    faults: &Faulty,
    deliveries: &[Delivery],
) -> Vec<(StatusCode, String)> {
    let block = app.block_writes().await;
    let opener = Delivery::new(prediction("opener", "starting", ""));
    let opener = async { app.send(&opener).await.status() };
    let batch = async {
        eventually("the writer holds the opener", || async {
            faults.took("opener")
        })
        .await;
        let mut sends = Vec::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            let send = app.send(delivery);
            // Polled until it is queued, then left to finish with the others.
            let mut send = Box::pin(send);
            let queued = eventually("the delivery is queued", || async {
                app.writer.queued() > i
            });
            tokio::select! {
                () = queued => {}
                response = &mut send => panic!("answered before it was written: {}", response.status()),
            }
            sends.push(send);
        }
        block.release().await;
        futures_util::future::join_all(sends).await
    };
    let (opener, responses) = tokio::join!(opener, batch);
    assert_eq!(opener, StatusCode::OK);
    let mut answers = Vec::new();
    for response in responses {
        let status = response.status();
        answers.push((status, response.text().await.expect("the answer's text")));
    }
    answers
}

/// Waits until `condition` holds, checking every 10 ms; fails the test, naming `what`, if it does
/// not within 20 s. A test waits on the state it needs, never for a time it hopes is enough.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Settings for a test instance; `overrides` replace or add keys.
pub fn settings(database_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut map: HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("INBOX_WEBHOOK_SECRETS", SECRET),
        ("INBOX_API_TOKENS", TOKEN),
        ("INBOX_LISTEN", "127.0.0.1:0"),
        // Off unless a test turns it on: reads then answer bodies exactly as received.
        ("INBOX_ARCHIVE_URL", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (key, value) in overrides {
        map.insert((*key).to_owned(), (*value).to_owned());
    }
    Settings::from_source(&Source::from_map(map)).expect("valid test settings")
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with_faults(backend, overrides, None).await
}

/// An app whose batch writer fails as `faults` says.
pub async fn spawn_app_with_faults(
    backend: Backend,
    overrides: &[(&str, &str)],
    faults: Option<Arc<dyn Faults>>,
) -> TestApp {
    let store = TestStore::create(backend).await;
    let instance = start(&store.url(), overrides, faults).await;
    TestApp::over(store, instance)
}

/// A fresh Postgres database with the service's tables, and the store over it.
pub async fn migrated_postgres_store() -> (TestDatabase, Arc<dyn Store>) {
    use prediction_inbox::store::DatabaseUrl;

    let db = TestDatabase::create().await;
    let store = prediction_inbox::store::open(&DatabaseUrl::Postgres(db.url.clone()), 2)
        .await
        .expect("open the store");
    store.migrate().await.expect("migrate");
    (db, store)
}

/// An app on Postgres whose role owns its database and is no superuser (see `plain_owner`),
/// with that role's URL.
pub async fn spawn_app_as_plain_role() -> (TestApp, String) {
    let store = TestStore::create(Backend::Postgres).await;
    let TestStore::Postgres { db, .. } = &store else {
        unreachable!("a Postgres store")
    };
    let url = db.plain_owner().await;
    let instance = start(&url, &[], None).await;
    (TestApp::over(store, instance), url)
}

/// An app whose gateway calls `fake`, with `CREATE_TOKEN` among its tokens, and the reconciler
/// off unless `overrides` set `INBOX_RECONCILE_AFTER`: its port is chosen first, since the
/// webhook URL it gives the platform names it.
pub async fn spawn_gateway_app(
    backend: Backend,
    fake: &fake_replicate::FakeReplicate,
    overrides: &[(&str, &str)],
) -> TestApp {
    let store = TestStore::create(backend).await;
    let instance = start_gateway(&store.url(), fake, overrides).await;
    TestApp::over(store, instance)
}

/// A replica with the gateway on, over the database at `database_url`.
pub async fn start_gateway(
    database_url: &str,
    fake: &fake_replicate::FakeReplicate,
    overrides: &[(&str, &str)],
) -> Instance {
    // The port is chosen before the service binds it, as the webhook URL names it, so another
    // socket (a test's outgoing connection among them) may take it in between: then another.
    for _ in 0..10 {
        match try_start_gateway_on(bench::free_port(), database_url, fake, overrides).await {
            Err(StartupError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse => {}
            started => return started.expect("build the app"),
        }
    }
    panic!("ten free ports were taken before the gateway could listen on them")
}

/// As `start_gateway`, listening on `port`: the webhook URL that predictions created before it
/// started already name.
pub async fn start_gateway_on(
    port: u16,
    database_url: &str,
    fake: &fake_replicate::FakeReplicate,
    overrides: &[(&str, &str)],
) -> Instance {
    try_start_gateway_on(port, database_url, fake, overrides)
        .await
        .expect("build the app")
}

async fn try_start_gateway_on(
    port: u16,
    database_url: &str,
    fake: &fake_replicate::FakeReplicate,
    overrides: &[(&str, &str)],
) -> Result<Instance, StartupError> {
    let listen = format!("127.0.0.1:{port}");
    let webhook = format!("http://{listen}/webhooks/replicate");
    let mut all = vec![
        ("INBOX_LISTEN", listen.as_str()),
        ("INBOX_WEBHOOK_URL", webhook.as_str()),
        ("REPLICATE_API_TOKEN", fake_replicate::ACCOUNT_TOKEN),
        ("INBOX_REPLICATE_API_URL", fake.url()),
        ("INBOX_CREATE_TOKENS", CREATE_TOKEN),
        // Off unless a test turns it on: its reads of the platform would mix with what the
        // gateway's tests count.
        ("INBOX_RECONCILE_AFTER", "0"),
    ];
    all.retain(|(key, _)| !overrides.iter().any(|(k, _)| k == key));
    all.extend_from_slice(overrides);
    try_start(database_url, &all, None).await
}

/// A program of the Python virtualenv that `tests/setup.sh` makes under `target/clients` (the
/// official client, schemathesis); a test that needs one fails, naming the script, without it.
pub fn venv_program(name: &str) -> PathBuf {
    let program = target_profile()
        .parent()
        .expect("the target folder")
        .join("clients/venv/bin")
        .join(name);
    assert!(
        program.exists(),
        "{} is not installed: run tests/setup.sh",
        program.display()
    );
    program
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn new_webhook_id() -> String {
    format!("msg_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The three webhook headers of HTTP/1.1, each line ended: well formed, timestamped now, with a
/// `v1` signature of the right length that matches nothing — what anyone who knows only the URL
/// can send.
pub fn plausible_headers() -> String {
    format!(
        "webhook-id: {}\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,{}\r\n",
        new_webhook_id(),
        now(),
        "A".repeat(43) + "="
    )
}

/// One delivery as the platform would send it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub timestamp: i64,
    pub body: String,
}

impl Delivery {
    pub fn new(body: impl Into<String>) -> Self {
        Self::at(now(), body)
    }

    pub fn at(timestamp: i64, body: impl Into<String>) -> Self {
        Self {
            webhook_id: new_webhook_id(),
            timestamp,
            body: body.into(),
        }
    }
}

impl TestApp {
    /// The test's app: `instance`, over `store`.
    fn over(store: TestStore, instance: Instance) -> Self {
        Self {
            address: instance.address,
            waiters: instance.waiters,
            bodies: instance.bodies,
            writer: instance.writer,
            client: reqwest::Client::new(),
            store,
            secret: SECRET.parse().expect("test secret"),
        }
    }

    /// This instance, as an `Instance` like any other replica.
    pub fn instance(&self) -> Instance {
        Instance {
            address: self.address.clone(),
            waiters: self.waiters.clone(),
            bodies: self.bodies.clone(),
            writer: self.writer.clone(),
        }
    }

    /// A second replica sharing this one's database.
    pub async fn another_instance(&self) -> Instance {
        start(&self.store.url(), &[], None).await
    }

    /// A second replica sharing this one's database, with the gateway on.
    pub async fn another_gateway_instance(&self, fake: &fake_replicate::FakeReplicate) -> Instance {
        start_gateway(&self.store.url(), fake, &[]).await
    }

    /// A second replica sharing this one's database, with some settings of its own.
    pub async fn another_instance_with(&self, overrides: &[(&str, &str)]) -> Instance {
        start(&self.store.url(), overrides, None).await
    }

    /// The Postgres database and a pool onto it, for tests of what only Postgres does.
    pub fn postgres(&self) -> (&TestDatabase, &PgPool) {
        match &self.store {
            TestStore::Postgres { db, pool } => (db, pool),
            TestStore::Sqlite { .. } => panic!("this test needs the Postgres backend"),
        }
    }

    /// Runs one statement on the service's database, beside the service.
    pub async fn execute(&self, sql: &str) {
        self.store.execute(sql).await;
    }

    /// Takes the lock every write of the service needs, from a session of its own, until released;
    /// reads go on.
    pub async fn block_writes(&self) -> WriteBlock {
        match &self.store {
            TestStore::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.expect("begin");
                tx.execute("LOCK TABLE predictions IN EXCLUSIVE MODE")
                    .await
                    .expect("lock the table");
                WriteBlock::Postgres(tx)
            }
            TestStore::Sqlite { pool, .. } => {
                let mut connection = pool.acquire().await.expect("connect").detach();
                connection
                    .execute("BEGIN IMMEDIATE")
                    .await
                    .expect("take the write lock");
                WriteBlock::Sqlite(connection)
            }
        }
    }

    /// Takes a lock that every read of `predictions` (and every write) waits on, from a session of
    /// its own, until the transaction is rolled back. Postgres only.
    pub async fn block_reads(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.postgres().1.begin().await.expect("begin");
        tx.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock the table");
        tx
    }

    /// The store this instance runs on, opened again for the test: to run retention on it.
    pub async fn open_store(&self) -> Arc<dyn Store> {
        let url = settings(&self.store.url(), &[]).database_url;
        prediction_inbox::store::open(&url, 2)
            .await
            .expect("open the store")
    }

    /// Each recorded delivery's `applied` and body, in the order received.
    pub async fn deliveries(&self) -> Vec<(bool, String)> {
        let order = "FROM deliveries ORDER BY received_at, webhook_id";
        match &self.store {
            TestStore::Postgres { pool, .. } => {
                sqlx::query_as(&format!("SELECT applied, body::text {order}"))
                    .fetch_all(pool)
                    .await
            }
            TestStore::Sqlite { pool, .. } => {
                sqlx::query_as(&format!("SELECT applied, body {order}"))
                    .fetch_all(pool)
                    .await
            }
        }
        .expect("read the deliveries")
    }

    pub fn signature(&self, delivery: &Delivery) -> String {
        self.secret.sign(
            &delivery.webhook_id,
            delivery.timestamp,
            delivery.body.as_bytes(),
        )
    }

    /// A POST to the webhook route with the three headers, signed over `signed` as the platform
    /// signs; the caller sets the body, usually those same bytes.
    pub fn signed_request(
        &self,
        webhook_id: &str,
        timestamp: i64,
        signed: &[u8],
    ) -> reqwest::RequestBuilder {
        self.signed_request_to(&self.address, webhook_id, timestamp, signed)
    }

    /// As `signed_request`, to the replica at `address`.
    pub fn signed_request_to(
        &self,
        address: &str,
        webhook_id: &str,
        timestamp: i64,
        signed: &[u8],
    ) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{address}/webhooks/replicate"))
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                self.secret.sign(webhook_id, timestamp, signed),
            )
    }

    pub async fn send(&self, delivery: &Delivery) -> Response {
        self.send_to(&self.address, delivery).await
    }

    /// As `send`, to the replica at `address`.
    pub async fn send_to(&self, address: &str, delivery: &Delivery) -> Response {
        self.signed_request_to(
            address,
            &delivery.webhook_id,
            delivery.timestamp,
            delivery.body.as_bytes(),
        )
        .header("content-type", "application/json")
        .body(delivery.body.clone())
        .send()
        .await
        .expect("send the delivery")
    }

    /// Sends and returns the `status` of a 200 receipt.
    pub async fn deliver(&self, delivery: &Delivery) -> String {
        let response = self.send(delivery).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let receipt: Value = response.json().await.expect("a JSON receipt");
        receipt["status"].as_str().expect("a status").to_owned()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET")
    }

    /// The stored body of a prediction, as text, or `None` on 404.
    pub async fn prediction(&self, id: &str) -> Option<String> {
        let response = self.get(&format!("/v1/predictions/{id}")).await;
        match response.status() {
            StatusCode::OK => Some(response.text().await.expect("body")),
            StatusCode::NOT_FOUND => None,
            other => panic!("GET prediction answered {other}"),
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.store.count(table).await
    }
}

/// Cargo's folder for what tests make (`target/tmp`), found from the running test executable
/// (`target/<profile>/deps/…`): this library is not a test target, so cargo tells it nothing.
pub fn target_tmp() -> PathBuf {
    target_profile()
        .parent()
        .expect("the target folder")
        .join("tmp")
}

/// The folder of the build profile the running test or benchmark was built in (`target/debug`).
pub fn target_profile() -> PathBuf {
    let executable = std::env::current_exe().expect("the test executable's path");
    let deps = executable.parent().expect("the folder of test executables");
    deps.parent().expect("the profile's folder").to_path_buf()
}

pub fn fixture(name: &str) -> String {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A prediction object with the given id, status and logs, in the platform's shape.
pub fn prediction(id: &str, status: &str, logs: &str) -> String {
    let mut body: Value = serde_json::from_str(&fixture("01-starting.json")).expect("fixture");
    body["id"] = id.into();
    body["status"] = status.into();
    body["logs"] = logs.into();
    serde_json::to_string(&body).expect("serialise")
}

/// Asserts an answer is a problem document with this status, and returns it.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem: Value = response.json().await.expect("a problem body");
    assert_eq!(problem["status"], status.as_u16());
    assert!(
        problem["title"].is_string() && problem["detail"].is_string(),
        "{problem}"
    );
    problem
}

/// Reads a `text/event-stream` answer event by event.
pub struct EventStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl EventStream {
    pub fn new(response: Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event's name and data (data lines joined by newlines), skipping keep-alive
    /// comments; `None` when the server has closed the stream. Fails the test if none comes
    /// within 20 s.
    pub async fn next(&mut self) -> Option<(String, String)> {
        tokio::time::timeout(Duration::from_secs(20), self.next_event())
            .await
            .expect("an event, or the end of the stream, within 20 s")
    }

    async fn next_event(&mut self) -> Option<(String, String)> {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (None, Vec::new());
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = Some(name.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    }
                }
                match event {
                    Some(event) => return Some((event, data.join("\n"))),
                    None => continue,
                }
            }
            let chunk = self.body.next().await?.expect("the stream's bytes");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }
}
