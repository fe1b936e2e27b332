"""`python -m rlvf.adapters`: mix and export from the command line, and their one-line errors."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlvf.adapters import main
from rlvf.lora import inject_lora, lora_modules
from rlvf.peft_format import load_adapter, save_adapter


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


# ---------------------------------------------------------------------------------------------
# --out never destroys what the command did not create


def _run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def _tree(root) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _user_dir(path):
    """A folder holding the user's own work: a file and a subfolder."""
    (path / "drafts").mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    (path / "drafts" / "chapter1.txt").write_text("it was a dark and stormy night")
    return path


@pytest.mark.parametrize("command", ["mix", "export"])
def test_non_empty_out_is_refused_without_overwrite(tmp_path, capsys, tiny_model_dir, adapter_dir, command):
    out = _user_dir(tmp_path / "out")
    before = _tree(tmp_path)
    argv = (["mix", "--adapter", str(adapter_dir)] if command == "mix"
            else ["export", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir)])
    code, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"error: --out {out}: directory is not empty (it holds drafts, thesis.txt); choose a new "
                      "directory, or pass --overwrite to replace the files this command writes and keep the rest")
    assert _tree(tmp_path) == before


def test_mix_overwrite_replaces_only_the_adapter_files(tmp_path, capsys, adapter_dir):
    out = _user_dir(tmp_path / "out")
    main(["mix", "--adapter", f"{adapter_dir}:0.5", "--out", str(out), "--overwrite"])
    main(["mix", "--adapter", f"{adapter_dir}:0.25", "--out", str(out), "--overwrite"])  # a mix replaced by a mix
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "drafts",
                                                     "thesis.txt"]
    assert (out / "thesis.txt").read_text() == "four years of work"
    assert (out / "drafts" / "chapter1.txt").read_text() == "it was a dark and stormy night"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]  # no temp folders left
    ours = load_file(adapter_dir / "adapter_model.safetensors")
    mixed = load_file(out / "adapter_model.safetensors")
    key = next(k for k in ours if k.endswith("q_proj.lora_A.weight"))
    torch.testing.assert_close(mixed[key], 0.25 * 2 * ours[key])  # w · s · A with s = 8 / 4


def test_export_overwrite_keeps_user_files_and_drops_stale_weights(tmp_path, tiny_model_dir, adapter_dir):
    out = _user_dir(tmp_path / "out")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"an older export's shard")
    (out / "model.safetensors.index.json").write_text("{}")
    main(["export", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--out", str(out), "--overwrite"])
    names = {p.name for p in out.iterdir()}
    assert {"thesis.txt", "drafts", "model.safetensors", "config.json", "tokenizer.json"} <= names
    assert not names & {"model-00001-of-00002.safetensors", "model.safetensors.index.json"}
    assert (out / "drafts" / "chapter1.txt").read_text() == "it was a dark and stormy night"
    AutoModelForCausalLM.from_pretrained(out)


def test_empty_out_needs_no_overwrite(tmp_path, adapter_dir):
    (tmp_path / "out").mkdir()
    main(["mix", "--adapter", str(adapter_dir), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_out_is_never_an_input(tmp_path, capsys, tiny_model_dir, adapter_dir):
    """Not the base model, not the adapter being read, not a folder holding either — even with --overwrite."""
    model = tmp_path / "models" / "base"
    shutil.copytree(tiny_model_dir, model)
    before = _tree(tmp_path)
    export = ["export", "--model", str(model), "--adapter", str(adapter_dir), "--overwrite", "--out"]
    cases = [
        (export + [str(model)], f"--out {model}: is --model {model}, which this command reads"),
        (export + [str(tmp_path / "models")], f"--out {tmp_path / 'models'}: holds --model {model}"),
        (export + [str(adapter_dir)], f"--out {adapter_dir}: is --adapter {adapter_dir}"),
        (["mix", "--adapter", f"{adapter_dir}:0.5", "--overwrite", "--out", str(adapter_dir)],
         f"--out {adapter_dir}: is --adapter {adapter_dir}"),
        (["mix", "--adapter", str(adapter_dir), "--out", str(tmp_path)], f"--out {tmp_path}: holds --adapter"),
    ]
    for argv, fragment in cases:
        code, err = _run(argv, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert _tree(tmp_path) == before
