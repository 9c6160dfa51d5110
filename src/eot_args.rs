//! `--turn smart|silence` and the `[turn]` table of the config file: the
//! end-of-turn judge's settings for `replay`, `serve` and `run` (the judge
//! itself is `colloquy::eot`).

use colloquy::eot::{EotConfig, TurnMode};
use std::path::Path;

/// End-of-turn flags, flattened into every pipeline command.
#[derive(clap::Args, Debug, Clone)]
pub struct TurnArgs {
    /// End of turn: `smart` (the judge: words and the Smart Turn model may
    /// hold a turn past the endpoint or end it sooner) or `silence` (the
    /// endpoint only). Thresholds and the backstop: `[turn]` in --config.
    #[arg(long = "turn", value_enum, env = "COLLOQUY_TURN")]
    pub mode: Option<TurnMode>,
    /// Longest silence a held turn waits for more words (ms).
    #[arg(long)]
    pub turn_backstop_ms: Option<u64>,
}

/// A bad `[turn]` table (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message} (fix: see \"End of turn\" in the README for the [turn] table)")]
pub struct TurnConfigError {
    file: String,
    message: String,
}

impl TurnArgs {
    /// The judge's settings: the config file's `[turn]` table, then flags.
    pub fn config(&self, file: Option<&Path>) -> Result<EotConfig, TurnConfigError> {
        let mut config = match file {
            Some(path) => read_table(path)?,
            None => EotConfig::default(),
        };
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(ms) = self.turn_backstop_ms {
            config.backstop_ms = ms;
        }
        let origin = file.map_or("--turn-backstop-ms".to_string(), |p| {
            p.display().to_string()
        });
        config.validate().map_err(|message| TurnConfigError {
            file: origin,
            message,
        })?;
        Ok(config)
    }
}

fn read_table(path: &Path) -> Result<EotConfig, TurnConfigError> {
    let err = |message: String| TurnConfigError {
        file: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e| err(format!("not TOML: {e}")))?;
    match table.get("turn") {
        None => Ok(EotConfig::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e| err(format!("[turn]: {e}"))),
    }
}

/// The config file's text without its `[turn]` table (the model stack reads
/// the rest).
pub fn without_turn_table(text: &str) -> String {
    match text.parse::<toml::Table>() {
        Ok(mut table) if table.contains_key("turn") => {
            table.remove("turn");
            toml::to_string(&table).unwrap_or_else(|_| text.to_string())
        }
        _ => text.to_string(),
    }
}
