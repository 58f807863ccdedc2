// Opens consolegate's web consoles in headless Chromium, the way a user
// would: asks the Nova-compatible API for a noVNC and a serial console URL,
// opens the noVNC page and screenshots the instance's screen, opens the
// serial URL (as a page) and waits for console text. Prints a JSON result.
//
//   node check.js API_BASE X_AUTH_TOKEN SERVER_ID EXPECTED_TEXT OUT_DIR
const { chromium } = require('playwright-core');

async function consoleUrl(api, token, server, protocol, type) {
  const res = await fetch(`${api}/v2.1/servers/${server}/remote-consoles`, {
    method: 'POST',
    headers: {
      'X-Auth-Token': token,
      'OpenStack-API-Version': 'compute 2.6',
      'Content-Type': 'application/json',
    },
    body: JSON.stringify({ remote_console: { protocol, type } }),
  });
  if (!res.ok) throw new Error(`remote-consoles ${protocol}: ${res.status} ${await res.text()}`);
  return (await res.json()).remote_console.url;
}

(async () => {
  const [api, token, server, expected, out] = process.argv.slice(2);
  const result = {};
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
    result.novncUrl = await consoleUrl(api, token, server, 'vnc', 'novnc');
    await page.goto(result.novncUrl);
    await page.waitForFunction(() => {
      const s = document.getElementById('status');
      return s && /connected/i.test(s.textContent) && !/disconnected/i.test(s.textContent);
    }, null, { timeout: 60000 });
    // Give the first framebuffer update a moment to be drawn, then look at it.
    await page.waitForFunction(() => {
      const c = document.querySelector('canvas');
      if (!c || c.width < 100) return false;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      for (let i = 0; i < d.length && seen.size < 3; i += 4 * 97) seen.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
      return seen.size > 1;
    }, null, { timeout: 60000 });
    result.canvas = await page.evaluate(() => {
      const c = document.querySelector('canvas');
      return { width: c.width, height: c.height };
    });
    await page.screenshot({ path: `${out}/novnc.png` });
    result.novncScreenshot = `${out}/novnc.png`;

    const serialWs = await consoleUrl(api, token, server, 'serial', 'serial');
    result.serialUrl = serialWs;
    const serialPage = await browser.newPage({ viewport: { width: 1024, height: 768 } });
    await serialPage.goto(serialWs.replace(/^ws/, 'http'));
    await serialPage.waitForFunction((text) => document.body.innerText.includes(text), expected, { timeout: 60000 });
    result.serialText = true;
    await serialPage.screenshot({ path: `${out}/serial.png` });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
