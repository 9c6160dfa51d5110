// The talk page through a load balancer, with a reload that lands on the
// other instance (issue 15), in headless Chromium.
//
// Two `colloquy serve` instances (parrot agent) share one PostgreSQL and sit
// behind HAProxy, run with the configuration of docs/deploy.md verbatim. The
// page is opened through HAProxy; a recorded question plays as its
// microphone. The test checks that
//   1. the page talked through the load balancer: a turn was committed, on
//      one instance (the holder: its /readyz counts the live session),
//   2. the page is reloaded in the middle of its call, and the holder is
//      drained (SIGTERM, as in a rolling restart) before the reloaded page
//      reconnects, so the load balancer can only send it to the other
//      instance,
//   3. the reloaded page resumes its session there: the same session id, the
//      other instance counts it, and the server's `history` is drawn in the
//      transcript with every turn committed before the reload,
//   4. the conversation goes on: the microphone (Chromium's fake capture
//      device starts its file again for the reloaded page's new stream)
//      says the question again and a new turn is committed on the other
//      instance,
//   5. the store holds every turn (`colloquy sessions --journal postgres://…`).
//
// Every wait is for a state (a probe's answer, a page counter, a process's
// exit) with a deadline; the processes started here are ended by pid.
//
// Usage: node fleet.test.mjs --bin PATH/colloquy --mic FILE.wav --pg postgres://USER@HOST:PORT/DB
//        --deploy-doc docs/deploy.md [--out DIR] [--chromium /usr/bin/chromium]

import { chromium } from 'playwright-core';
import { chromiumArgs, parseArgs, reporter } from './lib.mjs';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const args = parseArgs(process.argv.slice(2));
const BIN = args.bin;
const MIC = args.mic;
const PG = args.pg;
const DOC = args['deploy-doc'];
const OUT = args.out || fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-fleet-browser-'));
const CHROMIUM = args.chromium || '/usr/bin/chromium';
if (!BIN || !MIC || !PG || !DOC) {
  console.error('usage: node fleet.test.mjs --bin PATH/colloquy --mic FILE.wav --pg postgres://… --deploy-doc docs/deploy.md [--out DIR]');
  process.exit(2);
}

const { started, failures, log, check } = reporter();
const TOKEN = 'fleet-browser-' + Math.random().toString(16).slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The ```haproxy block of docs/deploy.md (the configuration the docs give). */
function haproxyConfig() {
  const text = fs.readFileSync(DOC, 'utf8');
  const m = text.match(/```haproxy\n([\s\S]*?)```/);
  if (!m) throw new Error(`${DOC}: no \`\`\`haproxy block`);
  return m[1];
}

