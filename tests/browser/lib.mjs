// Shared by the browser tests: command-line arguments, the ok/FAIL log,
// the URL a `colloquy serve` child prints, and Chromium's flags for a
// headless run with a WAV file as the microphone.

/** `--name value` pairs as an object. */
export function parseArgs(argv) {
  return Object.fromEntries(
    argv.reduce((acc, a, i, all) => {
      if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
      return acc;
    }, []),
  );
}

/** A timestamped log and `check(ok, what, detail)` collecting failures. */
export function reporter() {
  const started = Date.now();
  const failures = [];
  const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
  const check = (ok, what, detail) => {
    log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail !== undefined ? ` (${detail})` : ''}`);
    if (!ok) failures.push(what);
  };
  return { started, failures, log, check };
}

/** Headless Chromium flags: no prompts, `mic` (a WAV) as the microphone. */
export function chromiumArgs(mic) {
  return [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${mic}%noloop`,
    '--autoplay-policy=no-user-gesture-required',
  ];
}

/**
 * Collects a `colloquy serve` child's stderr and waits for the page URL it
 * prints on stdout: `{ url, stderr }`, `url` a promise that fails if no URL
 * comes within `seconds` or the server exits first (with its stderr).
 */
export function serverUrl(child, seconds) {
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const url = new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(
      () => reject(new Error(`server printed no URL in ${seconds} s; stderr:\n${stderr}`)),
      seconds * 1000,
    );
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/http:\/\/\S+\?token=\S+/);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited (${code}) before printing its URL; stderr:\n${stderr}`)));
  });
  return { url, stderr: () => stderr };
}
