"""The two passes over the files, in this process or in forked workers.

`index_shards`: each file is read, parsed and indexed, and only its `_skeleton` is kept
(workers send skeletons back: a tenth of a syntax tree's size, quick to unpickle).

`run_shards`: the whole-program index (`Program`, built from the skeletons) exists
before this pass starts. Each file is read and parsed again, walked by the `Visitor` (per-file
findings and the file's web facts), and its syntax tree dropped, so memory holds one
tree at a time per process. The per-file rules depend only on the file and the index,
never on what other files' walks found, so the files can be split into shards walked
in parallel: consecutive shards, merged in order, give exactly the result of one walk.

Workers are forked (``multiprocessing`` "fork" context, Linux) after the index is built,
so they share it without pickling it; each returns its findings, the few source lines
the findings' fingerprints need, the file's suppression comments, and its `WebFacts`.
Where fork is not available, or the tree is small, the pass runs in this process.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.pool
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from buttress.audit._cache import ResultCache
from buttress.audit._config import AuditConfig
from buttress.audit._context import FileContext
from buttress.audit._index import ModuleIndex, Program
from buttress.audit._skeleton import skeleton
from buttress.audit._suppress import Suppression, suppressions
from buttress.audit._visitor import Visitor
from buttress.audit._walk import SourceFile, parse, read
from buttress.audit._web import WebFacts
from buttress.report import Finding, Skipped

__all__ = [
    "FileResult",
    "ShardResult",
    "Shared",
    "collapsed",
    "default_jobs",
    "run_shards",
    "walk_shard",
]

#: Below this many files, forking costs more than it saves.
MIN_PARALLEL_FILES = 48
#: Shards per worker: more shards smooth out uneven files and move the progress bar.
_SHARDS_PER_JOB = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Shared:
    """What every worker reads: the index, the options, the cache, the dependency hashes."""

    program: Program
    config: AuditConfig
    cache: ResultCache | None
    deps: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileResult:
    """One walked file."""

    rel: str
    findings: list[Finding]  # the per-file rules' findings (before suppressions)
    replayed: bool  # the findings came from the cache
    marks: list[Suppression]
    line_text: dict[int, str]  # line -> its text, whitespace collapsed (for fingerprints)


@dataclass(slots=True, kw_only=True)
class ShardResult:
    """The walk of consecutive files."""

    files: list[FileResult] = field(default_factory=list)
    web: WebFacts = field(default_factory=WebFacts)


_SHARED: Shared | None = None  # set in the parent before forking; read by the workers


def default_jobs() -> int:
    """The number of worker processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def collapsed(lines: list[str], line: int) -> str:
    """Line ``line`` (1-based) with its whitespace collapsed, or "" past the end."""
    return " ".join(lines[line - 1].split()) if 0 < line <= len(lines) else ""


def _walk_file(
    shared: Shared, module: ModuleIndex, source: SourceFile, web: WebFacts
) -> FileResult:
    rel, digest = source.rel, source.digest
    dep = shared.deps.get(module.name, "")
    hit = shared.cache.findings(rel, digest, dep) if shared.cache is not None else None
    ctx = FileContext(
        program=shared.program, module=module, config=shared.config, silent=hit is not None
    )
    Visitor(ctx, web).run()
    findings = ctx.findings if hit is None else hit
    marks = suppressions(source.text)
    lines = source.lines
    wanted = {f.location.line for f in findings} | {m.line for m in marks if not m.reason}
    return FileResult(
        rel=rel,
        findings=findings,
        replayed=hit is not None,
        marks=marks,
        line_text={n: collapsed(lines, n) for n in wanted},
    )


def walk_shard(items: list[tuple[Path, str]]) -> ShardResult:
    """Read, parse and walk the files ``items`` (path, relative path), in order."""
    shared = _SHARED
    if shared is None:  # pragma: no cover - run_shards sets it before any walk
        raise RuntimeError("walk_shard called outside run_shards")
    out = ShardResult()
    for path, rel in items:
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        source = parse(path, rel, data) if data is not None else None
        if not isinstance(source, SourceFile):  # changed since it was indexed
            out.files.append(
                FileResult(rel=rel, findings=[], replayed=False, marks=[], line_text={})
            )
            continue
        out.files.append(_walk_file(shared, ModuleIndex.build(source), source, out.web))
    return out


def index_shard(config: AuditConfig, items: list[tuple[Path, str]]) -> list[ModuleIndex | Skipped]:
    """Read, parse and index the files ``items``: their skeletons, or why they were skipped."""
    out: list[ModuleIndex | Skipped] = []
    for path, rel in items:
        data = read(path, rel, config)
        loaded = data if isinstance(data, Skipped) else parse(path, rel, data)
        out.append(loaded if isinstance(loaded, Skipped) else skeleton(ModuleIndex.build(loaded)))
    return out


_R = TypeVar("_R")


class _Pool:
    """A fork pool whose workers do not copy the parent's heap (``gc.freeze`` first).

    A forked worker shares the parent's memory until it writes to a page; the cyclic
    garbage collector writes to every object it visits, so the parent's objects are moved
    to the permanent generation while the pool runs.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    def __enter__(self) -> multiprocessing.pool.Pool:
        gc.collect()
        gc.freeze()
        self.pool = multiprocessing.get_context("fork").Pool(self.jobs)
        return self.pool

    def __exit__(self, *exc: object) -> None:
        try:
            self.pool.terminate()
            self.pool.join()
        finally:
            gc.unfreeze()


def _parallel(jobs: int, count: int) -> bool:
    return (
        jobs > 1
        and count >= MIN_PARALLEL_FILES
        and sys.platform == "linux"
        and "fork" in multiprocessing.get_all_start_methods()
    )


def index_shards(
    config: AuditConfig,
    items: list[tuple[Path, str]],
    jobs: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[list[ModuleIndex | Skipped]]:
    """The first pass over ``items`` with ``jobs`` processes, in file order (see above)."""
    yield from _map_shards(partial(index_shard, config), items, jobs, progress)


def _map_shards(
    work: Callable[[list[tuple[Path, str]]], _R],
    items: list[tuple[Path, str]],
    jobs: int,
    progress: Callable[[int], None] | None,
) -> Iterator[_R]:
    """``work`` over the shards of ``items``, in file order: here, or in ``jobs`` processes."""
    with contextlib.ExitStack() as stack:
        if _parallel(jobs, len(items)):
            shards = _shards(items, jobs * _SHARDS_PER_JOB)
            results: Iterator[_R] = stack.enter_context(_Pool(jobs)).imap(work, shards)
        else:
            shards = _shards(items, max(1, len(items) // 64))
            results = map(work, shards)
        done = 0
        for shard, result in zip(shards, results, strict=True):
            done += len(shard)
            if progress is not None:
                progress(done)
            yield result


def _shards(items: list[tuple[Path, str]], count: int) -> list[list[tuple[Path, str]]]:
    size = max(1, -(-len(items) // count))
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_shards(
    shared: Shared,
    items: list[tuple[Path, str]],
    jobs: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[ShardResult]:
    """Walk ``items`` with ``jobs`` processes; yields the shards' results in file order.

    ``progress`` is called with the number of files done so far.
    """
    global _SHARED  # the forked workers inherit it (no pickling)
    _SHARED = shared
    try:
        yield from _map_shards(walk_shard, items, jobs, progress)
    finally:
        _SHARED = None
