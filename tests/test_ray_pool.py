"""Pool sizing and the "cannot be placed" reason (backend/cluster/ray_pool.py) on given cluster snapshots.

The same code on a live cluster: tests/test_shared_cluster.py.
"""

from __future__ import annotations

from backend.cluster.ray_pool import (
    ClusterSnapshot,
    Holder,
    PoolSize,
    ResourceRequest,
    placement_report,
    pool_size,
    threads_per_actor,
)

REPLICA = Holder("actor ServeReplica:sam-encoder:SamEncoder (job 01000000, pid 11)", {"CPU": 1.0})


def _cluster(*nodes: tuple[dict[str, float], dict[str, float]], holders=()) -> ClusterSnapshot:
    """Nodes as (total, free) resources."""
    return ClusterSnapshot(
        total={f"node{i}": total for i, (total, _) in enumerate(nodes)},
        free={f"node{i}": free for i, (_, free) in enumerate(nodes)},
        holders=list(holders),
    )


def test_the_pool_starts_with_what_is_free_and_grows_to_what_the_cluster_holds():
    one_free = _cluster(({"CPU": 2}, {"CPU": 1}), holders=[REPLICA])
    assert pool_size(ResourceRequest(cpus=1), items=3, snap=one_free) == PoolSize(initial=1, maximum=2)
    # Never more actors than images, nor than --ray-workers; initial never above the maximum.
    assert pool_size(ResourceRequest(cpus=1), items=1, snap=one_free) == PoolSize(initial=1, maximum=1)
    big = _cluster(({"CPU": 8}, {"CPU": 6}), ({"CPU": 8}, {"CPU": 3}))
    assert pool_size(ResourceRequest(cpus=2), items=100, snap=big) == PoolSize(initial=3 + 1, maximum=8)
    assert pool_size(ResourceRequest(cpus=2), items=100, workers=2, snap=big) == PoolSize(initial=2, maximum=2)
    # Nothing free: one actor that waits for room.
    full = _cluster(({"CPU": 2}, {"CPU": 0}))
    assert pool_size(ResourceRequest(cpus=1), items=3, snap=full) == PoolSize(initial=1, maximum=2)


def test_gpus_and_fragmented_nodes_count_per_node():
    gpus = _cluster(({"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 0}), ({"CPU": 8, "GPU": 2}, {"CPU": 1, "GPU": 2}))
    request = ResourceRequest(cpus=1, gpus=1)
    assert pool_size(request, items=10, snap=gpus) == PoolSize(initial=1, maximum=3)
    # 2 CPUs free in total, but one actor's 2 CPUs must be on one node.
    split = _cluster(({"CPU": 4}, {"CPU": 1}), ({"CPU": 4}, {"CPU": 1}))
    assert placement_report(ResourceRequest(cpus=2), split) is not None
    assert placement_report(ResourceRequest(cpus=1), split) is None


def test_the_reason_says_what_was_asked_what_is_free_and_what_holds_the_rest():
    holder = Holder("actor CpuHolder (job 02000000, pid 12)", {"CPU": 1.0})
    full = _cluster(({"CPU": 2, "GPU": 0}, {"CPU": 0}), holders=[REPLICA, holder, Holder("running tasks", {"GPU": 1})])
    reason = placement_report(ResourceRequest(cpus=1), full)
    assert reason == (
        "cannot place one actor of 1 CPU: the cluster has 0 of 2 CPU free; held by "
        f"{REPLICA.what}: 1 CPU; actor CpuHolder (job 02000000, pid 12): 1 CPU"
    )
    assert placement_report(ResourceRequest(cpus=1), full, what="everything task").startswith(
        "cannot place one everything task of 1 CPU"
    )
    # Larger than any node: said as such (waiting only helps if the cluster grows).
    small = _cluster(({"CPU": 2}, {"CPU": 2}))
    assert placement_report(ResourceRequest(cpus=4), small) == (
        "no node of this cluster can ever hold one actor of 4 CPU (cluster total: 2 CPU)"
    )
    assert placement_report(ResourceRequest(cpus=1, gpus=1), small).startswith(
        "no node of this cluster can ever hold one actor of 1 CPU + 1 GPU"
    )


def test_default_threads_fit_in_the_cpus_one_node_has_free():
    assert threads_per_actor(2, _cluster(({"CPU": 2}, {"CPU": 1}))) == 1
    assert threads_per_actor(2, _cluster(({"CPU": 16}, {"CPU": 9}))) == 2
    # Nothing free: the most one node has, so the actor can start once that node frees up.
    assert threads_per_actor(8, _cluster(({"CPU": 4}, {"CPU": 0}))) == 4
