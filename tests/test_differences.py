"""jaxsae.differences: the `field: old -> new` lists of the run-folder and extraction checks."""

from jaxsae.differences import differences, flatten


def test_nested_fields_lists_of_records_and_missing_fields_are_named():
    old = {"sae": {"k": 8, "arch": "topk"}, "members": [{"seed": 1}], "mesh": {"data": 2}, "path": "/a"}
    new = {"sae": {"k": 16, "arch": "topk"}, "members": [{"seed": 1}, {"seed": 2}], "mesh": {"data": 4}, "extra": [1]}
    assert differences(old, new, ignore=("mesh.*", "path")) == [
        "extra: (unset) -> [1]", "len(members): 1 -> 2", "members[1].seed: (unset) -> 2", "sae.k: 8 -> 16"]
    assert differences(old, old) == []


def test_values_compare_as_json_and_long_ones_are_shortened():
    assert flatten({"a": {"b": (1, 2)}, "c": {}}) == {"a.b": "[1, 2]", "c": "{}"}  # a tuple reads back as a list
    (line,) = differences({"x": "a" * 200}, {"x": "b"})
    assert line.startswith('x: "aaa') and line.endswith('... -> "b"') and len(line) < 100
