"""Local state store for the detector, one per input partition: RocksDB (rocksdict) against LMDB (lmdb).

    python bench/store_choice.py [--keys N] [--rounds R] [--stores NAMES] [--json FILE]

Each store runs in its own child process (so its RSS is its own), in a fresh
temporary directory, on N accounts (keys b"ACCOUNT=ACC0000042", values
100-300 byte serialized aggregates, JSON-like so that compression sees real
data):

  1. load     N keys in write batches of --batch (10,000), in a shuffled key
              order, as a restore from a compacted changelog does;
  2. workload --rounds rounds of: --ops random gets of existing keys with a
              Zipf-like skew (s = 1: rank = floor(N ** U), scattered over the
              key space), then --ops puts of those keys and one metadata key
              (the changelog offset) in one atomic write;
  3. reopen   close, then open the store and read the metadata key back: the
              cost of a restart that keeps its local store;
  4. memory   RSS after the load and after the workload (psutil; "anon" is
              RSS less file-backed pages, i.e. heap, not page cache), the
              process's peak RSS, and the size on disk (allocated blocks);
  5. scan     every key and value in key order, as an expiry sweep reads them.

Stores (production settings; the changelog topic is the source of truth, so
no fsync per write):

  rocksdb       rocksdict, raw mode, the quix-streams defaults (64 MB write
                buffers x 3, 64 MB target files, LZ4, 128 MB LRU block
                cache) plus a 10 bit/key bloom filter and 2 background jobs;
                WAL on, sync off; WriteBatch per batch/round; the scan skips
                the block cache (fill_cache off)
  lmdb          lmdb, sync off, metasync off, writemap (+ map_async): the
                fastest writes; an OS crash (not a process crash) can
                corrupt the file, to be rebuilt from the changelog
  lmdb-durable  lmdb, sync on, metasync off, no writemap: an OS crash loses
                at most the last transaction, like RocksDB's WAL without sync
                loses its tail; one fsync per write transaction

LMDB: map_size max(1 GiB, 4 KiB per key), one read transaction for the gets
of a round and one write transaction (cursor.putmulti) for its puts; gets
copy values to bytes (buffers off), as RocksDB's do. Times are wall clock
around the store calls only (the Python loop that issues them included).
Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

STORES = ("rocksdb", "lmdb", "lmdb-durable")
META_KEY = b"__meta__/changelog_offset"
VALUE_POOL = 65_536
"""Distinct values; far more than a data block holds, so reuse does not flatter compression."""
MB = 1024 * 1024
LOAD_ORDER_STRIDE = 1_000_003
ZIPF_STRIDE = 2_654_435_761


def account_key(i: int) -> bytes:
    return b"ACCOUNT=ACC%07d" % i


def coprime_stride(stride: int, n: int) -> int:
    """A multiplier that maps 0..n-1 onto itself one to one (i * stride % n)."""
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def value_pool(rng: random.Random, count: int = VALUE_POOL) -> list[bytes]:
    """Serialized per-account aggregates of 100-300 bytes."""
    countries = ("DE", "FR", "NL", "ES", "IT", "PL", "GB", "US", "BR", "IN", "NG", "RU")
    values: list[bytes] = []
    while len(values) < count:
        amounts = [rng.randint(100, 500_000) for _ in range(rng.randint(1, 16))]
        first = rng.randint(1_600_000_000_000, 1_700_000_000_000)
        aggregate = {
            "n": rng.randint(1, 5_000),
            "sum": sum(amounts),
            "max": max(amounts),
            "first_ts": first,
            "last_ts": first + rng.randint(0, 90 * 86_400_000),
            "countries": rng.sample(countries, rng.randint(1, 4)),
            "devices": rng.randint(1, 6),
            "recent": amounts,
        }
        encoded = json.dumps(aggregate, separators=(",", ":")).encode()
        if 100 <= len(encoded) <= 300:
            values.append(encoded)
    return values


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under path."""
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def memory() -> dict[str, float]:
    info = psutil.Process().memory_info()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_mb": info.rss / MB, "anon_mb": (info.rss - info.shared) / MB, "peak_rss_mb": peak_kb / 1024}


