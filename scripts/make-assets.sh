#!/usr/bin/env bash
# Regenerates assets/ from Debian packages (pocketsphinx-testdata, espeak-ng, sox).
# The results are committed; run this only to rebuild them.
set -euo pipefail
cd "$(dirname "$0")/.."
src=/usr/share/pocketsphinx/test/data
out=assets/speech
mkdir -p "$out"
# Real read speech (LibriVox, public domain) and spoken card names (CMU), BSD-2 (see assets/README.md).
for id in 0870 0880 0890 0920 0930; do
  cp "$src/librivox/sense_and_sensibility_01_austen_64kb-$id.wav" "$out/librivox-$id.wav"
done
for id in 001 002 003 004 005; do cp "$src/cards/$id.wav" "$out/cards-$id.wav"; done
{
  sed -E 's/^<s> (.*) <\/s> \(sense_and_sensibility_01_austen_64kb-([0-9]+)\)$/librivox-\2\t\1/' "$src/librivox/transcription"
  sed -E 's/^<s> (.*) +<\/s> \(([0-9]+)\)$/cards-\2\t\1/' "$src/cards/cards.transcription"
} | sed -E 's/ +$//' > "$out/transcripts.tsv"

say() { # say VOICE "TEXT" OUT.wav — espeak-ng at 16 kHz mono
  espeak-ng -v "$1" -s 160 -w /tmp/colloquy-say.wav "$2"
  sox /tmp/colloquy-say.wav -r 16000 -c 1 -b 16 "$3"
}
say en-us "What is the capital of France?" "$out/q-france.wav"
say en-us "How many days are there in a week?" "$out/q-week.wav"
say en-us+f3 "Wait, stop. What is the capital of Germany?" "$out/q-germany-f3.wav"
say en-us+f3 "mm hmm" "$out/backchannel-f3.wav"
# A caller for the flow tests (flows/restaurant.toml, flows/clock.toml).
say150() { espeak-ng -v en-us -s 150 -w /tmp/colloquy-say.wav "$1"; sox /tmp/colloquy-say.wav -r 16000 -c 1 -b 16 "$2"; }
say150 "Hi, I would like to book a table, please." "$out/book-hello.wav"
say150 "Four people." "$out/book-party.wav"
say150 "At seven thirty." "$out/book-time.wav"
say150 "The name is Smith." "$out/book-name.wav"
say150 "Yes, that's right." "$out/book-yes.wav"
say150 "What time is it?" "$out/clock-time.wav"
say150 "What is twelve times seven?" "$out/clock-sum.wav"
say150 "Thank you, goodbye." "$out/clock-bye.wav"
printf 'q-france\twhat is the capital of france\nq-week\thow many days are there in a week\nq-germany-f3\twait stop what is the capital of germany\n' >> "$out/transcripts.tsv"

# The bundled conversation for the README's run command: two questions with room for answers.
sox "$out/q-france.wav" -p pad 0.5 10 | sox - "$out/q-week.wav" assets/conversation.wav pad 0 6
echo "assets rebuilt"
