//! Tests of the telemetry store (see `telemetry.rs`).

use super::*;

fn window() -> WindowConfig {
    WindowConfig {
        max_samples: 4,
        max_age_ms: 10_000,
        default_cooldown_ms: 5_000,
        recent_for_expected: 3,
        ..WindowConfig::default()
    }
}

#[test]
fn the_window_is_bounded_in_count_and_time() {
    let mut s = TelemetryStore::new(window());
    for i in 0..6 {
        s.record_success("m", Some(Duration::from_millis(100 + i)), None, 1_000 + i);
    }
    assert_eq!(s.summary("m", 1_010).samples, 4);
    assert_eq!(s.summary("m", 1_010).ttft_p50_ms, Some(103));
    assert_eq!(s.summary("m", 20_000).samples, 0, "all older than max_age");
}

#[test]
fn percentiles_success_rate_and_expected_ttft() {
    let mut s = TelemetryStore::new(WindowConfig {
        max_samples: 100,
        ..window()
    });
    for t in [100, 200, 300, 400, 1000] {
        s.record_success("m", Some(Duration::from_millis(t)), Some(20.0), 0);
    }
    s.record_failure("m", &LlmError::new(ErrorClass::Server, "p", "boom"), 0);
    let sum = s.summary("m", 0);
    assert_eq!(sum.ttft_p50_ms, Some(300));
    assert_eq!(sum.ttft_p95_ms, Some(1000));
    assert_eq!(sum.expected_ttft_ms, Some(400), "median of 300, 400, 1000");
    assert_eq!(sum.success_rate, Some(5.0 / 6.0));
    assert_eq!(sum.last_error.map(|e| e.class), Some(ErrorClass::Server));
}

#[test]
fn a_rate_limit_cools_down_for_retry_after_or_the_default() {
    let mut s = TelemetryStore::new(window());
    let mut e = LlmError::new(ErrorClass::RateLimited, "p", "slow down");
    e.retry_after = Some(Duration::from_millis(2_000));
    s.record_failure("a", &e, 1_000);
    assert!(s.in_cooldown("a", 2_999));
    assert!(!s.in_cooldown("a", 3_000));
    e.retry_after = None;
    s.record_failure("b", &e, 1_000);
    assert!(s.in_cooldown("b", 5_999));
    assert!(!s.in_cooldown("b", 6_000));
}

#[test]
fn the_store_round_trips_through_a_file_and_renders_a_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub").join("store.json");
    let mut s = TelemetryStore::new(window());
    s.record_success("p/fast", Some(Duration::from_millis(120)), Some(40.0), 500);
    let mut e = LlmError::new(ErrorClass::RateLimited, "p", "quota");
    e.status = Some(429);
    s.record_failure("p/slow", &e, 600);
    s.save(&path).expect("save");
    let back = TelemetryStore::load(&path, window()).expect("load");
    assert_eq!(back, s);
    let table = back.render_table(700);
    assert!(table.contains("p/fast"), "{table}");
    assert!(table.contains("rate_limited 429"), "{table}");
    let status = status_table(&path).expect("status");
    assert!(status.starts_with("STAGE"), "{status}");
    assert!(status_table(&dir.path().join("none.json"))
        .expect("empty")
        .contains("no model requests"));
    let missing = TelemetryStore::load(&dir.path().join("none.json"), window()).expect("empty");
    assert!(missing.models.is_empty());
    std::fs::write(&path, "{not json").expect("write");
    let err = TelemetryStore::load(&path, window()).expect_err("corrupt");
    assert!(err.to_string().contains("fix:"), "{err}");
}

#[test]
fn snapshots_merge_both_sides_once_and_keep_the_longer_cooldown() {
    let ms = Duration::from_millis;
    let mut a = TelemetryStore::new(WindowConfig::default());
    a.record_served("h/m", Some(ms(100)), None, None, 1_000);
    let mut e = LlmError::new(ErrorClass::RateLimited, "h", "quota");
    e.retry_after = Some(ms(9_000));
    let mut b = TelemetryStore::new(WindowConfig::default());
    b.record_served("h/m", Some(ms(300)), None, None, 1_100);
    b.record_failure("h/m", &e, 1_200);
    b.record_served("embedded/smol", Some(ms(400)), None, None, 1_150);
    let snap = b.to_snapshot();
    assert_eq!(a.merge_snapshot(&snap, 2_000).expect("merge"), 2);
    let once = a.clone();
    a.merge_snapshot(&snap, 2_000).expect("merge again");
    assert_eq!(a.models, once.models, "merging twice changes nothing");
    let s = a.summary("h/m", 2_000);
    assert_eq!(s.samples, 3, "both sides' samples");
    assert_eq!(
        s.cooldown_remaining_ms,
        Some(8_200),
        "the other side's cooldown"
    );
    assert_eq!(a.summary("embedded/smol", 2_000).served, 1);
    assert!(a.merge_snapshot("{not json", 2_000).is_err());
}

#[test]
fn a_censored_wait_is_a_lower_bound_never_a_latency() {
    let ms = Duration::from_millis;
    let mut s = TelemetryStore::new(WindowConfig {
        max_samples: 100,
        recent_for_expected: 5,
        ..window()
    });
    // A hosted loser cancelled 105 ms in (the local model won): it says
    // only "slower than 105 ms". Then two waits of 1.6 s with no token.
    s.record_lost("h", ms(105), true, 0);
    assert_eq!(s.summary("h", 0).expected_ttft_ms, Some(105));
    s.record_lost("h", ms(1_600), true, 0);
    s.record_lost("h", ms(1_500), true, 0);
    let h = s.summary("h", 0);
    assert_eq!(h.expected_ttft_ms, Some(1_600), "the longest wait stands");
    assert_eq!(h.ttft_p90_ms, Some(1_600));
    // With answers known, a short censored wait is ignored and a long one
    // counts as (at least) its length.
    for t in [200, 300, 400] {
        s.record_success("m", Some(ms(t)), None, 0);
    }
    s.record_lost("m", ms(50), true, 0);
    assert_eq!(s.summary("m", 0).expected_ttft_ms, Some(300));
    s.record_lost("m", ms(5_000), true, 0);
    s.record_lost("m", ms(6_000), true, 0);
    assert_eq!(s.summary("m", 0).expected_ttft_ms, Some(400));
    assert_eq!(s.summary("m", 0).ttft_p95_ms, Some(6_000));
}
