"""Encoder service: encodes once, batches what arrives together, bounds its queue, times out, survives errors;
and the real vit_t path computes what SamPredictor computes."""

import threading
import time

import numpy as np
import pytest
import torch
from backend_fixtures import WIDE_PHOTO, FakeEncoder, distinct_image, photo, predictor_for, vit_t_model

from backend.sam import SamPredictor
from backend.services.cache import EmbeddingCache
from backend.services.encoder import EncoderService
from backend.services.interfaces import EncoderBusy, EncodeTimeout
from backend.services.model_runner import DeviceError, encode_images, resolve_device

GIB = 1024**3


def make_service(fake: FakeEncoder, **kwargs) -> EncoderService:
    kwargs.setdefault("max_queue_size", 8)
    kwargs.setdefault("max_batch_size", 4)
    return EncoderService(None, EmbeddingCache(GIB), b"secret", "fake", encode_batch=fake, **kwargs)


def in_threads(function, arguments):
    results = [None] * len(arguments)

    def run(i, argument):
        try:
            results[i] = function(argument)
        except Exception as error:  # Collected for the assertions.
            results[i] = error

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(arguments)]
    for thread in threads:
        thread.start()
    return threads, results


def hold_worker(service: EncoderService, fake: FakeEncoder):
    """Returns once the worker is inside a forward pass (of an unrelated image), where it stays until
    ``fake.gate`` is set: requests made meanwhile queue up. -> (the blocking thread, its one-item results)."""
    fake.gate.clear()
    threads, results = in_threads(service.encode, [distinct_image(100)])
    assert fake.started.wait(5)
    return threads[0], results


def wait_for_queue_depth(service: EncoderService, depth: int) -> None:
    deadline = time.time() + 5
    while service.queue_depth < depth and time.time() < deadline:
        time.sleep(0.01)


def test_same_image_twice_runs_the_encoder_once():
    fake = FakeEncoder()
    service = make_service(fake)
    image = distinct_image(0)
    first = service.encode(image)
    second = service.encode(image.copy())
    assert fake.batches == [1]
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.image_id == second.image_id
    assert np.array_equal(second.entry.embedding, first.entry.embedding)
    assert first.entry.original_size == (24, 32) and first.entry.input_size == (768, 1024)
    service.close()


def test_images_arriving_together_share_one_forward_pass():
    fake = FakeEncoder()
    service = make_service(fake, max_batch_size=4)
    blocker, _ = hold_worker(service, fake)
    threads, results = in_threads(service.encode, [distinct_image(i) for i in range(3)])
    wait_for_queue_depth(service, 3)
    fake.gate.set()
    for thread in threads + [blocker]:
        thread.join(10)
    assert fake.batches == [1, 3]
    assert all(result.batch_size == 3 and not result.cache_hit for result in results)
    assert len({result.image_id for result in results}) == 3
    # Each image got its own embedding, not its neighbour's.
    for i, result in enumerate(results):
        assert result.entry.embedding[0, 5, 5] == pytest.approx(distinct_image(i).mean() / 255.0)
    service.close()


def test_concurrent_uploads_of_the_same_image_encode_once():
    fake = FakeEncoder(delay_s=0.2)
    service = make_service(fake)
    threads, results = in_threads(service.encode, [distinct_image(7)] * 6)
    for thread in threads:
        thread.join(10)
    assert sum(fake.batches) == 1
    assert len({r.image_id for r in results}) == 1 and not any(isinstance(r, Exception) for r in results)
    service.close()


def test_full_queue_refuses_with_retry_after_and_recovers():
    fake = FakeEncoder()
    service = make_service(fake, max_queue_size=2, max_batch_size=1)
    blocker, results = hold_worker(service, fake)
    more, more_results = in_threads(service.encode, [distinct_image(i) for i in range(1, 3)])
    wait_for_queue_depth(service, 2)
    with pytest.raises(EncoderBusy) as busy:
        service.encode(distinct_image(99))
    assert busy.value.retry_after >= 1 and "queue is full" in str(busy.value)
    fake.gate.set()
    for thread in [blocker] + more:
        thread.join(10)
    assert not any(isinstance(r, Exception) for r in results + more_results)
    assert not service.encode(distinct_image(99)).cache_hit  # Room again once the queue drained.
    service.close()


def test_timeout_answers_promptly_and_the_abandoned_image_is_skipped():
    fake = FakeEncoder()
    service = make_service(fake, max_batch_size=1)
    blocker, _ = hold_worker(service, fake)
    started = time.perf_counter()
    with pytest.raises(EncodeTimeout, match="not encoded within 0.2 s"):
        service.encode(distinct_image(2), timeout_s=0.2)
    assert time.perf_counter() - started < 2
    fake.gate.set()
    blocker.join(10)
    time.sleep(0.1)
    assert fake.batches == [1]  # The timed-out image was never encoded.
    service.close()


