// End-to-end check of the demo page in real headless Chromium (playwright-core + Debian chromium).
// node demo/e2e.mjs '{"url": ..., "photo": ..., "concept": ..., "missing": ..., "notImage": ..., "out": ...}'
// Prints one JSON line: the model output on the photo, frames/s, the messages shown for bad input.
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const executablePath = cfg.chromium || '/usr/bin/chromium';
const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
              '--disable-component-update', '--disable-quic', '--no-first-run', '--disable-sync',
              '--use-fake-device-for-media-stream'];
const result = { failedRequests: [], consoleErrors: [], pageErrors: [] };

const browser = await chromium.launch({ executablePath, args, headless: true });
try {
  // 1. a concept applied to a photo, with the camera allowed (a fake camera device)
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 }, permissions: ['camera'] });
  const page = await context.newPage();
  const expected404 = new Set([`/models/${cfg.missing}/adapter.safetensors`, `/models/${cfg.missing}/model.onnx`]);
  page.on('response', (r) => {
    const path = new URL(r.url()).pathname;
    if (r.status() >= 400 && !expected404.has(path)) result.failedRequests.push(`${r.status()} ${path}`);
  });
  page.on('requestfailed', (r) => result.failedRequests.push(`failed ${r.url()} ${r.failure()?.errorText}`));
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  await page.goto(cfg.url);
  await page.waitForFunction(() => window.e2gan && window.e2gan.ready !== undefined);
  await page.evaluate(() => window.e2gan.ready);
  result.crossOriginIsolated = await page.evaluate(() => self.crossOriginIsolated);
  await page.selectOption('#concept', cfg.concept);
  await page.waitForFunction((c) => document.querySelector('#status').textContent.includes(`'${c}' ready`), cfg.concept,
                             { timeout: 120000 });
  const edits = await page.evaluate(() => window.e2gan.edits);
  await page.setInputFiles('#upload', cfg.photo);
  await page.waitForFunction((n) => window.e2gan.edits > n, edits, { timeout: 120000 });
  result.output = await page.evaluate(() => window.e2gan.output);
  result.input = await page.evaluate(() => window.e2gan.input);
  result.backend = await page.textContent('#backend');
  result.download = await page.textContent('#download');
  await page.click('#measure', { timeout: 300000 });
  await page.waitForFunction(() => window.e2gan.lastMeasure, null, { timeout: 300000 });
  result.measure = await page.evaluate(() => window.e2gan.lastMeasure);
  result.fpsText = await page.textContent('#fps');
  await page.screenshot({ path: `${cfg.out}/demo.png`, fullPage: true });

  // 2. live camera frames (Chromium's fake device)
  const frames = await page.evaluate(() => window.e2gan.cameraFrames);
  await page.click('#camera', { timeout: 120000 });
  await page.waitForFunction((n) => window.e2gan.cameraFrames >= n + 3, frames, { timeout: 120000 });
  result.cameraFps = await page.textContent('#fps');
  await page.click('#stop', { timeout: 120000 });

  // 3. bad input: a non-image upload, a concept with no exported model
  await page.setInputFiles('#upload', cfg.notImage);
  await page.waitForSelector('#message:not([hidden])');
  result.notImageMessage = await page.textContent('#message');
  await page.selectOption('#concept', cfg.missing);
  await page.waitForFunction((c) => document.querySelector('#message').textContent.includes(c), cfg.missing);
  result.missingMessage = await page.textContent('#message');
  await context.close();

  // 4. the camera refused: a context without the camera permission
  const denied = await browser.newContext();
  await denied.grantPermissions([]);
  const page2 = await denied.newPage();
  await page2.goto(cfg.url);
  await page2.evaluate(() => window.e2gan.ready);
  await page2.click('#camera');
  await page2.waitForSelector('#message:not([hidden])', { timeout: 60000 });
  result.cameraDeniedMessage = await page2.textContent('#message');
  await denied.close();
} finally {
  await browser.close();
}
writeFileSync(`${cfg.out}/e2e.json`, JSON.stringify(result));
console.log(JSON.stringify({ ok: true, out: `${cfg.out}/e2e.json` }));
