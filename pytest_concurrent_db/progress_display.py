"""The progress of template builds in the terminal the user watches (the xdist controller,
or the one process of a run without xdist).

Why files read by a thread, see :mod:`.progress`.  The display's thread wakes every
:data:`POLL` seconds, reads the states (the directory the workers write, or what the
process's own builds handed over) and writes:

* ``live`` (a terminal): one line rewritten in place while something builds or waits,
  replaced by the end line(s) when it is done;
* ``lines`` (not a terminal, such as a CI log): the first line, then at most one line every
  :data:`EVERY` seconds, then the end line(s);
* ``quiet`` (``-q``): the start and end lines only.

A build or wait shorter than :data:`SHOW_AFTER` seconds is not shown at all.

The thread never writes into a line pytest has begun (the test progress dots): it starts
its output on a line of its own.  Writes happen with pytest's capture suspended (the way
live logging does), and in a run without xdist only while this process builds (its
tests, and their capture, wait for the build).  Every error is swallowed; :meth:`stop`
ends the thread and writes what is left, at the end of the session.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .progress import (
    LINE_EVERY,
    PREFIX,
    SHOW_AFTER,
    BuildState,
    active,
    end_line,
    live_line,
    read_states,
    short_name,
)

__all__ = ["EVERY", "POLL", "SHOW_AFTER", "ProgressDisplay", "display_mode", "new_progress_dir"]

#: seconds between two reads of the states
POLL = 0.25
#: seconds between two lines when the output is not a terminal
EVERY = LINE_EVERY


def display_mode(setting: str, *, isatty: bool, verbosity: int) -> str | None:
    """``live``, ``lines``, ``quiet`` or None (off) for ``--concurrent-db-progress=setting``."""
    if setting == "off":
        return None
    if verbosity < 0 and setting == "auto":
        return "quiet"
    return "live" if isatty else "lines"


def new_progress_dir() -> Path:
    """A new directory for this run's progress files (removed by :meth:`ProgressDisplay.stop`)."""
    return Path(tempfile.mkdtemp(prefix="pytest-concurrent-db-progress-"))