def test_a_failing_forward_pass_fails_its_requests_only():
    fake = FakeEncoder()
    fake.fail_next = True
    service = make_service(fake)
    with pytest.raises(RuntimeError, match="simulated"):
        service.encode(distinct_image(1))
    assert not service.encode(distinct_image(1)).cache_hit  # Retried and encoded this time.
    service.close()


def test_one_bad_image_does_not_fail_the_rest_of_its_batch():
    fake = FakeEncoder()
    fake.poison_shape = (5, 5, 3)
    service = make_service(fake, max_batch_size=4)
    blocker, _ = hold_worker(service, fake)
    images = [distinct_image(1), distinct_image(2, (5, 5)), distinct_image(3)]
    threads, results = in_threads(service.encode, images)
    wait_for_queue_depth(service, 3)
    fake.gate.set()
    for thread in threads + [blocker]:
        thread.join(10)
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert fake.batches[:2] == [1, 3] and sorted(fake.batches[2:]) == [1, 1, 1]
    service.close()


def test_unknown_image_has_no_embedding():
    service = make_service(FakeEncoder())
    assert service.embedding("0" * 32) is None
    assert service.embedding("../../etc/passwd") is None
    service.close()


def test_device_resolution(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="no usable CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(DeviceError, match="only 1 CUDA"):
        resolve_device("cuda:3")


class PoolingEncoder(torch.nn.Module):
    """A stand-in image encoder: [B, 3, 1024, 1024] -> [B, 256, 64, 64] by 16x16 average pooling."""

    img_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(x, 16)
        return pooled.repeat(1, 86, 1, 1)[:, :256]


class StubSam(torch.nn.Module):
    image_size = 1024

    def __init__(self):
        super().__init__()
        self.image_encoder = PoolingEncoder()
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1))

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess(self, x):
        x = (x - self.pixel_mean) / self.pixel_std
        return torch.nn.functional.pad(x, (0, 1024 - x.shape[-1], 0, 1024 - x.shape[-2]))


def test_batched_images_of_different_sizes_match_one_by_one():
    model = StubSam()
    wide, tall = distinct_image(1, (300, 500)), distinct_image(2, (700, 200))
    batched = encode_images(model, [wide, tall])
    alone = [encode_images(model, [wide])[0], encode_images(model, [tall])[0]]
    assert [size for _, size in batched] == [(614, 1024), (1024, 293)]
    for (b, _), (a, _) in zip(batched, alone, strict=True):
        assert np.allclose(a, b, atol=1e-6)
    # Padding is zero after normalisation: the bottom rows of the wide image's embedding are exactly 0.
    assert np.all(batched[0][0][:, 40:, :] == 0)


@pytest.fixture(scope="module")
def truck():
    return photo(*WIDE_PHOTO)


def test_real_vit_t_service_computes_what_the_predictor_computes(truck):
    """The service's embedding and its predictor's masks equal SamPredictor's on the same model and image (the
    predictor's parity with the reference is test_sam_parity's job)."""
    model = vit_t_model()
    service = EncoderService(model, EmbeddingCache(GIB), b"secret", "vit_t:seed0")
    result = service.encode(truck)
    direct = predictor_for(model, truck)
    assert result.entry.embedding.shape == (256, 64, 64)
    expected = direct.get_image_embedding()[0].numpy()
    assert np.abs(result.entry.embedding - expected).max() <= 1e-4
    assert result.entry.original_size == truck.shape[:2] and result.entry.input_size == (683, 1024)

    prompt = dict(point_coords=np.array([[500.0, 375.0], [1200.0, 800.0]]), point_labels=np.array([1.0, 0.0]))
    # The stored embedding alone (no second encode) gives the predictor's masks.
    entry = service.embedding(result.image_id)
    predictor = SamPredictor(model)
    predictor.set_embedding(entry.embedding, entry.original_size, entry.input_size)
    masks, scores, low_res = predictor.predict(**prompt, multimask_output=True)
    want_masks, want_scores, want_low_res = direct.predict(**prompt, multimask_output=True)
    assert np.abs(low_res - want_low_res).max() <= 1e-3 and np.abs(scores - want_scores).max() <= 1e-3
    assert (masks == want_masks).mean() >= 0.995
    assert 0.0 < masks.mean() < 1.0  # neither empty nor full: the comparison is not vacuous
    service.close()