# ---------------------------------------------------------------- the stores


class Store(ABC):
    """One store, open on one directory; each method times its store calls only."""

    def __init__(self, path: Path, keys: int) -> None:
        self.path = path
        self.keys = keys

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> float:
        """Writes pairs atomically; returns the seconds it took."""

    @abstractmethod
    def get_all(self, keys: list[bytes]) -> tuple[float, int]:
        """Gets each key; returns (seconds, misses)."""

    @abstractmethod
    def read_meta(self) -> bytes | None: ...

    @abstractmethod
    def scan(self) -> int:
        """Reads every key and value in key order; returns how many."""

    def settings(self) -> dict[str, Any]:
        return {}


class RocksStore(Store):
    def __init__(self, path: Path, keys: int) -> None:
        super().__init__(path, keys)
        import rocksdict

        self.rocksdict = rocksdict
        self.db: rocksdict.Rdict | None = None
        self.write_opt = rocksdict.WriteOptions()
        self.write_opt.sync = False

    def options(self) -> Any:
        rd = self.rocksdict
        opts = rd.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(64 * MB)
        opts.set_max_write_buffer_number(3)
        opts.set_target_file_size_base(64 * MB)
        opts.set_compression_type(rd.DBCompressionType.lz4())
        opts.set_max_background_jobs(2)
        table = rd.BlockBasedOptions()
        table.set_block_cache(rd.Cache(128 * MB))
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        return opts

    def settings(self) -> dict[str, Any]:
        return {
            "write_buffer_mb": 64, "max_write_buffer_number": 3, "target_file_mb": 64, "compression": "lz4",
            "block_cache_mb": 128, "bloom_bits_per_key": 10, "cache_index_and_filter_blocks": True,
            "max_background_jobs": 2, "wal": True, "sync": False,
        }

    def open(self) -> None:
        self.db = self.rocksdict.Rdict(str(self.path), self.options())
        self.db.set_write_options(self.write_opt)

    def close(self) -> None:
        assert self.db is not None
        self.db.close()
        self.db = None

    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> float:
        db = self.db
        assert db is not None
        start = time.perf_counter()
        batch = self.rocksdict.WriteBatch(raw_mode=True)
        put = batch.put
        for key, value in pairs:
            put(key, value)
        db.write(batch, self.write_opt)
        return time.perf_counter() - start

    def get_all(self, keys: list[bytes]) -> tuple[float, int]:
        assert self.db is not None
        get = self.db.get
        misses = 0
        start = time.perf_counter()
        for key in keys:
            if get(key) is None:
                misses += 1
        return time.perf_counter() - start, misses

    def read_meta(self) -> bytes | None:
        assert self.db is not None
        value = self.db.get(META_KEY)
        return value if isinstance(value, bytes) else None

    def scan(self) -> int:
        assert self.db is not None
        read_opt = self.rocksdict.ReadOptions()
        read_opt.fill_cache(False)  # type: ignore[call-arg]  # the stub lacks the argument
        read_opt.set_readahead_size(2 * MB)
        count = 0
        for _key, _value in self.db.items(read_opt=read_opt):
            count += 1
        return count


