"""The README's promises that code can check: the two set-up commands, and a spec reference
that names every key of the model (so a new field cannot go undocumented)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from clusterkit.spec import ClusterSpec, _inner_model

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        inner = _inner_model(field.annotation)
        is_list = "tuple" in str(field.annotation)
        path = f"{prefix}{name}"
        if inner is None:
            out.append(path)
        else:
            if is_list:
                out.append(path)
            out += _paths(inner, f"{path}[]." if is_list else f"{path}.")
    return out


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make up", "make test"]


def test_spec_reference_names_every_key() -> None:
    paths = _paths(ClusterSpec)
    assert "groups[].max" in paths and "local.subnet" in paths  # the walk itself works
    missing = [p for p in paths if f"| `{p}` |" not in README]
    assert missing == [], f"README spec reference lacks: {missing}"
