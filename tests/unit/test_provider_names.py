"""The lint check that the core never names a provider finds what it must, and the core is clean."""

from __future__ import annotations

from tests.provider_names import ROOT, core_modules, findings_in


def test_each_way_of_naming_a_provider_is_found() -> None:
    source = """
if spec.provider == "aws":
    pass
if "local" != kind or kind in ("aws", "gcp"):
    pass
match kind:
    case "local":
        pass
"""
    found = findings_in(source, "core.py")
    assert [f.split(":")[1] for f in found] == ["2", "4", "4", "7"]  # line 4 twice
    assert found[0] == "core.py:2: spec.provider == 'aws'"


def test_other_strings_and_the_providers_own_modules_are_not_findings() -> None:
    assert findings_in('if mode == "locale" or x in ("s3", "sqs"): pass', "core.py") == []
    modules = {p.relative_to(ROOT).as_posix() for p in core_modules()}
    assert "cluster.py" in modules and "headfiles.py" in modules
    assert not any(m.startswith("providers/") for m in modules) and "spec.py" not in modules


def test_the_core_names_no_provider() -> None:
    found = [f for p in core_modules() for f in findings_in(p.read_text(), str(p))]
    assert found == []
