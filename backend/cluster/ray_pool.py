"""Ray work that shares a cluster with other work (the encoder's Serve replicas, other jobs): actor pools sized
from what is free and grown as more frees up, and a plain-words reason whenever something cannot be placed.

Batch commands (``amg``, text ``label``) run their model actors with ``map_on_ray``::

    parser_group = parser.add_argument_group("Ray"); add_cluster_arguments(parser_group)
    request = ResourceRequest(cpus=threads, gpus=1 if cluster_has_gpus() else 0)
    for row in map_on_ray(rows, ModelActor, constructor_kwargs, request=request, workers=args.ray_workers,
                          wait=not args.no_wait, on_waiting=print_it):
        ...  # rows come back as the actor returns them, in completion order

and exit with ``EXIT_CLUSTER_FULL`` on ``ClusterFull``. Everything-mode tasks (backend/cluster/cluster_everything.py)
use ``placement_report`` for the reason a queued job shows.

Ray's state API (ray.util.state) needs the dashboard, which clusters may run without; the figures here come
from the GCS tables that ``ray._private.state`` reads (resources per node, the actor table with each actor's
required resources), all in this one module, so a change in Ray's internals is mended in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

# Exit code of a batch command given --no-wait when none of its actors can be placed (2 is a bad argument).
EXIT_CLUSTER_FULL = 3
# How long a batch run waits for its first actor before it says why it does not start (the issue asks < 30 s),
# and how often it looks again while none has started.
FIRST_CHECK_S = 10.0
RECHECK_S = 5.0
# Ray Data's actor class for map_batches(SomeClass): "MapWorker(MapBatches(SomeClass))".
_POOL_ACTOR_PREFIX = "MapWorker("
# The resources a reason talks about (memory and object store are not what pools wait for here).
_SCHEDULED = ("CPU", "GPU")


class ClusterFull(RuntimeError):
    """Nothing of a request can be placed on the cluster and the caller chose not to wait; the message says why."""


@dataclasses.dataclass(frozen=True)
class ResourceRequest:
    """What one actor (or task) asks Ray for: ``cpus`` logical CPUs and ``gpus`` GPUs."""

    cpus: float = 1.0
    gpus: float = 0.0

    def resources(self) -> dict[str, float]:
        return {name: value for name, value in (("CPU", self.cpus), ("GPU", self.gpus)) if value > 0}

    def describe(self) -> str:
        return _amounts(self.resources()) or "no resources"

    def copies_in(self, free: dict[str, float]) -> int:
        """How many of these fit in one node's ``free`` resources."""
        counts = [math.floor(free.get(name, 0.0) / value + 1e-9) for name, value in self.resources().items()]
        return max(0, min(counts)) if counts else 1 << 30


@dataclasses.dataclass(frozen=True)
class Holder:
    """Something holding scheduled resources: an actor, a placement group, or the rest (tasks)."""

    what: str
    resources: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ClusterSnapshot:
    """The cluster's resources per node (total and free) and what holds the used part."""

    total: dict[str, dict[str, float]]
    free: dict[str, dict[str, float]]
    holders: list[Holder]

    def fitting(self, request: ResourceRequest) -> int:
        """Copies of ``request`` that fit in what is free now (node by node)."""
        return sum(request.copies_in(self.free.get(node, {})) for node in self.total)

    def capacity(self, request: ResourceRequest) -> int:
        """Copies of ``request`` the whole cluster could hold if nothing else ran."""
        return sum(request.copies_in(resources) for resources in self.total.values())

    def summed(self, which: str) -> dict[str, float]:
        table = self.total if which == "total" else self.free
        sums: dict[str, float] = {}
        for node in self.total:
            for name in _SCHEDULED:
                sums[name] = sums.get(name, 0.0) + table.get(node, {}).get(name, 0.0)
        return sums


@dataclasses.dataclass(frozen=True)
class PoolSize:
    """An autoscaling actor pool: ``initial`` actors (what fits now, at least 1), growing up to ``maximum``."""

    initial: int
    maximum: int


