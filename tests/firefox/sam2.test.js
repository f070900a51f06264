// The page served on SAM 2.1 in Firefox: the real server on seeded random sam2.1_hiera_t weights (its offline
// fallback, SAM_MODEL_TYPE=sam2.1_hiera_t), the version-2 embedding bundle and SAM 2's default decoder; a kept
// click's mask is compared with SAM2ImagePredictor's (predictor_oracle.py on the same random model).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  clickPixel,
  gallerySample,
  leaveImage,
  OPTIONS,
  openApp,
  shownMask,
  START_UP,
  startOracle,
  startServerAndFirefox,
  upload,
  waitIdle,
  withFirefoxPage,
} from "./helpers.js";

// Lossless and under 1024 px, so the server encodes exactly the pixels the oracle decodes.
const SAMPLE = "coffee.png";
// The default decoder (weight-only int8) on the default bundle (int8-fit) against the fp32 predictor on
// float32 features: >= 99 % of pixels (tests/browser/test_sam2_decoder.py).
const MIN_AGREEMENT = 0.99;

let server;
let oracle;
let browser;
let imagePath;

before(async () => {
  oracle = startOracle(["sam2.1_hiera_t"]);
  oracle.catch(() => {});
  ({ server, browser } = await startServerAndFirefox({ SAM_MODEL_TYPE: "sam2.1_hiera_t", SAM_PRECISION: "fp32" }));
  imagePath = await gallerySample(server, SAMPLE, "sam2-firefox-image-");
}, START_UP);

after(async () => {
  await browser?.close();
  (await oracle?.catch(() => null))?.stop();
  await server?.stop();
});

test("on SAM 2.1 a kept click shows SAM2ImagePredictor's mask", OPTIONS, async () => {
  const model = await (await fetch(new URL("api/model", server.url))).json();
  assert.equal(model.model_family, "sam2.1");
  assert.equal(model.default_embedding_format, "int8-fit");
  await withFirefoxPage(browser, async ({ page }) => {
    await openApp(page, server);
    await upload(page, imagePath);
    await leaveImage(page);
    await clickPixel(page, 300, 200);
    await leaveImage(page);
    await waitIdle(page);
    const shown = await shownMask(page);
    const request = { image: imagePath, points: [[300, 200]], labels: [1], multimask: true };
    const overlay = await (await oracle).ask({ ...request, shown: { bits: shown.bits, size: shown.size } });
    assert.ok(overlay.expected_pixels > 0 && overlay.shown_pixels > 0, JSON.stringify(overlay));
    assert.ok(overlay.agreement >= MIN_AGREEMENT, `overlay vs predictor: ${JSON.stringify(overlay)}`);
  });
});
