// A phone booking through the talk page in headless Chromium, on the
// embedded models (Whisper, SmolLM2, Piper) and `flows/restaurant.toml`.
//
// A synthetic caller (espeak-ng recordings) plays as the page's microphone:
// asks for a table, gives the party size, the time and the name, then
// confirms by cutting into the bot's read-back. The test checks that
//   1. every step of the booking ran, in order (the page's `tool` events),
//   2. the read-back was cut (an interruption cleared the page's playback),
//   3. the flow hung up: `call_ended`, then the server closed the socket
//      normally ("call ended"),
//   4. the booking is stored in the journal with the caller's values
//      (`colloquy trace`: party_size = 4, time = 7:30, name = Smith),
// and saves a screenshot (docs/screenshot-flow.png).
//
// Usage: node flow.test.mjs --bin PATH/colloquy --mic FILE.wav --out DIR
//        [--screenshot PNG] [--chromium /usr/bin/chromium]

import { chromium } from 'playwright-core';
import { chromiumArgs, parseArgs, reporter, serverUrl } from './lib.mjs';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const args = parseArgs(process.argv.slice(2));
const BIN = args.bin;
const MIC = args.mic;
const OUT = args.out || fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-flow-'));
const CHROMIUM = args.chromium || '/usr/bin/chromium';
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
if (!BIN || !MIC) {
  console.error('usage: node flow.test.mjs --bin PATH/colloquy --mic FILE.wav [--out DIR] [--screenshot PNG]');
  process.exit(2);
}

const { started, failures, log, check } = reporter();

const journal = path.join(OUT, 'journal.sqlite');
const token = 'flow-test-' + Math.random().toString(16).slice(2);
const server = spawn(
  BIN,
  ['serve', '--bind', '127.0.0.1:0', '--flow', path.join(ROOT, 'flows/restaurant.toml'), '--journal', journal],
  { env: { ...process.env, COLLOQUY_TOKEN: token, COLLOQUY_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
);
// Loading the models takes a few seconds.
const served = serverUrl(server, 60);
let context;
let exitCode = 1;
try {
  const url = await served.url;
  log('server at', url.replace(/token=\S+/, 'token=…'));
  context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
    args: chromiumArgs(MIC),
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => log('page error:', e.message));
  // Record every event the page receives, in order.
  await page.addInitScript(() => {
    window.flowEvents = [];
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...a) {
        super(...a);
        this.addEventListener('message', (e) => {
          if (typeof e.data === 'string') {
            try {
              window.flowEvents.push(JSON.parse(e.data));
            } catch {}
          }
        });
      }
    };
  });
  await page.goto(url);
  await page.click('#mic');
  const t0 = Date.now();
  let closed = null;
  while (Date.now() - t0 < 90000) {
    closed = await page.evaluate(() => window.colloquyStats.closed || null);
    if (closed) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const events = await page.evaluate(() => window.flowEvents);
  // The caller may give the party size with the first words the flow
  // understands ("4 people" right after the greeting): one function then.
  const tools = events.filter((e) => e.type === 'tool').map((e) => e.name);
  const order = tools.join(' → ');
  check(
    order === 'start_booking → set_party_size → set_time → set_name → confirm_booking' ||
      order === 'start_booking_for → set_time → set_name → confirm_booking',
    'every step of the booking ran, in order',
    order,
  );
  const stats = await page.evaluate(() => window.colloquyStats);
  check(
    events.some((e) => e.type === 'interrupted') && stats.clears >= 1,
    'the caller cut into the read-back and the page cleared its playback',
    `clears ${stats.clears}`,
  );
  const kinds = events.map((e) => e.type);
  const ended = kinds.indexOf('call_ended');
  check(ended > 0 && kinds[ended - 1] === 'committed', 'call_ended came right after the goodbye was committed');
  check(
    closed && closed.code === 1000 && closed.reason === 'call ended',
    'the server hung up normally',
    JSON.stringify(closed),
  );
  if (args.screenshot) await page.screenshot({ path: args.screenshot });
  await context.close();
  context = null;
  server.kill('SIGINT');
  await new Promise((r) => server.once('exit', r));

  const listed = spawnSync(BIN, ['sessions', '--journal', journal, '--json'], { encoding: 'utf8' });
  const sessions = listed.status === 0 ? JSON.parse(listed.stdout) : [];
  // Newest first: this test's session.
  const trace =
    sessions.length > 0
      ? spawnSync(BIN, ['trace', sessions[0].id, '--journal', journal], { encoding: 'utf8' }).stdout
      : '';
  const stored = trace.slice(trace.indexOf('stored (kv_set):'));
  check(
    /party_size = 4\n/.test(stored) && /time = 7:30\n/.test(stored) && /name = Smith\n/.test(stored),
    'the booking is stored in the journal with the caller\'s values',
    stored.trim().replace(/\n\s*/g, '; '),
  );
  exitCode = failures.length === 0 ? 0 : 1;
} catch (e) {
  log('ERROR', e.stack || String(e));
  log('server stderr:\n' + served.stderr().split('\n').slice(-30).join('\n'));
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  if (server.exitCode === null) server.kill('SIGINT');
}
log(exitCode === 0 ? 'PASS' : `FAILED: ${failures.join('; ')}`, `in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(exitCode);
