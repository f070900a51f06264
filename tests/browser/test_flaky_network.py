"""Downloads over a connection that drops, as a phone's does (Chromium, the real server).

Playwright's routing plays the network: it cuts the decoder model's transfer short (the answer announces the
whole file and delivers a part), damages its bytes, fails onnxruntime-web's WebAssembly glue, or drops an
image's upload or its embedding. The page must still start and open the image, resuming the model where it stopped rather
than downloading it again, and say what it is doing; a file that never arrives whole ends in a plain error,
not a hang.
"""

from __future__ import annotations

import re

import pytest
from browser_helpers import drop_first_request, first_mask_on_a_gallery_image, log_texts, open_app

pytestmark = pytest.mark.timeout(600)

CUT_AT = 1_000_000  # bytes of the model the first answer delivers


def start_page(page):
    log_texts(page, "status-text", "statusLog")
    page.console_watch.allow += ["Failed to load resource", "net::ERR_FAILED"]


def decoder_outcome(page, live_server) -> str:
    page.goto(live_server.url + "?backend=wasm")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.decoder)")
    return page.evaluate("document.body.dataset.decoder")


def test_a_model_download_cut_short_resumes_where_it_stopped(page, live_server):
    start_page(page)
    requests = []

    def cut_first(route):
        requests.append(dict(route.request.headers))
        if len(requests) > 1:
            route.continue_()
            return
        answer = route.fetch()
        body = answer.body()
        requests[0]["answer"] = answer.headers
        # Announces the whole file, delivers its first CUT_AT bytes: the connection "dropped".
        route.fulfill(status=200, headers=answer.headers | {"content-length": str(len(body))}, body=body[:CUT_AT])

    page.route("**/models/*.onnx*", cut_first)
    # The model is whole (its SHA-256 was checked): the decoder draws masks.
    first_mask_on_a_gallery_image(page, live_server)
    assert len(requests) == 2, requests
    first, second = requests
    assert "range" not in first
    # The second request asks for the rest only, and only if the file is the one the first part came from.
    assert second["range"] == f"bytes={CUT_AT}-", second
    assert second["if-range"] == first["answer"]["etag"], (second, first["answer"])
    log = page.evaluate("window.statusLog")
    resumed = [text for text in log if "The connection dropped while the decoder downloaded; resuming at" in text]
    assert resumed and "(attempt 2 of 5)" in resumed[0], log


def test_a_damaged_model_is_downloaded_again_and_refused_if_it_stays_damaged(page, live_server):
    start_page(page)
    served = []

    def damage(times):
        def handler(route):
            served.append(route.request.headers.get("range"))
            answer = route.fetch()
            body = bytearray(answer.body())
            if len(served) <= times:
                body[len(body) // 2] ^= 0xFF  # one bit pattern changed in the middle
            route.fulfill(status=200, headers=answer.headers, body=bytes(body))

        return handler

    page.route("**/models/*.onnx*", damage(times=1))
    assert decoder_outcome(page, live_server) == "ready", page.inner_text("#error-text")
    assert served == [None, None]  # downloaded again from the start, not resumed
    assert any("downloading it again (attempt 2 of 5)" in text for text in page.evaluate("window.statusLog"))

    page.unroute("**/models/*.onnx*")
    served.clear()
    page.route("**/models/*.onnx*", damage(times=99))
    assert decoder_outcome(page, live_server) == "error"
    assert len(served) == 2
    assert "The decoder model arrived damaged (its SHA-256 does not match)." in page.inner_text("#error-text")


def test_a_model_that_never_arrives_ends_in_a_plain_error(page, live_server):
    start_page(page)
    tries = []

    def fail(route):
        tries.append(1)
        route.abort("connectionreset")

    page.route("**/models/*.onnx*", fail)
    assert decoder_outcome(page, live_server) == "error"
    assert len(tries) == 5
    error = page.inner_text("#error-text")
    assert "The decoder model could not be downloaded: 5 attempts failed (the last: Failed to fetch)." in error, error


def test_onnxruntime_files_that_fail_to_arrive_are_fetched_again_in_a_fresh_worker(page, live_server):
    start_page(page)
    tries = []
    # onnxruntime-web's WebAssembly glue, a module it imports: a failed import stays failed in that worker.
    page.route("**/ort-wasm-simd-threaded.mjs", drop_first_request(tries))
    open_app(page, live_server)
    assert len(tries) == 2, tries
    log = page.evaluate("window.statusLog")
    assert any("The connection dropped while the decoder loaded; trying again (attempt 2 of 4)" in t for t in log), log
    # A network retry is not a stuck start: the decoder keeps its threads.
    assert re.search(r"^WebAssembly, [2-9] threads", page.text_content("#fact-provider"))


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("**/api/images", "The connection dropped while uploading; trying again (attempt 2 of 4)…"),
        (
            "**/api/embeddings/*",
            "The connection dropped while the embedding downloaded; trying again (attempt 2 of 5)…",
        ),
    ],
    ids=["upload", "embedding"],
)
def test_an_image_whose_upload_or_embedding_drops_still_opens(page, live_server, path, status):
    start_page(page)
    tries = []
    page.route(path, drop_first_request(tries))
    first_mask_on_a_gallery_image(page, live_server)
    assert len(tries) == 2
    log = page.evaluate("window.statusLog")
    assert status in log, log