class LmdbStore(Store):
    def __init__(self, path: Path, keys: int, durable: bool) -> None:
        super().__init__(path, keys)
        import lmdb

        self.lmdb = lmdb
        self.durable = durable
        self.map_size = max(1 << 30, keys * 4096)
        self.env: lmdb.Environment | None = None

    def flags(self) -> dict[str, bool]:
        if self.durable:
            return {"sync": True, "metasync": False, "writemap": False, "map_async": False}
        return {"sync": False, "metasync": False, "writemap": True, "map_async": True}

    def settings(self) -> dict[str, Any]:
        return {"map_size_mb": self.map_size // MB, **self.flags(), "lib_version": ".".join(map(str, self.lmdb.version()))}

    def open(self) -> None:
        self.env = self.lmdb.open(str(self.path), map_size=self.map_size, max_dbs=0, **self.flags())

    def close(self) -> None:
        assert self.env is not None
        self.env.close()
        self.env = None

    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> float:
        assert self.env is not None
        start = time.perf_counter()
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(pairs)
        return time.perf_counter() - start

    def get_all(self, keys: list[bytes]) -> tuple[float, int]:
        assert self.env is not None
        misses = 0
        start = time.perf_counter()
        with self.env.begin(buffers=False) as txn:
            get = txn.get
            for key in keys:
                if get(key) is None:
                    misses += 1
        return time.perf_counter() - start, misses

    def read_meta(self) -> bytes | None:
        assert self.env is not None
        with self.env.begin() as txn:
            return txn.get(META_KEY)

    def scan(self) -> int:
        assert self.env is not None
        count = 0
        with self.env.begin(buffers=False) as txn:
            for _key, _value in txn.cursor().iternext():
                count += 1
        return count


def make_store(name: str, path: Path, keys: int) -> Store:
    if name == "rocksdb":
        return RocksStore(path, keys)
    if name in ("lmdb", "lmdb-durable"):
        return LmdbStore(path, keys, durable=name == "lmdb-durable")
    raise ValueError(f"unknown store {name!r}")


# ---------------------------------------------------------------- one store, in a child process


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_store(name: str, path: Path, keys: int, batch: int, rounds: int, ops: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    pool = value_pool(rng)
    path.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"store": name, "keys": keys, "memory_before_open": memory()}
    store = make_store(name, path, keys)
    result["settings"] = store.settings()
    store.open()

    # 1. load, in a shuffled order (i * stride mod N), each batch built before its clock starts
    stride = coprime_stride(LOAD_ORDER_STRIDE, keys)
    load_s = 0.0
    for first in range(0, keys, batch):
        pairs = [(account_key(i * stride % keys), pool[(i * 7919) % VALUE_POOL]) for i in range(first, min(first + batch, keys))]
        load_s += store.write_batch(pairs)
    result["load"] = {"seconds": load_s, "keys_per_s": keys / load_s, "batch": batch}
    result["memory_after_load"] = memory()
    result["disk_after_load_mb"] = disk_usage(path)[0] / MB

    # 2. the detector's rounds: Zipf-like gets, then the same keys and the offset in one atomic write
    zipf_stride = coprime_stride(ZIPF_STRIDE, keys)
    get_us: list[float] = []
    put_us: list[float] = []
    misses = 0
    offset = 0
    distinct: list[int] = []
    for _ in range(rounds):
        round_keys = [account_key((int(keys ** rng.random()) - 1) * zipf_stride % keys) for _ in range(ops)]
        distinct.append(len(set(round_keys)))
        pairs = [(key, pool[rng.randrange(VALUE_POOL)]) for key in round_keys]
        offset += ops
        pairs.append((META_KEY, b"%d" % offset))
        seconds, missed = store.get_all(round_keys)
        misses += missed
        get_us.append(seconds / ops * 1e6)
        put_us.append(store.write_batch(pairs) / ops * 1e6)
    if misses:
        raise RuntimeError(f"{name}: {misses} gets of existing keys found nothing")
    result["workload"] = {
        "rounds": rounds, "ops_per_round": ops, "distinct_keys_per_round_mean": statistics.fmean(distinct),
        "get_us_mean": statistics.fmean(get_us), "get_us_p50": statistics.median(get_us), "get_us_p99": percentile(get_us, 0.99),
        "put_us_mean": statistics.fmean(put_us), "put_us_p50": statistics.median(put_us), "put_us_p99": percentile(put_us, 0.99),
        "round_ms_mean": statistics.fmean(g + p for g, p in zip(get_us, put_us, strict=True)) * ops / 1000,
    }
    result["memory_after_workload"] = memory()

    # 3. close, reopen, read the offset back
    start = time.perf_counter()
    store.close()
    close_s = time.perf_counter() - start
    allocated, apparent = disk_usage(path)
    result["disk"] = {"allocated_mb": allocated / MB, "apparent_mb": apparent / MB}
    start = time.perf_counter()
    store.open()
    meta = store.read_meta()
    reopen_s = time.perf_counter() - start
    if meta != b"%d" % offset:
        raise RuntimeError(f"{name}: metadata key read back as {meta!r}, not {offset}")
    result["reopen"] = {"close_s": close_s, "open_and_read_meta_s": reopen_s}

    # 5. full scan
    start = time.perf_counter()
    count = store.scan()
    scan_s = time.perf_counter() - start
    if count != keys + 1:
        raise RuntimeError(f"{name}: the scan read {count} keys, not {keys + 1}")
    result["scan"] = {"seconds": scan_s, "keys_per_s": count / scan_s}
    result["memory_end"] = memory()
    store.close()
    return result


# ---------------------------------------------------------------- the parent


def run_child(name: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--path", str(path), "--keys", str(args.keys),
               "--batch", str(args.batch), "--rounds", str(args.rounds), "--ops", str(args.ops), "--seed", str(args.seed)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"store_choice: the {name} child failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


ROWS: list[tuple[str, str, str]] = [
    ("load s", "load.seconds", "{:.1f}"),
    ("load keys/s", "load.keys_per_s", "{:,.0f}"),
    ("get µs (mean)", "workload.get_us_mean", "{:.2f}"),
    ("get µs (p99 round)", "workload.get_us_p99", "{:.2f}"),
    ("put µs (mean)", "workload.put_us_mean", "{:.2f}"),
    ("put µs (p99 round)", "workload.put_us_p99", "{:.2f}"),
    ("close s", "reopen.close_s", "{:.3f}"),
    ("open + read meta s", "reopen.open_and_read_meta_s", "{:.3f}"),
    ("RSS before open MB", "memory_before_open.rss_mb", "{:.0f}"),
    ("RSS after load MB", "memory_after_load.rss_mb", "{:.0f}"),
    ("  of which anon MB", "memory_after_load.anon_mb", "{:.0f}"),
    ("RSS after workload MB", "memory_after_workload.rss_mb", "{:.0f}"),
    ("  of which anon MB", "memory_after_workload.anon_mb", "{:.0f}"),
    ("peak RSS MB", "memory_after_workload.peak_rss_mb", "{:.0f}"),
    ("disk MB (allocated)", "disk.allocated_mb", "{:.0f}"),
    ("scan keys/s", "scan.keys_per_s", "{:,.0f}"),
]


def lookup(result: dict[str, Any], dotted: str) -> Any:
    value: Any = result
    for part in dotted.split("."):
        value = value[part]
    return value


def table(results: list[dict[str, Any]]) -> str:
    header = ["", *(r["store"] for r in results)]
    rows = [[label, *(fmt.format(lookup(r, dotted)) for r in results)] for label, dotted, fmt in ROWS]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)) + " |"
             for row in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "memory_mb": psutil.virtual_memory().total / MB, "rocksdict": version("rocksdict"), "lmdb": version("lmdb"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/store_choice.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="accounts in the store (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=10_000, help="keys per write batch in the load (default 10,000)")
    parser.add_argument("--rounds", type=int, default=200, help="workload rounds (default 200)")
    parser.add_argument("--ops", type=int, default=2_000, help="gets and puts per round (default 2,000)")
    parser.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, from {', '.join(STORES)} (default all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dir", help="parent of the temporary directory (default: the system's temporary directory)")
    parser.add_argument("--json", metavar="FILE", help="write the results there as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("keys", "batch", "rounds", "ops"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(args.store_list) - set(STORES)
    if unknown or not args.store_list:
        parser.error(f"--stores: choose from {', '.join(STORES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_store(args.child, Path(args.path), args.keys, args.batch, args.rounds, args.ops, args.seed)))
        return 0
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="store_choice-", dir=args.dir) as tmp:
        for name in args.store_list:
            print(f"{name}: {args.keys:,} keys ...", file=sys.stderr, flush=True)
            path = Path(tmp) / name
            results.append(run_child(name, path, args))
            shutil.rmtree(path, ignore_errors=True)
    print(f"\n{args.keys:,} keys, load batches of {args.batch:,}, {args.rounds} rounds of {args.ops:,} gets + {args.ops:,} puts, "
          f"{os.cpu_count()} CPUs\n")
    print(table(results))
    if args.json:
        report = {"environment": environment(), "arguments": {k: getattr(args, k) for k in ("keys", "batch", "rounds", "ops", "seed")},
                  "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
