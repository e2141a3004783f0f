"""Keep pyproject.toml's transformers range current: is the newest transformers release on the package index one the
suite must be run on before CI passes?

    python .ci/newest_transformers.py check             # prints "test X" (exit 0) or why not (exit 0, nothing to run)
    python .ci/newest_transformers.py verdict X RC LOG  # after running the suite on X: the message; exit 1, except
                                                        # for a release the range allows whose suite passed (exit 0)

`check` asks the index (`pip index versions transformers`) for the newest release. It needs no run when the index
cannot be reached (said, not failed), when the range already allows the release and the first suite run of .ci/run
tested it (a fresh install resolves the newest allowed release; a machine that already had an older allowed release
keeps it, and then the newest is run too, and must pass), or when pyproject.toml excludes it explicitly with a
reason, in `[tool.hf_synthesizer.unsupported_transformers]` (`"5.26.0" = "why"`). Otherwise .ci/run runs the suite on
it in its own virtual environment and `verdict` fails CI either way: "raise the cap: the suite passes on X", or the
tests that fail on X (then fix them, or exclude X with a reason).

`decide` and `verdict` are pure functions (tests/test_ci_newest_transformers.py runs them against a fake newer
release). Standard library and `packaging` (a dependency of transformers) only; no tomllib (Python 3.10 lacks it).
"""

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
EXCLUSIONS_TABLE = "tool.hf_synthesizer.unsupported_transformers"
INSTALL_FAILED = 90  # what .ci/run's suite_on returns when transformers X could not be installed (pytest uses 0-5)


@dataclass(frozen=True)
class Decision:
    run_suite: bool  # whether the suite must run on `version` before CI can pass
    version: str | None
    reason: str  # one line for the CI log


def transformers_range(pyproject_text: str) -> str:
    """The specifier of the `transformers` dependency (`">=5.23.0,<5.26"`), or a ValueError."""
    match = re.search(r'^\s*"transformers\s*([^"]+)"', pyproject_text, re.M)
    if match is None:
        raise ValueError("pyproject.toml has no \"transformers...\" dependency line.")
    return match.group(1).replace(" ", "")


def exclusions(pyproject_text: str) -> dict[Version, str]:
    """`{version: reason}` from the `[tool.hf_synthesizer.unsupported_transformers]` table, keyed by `Version` so that
    `"5.26"` excludes release `5.26.0`; an entry without a reason, or whose key is no version, is a ValueError (an
    exclusion must say why, and what)."""
    table = re.search(r"^\[" + re.escape(EXCLUSIONS_TABLE) + r"\]\s*$(.*?)(?=^\[|\Z)", pyproject_text, re.M | re.S)
    if table is None:
        return {}
    result = {}
    for line in table.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        entry = re.fullmatch(r'"([^"]+)"\s*=\s*"([^"]*)"', line)
        if entry is None or not entry.group(2).strip():
            raise ValueError(
                f"[{EXCLUSIONS_TABLE}] entry {line!r}: write it as \"X.Y.Z\" = \"why it is not supported\"."
            )
        try:
            version = Version(entry.group(1))
        except InvalidVersion:
            raise ValueError(f"[{EXCLUSIONS_TABLE}] entry {line!r}: {entry.group(1)!r} is not a version; write it as "
                             f"\"X.Y.Z\" = \"why it is not supported\".") from None
        result[version] = entry.group(2).strip()
    return result


def decide(
    newest: str | None, specifier: str, excluded: dict[Version, str], index_error: str = "", tested: str | None = None
) -> Decision:
    """Whether the suite must run on the newest release `newest` (None: the index could not be reached). `tested`: the
    transformers version the first suite run used (None: taken to be `newest` when the range allows it)."""
    if newest is None:
        return Decision(False, None, f"could not reach the package index ({index_error or 'no answer'}): the check "
                                     f"of the newest transformers release is skipped")
    if Version(newest) in SpecifierSet(specifier):
        if tested is not None and Version(tested) != Version(newest):
            return Decision(True, newest, f"the newest transformers release, {newest}, is in the range {specifier} "
                                          f"but the suite above ran on {tested} (installed before): running it on "
                                          f"{newest} too")
        return Decision(False, newest, f"the newest transformers release, {newest}, is in the range {specifier}: the "
                                       f"suite above ran on it")
    if below_range(newest, specifier):
        return Decision(False, newest, f"the newest transformers release the index offers, {newest}, is below the "
                                       f"range {specifier} (a mirror without the newer releases?): nothing to check")
    reason = {Version(str(k)): v for k, v in excluded.items()}.get(Version(newest))  # "5.26" == "5.26.0"
    if reason is not None:
        return Decision(False, newest, f"the newest transformers release, {newest}, is excluded in pyproject.toml: "
                                       f"{reason}")
    return Decision(True, newest, f"the newest transformers release, {newest}, is outside the range {specifier} and "
                                  f"not excluded: running the suite on it")


