"""Property-based tests (hypothesis) of what reads user files: recipe loading and the data-prep readers.

Random and malformed inputs either parse or fail with our error type naming where: ``ConfigError`` with the file
(or "command line") and the key, ``DataError`` with file and line. Never another exception; a reader never yields a
record it should have refused (skip mode yields exactly the good records, error mode stops at the first bad line).
About 50 examples per property; the whole file runs in well under 30 s.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcrecipes.config import ConfigError, RecipeConfig, load_recipe
from lcrecipes.data.errors import BadRecords, DataError, Location
from lcrecipes.data.fixtures import hotpotqa_records
from lcrecipes.data.readers import read_records
from lcrecipes.data.sources.hotpotqa import parse_hotpotqa
from lcrecipes.data.sources.twowiki import TwoWiki

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dotted_keys(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            out += _dotted_keys(sub, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


KEYS = _dotted_keys(RecipeConfig)
SECTIONS = sorted({k.split(".")[0] for k in KEYS})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)  # fmt: skip
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS),
                 st.builds(lambda k, s: f"{k}{s}", st.sampled_from(KEYS), st.text(max_size=4)))  # fmt: skip


def _nested(pairs: list[tuple[str, object]]) -> dict:
    """Dotted (key, value) pairs as a nested mapping (a pair that collides with an earlier one is dropped)."""
    out: dict = {}
    for key, value in pairs:
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if parts[-1] not in node:
                node[parts[-1]] = value
    return out


def _load_file(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(data)
        try:
            return load_recipe(path), path
        except ConfigError as e:
            assert str(path) in e.where, e  # names the file
            assert str(e).strip(), "an empty message"
            return e, path


@FAST
@given(st.lists(st.tuples(keys, values), max_size=6))
def test_random_recipe_mappings_parse_or_name_file_and_key(pairs) -> None:
    out, _ = _load_file(yaml.safe_dump(_nested(pairs)).encode())
    if isinstance(out, ConfigError) and out.key == "" and "line" not in out.where:
        assert "mapping" in out.message or "not found" in out.message, f"names neither key nor line: {out}"


YAMLISH = "model:data {}[]-,'\"&*!#\t\n 0123456789.=${}"


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(alphabet=YAMLISH, max_size=120)))
def test_random_recipe_bytes_parse_or_fail_with_config_error(data) -> None:
    data = data.encode() if isinstance(data, str) else data
    _load_file(data)


@FAST
@given(st.lists(st.tuples(keys, st.one_of(st.text(max_size=20), values.map(json.dumps))), max_size=5))
def test_random_overrides_parse_or_name_command_line_and_key(pairs) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        load_recipe(None, overrides)
    except ConfigError as e:
        assert e.where.startswith("command line") or e.where == "defaults", e
        assert e.key, f"no key named: {e}"


def test_config_edge_cases_found_by_fuzzing(tmp_path: Path) -> None:
    """Inputs that once escaped as UnicodeDecodeError, RecursionError or TypeError, or named no key."""
    cases = {b"name: \xff\xfe\n": "not UTF-8", b"model: " + b"[" * 3000 + b"]" * 3000 + b"\n": "nested",
             b"model: &a\n  x: *a\n": "nested", b"model: {rope_scaling: [1, 2]}\n": "incompatible",
             b"model: 3\n": "subclass"}  # fmt: skip
    for i, (data, words) in enumerate(cases.items()):
        path = tmp_path / f"r{i}.yaml"
        path.write_bytes(data)
        with pytest.raises(ConfigError, match=words) as err:
            load_recipe(path)
        assert str(path) in err.value.where
    assert load_recipe_key(tmp_path / "r3.yaml") == "model.rope_scaling"
    assert load_recipe_key(tmp_path / "r4.yaml") == "model"


def load_recipe_key(path: Path) -> str:
    try:
        load_recipe(path)
    except ConfigError as e:
        return e.key
    raise AssertionError(f"{path} loaded")


# ----- data-prep readers ----------------------------------------------------------------------------------------
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=8)),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=8)  # fmt: skip
good_line = st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(lambda d: json.dumps(d).encode())
bad_line = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),  # not an object
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),  # anything, often not UTF-8
    st.integers(2, 30).map(lambda n: b'{"a": ' + b"[" * n),  # truncated
    st.sampled_from(
        [
            b"[" * 5000 + b"]" * 5000,
            b'{"a": ' + b"9" * 5000 + b"}",
            b'\xef\xbb\xbf{"a": 1}',
            b'{"a": 1} {"b": 2}',
            b"{'a': 1}",
            b'{"a": NaN',
        ]
    ),  # fmt: skip
)


def _expected(line: bytes) -> dict | None | str:
    """The record a line should give: a dict, None (blank, skipped) or "bad"."""
    try:
        text = line.decode("utf-8")
        if not text.strip():
            return None
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "bad"
    return obj if isinstance(obj, dict) else "bad"


def _read(path: Path, mode: str) -> tuple[list, BadRecords]:
    bad = BadRecords(mode, log_first=0)
    return list(read_records(path, bad)), bad


@FAST
@given(st.lists(st.one_of(good_line, bad_line, st.just(b""), st.just(b"  ")), max_size=12))
def test_jsonl_reader_yields_exactly_the_good_lines(lines) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        want = [(i, _expected(line)) for i, line in enumerate(lines, start=1)]
        good = [(i, r) for i, r in want if isinstance(r, dict)]
        first_bad = next((i for i, r in want if r == "bad"), None)
        got, bad = _read(path, "skip")
        assert [(loc.line, rec) for loc, rec in got] == good and all(loc.file == str(path) for loc, _ in got)
        assert sum(bad.counts.values()) == sum(r == "bad" for _, r in want)
        if first_bad is None:
            assert [rec for _, rec in _read(path, "error")[0]] == [r for _, r in good]
            return
        seen = []
        with pytest.raises(DataError) as err:
            for loc, _ in read_records(path, BadRecords("error")):
                seen.append(loc.line)
        assert err.value.loc == Location(str(path), first_bad) and str(path) in str(err.value)
        assert seen == [i for i, _ in good if i < first_bad]  # nothing after the bad line


array_element = st.one_of(good_line, bad_line.filter(lambda b: b"\n" not in b))


@FAST
@given(st.lists(array_element, max_size=8), st.sampled_from([b",", b",\n", b" ,  "]),
       st.sampled_from([b"", b"]", b"] x", b"\n]\n", b",]"]))  # fmt: skip
def test_json_array_reader_parses_or_names_file_and_line(elements, sep, tail) -> None:
    text = b"[" + sep.join(elements) + (tail or b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.json"
        path.write_bytes(text)
        try:
            whole = json.loads(text.decode("utf-8"))
        except (ValueError, RecursionError):
            whole = None
        for mode in ("skip", "error"):
            try:
                got, bad = _read(path, mode)
            except DataError as e:
                assert e.loc.file == str(path) and 1 <= e.loc.line <= text.count(b"\n") + 1, e
                assert whole is None or mode == "error" and any(not isinstance(x, dict) for x in whole), e
                continue
            assert isinstance(whole, list), f"accepted invalid JSON {text[:80]!r}"
            assert [r for _, r in got] == [x for x in whole if isinstance(x, dict)]
            assert sum(bad.counts.values()) == sum(not isinstance(x, dict) for x in whole)


def test_corrupt_parquet_fails_with_data_error_naming_the_file(tmp_path: Path) -> None:
    """``read_parquet`` wraps pyarrow's errors (ArrowInvalid, OSError) in a DataError naming the file."""
    path = tmp_path / "q.parquet"
    path.write_bytes(b"PAR1 not a parquet file PAR1")
    with pytest.raises(DataError, match=str(path)):
        list(read_records(path, BadRecords("error")))


# ----- source records (HotpotQA / 2Wiki layout) -----------------------------------------------------------------
FIELDS = ("_id", "question", "answer", "supporting_facts", "context", "evidences")


@st.composite
def mutated_record(draw) -> dict:
    rec = json.loads(json.dumps(hotpotqa_records(1, seed=draw(st.integers(0, 9)), twowiki=True)[0]))
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["delete", "replace", "inner"]))
        if action == "delete":
            rec.pop(field, None)
        elif action == "replace" or not isinstance(rec.get(field), list) or not rec[field]:
            rec[field] = draw(json_values)
        else:
            i = draw(st.integers(0, len(rec[field]) - 1))
            rec[field][i] = draw(json_values)
    return rec


@FAST
@given(mutated_record())
def test_mutated_hotpotqa_and_2wiki_records_parse_or_name_the_field(rec) -> None:
    loc = Location("/data/q.jsonl", 7)
    for parse in (parse_hotpotqa, lambda r, loc: TwoWiki.parse(None, r, loc)):
        try:
            out = parse(rec, loc)
        except DataError as e:
            assert e.loc == loc and str(e).startswith("/data/q.jsonl:7: ")
            continue
        assert out.gold and out.question and out.answers
