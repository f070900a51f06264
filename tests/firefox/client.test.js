// The web client's core flow in Firefox: the real server, headless Debian firefox-esr over WebDriver BiDi.
//
// One server (on the seeded random vit_t weights), one torch oracle (predictor_oracle.py) and one Firefox
// serve every test; each test has its own browser context and fails on any console error or uncaught
// exception. Masks the browser shows or exports are compared with the torch SamPredictor for the same prompt.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import {
  canvasPoint,
  clickPixel,
  cropBits,
  download,
  gallerySample,
  leaveImage,
  OPTIONS,
  openApp,
  pngBits,
  promptPoints,
  runPython,
  shownMask,
  START_UP,
  startHost,
  startOracle,
  startServerAndFirefox,
  text,
  upload,
  waitForOverlay,
  waitIdle,
  withFirefoxPage,
} from "./helpers.js";

// A gallery sample (scikit-image's coffee.png, 600x400): under 1024 px and lossless, so the server encodes
// exactly the pixels the oracle decodes.
const SAMPLE = "coffee.png";
const MIN_AGREEMENT = 0.99;

let server;
let host; // another origin, for the page that embeds the element
let oracle; // a Promise of the running oracle
let browser;
let imagePath;

const ISOLATION = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };
const SHAREABLE = { "Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin" };
const hostRoutes = { "/favicon.ico": { body: "", type: "image/x-icon", headers: {} } };