def below_range(version: str, specifier: str) -> bool:
    """Whether `version` is below the lower bound (`>=`/`>`/`==`/`~=`) of `specifier`: excluded by the floor, not the
    cap."""
    lower = [Version(s.version) for s in SpecifierSet(specifier) if s.operator in (">=", ">", "==", "~=")]
    return any(Version(version) < bound for bound in lower)


def failed_tests(pytest_output: str) -> list[str]:
    """Node ids of pytest's short summary (`FAILED id - message`, `ERROR id`)."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", pytest_output, re.M)


def verdict(version: str, returncode: int, pytest_output: str, in_range: bool = False) -> str:
    """The message after the suite ran on `version`, the newest release: CI fails on it unless the range allows
    `version` (`in_range`) and the suite passed. `returncode` INSTALL_FAILED: transformers `version` could not be
    installed, so no test ran."""
    if returncode == INSTALL_FAILED:
        return (f"installing transformers {version}, the newest release, failed (see pip's output above): no test ran. "
                f"Rerun CI if the index was unreachable; otherwise find what keeps it from installing (a Python or "
                f"dependency requirement), or exclude {version} with a reason in [{EXCLUSIONS_TABLE}] of pyproject.toml")
    if in_range:
        if returncode == 0:
            return f"the suite passes on transformers {version}, the newest release, which the range allows"
        failing = "\n  ".join(failed_tests(pytest_output)) or f"(no test named: pytest exited {returncode})"
        return (f"the suite fails on transformers {version}, the newest release, which the range allows; failing "
                f"tests:\n  {failing}\nFix them, or cap the range below {version} and exclude it with a reason in "
                f"[{EXCLUSIONS_TABLE}] of pyproject.toml")
    if returncode == 0:
        return (f"raise the cap: the suite passes on transformers {version}; lift the transformers range in "
                f"pyproject.toml to include it (and the README's supported range)")
    failing = failed_tests(pytest_output)
    listed = "\n  ".join(failing) if failing else f"(no test named: pytest exited {returncode}; see its output above)"
    return (f"the suite fails on transformers {version}, the newest release, which the range excludes; failing "
            f"tests:\n  {listed}\nFix them and raise the cap, or exclude {version} with a reason in "
            f"[{EXCLUSIONS_TABLE}] of pyproject.toml")


def newest_on_index(timeout: float = 120) -> tuple[str | None, str]:
    """`(newest release, "")` from `pip index versions transformers`, or `(None, why not)`."""
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "transformers"],
                                capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    match = re.search(r"^transformers \(([^)]+)\)", result.stdout, re.M)
    if result.returncode != 0 or match is None:
        return None, (result.stderr.strip().splitlines() or [f"pip exited {result.returncode}"])[-1]
    return match.group(1), ""


def installed_transformers() -> str | None:
    """The transformers version of this interpreter (the one the README's test command ran on), or None."""
    try:
        from importlib.metadata import version
        return version("transformers")
    except Exception:  # not installed: nothing known about the first run
        return None


def main(argv: list[str], newest=newest_on_index, pyproject: Path = PYPROJECT, installed=installed_transformers) -> int:
    if argv[:1] == ["check"] and len(argv) == 1:
        text = pyproject.read_text(encoding="utf-8")
        version, error = newest()
        decision = decide(version, transformers_range(text), exclusions(text), error, installed())
        print(f"test {decision.version}" if decision.run_suite else decision.reason)
        if decision.run_suite:
            print(decision.reason, file=sys.stderr)
        return 0
    if argv[:1] == ["verdict"] and len(argv) == 4:
        version, returncode, log = argv[1], int(argv[2]), Path(argv[3])
        in_range = Version(version) in SpecifierSet(transformers_range(pyproject.read_text(encoding="utf-8")))
        print(verdict(version, returncode, log.read_text(encoding="utf-8", errors="replace"), in_range))
        return 0 if in_range and returncode == 0 else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
