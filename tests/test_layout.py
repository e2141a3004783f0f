"""The package's layout by role (issue 16), checked on the source with `ast`:

- `hf_synthesizer/modeling/` is what a saved checkpoint ships (transformers copies it flat, beside config.json), so its
  files import only torch, transformers (with huggingface_hub, which transformers requires and its own model files
  import, e.g. `strict` for configs), the standard library and each other (`from .x import y`); the one exception is
  optional: `hub_mixin.py` looks up the installed package's public `render_model_card` inside try/except ImportError
  (transformers' own check treats such imports as optional too), so a checkpoint's copy renders the synthesizer card
  where the package is installed and runs without it;
- no module of the package imports, even inside a function, something that imports it back (a circle);
- the module paths of the flat layout before it (`hf_synthesizer.calibration`, ...) are the moved modules themselves.
"""

import ast
import importlib
import pickle
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_synthesizer

PACKAGE_DIR = Path(hf_synthesizer.__file__).parent
MODELING_DIR = PACKAGE_DIR / "modeling"
LIBRARIES = {"torch", "transformers", "huggingface_hub"}  # as ALLOWED_IMPORTS in test_sharing.py


def _imports(path: Path):
    """(level, module, names, optional) of every import statement in `path`, at any depth (functions, try blocks);
    optional: inside the body of a try whose handler catches ImportError."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            optional |= {id(n) for statement in node.body for n in ast.walk(statement)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, [], id(node) in optional
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [alias.name for alias in node.names], id(node) in optional


def _optional_package_lookup(module, names, optional) -> bool:
    """hub_mixin's optional `from hf_synthesizer import render_model_card`: a public name of the installed package,
    looked up at save time, which a checkpoint's code does without."""
    return optional and module == hf_synthesizer.__name__ and set(names) <= set(hf_synthesizer.__all__)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


@pytest.mark.parametrize("path", sorted(MODELING_DIR.glob("*.py")), ids=lambda p: p.name)
def test_modeling_files_import_only_torch_transformers_stdlib_and_siblings(path):
    siblings = {p.stem for p in MODELING_DIR.glob("*.py")} - {"__init__"}
    for level, module, names, optional in _imports(path):
        if _optional_package_lookup(module, names, optional):
            continue
        if level == 0:
            top = module.split(".")[0]
            assert top in LIBRARIES or top in sys.stdlib_module_names, (
                f"modeling/{path.name} imports {module}: a checkpoint's code may need only torch, transformers "
                f"(huggingface_hub) and the standard library (move what needs more to hf_synthesizer/conversion/)")
        else:
            assert level == 1 and module in siblings, (
                f"modeling/{path.name} imports {'.' * level}{module}: checkpoint files import each other as flat "
                f"siblings (`from .x import y`), never the rest of hf_synthesizer")