class ProgressDisplay:
    """Writes the progress line(s) of template builds to pytest's terminal reporter.

    ``directory``: the states are read there (xdist); else :meth:`update` hands them over
    (this process builds).
    """

    def __init__(self, terminal: Any, capture: Any, mode: str, directory: Path | None = None) -> None:
        self.terminal = terminal
        self.capture = capture
        self.mode = mode
        self.directory = directory
        self._local: dict[tuple[str, str], BuildState] = {}
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._episode = False
        self._builds: dict[tuple[str, str], BuildState] = {}  # builds seen in this episode
        self._waiting_since = 0.0
        self._shown = ""  # the live line on screen (padded)
        self._text = ""  # the text it shows
        self._last_line = 0.0
        self._prefix = ""  # what pytest had on the line we broke (restored in a run without xdist)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pytest-concurrent-db progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, write the end lines still due, remove the directory."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._tick(final=True)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def update(self, state: BuildState) -> None:
        """A state of this process's own build (called in the building thread)."""
        with contextlib.suppress(Exception), self._lock:
            self._local[(state.worker, state.template)] = state
            self._tick()

    def _run(self) -> None:
        while not self._stopped.wait(POLL):
            with contextlib.suppress(Exception):
                self._tick()

    # -- what to show --------------------------------------------------------------------------
    def _states(self) -> list[BuildState]:
        if self.directory is not None:
            return read_states(self.directory)
        return list(self._local.values())

    def _tick(self, *, final: bool = False) -> None:
        with self._lock:
            states = self._states()
            now = time.time()
            going = active(states) if not final else []
            if going:
                self._going(states, going, now)
            elif self._episode:
                self._done(states, now)

    def _going(self, states: Sequence[BuildState], going: Sequence[BuildState], now: float) -> None:
        line = live_line(states, now)
        if line is None:
            return
        if not self._episode and now - min(s.since for s in going) < SHOW_AFTER:
            return  # a quick build is not worth a line
        for state in going:  # the builds whose end lines are due when nothing goes on any more
            if state.phase == "building":
                self._builds[(state.worker, state.template)] = state
        if not self._episode:
            self._episode = True
            self._waiting_since = min(s.since for s in going)
            self._last_line = now
            self._write(lambda: self._line(line) if self.mode != "live" else self._live(line))
        elif self.mode == "live" and line != self._text:
            self._write(lambda: self._live(line))
        elif self.mode == "lines" and now - self._last_line >= EVERY:
            self._last_line = now
            self._write(lambda: self._line(line))

    def _done(self, states: Sequence[BuildState], now: float) -> None:
        latest = {(s.worker, s.template): s for s in states}
        lines = []
        for key, seen in self._builds.items():
            state = latest.get(key, seen)
            if state.phase in ("built", "failed"):
                lines.append(end_line(state))
            else:
                lines.append(f"{PREFIX}building {short_name(seen.template)} on {seen.worker} ended")
        if not lines:
            lines.append(f"{PREFIX}the template is ready (waited {max(int(now - self._waiting_since), 0)} s)")
        self._episode = False
        self._builds = {}

        def write() -> None:
            if self.mode == "live" and self._shown:
                self._live(lines[0], end=True)
                rest = lines[1:]
            else:
                rest = lines
            for text in rest:
                self._line(text)
            self._restore()

        self._write(write)

    # -- writing -------------------------------------------------------------------------------
    def _write(self, action: Callable[[], None]) -> None:
        """``action`` with pytest's capture suspended; errors swallowed."""
        with contextlib.suppress(Exception):
            disabled = self.capture.global_and_fixture_disabled() if self.capture is not None else None
            with disabled if disabled is not None else contextlib.nullcontext():
                action()

    @property
    def _tw(self) -> Any:
        return self.terminal._tw

    def _current(self) -> str | None:
        """What pytest's writer has on the current line (None: it does not say)."""
        value = getattr(self._tw, "_current_line", None)
        return value if isinstance(value, str) else None

    def _ours(self) -> bool:
        """Whether the current line is the live line we wrote last."""
        return bool(self._shown) and self._current() == self._shown

    def _foreign(self) -> bool:
        """Whether pytest has begun the current line (test progress dots, a file name)."""
        current = self._current()
        if current is None:
            return bool(self._tw.width_of_current_line != 0)
        return current != "" and not self._ours()

    def _claim(self, text: str) -> None:
        """Tell pytest's writer that the current line is ``text`` (after ``\r``, it would
        count the old text too, and place its ``[ 50%]`` wrongly)."""
        with contextlib.suppress(Exception):
            if self._current() is not None:
                self._tw._current_line = text

    def _fresh_line(self) -> None:
        """Start on a line of our own (remember what pytest had begun on the current one)."""
        if self._foreign():
            if self.directory is None:  # nobody else writes now: put it back afterwards
                self._prefix = self._current() or ""
            self._tw.write("\n")
        elif self._ours():
            self._tw.write("\n")
            self._shown = ""

    def _live(self, text: str, *, end: bool = False) -> None:
        tw = self._tw
        self._text = text
        text = text[: max(tw.fullwidth - 1, 20)]
        if self._ours():
            text = text.ljust(len(self._shown))
            tw.write("\r" + text, flush=True)
            self._claim(text)
        elif self._shown and not end:
            return  # pytest wrote after our line: wait for the end rather than break its line
        else:
            self._fresh_line()
            tw.write(text, flush=True)
        if end:
            tw.write("\n", flush=True)
            self._shown = ""
        else:
            self._shown = text

    def erase(self) -> None:
        """Take the live line off the screen, before pytest writes on it (called in the main
        thread of the xdist controller, before it reports a test)."""
        if not self._episode:  # nothing shown: nothing to end or take off (and no files read per test)
            return
        with contextlib.suppress(Exception), self._lock:
            self._tick()
            if self.mode == "live" and self._ours():
                self._write(lambda: self._tw.write("\r" + " " * len(self._shown) + "\r", flush=True))
                self._claim("")
                self._shown = ""

    def _line(self, text: str) -> None:
        self._fresh_line()
        self._tw.write(text + "\n", flush=True)

    def _restore(self) -> None:
        if self._prefix:
            self._tw.write(self._prefix, flush=True)
            self._prefix = ""
