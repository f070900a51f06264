"""Checkpoint download (progress, resume, size check) against a local HTTP server, and model selection."""

import http.server
import io
import threading
import time

import numpy as np
import pytest
import torch
from backend_fixtures import free_port, vit_t_checkpoint

from backend.__main__ import main
from backend.config import Config
from backend.sam import sam_model_registry
from backend.services import weights
from backend.services.weights import WeightsError, download, load_model

PAYLOAD = np.random.default_rng(0).integers(0, 256, 3 * 1024 * 1024 + 123, dtype=np.uint8).tobytes()


class FileServer(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), FileHandler)
        self.requests = []
        self.honour_range = True
        self.fail_after = None  # Bytes after which the connection is dropped once.

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/weights.pth"


class FileHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        requested_range = self.headers.get("Range")
        server.requests.append(requested_range)
        start = 0
        if requested_range and server.honour_range:
            start = int(requested_range.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.fail_after is not None:
            cut, server.fail_after = server.fail_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def file_server():
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_writes_the_file_and_reports_progress(file_server, tmp_path):
    progress = io.StringIO()
    path = download(file_server.url, tmp_path / "w.pth", len(PAYLOAD), progress=progress, chunk_size=256 * 1024)
    assert path.read_bytes() == PAYLOAD
    lines = progress.getvalue().splitlines()
    assert len(lines) >= 5 and "100.0%" in lines[-1] and "3.1/3.1 MB" in lines[-1]
    assert not (tmp_path / "w.pth.part").exists()
    # Already there with the right size: no second request.
    download(file_server.url, tmp_path / "w.pth", len(PAYLOAD), progress=None)
    assert file_server.requests == [None]


def test_download_resumes_a_partial_file_with_a_range_request(file_server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:1_000_000])
    progress = io.StringIO()
    path = download(file_server.url, tmp_path / "w.pth", len(PAYLOAD), progress=progress)
    assert file_server.requests == ["bytes=1000000-"]
    assert path.read_bytes() == PAYLOAD
    assert "resuming w.pth at 1.0 MB" in progress.getvalue()


def test_interrupted_download_is_resumed_by_the_next_call(file_server, tmp_path):
    file_server.fail_after = 500_000
    with pytest.raises(WeightsError):
        download(file_server.url, tmp_path / "w.pth", len(PAYLOAD), progress=None)
    kept = (tmp_path / "w.pth.part").stat().st_size
    assert 0 < kept < len(PAYLOAD) and not (tmp_path / "w.pth").exists()
    download(file_server.url, tmp_path / "w.pth", len(PAYLOAD), progress=None)
    assert file_server.requests[-1] == f"bytes={kept}-"
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(file_server, tmp_path):
    file_server.honour_range = False
    (tmp_path / "w.pth.part").write_bytes(b"stale bytes")
    assert download(file_server.url, tmp_path / "w.pth", len(PAYLOAD), progress=None).read_bytes() == PAYLOAD


def test_size_mismatch_deletes_the_file_and_says_so(file_server, tmp_path):
    with pytest.raises(WeightsError, match=f"downloaded {len(PAYLOAD):,} bytes .* should have {1000 + len(PAYLOAD):,}"):
        download(file_server.url, tmp_path / "w.pth", 1000 + len(PAYLOAD), progress=None)
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_unreachable_server_fails_fast(tmp_path):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(WeightsError, match="cannot reach"):
        download(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", 10, timeout_s=2, progress=None)
    assert time.monotonic() - started < 5


def test_cli_download_weights(file_server, tmp_path, capsys):
    assert main(["download-weights", "--model-type", "vit_t", "--dest", str(tmp_path), "--url", file_server.url]) == 0
    assert (tmp_path / "mobile_sam.pt").read_bytes() == PAYLOAD
    assert "done:" in capsys.readouterr().out


def test_official_registry_has_the_published_sizes():
    assert weights.CHECKPOINTS["vit_b"].size == 375_042_383
    assert weights.CHECKPOINTS["vit_l"].size == 1_249_524_607
    assert weights.CHECKPOINTS["vit_h"].size == 2_564_550_879
    assert weights.CHECKPOINTS["default"] is weights.CHECKPOINTS["vit_h"]
    assert weights.CHECKPOINTS["vit_t"].url.endswith("/mobile_sam.pt")


def test_sam2_checkpoints_are_meta_releases_with_their_sizes():
    assert weights.CHECKPOINTS["sam2.1_hiera_t"].url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    )
    assert weights.CHECKPOINTS["sam2_hiera_b+"].url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt"
    )
    sizes = {t: weights.CHECKPOINTS[t].size for t in weights.MODEL_TYPES if weights.model_family(t) != "sam"}
    assert sizes == {
        "sam2.1_hiera_t": 156_008_466,
        "sam2.1_hiera_s": 184_416_285,
        "sam2.1_hiera_b+": 323_606_802,
        "sam2.1_hiera_l": 898_083_611,
        "sam2_hiera_t": 155_906_050,
        "sam2_hiera_s": None,  # not found published: no size check
        "sam2_hiera_b+": 323_493_298,
        "sam2_hiera_l": 897_952_466,
    }
    assert [weights.model_family(t) for t in ("vit_t", "sam2_hiera_l", "sam2.1_hiera_s")] == ["sam", "sam2", "sam2.1"]


