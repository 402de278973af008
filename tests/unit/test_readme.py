"""The README's promises that code can check: the two set-up commands, and a spec reference
that names every key of the model (so a new field cannot go undocumented)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from clusterkit.spec import ClusterSpec, _inner_model
from tests.readme_tour import matches, parse_tour, strip_comment, tour_block

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


def test_the_tour_parses_into_commands_shell_lines_and_outputs() -> None:
    steps = parse_tour(tour_block(README))
    commands = [strip_comment(s.command) for s in steps]
    assert commands[0] == "clusterkit init cluster.yaml --name demo"
    assert "clusterkit up -f cluster.yaml" in commands
    assert commands[-1] == "clusterkit down demo"
    in_shell = [s for s in steps if s.shell is not None]
    assert in_shell and {s.shell for s in in_shell} == {"clusterkit ssh demo -u ckuser"}
    assert {s.user for s in in_shell} == {"ckuser"}
    up = steps[commands.index("clusterkit up -f cluster.yaml")]
    assert up.expected[0] == "Cluster demo on local: head + 2 static compute node(s)"


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        (["Cluster demo is ready in 18.9s."], ["Cluster demo is ready in 3.0s."], True),
        ([" a   b "], ["a b"], True),
        (["i-4cd3017be740458c8 10.250.0.2"], ["i-0123456789abcdef0 10.250.3.4"], True),
        (["Submitted batch job 4"], ["Submitted batch job 17"], True),
        (["a", "...", "z"], ["a", "b", "c", "z"], True),
        (["a", "...", "z"], ["a", "z"], True),
        (["a", "..."], ["a"], True),
        (["Cluster demo is ready"], ["Cluster demo is up"], False),  # a changed word
        (["a", "b"], ["a", "b", "c"], False),  # an extra line
        (["a", "b"], ["a"], False),  # a missing line
        (["a", "...", "z"], ["a", "b"], False),
        (["POWER SLURM"], ["SLURM"], False),  # a column gone
    ],
)
def test_tour_outputs_match_only_what_the_readme_shows(
    expected: list[str], actual: list[str], same: bool
) -> None:
    assert matches(expected, actual) is same


def test_a_comment_is_cut_after_two_spaces_only() -> None:
    assert strip_comment("clusterkit verify demo      # the checks") == "clusterkit verify demo"
    assert strip_comment("echo '#1' x") == "echo '#1' x"