/** A child process with its output in OUT/NAME.log. */
function startProc(name, cmd, argv, env = {}) {
  const logFile = path.join(OUT, `${name}.log`);
  const fd = fs.openSync(logFile, 'a');
  const childEnv = { ...process.env, ...env };
  delete childEnv.COLLOQUY_JOURNAL; // --journal names the store
  const child = spawn(cmd, argv, { env: childEnv, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  return { name, child, logFile, exited: new Promise((r) => child.once('exit', (code, signal) => r({ code, signal }))) };
}

function startInstance(name, port, lb) {
  return startProc(
    name,
    BIN,
    [
      'serve', '--agent', 'parrot', '--bind', `127.0.0.1:${port}`, '--journal', PG,
      '--lease-secs', '3', '--drain-secs', '8', '--instance-id', name,
      '--allow-origin', `http://127.0.0.1:${lb}`,
    ],
    { COLLOQUY_TOKEN: TOKEN, COLLOQUY_LOG: 'info' },
  );
}

/** `GET path` on 127.0.0.1:port: { status, body }, or null when refused. */
async function get(port, p) {
  try {
    const r = await fetch(`http://127.0.0.1:${port}${p}`, { signal: AbortSignal.timeout(3000) });
    return { status: r.status, body: await r.text() };
  } catch {
    return null;
  }
}

async function until(what, timeoutMs, probe) {
  const t0 = Date.now();
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** Live sessions of an instance per its /readyz (`ready: N sessions`). */
async function live(port) {
  const r = await get(port, '/readyz');
  const n = r && r.body.match(/ready: (\d+)/);
  return n ? Number(n[1]) : null;
}

const pageState = (page, fn) => page.evaluate(fn);
const waitPage = (page, what, timeoutMs, fn) => until(what, timeoutMs, () => pageState(page, fn));

const procs = [];
let context;
let exitCode = 1;
try {
  const [lb, pa, pb] = [await freePort(), await freePort(), await freePort()];
  const inst = { a: { port: pa }, b: { port: pb } };
  for (const [name, i] of Object.entries(inst)) {
    i.proc = startInstance(name, i.port, lb);
    procs.push(i.proc);
  }
  for (const [name, i] of Object.entries(inst)) {
    await until(`instance ${name} ready`, 30000, async () => (await get(i.port, '/readyz'))?.status === 200);
  }
  const cfg = path.join(OUT, 'haproxy.cfg');
  fs.writeFileSync(cfg, haproxyConfig());
  const haproxy = startProc('haproxy', 'haproxy', ['-f', cfg, '-db'], {
    LB_PORT: String(lb),
    A_PORT: String(pa),
    B_PORT: String(pb),
  });
  procs.push(haproxy);
  await until('HAProxy to answer', 15000, async () => (await get(lb, '/healthz'))?.status === 200);
  log(`instances a :${pa}, b :${pb} on PostgreSQL, HAProxy :${lb}`);

  context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 820 },
    deviceScaleFactor: 1,
    args: chromiumArgs(MIC),
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => log('page error:', e.message));
  await page.goto(`http://127.0.0.1:${lb}/?token=${TOKEN}`);

  // ---- 1. a turn through the load balancer ----
  await page.click('#mic');
  await waitPage(page, 'the WebSocket to open through HAProxy', 15000, () => window.colloquyStats.connected);
  await waitPage(page, 'a committed turn', 40000, () => (window.colloquyStats.events.committed || 0) >= 1);
  const first = await pageState(page, () => ({
    session: window.colloquyStats.session,
    committed: window.colloquyStats.events.committed || 0,
    errors: window.colloquyStats.errors,
  }));
  const counts = { a: await live(pa), b: await live(pb) };
  const holderName = counts.a === 1 && counts.b === 0 ? 'a' : counts.b === 1 && counts.a === 0 ? 'b' : null;
  check(
    first.session && holderName !== null,
    'the page talked through the load balancer and one instance holds its session',
    `session ${first.session}, live sessions ${JSON.stringify(counts)}`,
  );
  if (!holderName) throw new Error('no single holder');
  const otherName = holderName === 'a' ? 'b' : 'a';
  const holder = inst[holderName];
  const other = inst[otherName];

  // ---- 2. reload in the middle of the call; the holder is drained ----
  await page.reload();
  await until(`instance ${holderName} to let the reloaded page's old socket go`, 15000, async () => (await live(holder.port)) === 0);
  const t0 = Date.now();
  holder.proc.child.kill('SIGTERM');
  const ended = await Promise.race([holder.proc.exited, sleep(15000).then(() => null)]);
  check(
    ended && ended.code === 0,
    `instance ${holderName} drained and exited after SIGTERM`,
    ended ? `exit ${ended.code} in ${Date.now() - t0} ms` : 'still running after 15 s',
  );

  // ---- 3. the reloaded page resumes on the other instance ----
  await page.click('#mic');
  await waitPage(page, 'the history after the reload', 20000, () => window.colloquyStats.historyTurns !== null);
  const resumed = await pageState(page, () => ({
    session: window.colloquyStats.session,
    historyTurns: window.colloquyStats.historyTurns,
    user: document.querySelectorAll('#transcript .msg.user.history').length,
    bot: document.querySelectorAll('#transcript .msg.bot.history').length,
  }));
  const otherLive = await live(other.port);
  log('after the reload', JSON.stringify({ ...resumed, otherLive }));
  check(resumed.session === first.session, 'the reloaded page resumed its session', resumed.session);
  check(otherLive === 1, `the other instance (${otherName}) serves it`, `${otherLive} live session(s)`);
  check(
    resumed.historyTurns === first.committed && resumed.user === first.committed && resumed.bot === first.committed,
    'the reloaded page shows every committed turn',
    `${resumed.historyTurns} history turns, ${resumed.user} user and ${resumed.bot} bot bubbles; ${first.committed} committed before`,
  );

  // ---- 4. the conversation goes on there ----
  await waitPage(page, 'a turn committed on the other instance', 40000, () => (window.colloquyStats.events.committed || 0) >= 1);
  const after = await pageState(page, () => ({
    committed: window.colloquyStats.events.committed || 0,
    errors: window.colloquyStats.errors,
    bubbles: document.querySelectorAll('#transcript .msg.bot').length,
  }));
  check(after.committed >= 1, 'the conversation went on on the other instance', `${after.committed} new turn(s)`);
  check(
    first.errors.length === 0 && after.errors.length === 0,
    'no error events',
    JSON.stringify([...first.errors, ...after.errors]),
  );
  await page.screenshot({ path: path.join(OUT, 'fleet-resumed.png') });
  await page.click('#mic');
  await waitPage(page, 'the call to close', 5000, () => window.colloquyStats.closed !== null);
  await until(`instance ${otherName} to end the call`, 15000, async () => (await live(other.port)) === 0);

  // ---- 5. the store holds every turn ----
  const listed = spawnSync(BIN, ['sessions', '--journal', PG, '--json'], { encoding: 'utf8' });
  const sessions = listed.status === 0 ? JSON.parse(listed.stdout) : [];
  const kept = sessions.find((s) => s.id === first.session);
  check(
    kept && kept.turns === first.committed + after.committed,
    'PostgreSQL holds every committed turn of the session (colloquy sessions)',
    listed.status === 0 ? JSON.stringify(kept) : listed.stderr.trim(),
  );
  exitCode = failures.length === 0 ? 0 : 1;
} catch (e) {
  log('ERROR', e.stack || String(e));
  for (const p of procs) {
    const text = fs.existsSync(p.logFile) ? fs.readFileSync(p.logFile, 'utf8') : '';
    log(`--- ${p.name} (last lines) ---\n` + text.split('\n').slice(-20).join('\n'));
  }
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  for (const p of procs) {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  }
  await Promise.all(procs.map((p) => p.exited));
}
log(exitCode === 0 ? 'PASS' : `FAILED: ${failures.join('; ')}`, `in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(exitCode);
