"""Names of the databases we create.

Every name we generate matches ``[a-z0-9_]+``, starts with :data:`PREFIX` and fits
the strictest limit of the backends (PostgreSQL: 63 bytes, silently truncated;
MySQL: 64 characters, rejected).  Anything that would be too long or is not
plain ASCII is shortened and given a hash suffix, so two different inputs never
produce one name.  Names are still always quoted through the driver.
"""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = [
    "MAX_NAME_LENGTH",
    "PREFIX",
    "clone_name",
    "fit",
    "fresh_name",
    "lock_key",
    "new_run_id",
    "sanitize",
    "spare_name",
    "template_name",
]

PREFIX = "cdb_"
MAX_NAME_LENGTH = 63
_BASE_MAX = 24


def _digest(text: str, length: int) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()[:length]


def sanitize(text: str, max_length: int = _BASE_MAX) -> str:
    """``text`` as a safe identifier part; a hash suffix marks any change made."""
    lowered = text.lower()
    cleaned = re.sub(r"[^a-z0-9]+", "_", lowered).strip("_") or "db"
    if cleaned == text and len(cleaned) <= max_length:
        return cleaned
    suffix = _digest(text, 6)
    return f"{cleaned[: max_length - 7].rstrip('_')}_{suffix}"


def fit(name: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Shorten ``name`` to ``max_length`` with a hash suffix of the full name."""
    if len(name) <= max_length:
        return name
    return f"{name[: max_length - 9]}_{_digest(name, 8)}"


def new_run_id() -> str:
    """A fresh id for one test run (8 lowercase hex characters)."""
    return secrets.token_hex(4)


def template_name(base: str, fingerprint: str) -> str:
    """``cdb_<base>_tpl_<fingerprint[:12]>``."""
    return fit(f"{PREFIX}{sanitize(base)}_tpl_{fingerprint[:12]}")


def clone_name(base: str, run_id: str, worker_id: str) -> str:
    """``cdb_<base>_<run>_<worker>``, e.g. ``cdb_app_1f2e3d4c_gw0``."""
    return fit(f"{PREFIX}{sanitize(base)}_{sanitize(run_id, 16)}_{sanitize(worker_id, 16)}")


def spare_name(base: str, worker_id: str) -> str:
    """``cdb_<base>_sp<token>_<worker>``: a pristine clone made for the next run's worker."""
    return fit(f"{PREFIX}{sanitize(base)}_sp{secrets.token_hex(3)}_{sanitize(worker_id, 16)}")


def fresh_name(base: str, run_id: str, worker_id: str) -> str:
    """``cdb_<base>_<run>_<worker>_f<token>``: a pool clone for one test (a fresh database)."""
    return fit(f"{clone_name(base, run_id, worker_id)}_f{secrets.token_hex(3)}")


def lock_key(name: str) -> int:
    """A signed 64-bit key for server-side advisory locks derived from ``name``."""
    raw = int.from_bytes(hashlib.blake2b(f"pytest-concurrent-db:{name}".encode(), digest_size=8).digest(), "big")
    return raw - (1 << 64) if raw >= (1 << 63) else raw
