// Hover-to-paint and decode times in Firefox and Chromium on one server, interleaved, medians (docs/firefox.md).
//
//   cd tests/firefox && node engine_benchmark.js [--rounds 4]
//
// Both engines are driven by puppeteer-core (Firefox over WebDriver BiDi, Debian chromium over CDP) in one
// process; each round hovers the same eight pixels in one engine, then the other, and reads the page's own
// User Timing measures (sam:hover-to-paint, sam:decode).
import fs from "node:fs";
import { parseArgs } from "node:util";

import puppeteer from "puppeteer-core";

import { launchFirefox, leaveImage, openApp, startServer, tempDir, text, upload } from "./helpers.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const POINTS = [[300, 200], [100, 100], [500, 300], [200, 300], [400, 100], [350, 250], [120, 320], [450, 150]];
const { values } = parseArgs({ options: { rounds: { type: "string", default: "4" } } });

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

async function openEngine(browser, name, server, imagePath) {
  const page = await (await browser.createBrowserContext()).newPage();
  await page.setViewport({ width: 1280, height: 900 });
  await openApp(page, server);
  await upload(page, imagePath);
  const [version, runsOn] = [await browser.version(), await text(page, "#fact-provider")];
  return { name, page, version, runsOn, paint: [], decode: [] };
}

/** Whole viewport coordinates near image pixel (x, y): a hover needs no exact pixel (and no aiming moves). */
async function viewportPoint(page, x, y) {
  return page.$eval(
    "#mask-canvas",
    (canvas, [x, y]) => {
      const r = canvas.getBoundingClientRect();
      const [sx, sy] = [r.width / canvas.width, r.height / canvas.height];
      return [Math.round(r.x + (x + 0.5) * sx), Math.round(r.y + (y + 0.5) * sy)];
    },
    [x, y],
  );
}

async function hoverRound(engine, offset) {
  for (const [x, y] of POINTS) {
    await engine.page.evaluate(() => performance.clearMeasures());
    await engine.page.mouse.move(...(await viewportPoint(engine.page, x + offset, y)));
    await engine.page.waitForFunction("performance.getEntriesByName('sam:hover-to-paint').length > 0");
    const [paint, decode] = await engine.page.evaluate(() =>
      ["sam:hover-to-paint", "sam:decode"].map((name) => performance.getEntriesByName(name)[0]?.duration),
    );
    engine.paint.push(paint);
    engine.decode.push(decode);
  }
  await leaveImage(engine.page);
}

const [server, firefox, chromium] = await Promise.all([
  startServer(),
  launchFirefox(),
  puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-gpu"] }),
]);
try {
  const imagePath = `${tempDir("sam-engine-bench-")}/coffee.png`;
  const sample = await fetch(new URL("gallery/coffee.png", server.url));
  fs.writeFileSync(imagePath, Buffer.from(await sample.arrayBuffer()));
  const engines = [
    await openEngine(firefox, "Firefox", server, imagePath),
    await openEngine(chromium, "Chromium", server, imagePath),
  ];
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const engine of engines) await hoverRound(engine, round);
  }
  console.log("| engine | runs on | hovers | hover-to-paint median | decode median |");
  console.log("|---|---|---|---|---|");
  for (const e of engines) {
    const ms = (list) => `${median(list).toFixed(0)} ms`;
    console.log(`| ${e.name} (${e.version}) | ${e.runsOn} | ${e.paint.length} | ${ms(e.paint)} | ${ms(e.decode)} |`);
  }
  const [f, c] = engines;
  const ratio = (key) => (median(f[key]) / median(c[key])).toFixed(2);
  console.log(`\nFirefox / Chromium: hover-to-paint ${ratio("paint")}×, decode ${ratio("decode")}×`);
} finally {
  await firefox.close();
  await chromium.close();
  server.stop();
}
