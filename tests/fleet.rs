//! Two `colloquy serve` instances on one PostgreSQL behind HAProxy (issue
//! 15), with the real parts: the PostgreSQL `scripts/fleet-test.sh` started
//! (a fresh database here), HAProxy run with the configuration of
//! `docs/deploy.md` verbatim, and the release binary, with the parrot agent.
//! A client talks to the load balancer:
//!
//! 1. it commits turns on one instance; the same session opened directly on
//!    the other is refused (`session_in_use`); the holder is killed with
//!    SIGKILL during a reply; the client reconnects through the load
//!    balancer and resumes on the other instance (after the lease expired)
//!    with every committed turn;
//! 2. a rolling restart (SIGTERM to A, wait, restart, then B) during
//!    continuous calls: every resume's history holds every turn the client
//!    saw committed, and the store holds them all at the end;
//! 3. PostgreSQL stopped during a call: the call goes on, the turn is
//!    reported as not yet saved, and written (then `committed`) once
//!    PostgreSQL is back.
//!
//! Skipped without `COLLOQUY_TEST_PG_URL` (a failure with
//! `COLLOQUY_REQUIRE_PG=1`, as the script sets in CI).
//!
//! # Invariants
//! 1. Every wait is for an expected state (a message, a probe's answer, a
//!    process's exit), bounded by a deadline; timings are printed, and only
//!    bounded generously where the issue fixes a bound (lease expiry).
//! 2. Only processes this test started are signalled, by their pid; all are
//!    killed when the test ends (Drop), pass or fail.

mod common;
use colloquy::agent::parrot::PARROT_TEXT;
use futures::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Ws = common::ws::Ws;

const TOKEN: &str = "fleet-test-token";
const LEASE_SECS: u64 = 3;
const READ: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The HAProxy configuration block of docs/deploy.md (```haproxy fence).
fn haproxy_config(doc: &Path) -> String {
    let text = std::fs::read_to_string(doc).expect("docs/deploy.md");
    let start = text
        .find("```haproxy\n")
        .expect("a ```haproxy block in docs/deploy.md")
        + 11;
    let len = text[start..].find("```").expect("end of the haproxy block");
    text[start..start + len].to_string()
}

/// A process this test started (invariant 2).
struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; returns how long it took.
    fn term_and_wait(&mut self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(ok.success(), "{}: kill -TERM {pid}", self.name);
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "{} exited {status} after SIGTERM",
                    self.name
                );
                return t0.elapsed();
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not end within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One `colloquy serve` instance.
struct Instance {
    proc: Proc,
    port: u16,
    name: &'static str,
    log: PathBuf,
}

struct Fleet {
    _dir: tempfile::TempDir,
    url: String,
    lb: u16,
    a: Instance,
    b: Instance,
    _haproxy: Proc,
}

fn start_instance(name: &'static str, port: u16, url: &str, lb: u16, dir: &Path) -> Instance {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .args(["serve", "--agent", "parrot", "--token", TOKEN])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--journal", url])
        .args(["--lease-secs", &LEASE_SECS.to_string(), "--drain-secs", "8"])
        .args(["--instance-id", name, "--idle-secs", "600"])
        .args(["--allow-origin", &format!("http://127.0.0.1:{lb}")])
        .env("COLLOQUY_LOG", "info")
        .env_remove("COLLOQUY_JOURNAL")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start colloquy serve");
    Instance {
        proc: Proc {
            child: Some(child),
            name: name.to_string(),
        },
        port,
        name,
        log,
    }
}

