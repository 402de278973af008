"""Property tests: whatever a spec document holds, only ``ClusterSpec`` or ``SpecError`` comes
out, and every problem is one line that starts with a path."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterkit.errors import SpecError
from clusterkit.spec import ClusterSpec, example_spec_text, parse_spec, parse_spec_text

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the C one when there is one
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE: dict[str, Any] = yaml.safe_load(example_spec_text("fuzz"))
# A problem starts with a path: a field, a plain or quoted key, an index, or "(top level)".
_PLAIN = r"[A-Za-z0-9_-]+"
_BRACKET = r"""\[(?:\d+|True|False|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]"""
PATH = re.compile(rf"^(?:\(top level\)|(?:{_PLAIN}|{_BRACKET})(?:\.{_PLAIN}|{_BRACKET})*): \S")
NOT_A_MAPPING = ("empty document", "expected a mapping at the top level", "not valid YAML")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=3000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "local", "aws", "spot", "10.250.7.0/24", "/shared", "compute"])
)
keys = st.text(max_size=8) | st.sampled_from(sorted(ClusterSpec.model_fields)) | st.integers()
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """The complete example spec with a few values replaced, keys added or keys removed."""
    doc: Any = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        if action == "replace":
            parent[path[-1]] = draw(json_like)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(json_like)
        elif action == "add" and isinstance(parent, list):
            parent.append(draw(json_like))
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return doc


def check_outcome(run: Callable[[], ClusterSpec]) -> None:
    """``run()`` returns a ClusterSpec or raises SpecError whose problems each have a path."""
    try:
        spec = run()
    except SpecError as exc:
        assert exc.problems, "a SpecError without problems"
        assert "\n" not in str(exc), f"message is not one line: {str(exc)!r}"
        for problem in exc.problems:
            assert problem.strip() == problem and problem, f"blank or padded: {problem!r}"
            assert PATH.match(problem) or problem.startswith(NOT_A_MAPPING), (
                f"problem without a path: {problem!r}"
            )
        return
    assert isinstance(spec, ClusterSpec)


@FUZZ
@given(json_like)
def test_any_data_gives_a_spec_or_a_spec_error(data: Any) -> None:
    check_outcome(lambda: parse_spec(data))


@FUZZ
@given(mutated_specs())
def test_a_mutated_spec_gives_a_spec_or_a_spec_error(data: Any) -> None:
    check_outcome(lambda: parse_spec(data))


yaml_text = (
    st.text(max_size=200)
    | st.text(alphabet="{}[]:,-&*!|>'\"%@`?#<= \n\tabcnx01.", max_size=120)
    | mutated_specs().map(lambda d: yaml.dump(d, Dumper=SafeDumper, sort_keys=False))
    | st.sampled_from(["name: x\n", "name: x\nname: y\n", "a: &a [*a]\n", "name: &n [*n]\n"])
)


@FUZZ
@given(yaml_text)
def test_any_text_gives_a_spec_or_a_spec_error(text: str) -> None:
    check_outcome(lambda: parse_spec_text(text))


def test_the_path_pattern_itself() -> None:
    """The checker above must reject problems that do not start with a path."""
    for good in (
        "groups[1].max: x",
        "(top level): unknown key 1; valid keys: name",
        "['a b']: unknown key",
        "head[True]: x",
        "aws.admin_cidr: required",
    ):
        assert PATH.match(good), good
    for bad in ("the local provider holds at most 250", "groups[1].max:x", ": x", "a b: x"):
        assert not PATH.match(bad), bad
