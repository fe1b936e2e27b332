"""`python -m rlvf.adapters`: mix and export from the command line, and their one-line errors."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlvf.adapters import main
from rlvf.lora import inject_lora, load_adapter, lora_modules, save_adapter


@pytest.fixture()
def adapter_dir(tmp_path, tiny_model):
    inject_lora(tiny_model, r=4, alpha=8, dropout=0.0, seed=0)
    g = torch.Generator().manual_seed(1)
    for m in lora_modules(tiny_model).values():
        m.lora_B.weight.data = torch.randn(m.lora_B.weight.shape, generator=g) * 0.1
    return save_adapter(tiny_model, tmp_path / "a")


def test_mix_cli_scales_the_update(tmp_path, tiny_model_dir, adapter_dir):
    main(["mix", "--adapter", f"{adapter_dir}:0.5", "--adapter", f"{adapter_dir}:0.25", "--out", str(tmp_path / "m")])
    one = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    load_adapter(one, adapter_dir)
    mixed = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    load_adapter(mixed, tmp_path / "m")
    for path, m in lora_modules(mixed).items():
        expected = 0.75 * lora_modules(one)[path].delta_weight()
        torch.testing.assert_close(m.delta_weight(), expected, rtol=1e-5, atol=1e-7)


def test_export_cli_matches_adapter_logits(tmp_path, tiny_model_dir, adapter_dir):
    main(["export", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--out", str(tmp_path / "full")])
    ids = torch.randint(0, 100, (2, 9))
    with_adapter = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    load_adapter(with_adapter, adapter_dir)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, rtol=1e-5, atol=1e-5)


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_model_dir):
    for argv in (["mix", "--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                 ["mix", "--adapter", "x:abc:", "--out", str(tmp_path / "o")],
                 ["export", "--model", str(tmp_path), "--adapter", str(tmp_path), "--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o").exists()