def test_cli_downloads_a_sam2_checkpoint_under_its_official_name(file_server, tmp_path):
    # sam2_hiera_s has no size check, so the test payload is accepted.
    args = ["download-weights", "--model-type", "sam2_hiera_s", "--dest", str(tmp_path), "--url", file_server.url]
    assert main(args) == 0
    assert (tmp_path / "sam2_hiera_small.pt").read_bytes() == PAYLOAD


def test_cli_refuses_a_sam2_download_of_the_wrong_size(file_server, tmp_path, capsys):
    args = ["download-weights", "--model-type", "sam2.1_hiera_t", "--dest", str(tmp_path), "--url", file_server.url]
    assert main(args) == 1
    assert "156008466" in capsys.readouterr().err.replace(",", "")
    assert not (tmp_path / "sam2.1_hiera_tiny.pt").exists()


def test_sam2_offline_falls_back_to_seeded_random_sam2_tiny_and_is_served(tmp_path):
    from backend.sam2 import SAM2Base
    from backend.server.app import create_app

    config = Config.from_env({}, {"data_dir": str(tmp_path), "allow_download": "0", "model_type": "sam2.1_hiera_s"})
    model, info = load_model(config)
    assert isinstance(model, SAM2Base)
    assert (info.model_type, info.weights) == ("sam2.1_hiera_t", "random")
    assert "download-weights --model-type sam2.1_hiera_s" in info.message
    app = create_app({"model": model, "weights_info": info, "data_dir": str(tmp_path), "secret": "test-secret"})
    assert app.test_client().get("/api/model").get_json()["model_family"] == "sam2.1"


def test_wrong_sized_file_in_weights_dir_is_not_used(tmp_path):
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"partial")
    assert weights.find_checkpoint("vit_b", tmp_path) is None


def test_no_checkpoint_offline_falls_back_to_seeded_random_vit_t(tmp_path, caplog):
    config = Config.from_env({}, {"data_dir": str(tmp_path), "allow_download": "0", "model_type": "vit_b"})
    with caplog.at_level("WARNING"):
        model, info = load_model(config)
    assert (info.model_type, info.weights, info.checkpoint) == ("vit_t", "random", None)
    assert "python -m backend download-weights --model-type vit_b" in info.message
    assert "RANDOM" in caplog.text and "download-weights" in caplog.text
    # Seeded: the same weights every time, and the caller's RNG stream is untouched.
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = weights.random_model()
    assert torch.equal(torch.rand(3), expected_next)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_configured_checkpoint_is_loaded_as_real_weights(tmp_path):
    # Seed 1, so the loaded weights differ from the seed-0 random fallback.
    torch.manual_seed(1)
    saved = sam_model_registry["vit_t"]().state_dict()
    checkpoint = tmp_path / "vit_t_seed1.pth"
    torch.save(saved, checkpoint)
    config = Config.from_env({}, {"data_dir": str(tmp_path), "model_type": "vit_t", "checkpoint": str(checkpoint)})
    model, info = load_model(config)
    assert (info.model_type, info.weights) == ("vit_t", "real")
    assert info.weights_id.startswith("vit_t-vit_t_seed1.pth-")
    loaded = model.state_dict()
    assert set(loaded) == set(saved) and all(torch.equal(loaded[key], value) for key, value in saved.items())


def test_missing_or_wrong_checkpoint_is_a_clear_error(tmp_path):
    missing = Config.from_env({}, {"data_dir": str(tmp_path), "checkpoint": str(tmp_path / "nope.pth")})
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(missing)
    wrong_type = Config.from_env(
        {}, {"data_dir": str(tmp_path), "model_type": "vit_b", "checkpoint": str(vit_t_checkpoint())}
    )
    with pytest.raises(WeightsError, match="cannot load .* as a vit_b checkpoint"):
        load_model(wrong_type)
