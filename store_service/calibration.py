"""Recall as a knob: measure a vector index's recall@k against exact search per search setting."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lance
import numpy as np

from embedsearch.contract.errors import InvalidArgument, Unavailable
from embedsearch.contract.values import IndexCalibration, RecallLevel
from store_service.exact import vectors_of

log = logging.getLogger("store_service.calibration")

# Where a calibration is kept: a JSON file per index inside the table's directory, beside
# Lance's own files. Lance and LanceDB ignore it, it survives restarts, and writing it makes
# no new table version (a commit would wake maintenance and move the version under readers).
SIDE_DIR = "_embedsearch/calibration"
# The lower confidence bound of a mean recall that must reach a level: mean less this many
# standard errors of the per-query recalls (about 97.5% one-sided).
Z = 2.0
# refine_factor values tried for indexes that quantize vectors (0: no refine step). The largest
# serve tables of near-copies, where the k nearest hide among many rows of equal codes; from
# the store's in-memory matrix a refine of 80 costs little more than one of 20.
REFINE_FACTORS = (0, 2, 5, 10, 20, 40, 80)
# refine_factor values tried for HNSW sub-indexes, whose graphs need ef >= the candidates
# asked for: (k + 1) x 80 would be an ef of 880. A refine of 2 from the in-memory matrix let
# fewer partitions reach 0.95 on bench/store_search's prose data, faster than more partitions
# without one.
HNSW_REFINE_FACTORS = (0, 2, 5, 20)
# ef values tried for HNSW sub-indexes.
EF_VALUES = (20, 40, 80, 160, 320)
# A setting is first measured on this share of the queries (at least PREFIX_MIN of them); it is
# measured on the rest only if it may still be the cheapest for some level (:func:`calibrate`).
PREFIX_SHARE, PREFIX_MIN = 0.25, 25
# Stop probing more partitions once the mean recall gains less than this per doubling.
PLATEAU = 0.002
# Latencies within this fraction of each other are too close to call.
NOISE = 0.15
# Rows of the vector column scanned at a time for the exact neighbours.
SCAN_ROWS = 16_384


@dataclass(frozen=True)
class Setting:
    """Search parameters as the store's search takes them (0: unset)."""

    nprobes: int
    refine_factor: int = 0
    ef: int = 0
    # The probed partitions are scanned from the store's memory (store_service.partitions),
    # not searched by Lance's sub-index; refine_factor and ef are unused.
    memory_scan: bool = False


# A search as the store serves it: the row ids of a query's k nearest rows under a setting.
Search = Callable[[np.ndarray, int, Setting], np.ndarray]


@dataclass
class Measured:
    setting: Setting
    recall: float  # mean recall@k over the queries measured
    lower: float  # its lower confidence bound
    upper: float  # and its upper one
    latency_ms: float
    complete: bool = True  # measured on every query; False: abandoned after the first ones


# Whether a setting measured on the first queries is worth the rest: (its median latency in
# ms, the upper confidence bound of its mean recall) -> bool.
Worth = Callable[[float, float], bool]


def side_path(index_name: str) -> str:
    return f"{SIDE_DIR}/{index_name}.json"


def scan_path(index_name: str) -> str:
    """Where the centroids of a calibration's memory-scan partitions are kept (.npy)."""
    return f"{SIDE_DIR}/{index_name}.scan.npy"


def to_json(calibration: IndexCalibration, metric: str) -> bytes:
    return json.dumps({**dataclasses.asdict(calibration), "metric": metric}).encode()


def from_json(data: bytes) -> IndexCalibration:
    raw = json.loads(data)
    raw.pop("metric", None)
    levels = [RecallLevel(**level) for level in raw.pop("levels", [])]
    return IndexCalibration(**raw, levels=levels)


def check_target(target: float, nprobes: int, refine_factor: int, ef: int) -> None:
    """InvalidArgument for a target_recall outside (0, 1], or one given with the parameters
    it stands for."""
    if not math.isfinite(target) or not 0 < target <= 1:
        raise InvalidArgument(
            f"target_recall must be a number in (0, 1], such as 0.95, not {target}"
        )
    given = {"nprobes": nprobes, "refine_factor": refine_factor, "ef": ef}
    explicit = {name: value for name, value in given.items() if value}
    if explicit:
        raise InvalidArgument(
            f"target_recall picks nprobes, refine_factor and ef itself; leave them unset "
            f"(got {explicit}), or drop target_recall to set them by hand"
        )


