""".ci/newest_transformers.py, the check that keeps the transformers range current: against a fake newer release it
must ask for a suite run and then fail CI, either way; inside the range, excluded with a reason, or with the index out
of reach it must not."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("newest_transformers", ROOT / ".ci" / "newest_transformers.py")
newest_transformers = importlib.util.module_from_spec(spec)
sys.modules["newest_transformers"] = newest_transformers  # (dataclasses look their module up)
spec.loader.exec_module(newest_transformers)
decide, verdict = newest_transformers.decide, newest_transformers.verdict

PYPROJECT = ROOT / "pyproject.toml"
FAKE = """[project]
dependencies = [
    "torch>=2.4",
    "transformers>=5.23.0,<5.26",  # the range
]

[tool.hf_synthesizer.unsupported_transformers]
# "X.Y.Z" = "why"
"5.27.0" = "changes the attention interface; tracked in issue 99"

[tool.ruff]
line-length = 120
"""


def test_a_newer_release_outside_the_range_fails_ci_whether_the_suite_passes_or_not():
    decision = decide("5.26.0", ">=5.23.0,<5.26", {})
    assert decision.run_suite and decision.version == "5.26.0"
    assert verdict("5.26.0", 0, "1140 passed") == (
        "raise the cap: the suite passes on transformers 5.26.0; lift the transformers range in pyproject.toml to "
        "include it (and the README's supported range)")
    output = ("....F\nFAILED tests/test_t5.py::test_cache[random] - TypeError: got an unexpected keyword\n"
              "ERROR tests/test_pipelines.py::test_fill_mask - ImportError\n2 failed, 1138 passed")
    message = verdict("5.26.0", 1, output)
    assert "the suite fails on transformers 5.26.0" in message
    assert "tests/test_t5.py::test_cache[random]\n  tests/test_pipelines.py::test_fill_mask" in message
    assert "exclude 5.26.0 with a reason" in message


def test_the_command_line_fails_for_a_fake_newer_release(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text(FAKE)
    fake_index = lambda: ("5.26.0", "")  # noqa: E731
    assert newest_transformers.main(["check"], newest=fake_index, pyproject=tmp_path / "pyproject.toml") == 0
    assert capsys.readouterr().out == "test 5.26.0\n"  # .ci/run runs the suite on it ...
    (tmp_path / "log").write_text("FAILED tests/test_x.py::test_y - boom\n1 failed")
    assert newest_transformers.main(["verdict", "5.26.0", "1", str(tmp_path / "log")]) == 1  # ... and fails
    assert "tests/test_x.py::test_y" in capsys.readouterr().out


@pytest.mark.parametrize("newest, expected", [
    ("5.25.0", "the newest transformers release, 5.25.0, is in the range >=5.23.0,<5.26: the suite above ran on it"),
    ("5.27.0", "is excluded in pyproject.toml: changes the attention interface; tracked in issue 99"),
    (None, "could not reach the package index (timed out): the check of the newest transformers release is skipped"),
    # a mirror that lags behind (pip's extra indexes or find-links answering without the real index)
    ("5.18.0", "the newest transformers release the index offers, 5.18.0, is below the range >=5.23.0,<5.26"),
])
def test_no_run_inside_the_range_for_an_excluded_release_or_without_the_index(tmp_path, capsys, newest, expected):
    (tmp_path / "pyproject.toml").write_text(FAKE)
    fake_index = lambda: (newest, "timed out" if newest is None else "")  # noqa: E731
    first_run = lambda: newest or "5.24.0"  # noqa: E731  (the suite above ran on the newest release)
    assert newest_transformers.main(["check"], newest=fake_index, pyproject=tmp_path / "pyproject.toml",
                                    installed=first_run) == 0
    out = capsys.readouterr().out
    assert expected in out and not out.startswith("test ")


def test_a_newest_release_in_the_range_that_the_first_run_did_not_use_is_run_and_must_pass(tmp_path, capsys):
    # CI's machine may keep an older allowed release (pip keeps what satisfies the range): 5.25.0 then runs too
    (tmp_path / "pyproject.toml").write_text(FAKE)
    pyproject = tmp_path / "pyproject.toml"
    assert newest_transformers.main(["check"], newest=lambda: ("5.25.0", ""), pyproject=pyproject,
                                    installed=lambda: "5.24.0") == 0
    assert capsys.readouterr().out == "test 5.25.0\n"
    (tmp_path / "log").write_text("1140 passed")
    assert newest_transformers.main(["verdict", "5.25.0", "0", str(tmp_path / "log")], pyproject=pyproject) == 0
    assert "the suite passes on transformers 5.25.0, the newest release, which the range allows" in capsys.readouterr().out
    (tmp_path / "log").write_text("FAILED tests/test_x.py::test_y - boom\n1 failed")
    assert newest_transformers.main(["verdict", "5.25.0", "1", str(tmp_path / "log")], pyproject=pyproject) == 1
    out = capsys.readouterr().out
    assert "fails on transformers 5.25.0" in out and "tests/test_x.py::test_y" in out and "cap the range below" in out


def test_an_exclusion_must_give_its_reason():
    with pytest.raises(ValueError, match='write it as "X.Y.Z" = "why it is not supported"'):
        newest_transformers.exclusions(FAKE.replace("changes the attention interface; tracked in issue 99", ""))


def test_the_real_pyproject_is_read():
    text = PYPROJECT.read_text()
    specifier = newest_transformers.transformers_range(text)
    assert specifier.startswith(">=5.23.0,<")
    assert isinstance(newest_transformers.exclusions(text), dict)
    # (Not "the installed transformers is in the range": .ci/run runs this suite on the newest release when the range
    # excludes it, and that run must be able to pass, to say "raise the cap".)


def test_ci_runs_the_readme_test_command_and_the_newest_release_check():
    run = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = 'pip install torch==2.13.0 -e ".[dev]" && HF_HUB_OFFLINE=1 python -m pytest -q'
    assert command in readme and command in run
    assert "python .ci/newest_transformers.py check" in run and "newest_transformers.py verdict" in run


def test_an_exclusion_is_a_version_not_a_string():
    """`"5.26" = "why"` excludes release 5.26.0 (compared as versions); a key that is no version is refused."""
    excluded = newest_transformers.exclusions(FAKE.replace('"5.27.0" =', '"5.26" ='))
    decision = decide("5.26.0", ">=5.23.0,<5.26", excluded)
    assert not decision.run_suite and "is excluded in pyproject.toml: changes the attention" in decision.reason
    with pytest.raises(ValueError, match="'five' is not a version; write it as"):
        newest_transformers.exclusions(FAKE.replace('"5.27.0" =', '"five" ='))


def test_a_failed_install_is_named_as_such(tmp_path, capsys):
    """.ci/run's suite_on returns INSTALL_FAILED when pip cannot install the release: the verdict says the install
    failed, not "pytest exited 90", and CI fails."""
    code = newest_transformers.INSTALL_FAILED
    assert f"|| return {code}" in (ROOT / ".ci" / "run").read_text()
    (tmp_path / "log").write_text("ERROR: No matching distribution found for transformers==5.26.0\n")
    assert newest_transformers.main(["verdict", "5.26.0", str(code), str(tmp_path / "log")]) == 1
    out = capsys.readouterr().out
    assert "installing transformers 5.26.0, the newest release, failed" in out and "pytest exited" not in out
