"""Embedding cache: byte bound, LRU order, disk persistence, and unguessable but stable ids."""

import numpy as np
import pytest

from backend.services.cache import CachedEmbedding, EmbeddingCache, image_key, is_valid_key

MIB = 1024 * 1024


def entry(value: float, channels: int = 256) -> CachedEmbedding:
    # 256 x 64 x 64 float32 = 4 MiB, like a real embedding.
    return CachedEmbedding(np.full((channels, 64, 64), value, np.float32), (480, 640), (768, 1024), "vit_t:test", 12.5)


def key(n: int) -> str:
    return f"{n:032x}"


def test_lru_keeps_within_the_byte_bound_and_evicts_least_recently_used():
    cache = EmbeddingCache(max_bytes=10 * MIB)
    cache.put(key(1), entry(1))
    cache.put(key(2), entry(2))
    assert cache.get(key(1)).embedding[0, 0, 0] == 1  # 1 is now the most recent.
    cache.put(key(3), entry(3))
    assert cache.bytes_used == 8 * MIB <= cache.max_bytes
    assert cache.get(key(2)) is None
    assert cache.get(key(1)) is not None and cache.get(key(3)) is not None


def test_entry_larger_than_budget_is_not_kept_in_memory():
    cache = EmbeddingCache(max_bytes=1 * MIB)
    cache.put(key(1), entry(1))
    assert cache.get(key(1)) is None and cache.bytes_used == 0


def test_replacing_a_key_does_not_double_count():
    cache = EmbeddingCache(max_bytes=100 * MIB)
    cache.put(key(1), entry(1))
    cache.put(key(1), entry(2))
    assert cache.bytes_used == 4 * MIB and cache.get(key(1)).embedding[0, 0, 0] == 2


def test_disk_directory_survives_a_new_cache_instance(tmp_path):
    first = EmbeddingCache(max_bytes=100 * MIB, disk_dir=tmp_path)
    stored = CachedEmbedding(
        np.random.default_rng(0).standard_normal((256, 64, 64)).astype(np.float32), (480, 640), (768, 1024), "m", 3.0
    )
    first.put(key(7), stored)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key(7)}.npz"]
    second = EmbeddingCache(max_bytes=100 * MIB, disk_dir=tmp_path)
    loaded = second.get(key(7))
    assert np.array_equal(loaded.embedding, stored.embedding)
    assert (loaded.original_size, loaded.input_size, loaded.model_key) == ((480, 640), (768, 1024), "m")
    assert second.bytes_used == 4 * MIB  # Promoted into memory.


def test_corrupt_disk_entry_is_a_miss_not_a_crash(tmp_path):
    (tmp_path / f"{key(9)}.npz").write_bytes(b"garbage")
    assert EmbeddingCache(max_bytes=MIB, disk_dir=tmp_path).get(key(9)) is None


@pytest.mark.parametrize("bad", ["../../etc/passwd", "", "ABCDEF" * 6, key(1) + "0", "g" * 32, key(1)[:-1] + "/"])
def test_malformed_keys_never_touch_the_disk(tmp_path, bad):
    cache = EmbeddingCache(max_bytes=MIB, disk_dir=tmp_path)
    assert not is_valid_key(bad)
    assert cache.get(bad) is None
    with pytest.raises(ValueError):
        cache.put(bad, entry(0, channels=1))


def test_image_key_is_stable_secret_dependent_and_content_dependent():
    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    a = image_key(b"secret-1", "vit_t:x", pixels)
    assert is_valid_key(a)
    assert a == image_key(b"secret-1", "vit_t:x", pixels.copy())
    assert a != image_key(b"secret-2", "vit_t:x", pixels)
    assert a != image_key(b"secret-1", "vit_b:y", pixels)
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert a != image_key(b"secret-1", "vit_t:x", changed)
    # Same bytes, different shape: a different image.
    assert a != image_key(b"secret-1", "vit_t:x", pixels.reshape(30, 20, 3))


def test_disk_directory_is_bounded_and_drops_the_least_recently_used(tmp_path):
    import os
    import time

    cache = EmbeddingCache(max_bytes=MIB, disk_dir=tmp_path, disk_max_bytes=9 * MIB)  # Room for two files.
    cache.put(key(1), entry(1))
    cache.put(key(2), entry(2))
    old = time.time() - 100
    os.utime(tmp_path / f"{key(1)}.npz", (old, old))
    os.utime(tmp_path / f"{key(2)}.npz", (old - 50, old - 50))
    assert cache.get(key(2)) is not None  # Memory holds nothing (1 MiB budget): read from disk, now recent.
    cache.put(key(3), entry(3))
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [f"{key(2)}.npz", f"{key(3)}.npz"]


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "empty", "no-checksum"])
def test_a_damaged_disk_entry_is_a_miss_and_is_deleted(tmp_path, damage, caplog):
    cache = EmbeddingCache(max_bytes=MIB, disk_dir=tmp_path)  # Memory too small: reads go to disk.
    stored = CachedEmbedding(
        np.random.default_rng(1).standard_normal((256, 64, 64)).astype(np.float32), (480, 640), (768, 1024), "m", 3.0
    )
    cache.put(key(5), stored)
    path = tmp_path / f"{key(5)}.npz"
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "bit-flipped":
        raw[len(raw) // 2] ^= 0x10  # Inside the stored (uncompressed) embedding.
    elif damage == "empty":
        raw = bytearray()
    else:  # A file of the format before checksums: readable, but unverifiable.
        import io

        buffer = io.BytesIO()
        np.savez(
            buffer,
            embedding=stored.embedding,
            original_size=np.asarray((480, 640)),
            input_size=np.asarray((768, 1024)),
            model_key=np.asarray("m"),
            encode_ms=np.asarray(3.0),
        )
        raw = bytearray(buffer.getvalue())
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="backend.services.cache"):
        assert cache.get(key(5)) is None
    assert not path.exists() and "unreadable disk cache entry" in caplog.text
    cache.put(key(5), stored)  # Encoded again: written afresh and readable.
    assert np.array_equal(EmbeddingCache(max_bytes=MIB, disk_dir=tmp_path).get(key(5)).embedding, stored.embedding)
