"""No install line names a package that is not on the index (issue 26): `hf_synthesizer` installs from a clone of its
source repository, and a saved checkpoint needs no package at all (its own code, trust_remote_code=True)."""

import re
from pathlib import Path

from hf_synthesizer.conversion.model_card import example_cards

ROOT = Path(__file__).resolve().parent.parent
# `pip install hf_synthesizer` / `hf-synthesizer` (any spelling) as a requirement name, not a path to a clone.
BAD = re.compile(r"pip install\s+(?:-U\s+|--upgrade\s+)?[\"'`]?hf[-_.]synthesizer\b", re.I)
GOOD = "install it from a clone of its source\nrepository: `pip install <path to the clone>`"


def shipped_texts() -> dict[str, str]:
    """The README, docs/, the card template and its rendered examples, and the Python sources that print text.
    tests/fixtures/ is left out on purpose: it holds checkpoints exactly as an earlier version saved them."""
    paths = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("model_cards/**/*.md"),
             *ROOT.glob("hf_synthesizer/**/*.py"), *ROOT.glob("examples/*.py")]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths}


def test_no_text_tells_users_to_pip_install_a_name_that_is_not_on_the_index():
    texts = shipped_texts()
    assert "model_cards/synthesizer.md" in texts and "README.md" in texts
    bad = {name: BAD.findall(text) for name, text in texts.items() if BAD.search(text)}
    assert not bad, bad
    assert BAD.search("With `pip install hf_synthesizer` and")  # the pattern does catch the old line


def test_rendered_cards_give_the_working_install_line(tmp_path):
    cards = example_cards()
    assert cards
    for name, card in cards.items():
        assert not BAD.search(card), name
        assert GOOD in card and "trust_remote_code=True" in card, name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`hf_synthesizer` is not on the package index" in readme and "pip install <path to the clone>" in readme