/// `GET path` on 127.0.0.1:port: (status, body), or None when refused.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until `GET path` answers `status` (bounded).
async fn wait_status(port: u16, path: &str, status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((s, _)) = http_get(port, path).await {
            if s == status {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Fleet {
    async fn start(url: String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lb, pa, pb) = (free_port(), free_port(), free_port());
        let a = start_instance("a", pa, &url, lb, dir.path());
        let b = start_instance("b", pb, &url, lb, dir.path());
        for i in [&a, &b] {
            wait_status(i.port, "/readyz", 200, i.name).await;
        }
        let doc = std::env::var("COLLOQUY_FLEET_DEPLOY_DOC")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy.md"));
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(&doc)).expect("write haproxy.cfg");
        let hlog = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .env("LB_PORT", lb.to_string())
            .env("A_PORT", pa.to_string())
            .env("B_PORT", pb.to_string())
            .stdin(Stdio::null())
            .stdout(hlog.try_clone().expect("log"))
            .stderr(hlog)
            .spawn()
            .expect("start haproxy (scripts/setup.sh --test installs it)");
        let haproxy = Proc {
            child: Some(child),
            name: "haproxy".into(),
        };
        wait_status(lb, "/healthz", 200, "haproxy").await;
        Self {
            _dir: dir,
            url,
            lb,
            a,
            b,
            _haproxy: haproxy,
        }
    }

    fn restart(&mut self, which: char) {
        let dir = self._dir.path().to_path_buf();
        let i = if which == 'a' {
            &mut self.a
        } else {
            &mut self.b
        };
        let fresh = start_instance(i.name, i.port, &self.url, self.lb, &dir);
        *i = fresh;
    }

    /// The instance holding `n` live sessions per its readiness probe.
    async fn live(&self, i: &Instance) -> usize {
        http_get(i.port, "/readyz")
            .await
            .and_then(|(_, body)| body.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    fn logs(&self) -> String {
        [&self.a, &self.b]
            .iter()
            .map(|i| {
                format!(
                    "--- {} ---\n{}",
                    i.name,
                    std::fs::read_to_string(&i.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

async fn connect(port: u16, session: Option<&str>) -> Option<Ws> {
    let mut url = format!("ws://127.0.0.1:{port}/ws?token={TOKEN}");
    if let Some(s) = session {
        url.push_str("&session=");
        url.push_str(s);
    }
    tokio_tungstenite::connect_async(url)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Next JSON message within [`READ`]; `None` on close, error or timeout.
async fn next(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        let msg = tokio::time::timeout(READ, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until a message of `kind`; `None` when the socket ended first.
async fn until(ws: &mut Ws, kind: &str) -> Option<serde_json::Value> {
    loop {
        let v = next(ws).await?;
        if v["type"] == kind {
            return Some(v);
        }
    }
}

/// Says one question (hello, audio faster than real time, silence);
/// `false` if the socket failed.
async fn say(ws: &mut Ws) -> bool {
    if ws
        .send(Message::text(
            r#"{"type":"hello","version":1,"sample_rate":16000}"#,
        ))
        .await
        .is_err()
    {
        return false;
    }
    let mut samples = common::load16k("speech/q-france.wav");
    samples.extend(std::iter::repeat_n(0i16, 16_000));
    for chunk in samples.chunks(1600) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        if ws.send(Message::binary(bytes)).await.is_err() {
            return false;
        }
    }
    true
}

/// A new session through `port`: (socket, session id).
async fn open_new(port: u16) -> (Ws, String) {
    let mut ws = connect(port, None)
        .await
        .expect("connect through the load balancer");
    let hello = until(&mut ws, "hello").await.expect("hello");
    let id = hello["session"].as_str().expect("session").to_string();
    until(&mut ws, "history").await.expect("history");
    (ws, id)
}

/// Resumes `id` through `port`, retrying refusals (a lease not yet free, an
/// instance going away) until `limit`: (socket, history turns).
async fn resume(port: u16, id: &str, limit: Duration) -> (Ws, Vec<serde_json::Value>) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(mut ws) = connect(port, Some(id)).await {
            if let Some(first) = next(&mut ws).await {
                if first["type"] == "hello" && first["session"] == id {
                    let history = until(&mut ws, "history").await.expect("history");
                    let turns = history["turns"].as_array().cloned().unwrap_or_default();
                    return (ws, turns);
                }
                assert!(
                    first["code"] == "session_in_use",
                    "resuming {id}: unexpected {first}"
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "session {id} not resumable within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One turn: says a question, waits for its `committed`. `None` when the
/// socket ended (drain, kill) first.
async fn one_turn(ws: &mut Ws) -> Option<serde_json::Value> {
    if !say(ws).await {
        return None;
    }
    // (A turn cut by a drain commits what was heard: any text.)
    until(ws, "committed").await
}

async fn store_turns(url: &str, id: &str) -> usize {
    common::pg::store(url)
        .await
        .turns(id)
        .await
        .expect("turns")
        .len()
}

fn sh(cmd: &str) {
    let ok = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(ok.success(), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_haproxy_on_one_postgres() {
    let Some(url) = common::pg::fresh_db().await else {
        return;
    };
    let mut fleet = Fleet::start(url.clone()).await;
    let lb = fleet.lb;

    // ---- 1. kill -9 mid-reply; refused while live; resumed elsewhere ----
    let (mut ws, id) = open_new(lb).await;
    for _ in 0..2 {
        one_turn(&mut ws).await.expect("committed");
    }
    let a_live = fleet.live(&fleet.a).await;
    let (holder, other) = if a_live == 1 { ('a', 'b') } else { ('b', 'a') };
    let other_port = if other == 'a' {
        fleet.a.port
    } else {
        fleet.b.port
    };
    let mut dup = connect(other_port, Some(&id))
        .await
        .expect("connect the other instance");
    let refused = next(&mut dup).await.expect("an answer");
    assert_eq!(refused["code"], "session_in_use", "{refused}");
    assert!(say(&mut ws).await);
    until(&mut ws, "bot_started_speaking")
        .await
        .expect("the reply starts");
    let killed = Instant::now();
    if holder == 'a' {
        fleet.a.proc.kill9();
    } else {
        fleet.b.proc.kill9();
    }
    let (mut ws, history) = resume(lb, &id, Duration::from_secs(30)).await;
    let resumable = killed.elapsed();
    assert_eq!(
        history.len(),
        2,
        "every committed turn, no half turn: {history:?}"
    );
    assert!(history.iter().all(|t| t["assistant"] == PARROT_TEXT));
    println!(
        "fleet: instance {holder} killed mid-reply; session resumable through the load balancer after {} ms (lease {LEASE_SECS} s)",
        resumable.as_millis()
    );
    assert!(
        resumable < Duration::from_secs(LEASE_SECS + 8),
        "lease expiry took {resumable:?}\n{}",
        fleet.logs()
    );
    one_turn(&mut ws)
        .await
        .expect("a turn on the other instance");
    assert_eq!(store_turns(&url, &id).await, 3);
    let _ = ws.send(Message::text(r#"{"type":"bye"}"#)).await;
    drop(ws);
    fleet.restart(holder);
    wait_status(
        if holder == 'a' {
            fleet.a.port
        } else {
            fleet.b.port
        },
        "/readyz",
        200,
        "restarted",
    )
    .await;

    // ---- 2. rolling restart during continuous calls ----
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    // Waits until the clients together committed `n` more turns (bounded).
    let more = |n: usize| {
        let progress = progress.clone();
        async move {
            let target = progress.load(Ordering::Acquire) + n;
            let deadline = Instant::now() + Duration::from_secs(90);
            while progress.load(Ordering::Acquire) < target {
                assert!(
                    Instant::now() < deadline,
                    "the calls stopped making progress"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let seen = Arc::new(Mutex::new(Vec::<(String, usize, usize, Duration)>::new()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let stop = stop.clone();
        let seen = seen.clone();
        let progress = progress.clone();
        clients.push(tokio::spawn(async move {
            let (mut ws, id) = open_new(lb).await;
            let (mut committed, mut resumes, mut worst_gap) = (0usize, 0usize, Duration::ZERO);
            while !stop.load(Ordering::Acquire) {
                if one_turn(&mut ws).await.is_some() {
                    committed += 1;
                    progress.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                let gone = Instant::now();
                let (again, history) = resume(lb, &id, Duration::from_secs(30)).await;
                worst_gap = worst_gap.max(gone.elapsed());
                resumes += 1;
                assert!(
                    history.len() >= committed,
                    "session {id}: history {} < {committed} committed turns seen",
                    history.len()
                );
                ws = again;
            }
            let _ = ws.send(Message::text(r#"{"type":"bye"}"#)).await;
            if let Ok(mut s) = seen.lock() {
                s.push((id, committed, resumes, worst_gap));
            }
        }));
    }
    // Calls run on both instances, then each is restarted in turn.
    more(3).await;
    for which in ['a', 'b'] {
        let t = if which == 'a' {
            fleet.a.proc.term_and_wait(Duration::from_secs(15))
        } else {
            fleet.b.proc.term_and_wait(Duration::from_secs(15))
        };
        println!(
            "fleet: instance {which} drained and exited {} ms after SIGTERM",
            t.as_millis()
        );
        fleet.restart(which);
        let port = if which == 'a' {
            fleet.a.port
        } else {
            fleet.b.port
        };
        wait_status(port, "/readyz", 200, "restarted").await;
        more(3).await;
    }
    stop.store(true, Ordering::Release);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("client ends")
            .expect("client ok");
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut resumed = 0;
    for (id, committed, resumes, gap) in &seen {
        let stored = store_turns(&url, id).await;
        println!(
            "fleet: rolling restart: session {id}: {committed} turns committed, {stored} stored, {resumes} resumes, longest reconnect {} ms",
            gap.as_millis()
        );
        assert!(
            *committed >= 2,
            "session {id}: the call went on ({committed} turns)"
        );
        assert!(
            stored >= *committed,
            "session {id}: {stored} stored < {committed} committed"
        );
        resumed += resumes;
    }
    assert!(
        resumed >= 3,
        "each drained call resumed ({resumed} resumes)\n{}",
        fleet.logs()
    );

    // ---- 3. PostgreSQL stopped during a call ----
    let (Ok(pg_stop), Ok(pg_start)) = (
        std::env::var("COLLOQUY_FLEET_PG_STOP"),
        std::env::var("COLLOQUY_FLEET_PG_START"),
    ) else {
        panic!("COLLOQUY_FLEET_PG_STOP/START not set (scripts/fleet-test.sh sets them)");
    };
    let (mut ws, id) = open_new(lb).await;
    one_turn(&mut ws).await.expect("committed");
    sh(&pg_stop);
    assert!(say(&mut ws).await);
    let err = until(&mut ws, "error")
        .await
        .expect("the failure is reported");
    assert_eq!(err["source"], "journal", "{err}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("retrying")),
        "{err}"
    );
    sh(&pg_start);
    let late = until(&mut ws, "committed")
        .await
        .expect("committed once PostgreSQL is back");
    assert_eq!(late["assistant"], PARROT_TEXT);
    one_turn(&mut ws).await.expect("the call goes on");
    assert_eq!(store_turns(&url, &id).await, 3, "every turn written");
    let _ = ws.send(Message::text(r#"{"type":"bye"}"#)).await;
    println!("fleet: PostgreSQL stopped during a call: the turn was retried and written when it returned");
}
