"""A short seeded fuzz run of the upload and everything endpoints: no input answers 5xx, the app stays up
(the 10,000-input run: tests/benchmarks/bench_fuzz.py)."""

from fuzzing import SEEDS, fuzz_app, run_fuzz


def test_mutated_images_and_json_bodies_never_answer_5xx(tmp_path):
    app, send, image_id = fuzz_app(str(tmp_path / "data"))
    try:
        counts = run_fuzz(send, image_id, examples=150)
        assert counts["inputs"] >= 250 and counts["5xx"] == 0, counts
        assert counts.get("4xx", 0) > 0 and counts.get("2xx", 0) > 0, counts  # Both kinds were reached.
        assert send("GET", "/healthz", b"", "text/plain") == 200
        assert send("POST", "/api/images", SEEDS[1], "image/png") == 200
    finally:
        app.extensions["sam"].encoder.close()
        app.extensions["everything"].close()