def secondaries(index_type: str) -> list[tuple[int, int]]:
    """(refine_factor, ef) pairs worth trying for an index kind, cheapest first."""
    quantized = not index_type.endswith("FLAT")
    if "HNSW" in index_type:
        refines = HNSW_REFINE_FACTORS if quantized else (0,)
        return [(refine, ef) for refine in refines for ef in EF_VALUES]
    return [(refine, 0) for refine in (REFINE_FACTORS if quantized else (0,))]


def _probes(partitions: int, finer: bool = False) -> Iterator[int]:
    """1, 2, 4, 8, ... below ``partitions``, then ``partitions``; ``finer`` steps by a quarter
    instead: 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 19, 24, ... A scan from memory costs in proportion
    to the partitions it probes, so a level taken at the next doubling would cost up to twice
    what it needs (measured on bench/store_search's prose: 0.95 at 32 or 48 probes, 0.7 or
    1.2 ms); its settings cost too little to measure for the extra steps to matter."""
    nprobes = 1
    while nprobes < partitions:
        yield nprobes
        nprobes = max(nprobes + 1, round(nprobes * 1.25)) if finer else nprobes * 2
    yield max(partitions, 1)


def _distances(queries: np.ndarray, matrix: np.ndarray, metric: str) -> np.ndarray:
    """(queries x rows) distances as Lance reports them: squared l2, 1 - cos, 1 - dot."""
    dots = queries @ matrix.T
    if metric == "dot":
        return 1 - dots
    if metric == "cosine":
        norms = np.linalg.norm(queries, axis=1)[:, None] * np.linalg.norm(matrix, axis=1)[None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1 - dots / norms
    return (queries * queries).sum(1)[:, None] - 2 * dots + (matrix * matrix).sum(1)[None]


def exact_neighbours(
    dataset: lance.LanceDataset, column: str, queries: np.ndarray, want: int, metric: str
) -> np.ndarray:
    """Row ids of the ``want`` nearest rows to each query, by a scan of the whole column."""
    dims = queries.shape[1]
    best_ids = np.zeros((len(queries), 0), np.uint64)
    best = np.zeros((len(queries), 0), np.float32)
    for batch in dataset.to_batches(columns=[column], with_row_id=True, batch_size=SCAN_ROWS):
        matrix, valid = vectors_of(batch.column(column), dims)
        distances = _distances(queries, matrix, metric).astype(np.float32)
        distances[:, ~valid] = np.inf
        ids = batch.column("_rowid").to_numpy()
        merged = np.concatenate([best, distances], axis=1)
        merged_ids = np.concatenate([best_ids, np.broadcast_to(ids, distances.shape)], axis=1)
        keep = np.argsort(merged, axis=1, kind="stable")[:, :want]
        best = np.take_along_axis(merged, keep, axis=1)
        best_ids = np.take_along_axis(merged_ids, keep, axis=1)
    return best_ids


def _without(ids: np.ndarray, own: int, k: int) -> set[int]:
    """The first k of ``ids`` other than the query's own row."""
    return {int(i) for i in [i for i in ids.tolist() if i != own][:k]}


def _measure(
    dataset: lance.LanceDataset,
    column: str,
    queries: np.ndarray,
    own: np.ndarray,
    truth: list[set[int]],
    k: int,
    metric: str,
    setting: Setting,
    refined: Search | None = None,
    worth: Worth | None = None,
) -> Measured:
    nearest = {"column": column, "metric": metric, "nprobes": setting.nprobes}
    if setting.refine_factor:
        nearest["refine_factor"] = setting.refine_factor
    if setting.ef:
        nearest["ef"] = setting.ef
    recalls: list[float] = []
    seconds: list[float] = []
    prefix = max(PREFIX_MIN, round(len(queries) * PREFIX_SHARE))
    for query, own_id, expected in zip(queries, own, truth, strict=True):
        if worth is not None and len(recalls) == prefix < len(queries):
            so_far = _summary(setting, recalls, seconds)
            if not worth(so_far.latency_ms, so_far.upper):
                return dataclasses.replace(so_far, complete=False)
        # A query that is a row asks for one more, its own row, which is dropped; any other
        # asks for k, as a search does: a larger k gathers more candidates and flatters.
        wanted = k + 1 if own_id >= 0 else k
        start, cpu = time.perf_counter(), time.process_time()
        if refined is not None and (setting.refine_factor or setting.memory_scan):
            ids = refined(query, wanted, setting)
        else:
            ids = (
                dataset.to_table(
                    columns=[],
                    with_row_id=True,
                    nearest={**nearest, "k": wanted, "q": query},
                    disable_scoring_autoprojection=True,  # row ids are all it needs; Lance warns
                )
                .column("_rowid")
                .to_numpy()
            )
        # A search's cost: its wall time, or the CPU time of all the process's threads if that
        # is more, so that a search spread over Lance's threads is charged the CPU a busy
        # server pays for it. (On bench/store_search's prose, Lance's CPU time was within a
        # few % of its wall time in-process; served, its searches paid more: see cheapest().)
        seconds.append(max(time.perf_counter() - start, time.process_time() - cpu))
        got = _without(ids, int(own_id), k)
        recalls.append(len(got & expected) / max(len(expected), 1))
    return _summary(setting, recalls, seconds)


def _summary(setting: Setting, recalls: list[float], seconds: list[float]) -> Measured:
    values = np.asarray(recalls)
    spread = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    mean = float(values.mean())
    # The median: a query slowed by other work on the machine does not move it.
    latency_ms = float(np.median(seconds)) * 1000
    return Measured(setting, mean, max(0.0, mean - Z * spread), mean + Z * spread, latency_ms)


def _within_noise(latency_ms: float, measured: list[Measured], level: float) -> bool:
    """Whether a latency is within NOISE of the fastest setting measured whose recall bound
    reaches ``level`` (True when none does): too close to call, or faster."""
    fastest = min((m.latency_ms for m in measured if m.lower >= level), default=math.inf)
    return latency_ms <= fastest * (1 + NOISE)


class ServedQueries:
    """A uniform sample of the query vectors each vector column was searched with since the
    store started: a reservoir of ``size`` per (table, column) (Vitter's algorithm R), so that
    calibration can measure recall on the queries users send rather than on stand-ins made
    from the table's rows.

    Kept in memory only: query vectors can reveal what users asked, and the sample refills
    from traffic after a restart. Recording a search costs one vector copy at most.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], np.ndarray] = {}
        self._seen: dict[tuple[str, str], int] = {}

    def record(self, table: str, column: str, vector: np.ndarray) -> None:
        """Keep ``vector`` (checked finite where the request was parsed) with the sample's
        probability; a query of several vectors (MaxSim) is not calibrated, so not kept."""
        if not self.size or vector.ndim != 1:
            return
        key = (table, column)
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.shape[1] != len(vector):  # a new column of that name
                kept = self._kept[key] = np.empty((self.size, len(vector)), np.float32)
                self._seen[key] = 0
            seen = self._seen[key]
            slot = seen if seen < self.size else int(self._rng.integers(0, seen + 1))
            if slot < self.size:
                kept[slot] = vector
            self._seen[key] = seen + 1

    def sample(self, table: str, column: str) -> np.ndarray | None:
        """A copy of the kept queries once the sample is :meth:`full`, else None."""
        with self._lock:
            if not self._full(table, column):
                return None
            return self._kept[(table, column)].copy()

    def full(self, table: str, column: str) -> bool:
        """Whether ``size`` queries of this column have been served (and ``size`` > 0)."""
        with self._lock:
            return self._full(table, column)

    def _full(self, table: str, column: str) -> bool:
        return bool(self.size) and self._seen.get((table, column), 0) >= self.size

    def forget(self, table: str) -> None:
        with self._lock:
            for key in [key for key in self._kept if key[0] == table]:
                del self._kept[key], self._seen[key]


def cheapest(measured: list[Measured], level: float) -> Measured | None:
    """The fastest setting whose recall bound reaches ``level``. Settings within NOISE of the
    fastest count as tied. Among them a scan from memory wins, then the one delivering the
    least recall above the level: it does the least work (fewer partitions, a smaller refine),
    which timings too close to call on a busy machine or a small table cannot tell.

    Why the scan first: calibration times a search in the calling thread, but a served one
    pays more for Lance's than for the scan, whose work stays in that thread. Measured over
    gRPC on bench/store_search's prose (AMD EPYC, 2 cores): the same store served its
    scan levels in 3.2-3.4 ms more than their calibrated cost, its Lance levels in 3.9-4.3 ms
    more. IVF_RQ at 0.95 there served 243 queries/s in the run where the scan was picked, 136
    and 193 in the two where Lance's setting was, its calibrated cost within 15% of the scan's."""
    reaching = [m for m in measured if m.lower >= level]
    tied = [m for m in reaching if _within_noise(m.latency_ms, reaching, level)]
    return min(
        tied, key=lambda m: (not m.setting.memory_scan, m.recall, m.latency_ms), default=None
    )


def sample(
    dataset: lance.LanceDataset, column: str, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, their row ids): ``size`` of the table's non-null rows, drawn with a
    fixed seed so that calibrating the same table twice asks the same questions."""
    rows = dataset.count_rows()
    picked = np.sort(np.random.default_rng(seed).choice(rows, min(size, rows), replace=False))
    table = dataset.take(picked.tolist(), columns=[column, "_rowid"])
    dims = dataset.schema.field(column).type.list_size
    matrix, valid = vectors_of(table.column(column), dims)
    ok = valid & np.isfinite(matrix).all(axis=1) & (np.abs(matrix).sum(axis=1) > 0)
    return matrix[ok], table.column("_rowid").to_numpy()[ok]


def blends(rows: np.ndarray, metric: str, seed: int = 1) -> np.ndarray:
    """A query between two sampled rows for each row: ``w * a + (1 - w) * b`` with ``w`` drawn
    from [0.3, 0.7], scaled to the pair's mean norm under cosine and dot (whose rows are
    usually unit vectors), so that it lies where new queries do, among clusters. No row of the
    table is such a query's own."""
    if len(rows) < 2:
        return rows[:0]
    rng = np.random.default_rng(seed)
    partner = (np.arange(len(rows)) + rng.integers(1, len(rows), len(rows))) % len(rows)
    weight = rng.uniform(0.3, 0.7, (len(rows), 1)).astype(rows.dtype)
    mixed = weight * rows + (1 - weight) * rows[partner]
    if metric in ("cosine", "dot"):
        norms = (np.linalg.norm(rows, axis=1) + np.linalg.norm(rows[partner], axis=1)) / 2
        mixed *= (norms / np.maximum(np.linalg.norm(mixed, axis=1), 1e-12))[:, None]
    return mixed.astype(rows.dtype)


def calibrate(
    dataset: lance.LanceDataset,
    column: str,
    index_type: str,
    partitions: int,
    metric: str,
    *,
    k: int,
    sample_size: int,
    levels: list[float],
    served: np.ndarray | None = None,
    stop: threading.Event | None = None,
    refined: Search | None = None,
    scan_partitions: int = 0,
) -> IndexCalibration:
    """Measure recall@k of the index on ``column`` for a grid of settings and keep, per level,
    the :func:`cheapest` whose recall's lower confidence bound reaches the level.

    The queries are ``served`` ones where given (:class:`ServedQueries`): the distribution
    searches really come from. Otherwise ``sample_size`` of the table's own vectors, each
    query's own row left out of both the exact and the indexed results, so that it scores as
    a new vector would, and as many blends of two of them (:func:`blends`). A table's own
    rows alone flatter an index where rows come in near-copies: a row's siblings share its
    partition, so one probe finds them, while real queries fall between clusters (measured:
    0.49-0.70 recall at a "0.95" setting on bench/store_search's ``copies`` data with own rows
    only, 0.77-0.89 with the blends, 0.95 and above with served queries).
    Probing more partitions stops at the highest level or once recall stops rising. ``stop``
    set (the store is shutting down) abandons it with Unavailable between two settings.
    ``refined`` runs the settings with a refine step the way the store serves them (from its
    in-memory matrix), so that their latencies, which pick the cheapest, are the served ones;
    without it Lance runs them. ``scan_partitions`` (which needs ``refined``) measures first
    the settings that scan that many of the store's own partitions from memory
    (:mod:`store_service.partitions`): usually the cheapest, so the pruning of Lance's settings
    starts from them.
    """
    if served is not None and len(served):
        queries, own = served, np.full(len(served), -1, np.int64)
    else:
        queries, own = _stand_ins(dataset, column, sample_size, metric)
    if len(queries) == 0:
        return IndexCalibration(k, 0, dataset.count_rows(), dataset.version, time.time())
    exact = exact_neighbours(dataset, column, queries, k + 1, metric)
    truth = [_without(ids, int(own_id), k) for ids, own_id in zip(exact, own, strict=True)]
    measured: list[Measured] = []  # settings measured on every query
    best_lower = 0.0  # the highest recall bound of any setting, measured on all queries or not
    top = max(levels)

    def worth(latency_ms: float, upper: float) -> bool:
        """Whether a setting may be the cheapest for some level it may reach. Only those are
        measured on every query: most of a sweep's settings are slower ones."""
        return any(upper >= lv and _within_noise(latency_ms, measured, lv) for lv in levels)

    # The fewest partitions any setting so far needed to reach the top level: probing more
    # than that with a costlier refine or ef cannot be cheaper.
    # Scans from memory leave it as it is: their cost per partition is not Lance's.
    enough, reached = partitions, False
    sweeps = [(0, 0, True)] if scan_partitions and refined is not None else []
    sweeps += [(refine_factor, ef, False) for refine_factor, ef in secondaries(index_type)]
    for refine_factor, ef, scanned in sweeps:
        swept: list[tuple[int, float]] = []  # (nprobes, mean recall) of this sweep so far
        if ef and ef < (k + 1) * max(refine_factor, 1):
            continue  # Lance's HNSW needs ef >= the candidates asked for
        probes = _probes(scan_partitions, True) if scanned else _probes(partitions)
        for nprobes in (p for p in probes if scanned or p <= enough):
            if stop is not None and stop.is_set():
                raise Unavailable("the store is stopping; the calibration was abandoned")
            found = _measure(
                dataset,
                column,
                queries,
                own,
                truth,
                k,
                metric,
                Setting(nprobes, refine_factor, ef, scanned),
                refined,
                worth,
            )
            best_lower = max(best_lower, found.lower)
            if not found.complete:
                if not any(_within_noise(found.latency_ms, measured, lv) for lv in levels):
                    break  # slower than a setting reaching every level; more probes are slower
            else:
                measured.append(found)
                if found.lower >= top:
                    if not scanned:
                        enough, reached = min(enough, nprobes), True
                    break
            # Recall gained since half as many probes (the last step, when they double).
            half = max((r for p, r in swept if 2 * p <= nprobes), default=-1.0)
            if nprobes >= 8 and found.recall - half < PLATEAU:
                break
            swept.append((nprobes, found.recall))
        if reached and enough == 1:
            break  # one probe reached the top level: a costlier setting cannot be cheaper
    chosen = []
    for level in sorted(levels):
        best = cheapest(measured, level)
        if best is not None:
            chosen.append(
                RecallLevel(
                    recall=level,
                    nprobes=best.setting.nprobes,
                    refine_factor=best.setting.refine_factor,
                    ef=best.setting.ef,
                    memory_scan=best.setting.memory_scan,
                    measured_recall=round(best.recall, 4),
                    latency_ms=round(best.latency_ms, 3),
                )
            )
    return IndexCalibration(
        k=k,
        sample_queries=len(queries),
        num_rows=dataset.count_rows(),
        version=dataset.version,
        calibrated_at=time.time(),
        levels=chosen,
        max_recall=round(best_lower, 4),
        served_queries=len(served) if served is not None else 0,
        partitions=partitions,
        scan_partitions=scan_partitions if any(lv.memory_scan for lv in chosen) else 0,
    )


def _stand_ins(
    dataset: lance.LanceDataset, column: str, size: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, each one's own row id or -1): ``size`` of the table's rows and as many
    blends of two of them, in turn, so that the first queries a setting is measured on
    (:data:`PREFIX_SHARE`) are of both kinds."""
    rows, row_ids = sample(dataset, column, size)
    mixed = blends(rows, metric)
    if len(mixed) != len(rows):  # fewer than two rows: nothing to blend
        return rows, row_ids.astype(np.int64)
    queries = np.stack([rows, mixed], axis=1).reshape(-1, rows.shape[1])
    own = np.stack([row_ids.astype(np.int64), np.full(len(rows), -1, np.int64)], axis=1)
    return queries, own.ravel()
