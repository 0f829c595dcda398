"""Issue 18's scenarios (tests/faults/scenarios.py) on a private MariaDB server (one module per
server: ``--dist loadfile`` runs each on a worker of its own)."""

from tests.faults.scenarios import *  # noqa: F403  (collected here, against SERVER)

SERVER = "mysql"
