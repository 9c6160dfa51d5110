#!/usr/bin/env bash
# Builds the end-of-turn evaluation set, assets/eot/ (see assets/README.md):
# utterances with one mid-sentence pause of 0.5-1.2 s, and the same utterances
# whole. Real speech: LibriVox/CMU recordings from Debian pocketsphinx-testdata
# (already in assets/speech), spliced at a word boundary with the recording's
# own room tone as the pause. Synthetic speech: espeak-ng phrases in several
# voices, the two halves spoken separately and joined by a pause (as a person
# who stops to think), and the whole phrase spoken at once.
# Needs Debian espeak-ng and sox. The results are committed; run this only to
# rebuild them. Used by `cargo bench --bench eot` and tests/eot_replay.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=assets/eot
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
rm -f "$out"/*.wav
index="$out/set.tsv"
printf 'name\tkind\tcut_ms\tpause_ms\tpaused\twhole\tfirst\tsecond\n' > "$index"

# Seconds to whole milliseconds.
ms() { awk "BEGIN { print int($1 * 1000 + 0.5) }"; }

# Trims leading and trailing silence (below 0.1 % of full scale).
trim() { sox "$1" "$2" silence 1 0.02 0.1% reverse silence 1 0.02 0.1% reverse; }

# real NAME SOURCE CUT_S PAUSE_S "FIRST WORDS" "SECOND WORDS"
# Splices SOURCE (in assets/speech) at CUT_S, a gap between two words found
# on its energy contour and checked with Whisper on each half; the pause is
# the recording's first 0.2 s (room tone, before the speech) repeated.
real() {
  local name=$1 src=assets/speech/$2.wav cut=$3 pause=$4
  sox "$src" "$tmp/tone.wav" trim 0 0.2
  sox "$tmp/tone.wav" "$tmp/pause.wav" repeat 8 trim 0 "$pause"
  sox "$src" "$tmp/a.wav" trim 0 "$cut"
  sox "$src" "$tmp/b.wav" trim "$cut"
  sox "$tmp/a.wav" "$tmp/pause.wav" "$tmp/b.wav" "$out/$name-paused.wav"
  printf '%s\treal\t%d\t%d\t%s\t%s\t%s\t%s\n' "$name" "$(ms "$cut")" "$(ms "$pause")" \
    "eot/$name-paused.wav" "speech/$2.wav" "$5" "$6" >> "$index"
}

# synth NAME VOICE PAUSE_S "FIRST WORDS" "SECOND WORDS"
synth() {
  local name=$1 voice=$2 pause=$3
  espeak-ng -v "$voice" -s 155 -w "$tmp/a0.wav" "$4"
  espeak-ng -v "$voice" -s 155 -w "$tmp/b0.wav" "$5"
  espeak-ng -v "$voice" -s 155 -w "$tmp/w0.wav" "$4 $5"
  for p in a b w; do
    sox "$tmp/${p}0.wav" -r 16000 -c 1 -b 16 "$tmp/${p}1.wav"
    trim "$tmp/${p}1.wav" "$tmp/$p.wav"
  done
  sox -n -r 16000 -c 1 -b 16 "$tmp/pause.wav" trim 0 "$pause"
  sox "$tmp/a.wav" "$tmp/pause.wav" "$tmp/b.wav" "$tmp/paused.wav"
  # A faint noise floor, as a microphone has (about -60 dBFS).
  for p in paused w; do
    local len
    len=$(soxi -D "$tmp/$p.wav")
    sox -n -r 16000 -c 1 -b 16 "$tmp/floor.wav" synth "$len" pinknoise vol 0.002
    sox -m -v 1 "$tmp/$p.wav" -v 1 "$tmp/floor.wav" "$tmp/${p}n.wav"
  done
  cp "$tmp/pausedn.wav" "$out/$name-paused.wav"
  cp "$tmp/wn.wav" "$out/$name-whole.wav"
  printf '%s\tsynthetic\t%d\t%d\t%s\t%s\t%s\t%s\n' "$name" "$(ms "$(soxi -D "$tmp/a.wav")")" "$(ms "$pause")" \
    "eot/$name-paused.wav" "eot/$name-whole.wav" "$4" "$5" >> "$index"
}

# Real recordings (whole: the original in assets/speech). The cut is the
# middle of the longest gap between words (at least 30 ms, 22 dB below the
# speech) within the middle half of the speech.
real librivox-0870 librivox-0870 4.775 0.8 "and mister john dashwood had then leisure to consider how much there might be" "prudently in his power to do for them"
real librivox-0880 librivox-0880 1.085 1.0 "he was not" "an ill disposed young man"
real librivox-0890 librivox-0890 3.635 0.6 "unless to be rather cold hearted and rather selfish" "is to be ill disposed"
real librivox-0920 librivox-0920 3.845 0.8 "had he married a more a amiable woman he might have been made" "still more respectable than he was"
real librivox-0930 librivox-0930 1.105 1.2 "he might" "even have been made amiable himself"
real cards-005     cards-005     2.185 0.5 "eight of spades four of clubs" "seven of hearts"
# espeak-ng phrases, four voices, pauses from 0.5 to 1.2 s.
synth table    en-us          0.7 "I would like to book a table for" "four people, please."
synth weather  en-us+f3       1.1 "Can you tell me the weather in" "Paris tomorrow?"
synth capital  en-gb-x-rp     0.9 "What is the capital of" "Australia?"
synth name     en-gb-scotland 0.6 "My name is" "John Smith."
synth taxi     en-us+f3       1.2 "I need a taxi to the" "airport at seven."
synth alarm    en-gb-x-rp     0.8 "Could you set an alarm for" "six thirty tomorrow?"
synth pizza    en-us          1.0 "I want to order a pizza and" "a large salad."
synth report   en-gb-scotland 0.5 "Please send the report to my" "manager by Friday."
synth flight   en-us          0.9 "I would like to change my flight" "to next Monday."
synth remind   en-us+f3       0.7 "Remind me to call" "my mother tonight."
echo "evaluation set rebuilt: $(($(wc -l < "$index") - 1)) utterances"
