//! PostgreSQL for tests: `COLLOQUY_TEST_PG_URL` (set by
//! `scripts/fleet-test.sh`) names a server where tests may create
//! databases; each test gets a fresh one ([`fresh_db`]). Without it the
//! PostgreSQL variants skip, unless `COLLOQUY_REQUIRE_PG=1` (set by the
//! script, so in CI a missing PostgreSQL fails).

use colloquy::journal::store::{open_store, Store};
use colloquy::journal::JournalLocation;
use std::sync::Arc;

/// The test server's URL, or `None` (skip) when not required.
pub fn base_url() -> Option<String> {
    match std::env::var("COLLOQUY_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("COLLOQUY_REQUIRE_PG").as_deref() != Ok("1"),
                "COLLOQUY_REQUIRE_PG=1 but COLLOQUY_TEST_PG_URL is not set (run scripts/fleet-test.sh)"
            );
            eprintln!("skipped: no COLLOQUY_TEST_PG_URL (scripts/fleet-test.sh sets it)");
            None
        }
    }
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (head, tail) = url
        .split_once('?')
        .map_or((url, None), |(h, t)| (h, Some(t)));
    let base = match head.rfind('/') {
        Some(i) if i > head.find("://").map_or(0, |j| j + 2) => &head[..i],
        _ => head,
    };
    match tail {
        Some(t) => format!("{base}/{db}?{t}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh empty database on the test server; its URL.
pub async fn fresh_db() -> Option<String> {
    let base = base_url()?;
    let db = format!("colloquy_t_{:016x}", rand::random::<u64>());
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to COLLOQUY_TEST_PG_URL: {e}"));
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    drop(client);
    let _ = task.await;
    Some(with_db(&base, &db))
}

/// Runs `sql` on the database at `url`.
pub async fn execute(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.expect("sql");
    drop(client);
    let _ = task.await;
}

/// Opens the store at `location`.
pub async fn store(location: &str) -> Arc<dyn Store> {
    let loc = JournalLocation::parse(location).expect("location");
    open_store(&loc, None).await.expect("open store")
}
