//! Every kind of WAV a user might hand to `replay`: each is converted
//! correctly or refused with an error that names the file and the problem,
//! never a panic (audio::wav invariants 1 and 2).

use colloquy::audio::{read_wav, resample_to_16k, WavError};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tone_wav(dir: &Path, name: &str, spec: hound::WavSpec, secs: f32) -> PathBuf {
    let path = dir.join(name);
    let mut w = hound::WavWriter::create(&path, spec).expect("create");
    let n = (spec.sample_rate as f32 * secs) as usize;
    for i in 0..n {
        let v =
            0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / spec.sample_rate as f32).sin();
        for _ in 0..spec.channels {
            match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, _) => w.write_sample(v).expect("write"),
                (_, 8) => w.write_sample((v * 127.0) as i8).expect("write"),
                (_, 16) => w.write_sample((v * 32767.0) as i16).expect("write"),
                (_, 24) => w.write_sample((v * 8_388_607.0) as i32).expect("write"),
                _ => w.write_sample((v * 2_147_483_647.0) as i32).expect("write"),
            }
        }
    }
    w.finalize().expect("finalize");
    path
}

fn spec(rate: u32, channels: u16, bits: u16, float: bool) -> hound::WavSpec {
    hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    }
}

fn rms(s: &[i16]) -> f32 {
    (s.iter().map(|&v| (v as f32 / 32768.0).powi(2)).sum::<f32>() / s.len() as f32).sqrt()
}

#[test]
fn every_supported_format_converts_to_16k_mono_with_the_right_length_and_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        spec(16_000, 1, 16, false),
        spec(8_000, 1, 16, false),
        spec(11_025, 1, 8, false),
        spec(22_050, 2, 16, false),
        spec(44_100, 2, 24, false),
        spec(48_000, 1, 32, false),
        spec(48_000, 2, 32, true),
        spec(32_000, 6, 16, false),
    ];
    for (i, s) in cases.iter().enumerate() {
        let path = tone_wav(dir.path(), &format!("case{i}.wav"), *s, 1.0);
        let audio = read_wav(&path).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(audio.sample_rate, s.sample_rate);
        assert_eq!(audio.channels, s.channels);
        let pcm = resample_to_16k(&audio).expect("resample");
        assert!(
            (pcm.len() as i64 - 16_000).abs() <= 32,
            "{s:?}: {} samples",
            pcm.len()
        );
        let level = rms(&pcm[1600..14_400]);
        assert!((level - 0.3536).abs() < 0.03, "{s:?}: rms {level}");
    }
}

fn expect_error(path: &Path, needle: &str) -> WavError {
    let err = read_wav(path).expect_err("must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error must name the file: {msg}"
    );
    assert!(
        msg.to_lowercase().contains(needle),
        "error must say '{needle}': {msg}"
    );
    err
}

#[test]
fn malformed_files_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = tone_wav(dir.path(), "good.wav", spec(16_000, 1, 16, false), 0.5);
    let bytes = std::fs::read(&good).expect("read");

    // Truncated header.
    let p = dir.path().join("short-header.wav");
    std::fs::write(&p, &bytes[..20]).expect("write");
    expect_error(&p, "not a readable wav");

    // Garbage.
    let p = dir.path().join("garbage.wav");
    std::fs::write(&p, b"this is not a wav file at all, just text....").expect("write");
    expect_error(&p, "not a readable wav");

    // Empty file.
    let p = dir.path().join("empty.wav");
    std::fs::write(&p, b"").expect("write");
    expect_error(&p, "not a readable wav");

    // Zero-length data chunk.
    let p = tone_wav(dir.path(), "zero.wav", spec(16_000, 1, 16, false), 0.0);
    expect_error(&p, "no audio");

    // A header claiming gigabytes of audio.
    let mut huge = bytes.clone();
    huge[40..44].copy_from_slice(&0xF000_0000u32.to_le_bytes());
    let p = dir.path().join("huge.wav");
    std::fs::write(&p, &huge).expect("write");
    expect_error(&p, "truncated");

    // Data cut in the middle.
    let p = dir.path().join("cut.wav");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    expect_error(&p, "truncated");

    // Unsupported rate and channel count.
    let p = tone_wav(dir.path(), "4k.wav", spec(4_000, 1, 16, false), 0.1);
    expect_error(&p, "sample rate 4000");

    let p = tone_wav(dir.path(), "nine.wav", spec(16_000, 9, 16, false), 0.1);
    expect_error(&p, "9 channels");

    // Missing file.
    let p = dir.path().join("missing.wav");
    expect_error(&p, "cannot open");
}

#[test]
fn odd_trailing_bytes_do_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = tone_wav(dir.path(), "good.wav", spec(16_000, 1, 16, false), 0.2);
    let mut bytes = std::fs::read(&good).expect("read");
    bytes.extend_from_slice(b"\x01\x02\x03");
    let p = dir.path().join("trailing.wav");
    let mut f = std::fs::File::create(&p).expect("create");
    f.write_all(&bytes).expect("write");
    // Either accepted or refused, but never a panic.
    let _ = read_wav(&p);
}
