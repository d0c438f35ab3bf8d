// Screenshots of pages in real headless Chromium (playwright-core + Debian chromium), with a layout check:
// node demo/screens.mjs '{"pages": [{"url": ..., "out": ..., "waitFor": "text", "fullPage": true}], "width": 1280}'
// Prints one JSON line: per page, the elements wider than the window (or reaching past its right edge), the
// document's scroll width, failed requests, and whether the awaited text appeared.
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const width = cfg.width || 1280;
const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
              '--disable-component-update', '--no-first-run', '--disable-sync'];
const browser = await chromium.launch({ executablePath: cfg.chromium || '/usr/bin/chromium', args, headless: true });
const results = [];
try {
  for (const p of cfg.pages) {
    const context = await browser.newContext({ viewport: { width, height: p.height || 900 } });
    const page = await context.newPage();
    const failed = [];
    page.on('requestfailed', (r) => failed.push(`${r.url().slice(0, 120)} ${r.failure()?.errorText}`));
    page.on('response', (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url().slice(0, 120)}`); });
    await page.goto(p.url, { waitUntil: 'load', timeout: 60000 });
    let found = null;
    if (p.waitFor) {
      try {
        await page.getByText(p.waitFor, { exact: false }).first().waitFor({ timeout: p.timeout || 60000 });
        found = true;
      } catch (e) {
        found = false;
      }
    }
    if (p.click) {
      try { await page.getByText(p.click, { exact: true }).first().click({ timeout: 10000 }); } catch (e) { /* optional */ }
    }
    await page.waitForTimeout(p.settle || 1000);
    const layout = await page.evaluate((w) => {
      const wide = [];
      for (const el of document.body.querySelectorAll('*')) {
        const r = el.getBoundingClientRect();
        if (r.width === 0 || r.height === 0) continue;
        if (r.width > w + 1 || r.right > w + 1) {
          wide.push({ tag: el.tagName.toLowerCase(), cls: String(el.className || '').slice(0, 60), width: Math.round(r.width), right: Math.round(r.right) });
        }
      }
      return { scrollWidth: document.documentElement.scrollWidth, wide: wide.slice(0, 20), nWide: wide.length,
               images: [...document.images].map((i) => ({ w: i.naturalWidth, ok: i.complete && i.naturalWidth > 0 })) };
    }, width);
    await page.screenshot({ path: p.out, fullPage: !!p.fullPage });
    results.push({ url: p.url.slice(0, 200), out: p.out, found, failed, ...layout });
    await context.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));
