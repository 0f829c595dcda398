"""pytest-concurrent-db: every pytest-xdist worker gets its own database, cloned from a template."""

from __future__ import annotations

__version__ = "0.1.0"