/** A blank page of another tool that loads the app's element (docs/embedding.md, recipe 1). */
function embeddingPage(appUrl) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>A tool embedding SAM</title>
<script type="module" src="${appUrl}embed/sam-segmenter.js"></script></head>
<body><sam-segmenter id="sam"></sam-segmenter></body></html>`;
}

before(async () => {
  // The start-ups are independent and most of the suite's time: the oracle is first needed by the fourth
  // test, so it builds its model while the first ones run.
  oracle = startOracle();
  oracle.catch(() => {}); // its error is reported by the tests that ask it
  host = await startHost(hostRoutes);
  // The app lets the host load its element (CORS + CORP on the embeddable files; its own page is unchanged).
  ({ server, browser } = await startServerAndFirefox({ SAM_CORS_ORIGINS: host.origin }));
  imagePath = await gallerySample(server, SAMPLE, "sam-firefox-image-");
  await runPython("make_images.py", [imagePath, path.dirname(imagePath)]);
  hostRoutes["/coffee.png"] = { body: fs.readFileSync(imagePath), type: "image/png", headers: SHAREABLE };
  const page = embeddingPage(server.url);
  hostRoutes["/isolated.html"] = { body: page, type: "text/html; charset=utf-8", headers: ISOLATION };
}, START_UP);

after(async () => {
  await browser?.close();
  (await oracle?.catch(() => null))?.stop();
  await server?.stop();
  await host?.stop();
});

/** Runs `body(session)` on a fresh page of the suite's Firefox; the test fails on any console error it logged. */
const withPage = (body) => withFirefoxPage(browser, body);

async function readyPage(session) {
  await openApp(session.page, server);
  await upload(session.page, imagePath);
  return session.page;
}

test("the page is cross-origin isolated and the decoder runs on WebAssembly threads", OPTIONS, () =>
  withPage(async ({ page }) => {
    await openApp(page, server);
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    assert.equal(await page.evaluate(() => typeof SharedArrayBuffer), "function");
    assert.equal(await page.evaluate(() => document.body.dataset.provider), "wasm");
    const runsOn = await text(page, "#fact-provider");
    const threads = Number(/WebAssembly, (\d+) threads?/.exec(runsOn)?.[1]);
    assert.ok(threads > 1, `the decoder runs on ${runsOn}`);
  }));

test("desktop Firefox gets the mouse's wording, not the touch screen's", OPTIONS, () =>
  withPage(async ({ page }) => {
    await openApp(page, server);
    // Headless Firefox reports no fine pointer and no hover to media queries; the mouse it moves is real.
    await page.mouse.move(400, 300);
    await page.mouse.move(640, 450, { steps: 4 });
    const firstSteps = await page.$eval("#empty-state", (element) => element.innerText);
    assert.match(firstSteps, /right-click/);
    assert.doesNotMatch(firstSteps, /\btap\b/);
    await upload(page, imagePath);
    const status = await text(page, "#status-text");
    assert.match(status, /^Ready: hover over the image/);
  }));

test("upload, then hovering paints a mask and leaving clears it", OPTIONS, () =>
  withPage(async (session) => {
    const page = await readyPage(session);
    assert.deepEqual(await page.$eval("#mask-canvas", (c) => [c.width, c.height]), [600, 400]);
    assert.equal((await shownMask(page)).painted, 0);
    await page.mouse.move(...(await canvasPoint(page, 300, 200)));
    await waitForOverlay(page);
    assert.ok((await shownMask(page)).painted > 0);
    assert.deepEqual(await promptPoints(page), []); // hovering adds no prompt
    await leaveImage(page);
    await waitForOverlay(page, false);
  }));

test("a kept click, exported as COCO RLE, matches the torch predictor; the PNGs hold the mask shown", OPTIONS, () =>
  withPage(async (session) => {
    const page = await readyPage(session);
    // Rest on the pixel until its preview is painted: the click then keeps that decode.
    await page.mouse.move(...(await canvasPoint(page, 300, 200)));
    await page.waitForFunction("performance.getEntriesByName('sam:hover-to-paint').length > 0");
    await clickPixel(page, 300, 200);
    await leaveImage(page);
    await waitIdle(page);
    assert.deepEqual(await promptPoints(page), [[300, 200, 1]]);
    const shown = await shownMask(page);

    // The PNG exports hold exactly the mask shown: the mask at the image's size, the cut-out cropped to it.
    const maskFile = await download(page, session.downloads, "#export-mask");
    assert.match(maskFile.name, /_mask\.png$/);
    const maskPng = await pngBits(page, maskFile.bytes);
    assert.deepEqual(maskPng.size, shown.size);
    assert.equal(maskPng.white, shown.bits);
    const cutoutFile = await download(page, session.downloads, "#export-cutout");
    assert.match(cutoutFile.name, /_cutout\.png$/);

    await page.click("#commit-button");
    await waitIdle(page);
    assert.equal(await page.$$eval("#object-list li", (rows) => rows.length), 1);

    const { name, bytes } = await download(page, session.downloads, "#export-coco");
    assert.match(name, /\.json$/);
    const coco = JSON.parse(bytes.toString("utf8"));
    assert.deepEqual([coco.images[0].width, coco.images[0].height], [600, 400]);
    assert.equal(coco.annotations.length, 1);
    const [annotation] = coco.annotations;
    assert.deepEqual(annotation.segmentation.size, [400, 600]);
    assert.equal(annotation.area, shown.painted);
    const cutout = await pngBits(page, cutoutFile.bytes);
    assert.deepEqual(cutout.size, [annotation.bbox[3], annotation.bbox[2]]);
    assert.equal(cutout.opaque, cropBits(shown, annotation.bbox));

    const request = { image: imagePath, points: [[300, 200]], labels: [1], multimask: true };
    const exported = await (await oracle).ask({ ...request, shown: { coco: annotation.segmentation } });
    assert.ok(exported.expected_pixels > 0 && exported.shown_pixels > 0, JSON.stringify(exported));
    assert.ok(exported.agreement >= MIN_AGREEMENT, `export vs predictor: ${JSON.stringify(exported)}`);
    const overlay = await (await oracle).ask({ ...request, shown: { bits: shown.bits, size: shown.size } });
    assert.ok(overlay.agreement >= MIN_AGREEMENT, `overlay vs predictor: ${JSON.stringify(overlay)}`);
  }));

test("a dragged box matches the torch predictor's box prompt", OPTIONS, () =>
  withPage(async (session) => {
    const page = await readyPage(session);
    const [sx, sy] = await canvasPoint(page, 120, 80);
    const [ex, ey] = await canvasPoint(page, 480, 330);
    await page.mouse.move(sx, sy);
    await page.mouse.down();
    await page.mouse.move(sx + 20, sy + 20, { steps: 2 });
    await page.mouse.move(ex, ey, { steps: 4 });
    await page.mouse.up();
    await leaveImage(page);
    await waitIdle(page);
    const rects = await page.$$eval("#prompt-layer rect.box", (boxes) =>
      boxes.map((b) => ["x", "y", "width", "height"].map((a) => Number(b.getAttribute(a)))),
    );
    assert.equal(rects.length, 1);
    const [x, y, w, h] = rects[0];
    assert.deepEqual([x, y, x + w, y + h], [120, 80, 480, 330]);
    assert.deepEqual(await promptPoints(page), []);
    const shown = await shownMask(page);
    const answer = await (await oracle).ask({
      image: imagePath,
      box: [x, y, x + w, y + h],
      multimask: false,
      shown: { bits: shown.bits, size: shown.size },
    });
    assert.ok(answer.shown_pixels > 0, JSON.stringify(answer));
    assert.ok(answer.agreement >= MIN_AGREEMENT, `box vs predictor: ${JSON.stringify(answer)}`);
  }));

test("undo takes back the last point and its mask, then the first", OPTIONS, () =>
  withPage(async (session) => {
    const page = await readyPage(session);
    await clickPixel(page, 300, 200);
    await leaveImage(page);
    await waitIdle(page);
    const first = await shownMask(page);
    assert.ok(first.painted > 0);
    await clickPixel(page, 150, 300);
    await leaveImage(page);
    await waitIdle(page);
    const second = await shownMask(page);
    assert.notEqual(second.bits, first.bits);
    assert.equal((await promptPoints(page)).length, 2);

    await page.click("#undo-button");
    await waitIdle(page);
    assert.deepEqual(await promptPoints(page), [[300, 200, 1]]);
    assert.equal((await shownMask(page)).bits, first.bits);

    await page.keyboard.down("Control");
    await page.keyboard.press("z");
    await page.keyboard.up("Control");
    await waitIdle(page);
    assert.deepEqual(await promptPoints(page), []);
    assert.equal((await shownMask(page)).painted, 0);
    assert.equal(await page.$eval("#undo-button", (b) => b.disabled), true);
  }));

test("everything mode completes, paints its masks and exports them all", OPTIONS, () =>
  withPage(async (session) => {
    const page = await readyPage(session);
    await page.click(".settings summary");
    await page.select("#everything-grid", "8");
    // Random weights predict low IoUs: keep every candidate.
    for (const id of ["#everything-iou", "#everything-stability"]) {
      await page.$eval(id, (input) => {
        input.value = "0";
        input.dispatchEvent(new Event("input", { bubbles: true }));
        input.dispatchEvent(new Event("change", { bubbles: true }));
      });
    }
    await page.click("#everything-button");
    await page.waitForFunction("/^\\d+ masks?\\./.test(document.getElementById('everything-status').textContent)");
    const count = Number((await text(page, "#everything-status")).split(" ")[0]);
    assert.ok(count > 0);
    assert.ok((await shownMask(page)).painted > 0);
    assert.equal(await text(page, "#everything-button"), "Hide everything");

    const { bytes } = await download(page, session.downloads, "#everything-export");
    const coco = JSON.parse(bytes.toString("utf8"));
    assert.equal(coco.annotations.length, count);
    for (const annotation of coco.annotations) assert.deepEqual(annotation.segmentation.size, [400, 600]);
  }));

test("a large photo is sent downscaled and exported at full size; an EXIF portrait opens upright", OPTIONS, () =>
  withPage(async (session) => {
    const { page } = session;
    await openApp(page, server);
    await upload(page, path.join(path.dirname(imagePath), "large.jpg")); // 1800x1200
    assert.match(await text(page, "#fact-image"), /^large\.jpg, 1800×1200 \(sent at 1024×683\)/);
    assert.deepEqual(await page.$eval("#mask-canvas", (c) => [c.width, c.height]), [1024, 683]);
    // Shown at 880 CSS px for 1024 pixels, not every pixel is under a whole viewport point: click the middle.
    const middle = await page.$eval("#mask-canvas", (canvas) => {
      const r = canvas.getBoundingClientRect();
      return [Math.round(r.x + r.width / 2), Math.round(r.y + r.height / 2)];
    });
    await page.mouse.click(...middle);
    await waitIdle(page);
    assert.equal((await promptPoints(page)).length, 1);
    await leaveImage(page);
    await waitIdle(page);
    const shown = await shownMask(page);
    assert.ok(shown.painted > 0);
    const maskPng = await pngBits(page, (await download(page, session.downloads, "#export-mask")).bytes);
    assert.deepEqual(maskPng.size, [1200, 1800]);
    // The full-size mask covers the same fraction of the photo as the overlay (upsampled from the same logits).
    const fraction = (base64) => {
      const bits = Buffer.from(base64, "base64");
      return bits.reduce((sum, bit) => sum + bit, 0) / bits.length;
    };
    assert.ok(Math.abs(fraction(maskPng.white) - fraction(shown.bits)) < 0.01);

    // Stored landscape with "rotate 90° clockwise" in EXIF: the browser and the server both apply it.
    await upload(page, path.join(path.dirname(imagePath), "portrait.jpg"));
    assert.deepEqual(await page.$eval("#mask-canvas", (c) => [c.width, c.height]), [400, 600]);
    assert.deepEqual(await page.$eval("#stage-image", (c) => [c.width, c.height]), [400, 600]);
    await clickPixel(page, 200, 500);
    assert.deepEqual(await promptPoints(page), [[200, 500, 1]]);
    assert.ok((await shownMask(page)).painted > 0);
  }));

test("the <sam-segmenter> element works on a cross-origin-isolated page of another origin", OPTIONS, () =>
  withPage(async ({ page }) => {
    await page.goto(host.url + "isolated.html");
    const size = await page.evaluate(async (src) => {
      await customElements.whenDefined("sam-segmenter");
      return document.getElementById("sam").open(src);
    }, host.url + "coffee.png");
    assert.deepEqual(size, { width: 600, height: 400 });
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    const info = await page.evaluate(() => document.getElementById("sam").decoderInfo);
    assert.ok(info.threads > 1, `the element's decoder: ${JSON.stringify(info)}`);

    const { masks } = await page.evaluate(() =>
      document.getElementById("sam").segment({ points: [{ x: 300, y: 200, label: 1 }], multimask: true }),
    );
    assert.equal(masks.length, 3);
    const answer = await (await oracle).ask({
      image: imagePath,
      points: [[300, 200]],
      labels: [1],
      multimask: true,
      shown: { coco: masks[0].rle }, // best predicted IoU first
    });
    assert.ok(answer.agreement >= MIN_AGREEMENT, `element vs predictor: ${JSON.stringify(answer)}`);
    await page.evaluate(() => document.getElementById("sam").keep());
    const objects = await page.evaluate(() => document.getElementById("sam").getObjects());
    assert.equal(objects.length, 1);
    assert.deepEqual(objects[0].segmentation, masks[0].rle);
  }));