def _edges(name: str, path: Path) -> set[str]:
    """The package modules that module `name` imports (a from-import of a submodule counts as that submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for level, module, names, optional in _imports(path):
        if _optional_package_lookup(module, names, optional) and name.startswith(f"{hf_synthesizer.__name__}.modeling"):
            continue  # not a dependency of the modeling code (see above)
        if level:
            base = ".".join(package.split(".")[: len(package.split(".")) - (level - 1)])
            module = f"{base}.{module}" if module else base
        if module.split(".")[0] != hf_synthesizer.__name__:
            continue
        old = module.split(".")[1] if module.count(".") == 1 else None
        if old in hf_synthesizer.MOVED_MODULES:  # an old path: the module it names
            module = f"hf_synthesizer.{hf_synthesizer.MOVED_MODULES[old]}.{old}"
        submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        targets |= set(submodules) or {module}
    return {t for t in targets if t in MODULES} - {name}


def test_no_import_circles():
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    done, stack = set(), []

    def visit(name):
        if name in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(name):] + [name]))
        if name in done:
            return
        stack.append(name)
        for target in sorted(graph[name]):
            visit(target)
        stack.pop()
        done.add(name)

    for name in graph:
        visit(name)
    # The layers: modeling imports nothing of the package (test above); conversion never imports the command line.
    for name, targets in graph.items():
        if name.startswith("hf_synthesizer.conversion"):
            assert not any(t.startswith("hf_synthesizer.cli") for t in targets), (name, targets)


# The modules of the flat layout (before issue 16, commit e033876), written out rather than read from MOVED_MODULES so
# that dropping one fails here: their paths are in users' code, in pickles of their classes, and in the code of
# checkpoints saved before the move (whose hub_mixin.py imports `hf_synthesizer.model_card` to render the card).
FLAT_LAYOUT = (
    "attention_maps", "calibration", "card", "checkpoints", "compare", "configuration_synthesizer", "convert",
    "distillation", "hub_mixin", "info", "length_resizing", "listops", "loading", "lora", "model_card",
    "modeling_bert_synthesizer", "modeling_t5_synthesizer", "synthesizer_attention", "synthesizer_fast",
    "synthesizer_math", "synthesizer_pretrained", "trainer",
)


@pytest.mark.parametrize("old", FLAT_LAYOUT)
def test_old_module_paths_are_the_moved_modules(old):
    new = f"hf_synthesizer.{hf_synthesizer.MOVED_MODULES[old]}.{old}"
    assert (MODULES[new].parent / f"{old}.py").is_file() and not (PACKAGE_DIR / f"{old}.py").exists()
    module = importlib.import_module(f"hf_synthesizer.{old}")
    assert module is sys.modules[new] is sys.modules[f"hf_synthesizer.{old}"] is getattr(hf_synthesizer, old)
    assert module.__name__ == module.__spec__.name == new  # the import under the old name left the module as it was


def test_objects_pickled_before_the_move_unpickle_as_the_moved_classes():
    """A pickle (or `torch.save` of a whole model) names each class by its module: one written before the move says
    `hf_synthesizer.configuration_synthesizer.BertSynthesizerConfig`."""
    config = hf_synthesizer.BertSynthesizerConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=8, synthesizer_variant="random+vanilla")
    model = hf_synthesizer.BertSynthesizerModel(config).eval()
    data = pickle.dumps((config, model), protocol=2)  # protocol 2 (torch.save's) names classes as plain text
    assert b"hf_synthesizer.modeling.configuration_synthesizer\n" in data
    old_config, old_model = pickle.loads(data.replace(b"hf_synthesizer.modeling.", b"hf_synthesizer."))
    assert type(old_config) is hf_synthesizer.BertSynthesizerConfig and type(old_model) is type(model)
    assert old_config.to_dict() == config.to_dict()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(old_model(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)


def test_reloading_the_package_keeps_one_finder_for_the_old_paths():
    def finders():
        return [f for f in sys.meta_path if type(f).__module__ == "hf_synthesizer" and "Moved" in type(f).__name__]

    assert len(finders()) == 1
    importlib.reload(hf_synthesizer)
    assert len(finders()) == 1
    assert importlib.reload(importlib.import_module("hf_synthesizer.calibration")) is sys.modules[
        "hf_synthesizer.conversion.calibration"]


@pytest.mark.parametrize("module", ["hf_synthesizer", "hf_synthesizer.cli"])
def test_python_dash_m_runs_the_command(module, monkeypatch, capsys):
    """`python -m hf_synthesizer.cli` ran the command when it was cli.py, and still does."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_module(module, run_name="__main__", alter_sys=True)  # what `python -m module --help` runs
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("usage:")


def test_python_dash_m_runs_a_moved_module_by_its_old_path():
    """The docs said `python -m hf_synthesizer.model_card --render-examples` before the move (a fresh interpreter:
    runpy looks an already imported module up by the spec it was imported with)."""
    result = subprocess.run([sys.executable, "-m", "hf_synthesizer.model_card", "--help"], cwd=PACKAGE_DIR.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--render-examples" in result.stdout, result.stderr[-2000:]


def test_every_package_folder_is_in_the_wheel():
    import tomllib

    pyproject = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text(encoding="utf-8"))
    folders = {_module_name(p) for p in PACKAGE_DIR.rglob("__init__.py")}
    assert folders <= set(pyproject["tool"]["setuptools"]["packages"]), "list the new folder in pyproject.toml"


def test_every_path_into_the_package_that_the_project_names_exists():
    """Docs, examples, benchmarks, cards, tests and the package's own strings (the card of a distilled model names where
    distillation lives) name files of hf_synthesizer/ by paths that exist: the flat layout's are gone. (The
    checkpoints in tests/fixtures were saved before the move and keep its names.)"""
    root = PACKAGE_DIR.parent
    texts = [root / "README.md", root / "pyproject.toml"] + [
        p for folder in ("docs", "examples", "benchmarks", "model_cards", "hf_synthesizer", "tests")
        for p in (root / folder).rglob("*") if p.suffix in (".py", ".md", ".toml") and "fixtures" not in p.parts
    ]
    missing = {
        f"{p.relative_to(root)}: {path}" for p in texts
        for path in re.findall(r"hf_synthesizer/[\w/]*\.py\b", p.read_text(encoding="utf-8"))
        if not (root / path).is_file()
    }
    assert not missing, sorted(missing)


def test_the_sharing_docs_name_every_file_a_checkpoint_ships():
    """docs/sharing.md lists the shipped files by name (the code derives them from modeling/; the docs are by hand)."""
    text = (PACKAGE_DIR.parent / "docs" / "sharing.md").read_text(encoding="utf-8")
    bullet = text[text.index("- The code shipped is exactly"):].split("\n- ")[0]
    named = set(re.findall(r"`(\w+\.py)`", bullet)) - {"__init__.py"}
    assert named == {p.name for p in MODELING_DIR.glob("*.py")} - {"__init__.py"}, "update docs/sharing.md"
