"""A split GGUF (`-00001-of-0000N.gguf`) is one model: every part's weights count, like llama.cpp.

llama.cpp's loader takes the metadata from part 1 and the tensors from all parts, refusing a
missing part, a part with the wrong `split.no`, and being pointed at a later part.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.core.errors import ModelFileError
from engine.core.memory_types import Device, GiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.gguf.reader import read_tensor_dims
from engine.gguf.split_parts import read_model_tensor_dims
from engine.plan.analytic import analytic_plan
from tests.helpers.cli import kvdeck
from tests.helpers.gguf_factory import split_llama, write_llama

SHAPE = {"n_layer": 4}
CPU = [Device("CPU", "cpu", 64 * GiB, 60 * GiB)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    d = tmp_path_factory.mktemp("split")
    whole = write_llama(d / "whole-F16.gguf", **SHAPE)
    (d / "parts").mkdir()
    return whole, split_llama(d / "parts", **SHAPE)


def test_the_factory_writes_several_parts(models):
    _whole, parts = models
    assert len(parts) >= 3
    assert parts[0].name.endswith(f"-00001-of-{len(parts):05d}.gguf")


def test_part_one_describes_the_whole_model(models):
    whole, parts = models
    a, b = inspect_gguf(whole), inspect_gguf(parts[0])
    assert b.n_params == a.n_params
    assert b.tensor_bytes == a.tensor_bytes
    assert b.weights == a.weights
    assert b.file_bytes == sum(p.stat().st_size for p in parts)


def test_the_plan_counts_the_weights_of_every_part(models):
    whole, parts = models
    s = PlanSettings(n_ctx=1024)
    a = analytic_plan(inspect_gguf(whole), s, CPU)
    b = analytic_plan(inspect_gguf(parts[0]), s, CPU)
    assert b.bytes_for("CPU", "weights") == a.bytes_for("CPU", "weights") > 0
    assert b.bytes_for() == a.bytes_for()


def test_cli_inspect_and_plan_read_all_parts(models):
    whole, parts = models
    r = kvdeck("plan", str(parts[0]), "--ctx", "1024", "--json")
    assert r.returncode == 0, r.stderr
    w = json.loads(kvdeck("plan", str(whole), "--ctx", "1024", "--json").stdout)
    assert json.loads(r.stdout)["totals"]["weights"] == w["totals"]["weights"]
    info = json.loads(kvdeck("inspect", str(parts[0]), "--json").stdout)
    assert info["file_bytes"] == sum(p.stat().st_size for p in parts)


def test_a_later_part_is_refused_with_the_first_named(models):
    _whole, parts = models
    with pytest.raises(ModelFileError, match=r"part 2 of a \d+-part model: open the first part"):
        inspect_gguf(parts[1])


def test_a_missing_part_is_one_sentence(models, tmp_path):
    _whole, parts = models
    for p in parts[:-1]:
        shutil.copy(p, tmp_path / p.name)
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(tmp_path / parts[0].name)
    assert f"part {len(parts)} ({parts[-1].name}) is missing" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_renamed_first_part_cannot_find_the_others(models, tmp_path):
    _whole, parts = models
    shutil.copy(parts[0], tmp_path / "model.gguf")
    with pytest.raises(ModelFileError, match="name does not end in '-00001-of-"):
        inspect_gguf(tmp_path / "model.gguf")


def test_parts_in_the_wrong_order_are_refused(models, tmp_path):
    _whole, parts = models
    for p in parts:
        shutil.copy(p, tmp_path / p.name)
    a, b = tmp_path / parts[1].name, tmp_path / parts[2].name
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    with pytest.raises(ModelFileError, match=f"{parts[1].name} says it is part 3"):
        inspect_gguf(tmp_path / parts[0].name)


def test_a_header_copy_away_from_its_parts_gives_its_own_tensors(models, tmp_path):
    # engine.hub keeps part 1's header as <hash>.gguf-header; the CPU repack plan reads it
    _whole, parts = models
    copy = tmp_path / "0123abcd.gguf-header"
    shutil.copy(parts[0], copy)
    assert read_model_tensor_dims(str(copy)) == read_tensor_dims(str(parts[0]))
    assert len(read_model_tensor_dims(str(parts[0]))) > len(read_tensor_dims(str(parts[0])))
