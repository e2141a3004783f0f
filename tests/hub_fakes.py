"""Offline stand-ins for sharing tests: a recording Hub client and a fresh-interpreter runner that cannot import
hf_synthesizer."""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub.errors import EntryNotFoundError

# The Python files a saved synthesizer checkpoint ships: the files of hf_synthesizer/modeling/ (its __init__ aside)
# but the other family's model file. Derived from the folder, so a file added there must ship (or move elsewhere).
MODELING_DIR = Path(__file__).resolve().parents[1] / "hf_synthesizer" / "modeling"
MODELING_FILES = frozenset(p.name for p in MODELING_DIR.glob("*.py") if p.name != "__init__.py")
BERT_CODE_FILES = MODELING_FILES - {"modeling_t5_synthesizer.py"}
T5_CODE_FILES = MODELING_FILES - {"modeling_bert_synthesizer.py"}

# transformers.utils.hub.hf_api() returns this cached instance: replacing it reroutes every Hub call of
# PreTrainedModel.push_to_hub (and its upload), HfApi.upload_file of the card and Trainer.push_to_hub.
HF_API_HOOK = ("transformers.utils.hub", "_hf_api")
# huggingface_hub.ModelCard.load(repo_id) downloads README.md with this function (transformers'
# create_and_tag_model_card, called by push_to_hub, loads the repository's card through it).
CARD_DOWNLOAD_HOOK = ("huggingface_hub.repocard", "hf_hub_download")


def install_fake_hub(monkeypatch) -> "FakeHfApi":
    """Route every Hub call of transformers' and hf_synthesizer's push flows to a new `FakeHfApi`."""
    fake = FakeHfApi()
    monkeypatch.setattr(sys.modules[HF_API_HOOK[0]], HF_API_HOOK[1], fake)
    monkeypatch.setattr(sys.modules[CARD_DOWNLOAD_HOOK[0]], CARD_DOWNLOAD_HOOK[1], fake.hf_hub_download)
    return fake


class FakeHfApi:
    """Records repositories and commits in memory; any Hub method it does not implement fails the test loudly."""

    def __init__(self, user="fake-user"):
        self.user = user
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []

    def create_repo(self, repo_id, *, exist_ok=False, **kwargs):
        repo_id = repo_id if "/" in repo_id else f"{self.user}/{repo_id}"
        if repo_id in self.repos and not exist_ok:
            raise AssertionError(f"{repo_id} exists")
        self.repos.setdefault(repo_id, {})
        return SimpleNamespace(repo_id=repo_id, url=f"https://hub.fake/{repo_id}")

    def create_branch(self, **kwargs):
        return None

    def _commit(self, repo_id, files: dict[str, bytes], message):
        assert repo_id in self.repos, f"commit to {repo_id} before create_repo"
        self.repos[repo_id].update(files)
        self.commits.append({"repo_id": repo_id, "files": sorted(files), "message": message})
        return SimpleNamespace(commit_url=f"https://hub.fake/{repo_id}/commit/{len(self.commits)}", oid=str(len(self.commits)))

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else source
        return self._commit(repo_id, files, commit_message)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, ignore_patterns=None, run_as_future=False,
                      **kwargs):
        assert not run_as_future, "the fake only records blocking uploads"
        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        files = {}
        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split("/")[0], p)
                                          for p in ignore):
                files[rel] = path.read_bytes()
        return self._commit(repo_id, files, commit_message)

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, commit_message=None, run_as_future=False,
                    **kwargs):
        assert not run_as_future, "the fake only records blocking uploads"
        source = path_or_fileobj
        data = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else source
        return self._commit(repo_id, {path_in_repo: data}, commit_message)

    def hf_hub_download(self, repo_id, filename, **kwargs):
        if filename not in self.repos.get(repo_id, {}):
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        path = Path(tempfile.mkdtemp()) / filename
        path.write_bytes(self.repos[repo_id][filename])
        return str(path)

    def download_repo(self, repo_id, dest) -> Path:
        dest = Path(dest)
        for name, data in self.repos[repo_id].items():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(data)
        return dest

    def __getattr__(self, name):
        raise AssertionError(f"unexpected Hub call HfApi.{name} in an offline test")


# Prepended to every script run by `run_without_package`: hf_synthesizer cannot be imported, however it is
# installed (source tree on sys.path, editable install, wheel).
_BLOCK = '''
import importlib.abc, sys
class _NoSynthesizer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_synthesizer" or name.startswith("hf_synthesizer."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _NoSynthesizer())
try:
    import hf_synthesizer
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("hf_synthesizer is importable: the test would prove nothing")
'''


def run_without_package(script: str, workdir: Path, timeout=300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter whose cwd is `workdir` and that cannot import hf_synthesizer. Remote code
    is cached in `workdir/modules`. stdin is closed, so transformers cannot prompt for trust_remote_code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"), TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false")
    path = workdir / "script.py"
    path.write_text(_BLOCK + textwrap.dedent(script))
    result = subprocess.run([sys.executable, str(path)], cwd=workdir, env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=timeout)
    return result


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def copy_tree(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)