test("Find: a phrase's instances are decoded from their boxes, kept all, exported under the phrase", OPTIONS, () =>
  withPage(async (session) => {
    // The server runs the default text model, which it cannot download here: the seeded random stand-in.
    const page = await readyPage(session);
    await page.type("#find-text", "cup, spoon");
    await page.click("#find-button");
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.find), { timeout: 150_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.find), "done", await text(page, "#error-text"));
    await waitIdle(page);
    const found = await page.$$eval("#find-list li", (rows) => rows.map((row) => ({ label: row.dataset.label, box: row.dataset.box.split(",").map(Number) })));
    assert.ok(found.length >= 1, await text(page, "#find-status"));
    assert.match(await text(page, "#find-status"), /random detector weights/);
    await page.click("#find-keep-all");
    await waitIdle(page);
    assert.equal(await page.$$eval("#object-list li", (rows) => rows.length), found.length);

    const { bytes } = await download(page, session.downloads, "#export-coco");
    const coco = JSON.parse(bytes.toString("utf8"));
    const category = Object.fromEntries(coco.categories.map((c) => [c.id, c.name]));
    assert.equal(coco.annotations.length, found.length);
    for (const [i, annotation] of coco.annotations.entries()) {
      assert.equal(category[annotation.category_id], found[i].label);
      assert.equal(annotation.name, found[i].label);
      const answer = await (await oracle).ask({ image: imagePath, box: found[i].box, multimask: false, shown: { coco: annotation.segmentation } });
      assert.ok(answer.agreement >= 0.995, `instance ${i} vs the predictor's box mask: ${JSON.stringify(answer)}`);
    }
  }));
