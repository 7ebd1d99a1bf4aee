"""The judge registry: judges named as lazy "module:factory" strings, none imported to list them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from npti_lens.core.errors import UserError
from npti_lens.judges import registry


def test_listing_the_judges_imports_none_of_them():
    code = (
        "import sys\nfrom npti_lens.workflows.scoring import judges\nprint(judges())\n"
        "print(sorted(m for m in sys.modules if m.startswith('npti_lens.judges.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, loaded = out.splitlines()
    assert names == "['classifier', 'openai', 'organism']"
    assert loaded == "['npti_lens.judges.registry']"


def test_a_judge_is_made_by_name_and_its_module_imported_then(monkeypatch):
    from npti_lens.judges.classifier import ClassifierJudge
    from npti_lens.judges.organism import OrganismJudge
    from npti_lens.workflows.scoring import make_judge

    assert registry.judge_factory("classifier") is ClassifierJudge
    monkeypatch.setattr(registry, "_JUDGES", dict(registry._JUDGES))
    registry.register_judge("copy", "npti_lens.judges.organism:OrganismJudge")
    assert isinstance(make_judge("copy"), OrganismJudge)
    registry.register_judge("callable", OrganismJudge)
    assert registry.judge_factory("callable") is OrganismJudge
    with pytest.raises(ValueError, match="already registered"):
        registry.register_judge("openai", "npti_lens.judges.organism:OrganismJudge")
    with pytest.raises(ValueError, match="is not 'module:factory'"):
        registry.register_judge("dotted", "npti_lens.judges.organism.OrganismJudge")
    with pytest.raises(UserError, match="unknown judge 'gpt'; choose callable or classifier"):
        make_judge("gpt")