def snapshot() -> ClusterSnapshot:
    """The connected cluster's resources and their holders (alive actors, placement groups, the rest)."""
    import ray
    from ray._private import state
    from ray.core.generated import gcs_pb2

    total = state.total_resources_per_node()
    free = state.available_resources_per_node()
    holders: list[Holder] = []
    accessor = state.state._connect_and_get_accessor()
    for raw in accessor.get_actor_table(None, None):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        held = {k: v for k, v in actor.required_resources.items() if k in _SCHEDULED and v > 0}
        # An actor in a placement group uses the group's reservation, counted with the group below.
        if _placed(actor) and held and not any(actor.placement_group_id):
            holders.append(Holder(_actor_label(actor), held))
    for group in ray.util.placement_group_table().values():
        if group.get("state") != "CREATED":
            continue
        held = {}
        for bundle in group.get("bundles", {}).values():
            for name in _SCHEDULED:
                held[name] = held.get(name, 0.0) + float(bundle.get(name, 0.0))
        held = {k: v for k, v in held.items() if v > 0}
        if held:
            holders.append(Holder(f"placement group {group.get('name') or group.get('placement_group_id')}", held))
    snap = ClusterSnapshot(total=total, free=free, holders=holders)
    # Used but not held by the above: tasks (e.g. everything-mode tasks, Ray Data read tasks, other jobs).
    rest = {}
    for name, value in snap.summed("total").items():
        used = value - snap.summed("free").get(name, 0.0)
        used -= sum(h.resources.get(name, 0.0) for h in holders)
        if used > 1e-6:
            rest[name] = used
    if rest:
        holders.append(Holder("running tasks", rest))
    return snap


def _placed(actor: Any) -> bool:
    """Whether an actor holds its resources: alive, or on a worker running its constructor (it has a pid)."""
    from ray.core.generated import gcs_pb2

    return actor.pid != 0 and actor.state != gcs_pb2.ActorTableData.ActorState.Value("DEAD")


def _actor_label(actor: Any) -> str:
    from ray.core.generated import gcs_pb2

    label = actor.class_name or "actor"
    if actor.name:
        label += f" {actor.name!r}"
    starting = "" if actor.state == gcs_pb2.ActorTableData.ActorState.Value("ALIVE") else ", starting"
    return f"actor {label} (job {actor.job_id.hex()}, pid {actor.pid}{starting})"


def _amounts(resources: dict[str, float]) -> str:
    return " + ".join(f"{value:g} {name}" for name, value in resources.items() if value > 0)


def pool_size(
    request: ResourceRequest, items: int, workers: int | None = None, snap: ClusterSnapshot | None = None
) -> PoolSize:
    """The pool for ``items`` work items: start with what fits now, grow to ``workers`` (default: what the
    whole cluster could hold), never more actors than items; at least one (it waits for room)."""
    snap = snapshot() if snap is None else snap
    limit = workers if workers is not None else snap.capacity(request)
    maximum = max(1, min(int(limit), int(items)))
    return PoolSize(initial=max(1, min(maximum, snap.fitting(request))), maximum=maximum)


def placement_report(request: ResourceRequest, snap: ClusterSnapshot | None = None, what: str = "actor") -> str | None:
    """None when one ``request`` fits in what is free now; else what was asked, what is free, what holds the rest."""
    snap = snapshot() if snap is None else snap
    if snap.fitting(request) > 0:
        return None
    asked = request.resources()
    total, free = snap.summed("total"), snap.summed("free")
    free_text = ", ".join(f"{free.get(name, 0.0):g} of {total.get(name, 0.0):g} {name}" for name in asked)
    if snap.capacity(request) == 0:
        return (
            f"no node of this cluster can ever hold one {what} of {request.describe()} "
            f"(cluster total: {_amounts(total) or 'nothing'})"
        )
    holders = [h for h in snap.holders if any(h.resources.get(name, 0) > 0 for name in asked)]
    held = "; ".join(f"{h.what}: {_amounts({k: h.resources[k] for k in asked if k in h.resources})}" for h in holders)
    return (
        f"cannot place one {what} of {request.describe()}: the cluster has {free_text} free; "
        f"held by {held or 'nothing known (other nodes may be fragmented)'}"
    )


