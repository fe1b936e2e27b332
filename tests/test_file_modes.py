"""Files rlvf writes through a temporary name get the mode a plain open() would give them.

safetensors (and tempfile.mkstemp) create files 0600 and tempfile.mkdtemp 0700 directories; renamed
into place they would keep it, and a vLLM server running as another user could not read the adapter.
Expected: 0o666 & ~umask for files and 0o777 & ~umask for directories (what open()/mkdir give),
checked under two umasks.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlvf.atomic import default_mode, publish_file, umask, write_text_atomic


@pytest.fixture(params=[0o022, 0o027])
def mask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _assert_tree_modes(root: Path, mask: int) -> None:
    for path in [root, *root.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert _mode(path) == expected, f"{path}: {oct(_mode(path))}, expected {oct(expected)}"


def test_umask_is_read_without_changing_it(mask):
    assert umask() == mask and umask() == mask
    assert default_mode() == 0o666 & ~mask and default_mode(directory=True) == 0o777 & ~mask


def test_publish_file_gives_a_safetensors_file_the_umask_mode(tmp_path, mask):
    tmp, final = tmp_path / ".ref_logps.safetensors.tmp", tmp_path / "ref_logps.safetensors"
    save_file({"chosen": torch.zeros(3)}, str(tmp))
    assert _mode(tmp) == 0o600  # what the library does on its own
    publish_file(tmp, final)
    assert _mode(final) == 0o666 & ~mask and not tmp.exists()
    write_text_atomic(tmp_path / "meta.json", "{}\n")
    assert _mode(tmp_path / "meta.json") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "ref_logps.safetensors"]


def test_adapter_mix_and_export_files(tiny_model, tmp_path, mask):
    from transformers import AutoTokenizer

    from rlvf.lora import inject_lora
    from rlvf.peft_format import export_merged, mix_adapters, save_adapter

    inject_lora(tiny_model, target_modules=["q_proj"], r=2, alpha=4, seed=0)
    adapter = save_adapter(tiny_model, tmp_path / "adapter")
    mixed = mix_adapters([(adapter, 0.5)], tmp_path / "mix")
    merged = export_merged(tiny_model, AutoTokenizer.from_pretrained(tiny_model.name_or_path), tmp_path / "merged")
    for root in (adapter, mixed, merged):
        _assert_tree_modes(root, mask)


def test_kept_user_files_keep_their_modes(tiny_model, tmp_path, mask):
    """--overwrite carries the user's files over as they were: their modes are theirs."""
    from rlvf.lora import inject_lora
    from rlvf.peft_format import mix_adapters, save_adapter

    inject_lora(tiny_model, target_modules=["q_proj"], r=2, alpha=4, seed=0)
    adapter = save_adapter(tiny_model, tmp_path / "adapter")
    out = tmp_path / "out"
    out.mkdir()
    (out / "private.txt").write_text("mine")
    os.chmod(out / "private.txt", 0o600)
    mix_adapters([(adapter, 1.0)], out)
    assert _mode(out / "private.txt") == 0o600
    assert _mode(out / "adapter_model.safetensors") == 0o666 & ~mask


def test_response_cache_entries(tmp_path, mask):
    from rlvf.client import ResponseCache

    cache = ResponseCache(tmp_path / "cache")
    cache.put("ab" * 32, {"texts": ["hi"], "finish_reasons": ["stop"]})
    assert _mode(cache.path("ab" * 32)) == 0o666 & ~mask
    assert cache.get("ab" * 32)["texts"] == ["hi"]
