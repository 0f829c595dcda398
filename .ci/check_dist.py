"""Check the built sdist and wheel: `python .ci/check_dist.py dist/`.

The wheel must hold every module of the package as it is in the source tree (and py.typed),
the pytest11 entry point, and nothing else: no tests, bench, examples or docs.  The version
of both files must be ``pytest_concurrent_db.__version__`` (the one place it is written).
"""

from __future__ import annotations

import ast
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_concurrent_db"


def source_version() -> str:
    tree = ast.parse((ROOT / PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise SystemExit(f"no __version__ in {PACKAGE}/__init__.py")


def source_files() -> set[str]:
    """The package's files as the wheel should have them (no caches)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }


def check_wheel(wheel: Path, version: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"{PACKAGE}-{version}.dist-info"
        metadata = archive.read(f"{dist_info}/METADATA").decode() if f"{dist_info}/METADATA" in names else ""
        entry_points = (
            archive.read(f"{dist_info}/entry_points.txt").decode() if f"{dist_info}/entry_points.txt" in names else ""
        )
    if not metadata:
        problems.append(f"{wheel.name}: no {dist_info}/METADATA (version {version} expected)")
    package = {n for n in names if not n.startswith(f"{PACKAGE}-")}
    stray = sorted(n for n in package if not n.startswith(f"{PACKAGE}/"))
    if stray:
        problems.append(f"{wheel.name}: files outside the package: {', '.join(stray)}")
    for forbidden in ("tests/", "bench/", "examples/", "docs/"):
        if any(n.startswith(forbidden) or f"/{forbidden}" in n for n in package):
            problems.append(f"{wheel.name}: holds {forbidden}")
    missing = sorted(source_files() - package)
    if missing:
        problems.append(f"{wheel.name}: missing {', '.join(missing)}")
    extra = sorted(n for n in package - source_files() if n.startswith(f"{PACKAGE}/"))
    if extra:
        problems.append(f"{wheel.name}: not in the source tree: {', '.join(extra)}")
    if f"{PACKAGE}/py.typed" not in package:
        problems.append(f"{wheel.name}: no py.typed")
    if f"concurrent_db = {PACKAGE}.plugin" not in entry_points.replace("  ", " "):
        problems.append(f"{wheel.name}: no pytest11 entry point concurrent_db = {PACKAGE}.plugin")
    for classifier in ("Framework :: Pytest", "Framework :: Django", "Typing :: Typed"):
        if f"Classifier: {classifier}" not in metadata:
            problems.append(f"{wheel.name}: no classifier {classifier!r}")
    return problems


def check_sdist(sdist: Path, version: str) -> list[str]:
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    wanted = {f"{PACKAGE}/py.typed", "README.md", "CHANGELOG.md", "pyproject.toml", "docs/conf.py"}
    missing = sorted(wanted - names)
    problems = [f"{sdist.name}: missing {', '.join(missing)}"] if missing else []
    if any(n.startswith("docs/_build/") for n in names):
        problems.append(f"{sdist.name}: holds docs/_build")
    return problems


def main(argv: list[str]) -> int:
    dist = Path(argv[1] if len(argv) > 1 else ROOT / "dist")
    version = source_version()
    wheels = sorted(dist.glob(f"{PACKAGE}-{version}-*.whl"))
    sdists = sorted(dist.glob(f"{PACKAGE.replace('_', '-')}-{version}.tar.gz")) + sorted(
        dist.glob(f"{PACKAGE}-{version}.tar.gz")
    )
    if len(wheels) != 1 or len(sdists) != 1:
        print(
            f"expected one wheel and one sdist of version {version} in {dist}, found {[p.name for p in dist.iterdir()]}"
        )
        return 1
    problems = check_wheel(wheels[0], version) + check_sdist(sdists[0], version)
    for problem in problems:
        print(problem)
    if not problems:
        print(
            f"{wheels[0].name} and {sdists[0].name}: version {version}, "
            f"{len(source_files())} package files, nothing else"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
