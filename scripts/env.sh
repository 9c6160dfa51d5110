# Sourced by the scripts: where builds and models live (outside the clone).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/colloquy/target}"
export COLLOQUY_MODELS="${COLLOQUY_MODELS:-$HOME/.cache/colloquy/models}"
COLLOQUY_BIN="$CARGO_TARGET_DIR/release/colloquy"
