"""`.dvc` files and `dvc.lock` in shapes DVC never writes (a hand edit, a bad merge, a file someone else wrote):
one line naming the file and line, never a traceback; the shapes DVC writes still give their md5."""

from __future__ import annotations

import pytest

from mantik_spec.dvcfiles import VersionError, dvc_md5, dvc_tracking_file

MD5 = "0123456789abcdef0123456789abcdef"

HOSTILE_DVC = [
    ("outs: data.csv\n", "data.csv.dvc:1: outs must be a list of outputs"),
    ("outs: {path: data.csv}\n", "data.csv.dvc:1: outs must be a list of outputs"),
    ("outs:\n- data.csv\n", "data.csv.dvc:2: outs[0] must be a mapping"),
    (f"outs:\n- path: data.csv\n  md5: {MD5}\n- [1, 2]\n", "data.csv.dvc:4: outs[1] must be a mapping"),
]
HOSTILE_LOCK = [
    ("stages: [train]\n", "dvc.lock:1: stages must be a mapping"),
    ("stages:\n  train: yes\n", "dvc.lock:2: stage train must be a mapping"),
    ("stages:\n  train:\n    outs: 3\n", "dvc.lock:3: outs must be a list of outputs"),
    ("stages:\n  train:\n    outs:\n    - null\n", "dvc.lock:4: outs[0] must be a mapping"),
]


@pytest.mark.parametrize("text, message", HOSTILE_DVC + HOSTILE_LOCK)
def test_a_dvc_file_in_a_shape_dvc_never_writes_is_one_located_line(tmp_path, text, message):
    (tmp_path / ("dvc.lock" if message.startswith("dvc.lock") else "data.csv.dvc")).write_text(text)
    with pytest.raises(VersionError) as refused:
        dvc_md5(tmp_path, "data.csv")
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert dvc_tracking_file(tmp_path, "data.csv") is None  # asked for a name only: no error, no pin


def test_the_shapes_dvc_writes_give_their_md5(tmp_path):
    (tmp_path / "data.csv.dvc").write_text(f"outs:\n- md5: {MD5}\n  size: 3\n  path: data.csv\n")
    (tmp_path / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  prep:\n    outs:\n    - path: out\n      md5: {MD5}.dir\n"
    )
    assert dvc_md5(tmp_path, "data.csv") == MD5
    assert dvc_md5(tmp_path, "out/part.csv") == f"{MD5}.dir/part.csv"
    assert dvc_tracking_file(tmp_path, "out/part.csv") == "dvc.lock"


def test_validate_reports_a_hostile_dvc_file_at_the_data_source(project):
    project.write("data.csv.dvc", "outs: [data.csv]\n")
    spec = project.path / "mantik.yaml"
    spec.write_text(
        spec.read_text().replace(
            "code: {paths: [train.py]}", "code: {paths: [train.py]}\ndata:\n  raw: {path: data.csv}"
        )
    )
    result = project.mantik("validate", check=1)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("mantik.yaml:") and "data.raw.path: data.csv.dvc:1: outs[0] must be a mapping" in line
