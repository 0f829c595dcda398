"""Incremental templates: a new template that starts as a copy of an older one and applies
only what was added since (one new migration costs one migration).

A ready template's marker keeps a *manifest* of its inputs step by step: a digest of
everything outside the populators (plugin, backend, server version, template keys), and per
populator the digest of what it is apart from its steps (its ``resume_key``; for
non-resumable populators their whole ``key``) and the digests of its steps (one per migration
file).  When no ready template matches a new fingerprint, :func:`find_base` looks for the
newest ready template of the same project whose manifest is a strict prefix of the new one:

* everything outside the populators is the same, the populators are the same ones in the
  same order, each with the same ``resume_key`` (settings, Django version, apps...);
* every step the old template applied is still there with the same content (no edited or
  removed migration): its step digests are a subset of the new ones;
* the new steps belong to resumable populators (Django ``migrate``, Alembic ``upgrade
  head``), none of which is followed by a populator that is not resumable (a seed file loaded
  after the migrations would be loaded before the new ones, unlike in a full build);
* each resumable populator with new steps agrees (``can_resume``): e.g. no old migration
  depends on a new one (that would be a reorder), no new migration replaces old ones.

Anything else, and any doubt, means a full build.  The decision is a pure function
(:func:`resumes`), unit-tested without a server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .backends import DatabaseInfo, Marker

__all__ = ["Base", "decode_manifest", "encode_manifest", "find_base", "resumes", "step_digest"]

#: characters kept of each digest in a manifest: enough to tell files apart, short enough for
#: a thousand migrations in a MySQL registry row (TEXT, 64 KiB)
DIGEST_CHARS = 16


def step_digest(label: str, content: bytes) -> str:
    """The digest of one step: its label (e.g. ``app:0002_add_price.py``) and content."""
    return hashlib.sha256(label.encode() + b"\0" + content).hexdigest()[:DIGEST_CHARS]


def short(digest: str) -> str:
    return hashlib.sha256(digest.encode()).hexdigest()[:DIGEST_CHARS]


def encode_manifest(outside: str, populators: Sequence[Any]) -> str:
    """The manifest of a template built by ``populators`` (``outside``: the digest of the
    fingerprint's other inputs)."""
    entries = [[short(p.resume_key or p.key), bool(p.resume_key), sorted(p.steps)] for p in populators]
    return json.dumps({"v": 1, "x": short(outside), "p": entries}, separators=(",", ":"))


def decode_manifest(text: str) -> dict[str, Any] | None:
    """The manifest in ``text``, or None if it is missing or not one we understand."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("p"), list):
        return None
    for entry in data["p"]:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], list)):
            return None
    return data


def resumes(old: dict[str, Any], new: dict[str, Any], populators: Sequence[Any]) -> int:
    """How many steps a template with manifest ``new`` (built by ``populators``) adds to one
    with manifest ``old`` when it can start from a copy of it; 0 when it cannot."""
    if old["x"] != new["x"] or len(old["p"]) != len(new["p"]) or len(new["p"]) != len(populators):
        return 0
    added = 0
    followed_by_fixed = False
    for (old_key, _, old_steps), (new_key, resumable, new_steps), populator in reversed(
        list(zip(old["p"], new["p"], populators))
    ):
        if old_key != new_key:
            return 0
        before, now = set(old_steps), set(new_steps)
        if not before <= now:
            return 0  # an edited or removed step
        fresh = now - before
        if fresh:
            if not resumable or followed_by_fixed:
                return 0
            check = getattr(populator, "can_resume", None)
            if check is not None and not check(frozenset(before)):
                return 0
            added += len(fresh)
        if not resumable:
            followed_by_fixed = True
    return added


@dataclass(frozen=True)
class Base:
    """The template a new one starts from, and how many steps the new one adds."""

    name: str
    marker: Marker
    added: int


def find_base(
    infos: Iterable[DatabaseInfo], name_for: Callable[[str], str], manifest: str, populators: Sequence[Any]
) -> Base | None:
    """The newest ready template among ``infos`` that a template with ``manifest`` (built by
    ``populators``) can start from; only this project's: those named ``name_for(fingerprint)``."""
    new = decode_manifest(manifest)
    if new is None:
        return None
    best: Base | None = None
    for info in infos:
        marker = info.marker
        if marker is None or marker.kind != "template" or marker.state != "ready":
            continue
        if info.name != name_for(marker.fingerprint):
            continue
        old = decode_manifest(marker.manifest)
        if old is None:
            continue
        added = resumes(old, new, populators)
        if added and (best is None or marker.created > best.marker.created):
            best = Base(info.name, marker, added)
    return best