def threads_per_actor(preferred: int, snap: ClusterSnapshot | None = None) -> int:
    """CPU threads (= Ray CPUs) for a model actor given none: ``preferred``, capped at the most CPUs one node
    has free now (else at the most one node has), so a default run on a shared cluster can start."""
    snap = snapshot() if snap is None else snap
    free = max((int(resources.get("CPU", 0)) for resources in snap.free.values()), default=0)
    if free < 1:
        free = max((int(resources.get("CPU", 0)) for resources in snap.total.values()), default=1)
    return max(1, min(int(preferred), free))


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def add_cluster_arguments(group: argparse._ArgumentGroup, *, workers_help: str) -> None:
    """--ray-address, --ray-workers and --no-wait, the same for every batch command."""
    group.add_argument(
        "--ray-address",
        default=None,
        help="run on this Ray cluster (e.g. ray://head:10001 or head:6379), or `local` to start one here",
    )
    group.add_argument("--ray-workers", type=int, default=None, help=workers_help)
    group.add_argument(
        "--no-wait",
        action="store_true",
        help=f"with --ray-address: exit with code {EXIT_CLUSTER_FULL} (and say why) when the cluster has no room "
        "for a single actor, instead of waiting for other work to free some",
    )


def map_on_ray(
    rows: list[dict[str, Any]],
    actor_class: type,
    constructor_kwargs: dict[str, Any],
    *,
    request: ResourceRequest,
    workers: int | None = None,
    wait: bool = True,
    on_waiting: Callable[[str], None] | None = None,
    first_check_s: float = FIRST_CHECK_S,
) -> Iterator[dict[str, Any]]:
    """Runs ``actor_class(**constructor_kwargs)(batch)`` over ``rows`` (one row per batch, numpy format) on an
    autoscaling Ray Data actor pool of the connected cluster; yields the output rows as they come.

    The pool starts with the actors that fit in what is free now (at least one, which waits for room) and grows
    up to ``workers`` (default: what the cluster could hold) as resources free up. When not one actor can be
    placed, at the start or while none has started after ``first_check_s``, ``on_waiting(reason)`` is called
    (again whenever the reason changes) and the run keeps waiting, or raises ``ClusterFull`` if not ``wait``.
    """
    if not rows:
        return
    import ray.data

    snap = snapshot()
    size = pool_size(request, len(rows), workers, snap)
    reason = placement_report(request, snap)
    if reason is not None:
        if not wait:
            raise ClusterFull(reason)
        if on_waiting is not None:
            on_waiting(reason)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        actor_class,
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size.maximum, initial_size=size.initial),
        num_cpus=request.cpus,
        num_gpus=request.gpus,
    )
    results: queue.Queue = queue.Queue()

    def produce() -> None:
        try:
            for row in dataset.iter_rows():
                results.put(("row", row))
        except BaseException as error:  # Raised again by the consumer below.
            results.put(("error", error))
        results.put(("end", None))

    threading.Thread(target=produce, name="ray-pool-results", daemon=True).start()
    check_at, placed = time.monotonic() + first_check_s, False
    job_id = ray.get_runtime_context().get_job_id()
    while True:
        try:
            kind, value = results.get(timeout=1.0)
        except queue.Empty:
            if placed or time.monotonic() < check_at:
                continue
            check_at = time.monotonic() + RECHECK_S
            placed = _pool_actor_placed(job_id)
            if placed:
                continue
            now = placement_report(request)
            if now is not None and not wait:
                raise ClusterFull(now) from None
            if now is not None and now != reason and on_waiting is not None:
                on_waiting(now)
            reason = now
            continue
        if kind == "end":
            return
        if kind == "error":
            raise value
        placed = True
        yield value


def _pool_actor_placed(job_id: str) -> bool:
    """Whether one of this driver's Ray Data pool actors got its resources (it starts, loads or runs its model)."""
    import ray
    from ray._private import state
    from ray.core.generated import gcs_pb2

    accessor = state.state._connect_and_get_accessor()
    for raw in accessor.get_actor_table(ray.JobID.from_hex(job_id), None):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if actor.class_name.startswith(_POOL_ACTOR_PREFIX) and _placed(actor):
            return True
    return False
