"""Small helpers every stage uses: one-line errors, checked CSV reads, atomic writes, chunks, process pools."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from fer_lab.errors import DataError

Item = TypeVar("Item")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when the message is empty)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `path` through a temporary file and a rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(content, bytes):
        partial.write_bytes(content)
    else:
        partial.write_text(content)
    os.replace(partial, path)


def chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    """Consecutive slices of `items` of at most `size` elements."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def start_method() -> str:
    """fork while single-threaded (works from unguarded scripts), else spawn.

    Forking a process with other threads (a Jupyter kernel, TensorFlow's pools) can copy a lock
    some thread holds and hang the child; spawn starts clean but needs an importable __main__.
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def map_in_processes(function: Callable[..., Any], batches: Sequence[Any], workers: int, *args: Any,
                     progress: str = "") -> list[Any]:
    """`function(batch, *args)` for every batch, in order, in `workers` processes started the safe way.

    With `progress`, a progress bar of that name counts finished batches.
    """
    from tqdm.auto import tqdm

    context = multiprocessing.get_context(start_method())
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = pool.map(function, batches, *[[arg] * len(batches) for arg in args])
        return list(tqdm(results, total=len(batches), desc=progress, disable=not progress))


def read_csv(csv_file: Path, **kwargs: Any) -> pd.DataFrame:
    """`pandas.read_csv` whose failures are one-line `DataError`s naming the file."""
    try:
        return pd.read_csv(csv_file, **kwargs)
    except FileNotFoundError as exc:
        raise DataError(f"{csv_file}: file not found") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{csv_file}: empty file (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{csv_file}: not a readable CSV ({one_line(exc)})") from exc


def require_columns(table: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """A `DataError` naming the missing columns of `table` (called `name` in the message)."""
    missing = [column for column in columns if column not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns)) or "none"
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (found: {found})")
