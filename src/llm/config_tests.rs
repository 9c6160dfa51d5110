//! Tests of the stage configuration (see `config.rs`).

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn endpoints_parse_with_ports_paths_ipv6_and_voices() {
    let e = parse_endpoint("http://127.0.0.1:8080/v1::gpt-x", "t").unwrap();
    assert_eq!(e.base_url, "http://127.0.0.1:8080/v1");
    assert_eq!(e.model, "gpt-x");
    let e = parse_endpoint("http://[::1]:9000/v1/::m::alloy", "t").unwrap();
    assert_eq!(e.base_url, "http://[::1]:9000/v1");
    assert_eq!((e.model.as_str(), e.voice.as_deref()), ("m", Some("alloy")));
    for bad in [
        "127.0.0.1::m",
        "ftp://127.0.0.1::m",
        "http://127.0.0.1",
        "http://127.0.0.1::",
        "http://127.0.0.1::m::v::x",
    ] {
        let err = parse_endpoint(bad, "--llm").expect_err(bad);
        assert!(err.to_string().contains("fix:"), "{err}");
    }
}

fn hosted<S>(e: &Entry<S>) -> &S {
    match e {
        Entry::Hosted(s) => s,
        Entry::Embedded => panic!("expected a hosted entry"),
    }
}

#[test]
fn cli_models_replace_the_file_list_in_order_with_the_default_key_var() {
    let mut c = LlmConfig::from_toml(
        r#"
        [[models]]
        provider = "a"
        base_url = "http://127.0.0.1:1/v1"
        model = "m1"
        api_key_env = "A_KEY"
        price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }
        [retry]
        max_attempts = 2
        "#,
        "colloquy.toml",
    )
    .unwrap();
    assert_eq!(hosted(&c.models[0]).key(), "a/m1");
    assert_eq!(c.retry.max_attempts, 2);
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-test".to_string());
    c.apply_cli(
        &[
            "http://127.0.0.1:1/v1::x".into(),
            "embedded".into(),
            "http://127.0.0.1:2/v1::y".into(),
        ],
        &[],
        &["http://127.0.0.1:3/v1::tts-1::nova".into()],
        &env,
    )
    .unwrap();
    let keys: Vec<_> = c
        .models
        .iter()
        .map(|e| match e {
            Entry::Embedded => "embedded".to_string(),
            Entry::Hosted(s) => s.key(),
        })
        .collect();
    assert_eq!(keys, ["127.0.0.1:1/x", "embedded", "127.0.0.1:2/y"]);
    assert_eq!(
        hosted(&c.models[0]).api_key_env.as_deref(),
        Some("OPENAI_API_KEY")
    );
    assert_eq!(hosted(&c.tts[0]).voice.as_deref(), Some("nova"));
    assert_eq!(c.stt_candidates(), [Entry::Embedded], "the default");
    c.apply_cli(&["http://127.0.0.1::x".into()], &[], &[], &no_env)
        .unwrap();
    assert_eq!(
        hosted(&c.models[0]).api_key_env,
        None,
        "no OPENAI_API_KEY: no key"
    );
}

#[test]
fn env_lists_apply_and_unknown_fields_are_rejected() {
    let mut c = LlmConfig::default();
    assert_eq!(
        c.llm_candidates(),
        [Entry::Embedded],
        "embedded alone by default"
    );
    let env = |k: &str| match k {
        "COLLOQUY_LLM" => Some("http://127.0.0.1:4/v1::m1, embedded".to_string()),
        "COLLOQUY_STT" => Some("http://127.0.0.1:4/v1::whisper-1,embedded".to_string()),
        _ => None,
    };
    c.apply_env(&env).unwrap();
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.models[1], Entry::Embedded);
    assert_eq!(c.stt.len(), 2);
    let err = LlmConfig::from_toml("[[models]]\nbase_url='x'\nmodel='m'\nkey='oops'", "f.toml")
        .expect_err("unknown field");
    assert!(err.to_string().contains("f.toml"), "{err}");
}

#[test]
fn the_config_file_takes_lists_of_strings_and_tables_and_a_single_service() {
    let c = LlmConfig::from_toml(
        r#"
        models = ["http://127.0.0.1:1/v1::fast", "embedded"]
        stt = ["http://127.0.0.1:1/v1::whisper-1", "embedded"]
        [tts]
        base_url = "http://127.0.0.1:1/v1"
        model = "tts-1"
        voice = "nova"
        [router]
        prefer_within_ms = 400
        "#,
        "colloquy.toml",
    )
    .unwrap();
    assert_eq!(hosted(&c.models[0]).model, "fast");
    assert!(
        hosted(&c.models[0]).default_key,
        "a string takes OPENAI_API_KEY if set"
    );
    assert_eq!(c.models[1], Entry::Embedded);
    assert_eq!(c.stt[1], Entry::Embedded);
    assert_eq!(hosted(&c.tts[0]).voice.as_deref(), Some("nova"));
    assert_eq!(c.router.prefer_within_ms, 400);
    let with = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk".to_string());
    assert_eq!(
        key_env(None, true, &with).as_deref(),
        Some("OPENAI_API_KEY")
    );
    assert_eq!(key_env(None, true, &no_env), None);
    assert_eq!(key_env(Some("X"), true, &no_env).as_deref(), Some("X"));
}

#[test]
fn bad_entries_are_errors_naming_the_entry_and_its_source() {
    for (items, origin, needle) in [
        (vec!["ftp://127.0.0.1/v1::m"], "--llm", "scheme `ftp`"),
        (vec!["local"], "--stt", "unknown candidate `local`"),
        (vec!["embedded", ""], "COLLOQUY_TTS", "empty candidate"),
        (vec!["embedded", "embedded"], "--llm", "listed twice"),
        (vec!["http://127.0.0.1:1/v1"], "--llm", "names no model"),
    ] {
        let items: Vec<String> = items.into_iter().map(String::from).collect();
        let err = parse_list::<ServiceSpec>(&items, origin).expect_err(needle);
        let text = err.to_string();
        assert!(
            text.contains(origin) && text.contains(needle) && text.contains("fix:"),
            "{text}"
        );
    }
    let err = LlmConfig::from_toml("models = ['embedded', 'bogus']", "c.toml").expect_err("bogus");
    assert!(err.to_string().contains("bogus"), "{err}");
    let mut c = LlmConfig::default();
    let err = c
        .apply_cli(
            &["http://127.0.0.1:1/v1::m::voice".into()],
            &[],
            &[],
            &no_env,
        )
        .expect_err("a chat model takes no voice");
    assert!(err.to_string().contains("no voice"), "{err}");
}

#[test]
fn keys_come_from_the_named_variable_and_never_print() {
    let env = |k: &str| (k == "MY_KEY").then(|| "sk-secret-123".to_string());
    let key = resolve_key(Some("MY_KEY"), "m", &env).unwrap().unwrap();
    assert_eq!(format!("{key:?}"), "***");
    assert_eq!(key.redact("bearer sk-secret-123!"), "bearer ***!");
    let err = resolve_key(Some("NOPE"), "p/m", &env).expect_err("missing");
    assert!(err.to_string().contains("NOPE") && err.to_string().contains("fix:"));
    assert_eq!(resolve_key(None, "m", &env).unwrap(), None);
}
