"""Per-sample seeds that depend only on what a sample *is*, never on how the run was scheduled."""

from __future__ import annotations

import hashlib

# int64-safe, so seeds fit a Parquet int64 column and torch.Generator.manual_seed.
_SEED_MASK = (1 << 63) - 1


def derive_seed(run_seed: int, source_id: str, target_label: int, variant: int) -> int:
    """Stable seed for one generated sample: a blake2b hash of (run seed, source, target, variant).

    Independent of batching, partitioning, actor count and cluster size (Python's ``hash`` is
    salted per process, so it is not used).
    """
    key = f"{int(run_seed)}\x1f{source_id}\x1f{int(target_label)}\x1f{int(variant)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & _SEED_MASK
