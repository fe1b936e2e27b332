"""Chat templates: completion labels are exactly the reply plus the template's end-of-turn, and the
training prompt is token for token the inference prompt, for the common template families.

The templates are written here in the shape of the public ones (Zephyr, Llama-2, Llama-3, Mistral
v0.1-v0.3, ChatML with and without a default system prompt, Gemma, Phi-3, Command-R, Qwen3 and an
R1-style thinking template); the tokenizers are small BPEs trained here: a byte-level one whose
GPT-2 pre-tokenizer and merges join "\\n\\n" (so a generation prompt ending in "\\n\\n" tokenizes
differently alone and before a reply), and a SentencePiece-like Metaspace one (a prefix space on text
tokenized alone, as Llama-2 / Mistral / Phi-3 tokenizers). The oracles are independent of rlvf's code:
transformers' own rendering of the inference prompt, and the label text spelled out per template.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rlvf import chat_template as chat
from rlvf.data import IGNORE_INDEX, encode_pair, encode_row, tokenize_conversation
from rlvf.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>",
            "<|system|>", "<|end|>", "<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<bos>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]",
            "<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
            "<｜end▁of▁sentence｜>"]
PROMPT = "Text Maddie about dinner at seven."
REPLIES = ["Sure, see you at 7.", " A reply after a space.", "\n\nTwo newlines first.", "\nOne newline first.",
           "Ends with blank lines.\n\n"]
CORPUS = [PROMPT, *REPLIES, "Hello there!\n\nHow are you?\n\nFine, thanks.", "user\n\nassistant\n\nmodel\n",
          "You are a helpful assistant.\n\n", "system\n\nuser\n\nassistant\n\n"] * 20

# ---------------------------------------------------------------------------------------- templates

ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
LLAMA2 = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + message['content'].strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
MISTRAL_V1 = ("{{ bos_token }}{% for message in messages %}"
              "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
              "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
              "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
              "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
MISTRAL_V3 = ("{{- bos_token }}{%- for message in messages %}{%- if message['role'] == 'user' %}"
              "{{- '[INST] ' + message['content'] + '[/INST]' }}{%- elif message['role'] == 'assistant' %}"
              "{{- ' ' + message['content']|trim + eos_token }}{%- else %}"
              "{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}{%- endfor %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
          "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
          "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
COMMAND_R = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
             "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
             "{% set system_message = 'You are a helpful assistant.' %}{% endif %}"
             "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + '<|END_OF_TURN_TOKEN|>' }}"
             "{% for message in loop_messages %}{% set content = message['content'] %}"
             "{% if message['role'] == 'user' %}{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + "
             "'<|END_OF_TURN_TOKEN|>' }}{% elif message['role'] == 'assistant' %}"
             "{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}{% endif %}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}")
# Qwen3: the last assistant turn carries a (possibly empty) <think> block; enable_thinking=false puts
# the empty block into the generation prompt instead.
QWEN3 = ("{%- for message in messages %}{%- if message.role == 'user' %}"
         "{{- '<|im_start|>user\n' + message.content + '<|im_end|>\n' }}{%- elif message.role == 'assistant' %}"
         "{%- set content = message.content %}{%- set reasoning = '' %}{%- if '</think>' in content %}"
         "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
         "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
         "{{- '<|im_start|>assistant\n' }}{%- if loop.last %}"
         "{{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' }}{%- endif %}"
         "{{- content.lstrip('\n') + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
         "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
         "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
         "{%- endif %}")
# DeepSeek-R1 style: the history drops the thinking, the generation prompt forces "<think>\n".
R1 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
      "{{ '<｜User｜>' + message['content'] }}{% elif message['role'] == 'assistant' %}"
      "{% set content = message['content'] %}{% if '</think>' in content %}"
      "{% set content = content.split('</think>')[-1] %}{% endif %}"
      "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}")

# name: (template, tokenizer kind, bos, eos, kwargs, label text of a reply, aligned)
CASES = {
    "zephyr": (ZEPHYR, "bytes", "<s>", "</s>", {}, lambda r: r + "</s>\n", True),
    "llama-2": (LLAMA2, "metaspace", "<s>", "</s>", {}, lambda r: " " + r.strip() + " </s>", True),
    "llama-3": (LLAMA3, "bytes", "<|begin_of_text|>", "<|eot_id|>", {}, lambda r: r.strip() + "<|eot_id|>", True),
    "mistral-v0.1/v0.2": (MISTRAL_V1, "metaspace", "<s>", "</s>", {}, lambda r: r + "</s>", True),
    "mistral-v0.3": (MISTRAL_V3, "bytes", "<s>", "</s>", {}, lambda r: " " + r.strip() + "</s>", True),
    "chatml": (CHATML, "bytes", None, "<|im_end|>", {}, lambda r: r + "<|im_end|>\n", True),
    "qwen2 (default system)": (QWEN2, "bytes", None, "<|im_end|>", {}, lambda r: r + "<|im_end|>\n", True),
    "gemma": (GEMMA, "bytes", "<bos>", "<end_of_turn>", {}, lambda r: r.strip() + "<end_of_turn>\n", True),
    "phi-3": (PHI3, "metaspace", "<s>", "<|endoftext|>", {}, lambda r: r + "<|end|>\n<|endoftext|>", True),
    "command-r": (COMMAND_R, "bytes", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", {},
                  lambda r: r.strip() + "<|END_OF_TURN_TOKEN|>", True),
    "qwen3 (enable_thinking false)": (QWEN3, "bytes", None, "<|im_end|>", {"enable_thinking": False},
                                      lambda r: r.lstrip("\n") + "<|im_end|>\n", True),
    "qwen3 (thinking)": (QWEN3, "bytes", None, "<|im_end|>", {}, lambda r: r + "<|im_end|>\n", False),
    "r1": (R1, "bytes", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", {}, lambda r: r + "<｜end▁of▁sentence｜>",
           False),
}


def _train(kind: str, prepend: str = "first"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytes":  # GPT-2 pre-tokenizer: "\n\n" before a word splits into "\n", "\n"; alone it is one token
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-like: "▁" for spaces and a prefix "▁" on text tokenized alone
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend)
        tok.decoder = decoders.Metaspace(prepend_scheme=prepend)
        alphabet = sorted(set("".join(CORPUS + SPECIALS)) | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_tokens(["<think>", "</think>"])  # added but not special, as in Qwen3
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=SPECIALS[4:])


@pytest.fixture(scope="module")
def tokenizers_():
    return {kind: _train(kind) for kind in ("bytes", "metaspace")}


def _tokenizer(tokenizers_, name: str):
    template, kind, bos, eos, kwargs, _, _ = CASES[name]
    tok = copy.deepcopy(tokenizers_[kind])
    tok.bos_token, tok.eos_token, tok.chat_template = bos, eos, template
    chat.configure(tok, None, kwargs)
    return tok


def _text(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", list(CASES))
def test_labels_are_reply_plus_end_of_turn_after_the_inference_prompt(tokenizers_, name):
    tok = _tokenizer(tokenizers_, name)
    kwargs, label_text, aligned = CASES[name][4:]
    assert chat.chat_format(tok).aligned is aligned
    user = [{"role": "user", "content": PROMPT}]
    inference = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True, **kwargs),
                    add_special_tokens=False)["input_ids"]
    for reply in REPLIES:
        p, c = tokenize_conversation(tok, PROMPT, reply)
        assert p == inference, (name, reply)  # the training prompt is the inference prompt, token for token
        # the labels decode to the reply (as the template writes it) + end-of-turn, nothing of the prompt
        assert _text(tok, p + c) == _text(tok, p) + label_text(reply), (name, reply)
        enc = encode_row(tok, PROMPT, reply, 512, 256)
        assert enc.input_ids == p + c and enc.labels == [IGNORE_INDEX] * len(p) + c
        if aligned:  # the row is the template's own rendering of the conversation
            full = tok.apply_chat_template([*user, {"role": "assistant", "content": reply}], tokenize=False, **kwargs)
            assert _text(tok, p + c) == _text(tok, tok(full, add_special_tokens=False)["input_ids"])
    chosen, rejected = encode_pair(tok, PROMPT, REPLIES[0], REPLIES[2], 512, 256)
    assert chosen.input_ids[:len(inference)] == rejected.input_ids[:len(inference)] == inference


def test_merged_newlines_never_label_the_generation_prompt(tokenizers_):
    """Llama-3's generation prompt ends "\\n\\n": one token alone, two before a word with this tokenizer.
    The old split (longest common token prefix of prompt and conversation) labelled both newlines and
    trained on a prompt inference never sees; now the prompt keeps its inference tokens."""
    tok = _tokenizer(tokenizers_, "llama-3")
    user = [{"role": "user", "content": PROMPT}]
    p_text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok(p_text + "Sure.<|eot_id|>", add_special_tokens=False)["input_ids"]
    alone = tok(p_text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone[-1]) == "ĊĊ" and full[:len(alone)] != alone  # the merge is real
    n = next(i for i, (a, b) in enumerate(zip(alone, full)) if a != b)
    assert _text(tok, full[n:]).startswith("\n\n")  # what the common-prefix split would have labelled
    p, c = tokenize_conversation(tok, PROMPT, "Sure.")
    assert p == alone and _text(tok, c) == "Sure.<|eot_id|>"
    assert "merge across the prompt/reply boundary" in chat.chat_format(tok).summary


def test_thinking_templates(tokenizers_):
    # Qwen3, thinking on: the empty <think></think> of the rendered history is never labelled
    tok = _tokenizer(tokenizers_, "qwen3 (thinking)")
    p, c = tokenize_conversation(tok, PROMPT, "Sure.")
    assert _text(tok, p).endswith("<|im_start|>assistant\n") and _text(tok, c) == "Sure.<|im_end|>\n"
    assert "the inference prompt ends" in chat.chat_format(tok).summary
    # the model's own thinking output is trained as generated, after the inference prompt
    thought = "<think>\nDinner is at seven.\n</think>\n\nSure."
    assert _text(tok, tokenize_conversation(tok, PROMPT, thought)[1]) == thought + "<|im_end|>\n"
    # enable_thinking false: the empty block is part of the prompt, as at inference
    tok = _tokenizer(tokenizers_, "qwen3 (enable_thinking false)")
    p, c = tokenize_conversation(tok, PROMPT, "Sure.")
    assert _text(tok, p).endswith("<think>\n\n</think>\n\n") and _text(tok, c) == "Sure.<|im_end|>\n"
    # R1: the generation prompt forces "<think>\n"; the reply (thoughts included) follows it
    tok = _tokenizer(tokenizers_, "r1")
    p, c = tokenize_conversation(tok, PROMPT, "Dinner at seven.\n</think>\n\nSure.")
    assert _text(tok, p).endswith("<｜Assistant｜><think>\n")
    assert _text(tok, c) == "Dinner at seven.\n</think>\n\nSure.<｜end▁of▁sentence｜>"


def test_prefix_space_tokenizer_with_a_merging_boundary_is_reported(tokenizers_):
    """A legacy-Llama-like tokenizer ("▁" before every piece of text, even after a special token)
    whose "\n\n" merges across Phi-3's generation prompt: the reply's tokens cannot be split off the
    prompt's exactly, which is one line naming the template (the "first" scheme above works)."""
    tok = _train("metaspace", prepend="always")
    tok.eos_token, tok.chat_template = "<|endoftext|>", PHI3
    with pytest.raises(UserError) as err:
        chat.configure(tok, None, {}, where="model.path: m")
    assert str(err.value).startswith("model.path: m: the tokenizer's chat template: the tokenizer merges tokens "
                                     "across the end of the generation prompt")


BAD = {
    "no generation marker": ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", {},
                             "has no generation marker: nothing between"),
    "generation prompt ignored": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                  "{% endfor %}", {}, "has no generation marker: add_generation_prompt adds nothing"),
    "raises on assistant": ("{% for m in messages %}{% if m['role'] != 'user' %}{{ raise_exception('users only') }}"
                            "{% endif %}<|user|>{{ m['content'] }}</s>{% endfor %}<|assistant|>", {},
                            "fails on a user/assistant conversation (TemplateError: users only)"),
    "no end of turn": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
                       "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", {},
                       "writes nothing after the assistant's reply"),
    "unknown kwarg": (QWEN3, {"enable_thinkin": False}, "model.chat_template_kwargs: 'enable_thinkin' is not read "
                      "by model.chat_template: T (it reads: "),
    "reserved kwarg": (CHATML, {"add_generation_prompt": True}, "model.chat_template_kwargs: 'add_generation_prompt' "
                       "is set by rlvf"),
    "not jinja": ("{% for m in messages %}{{ m['content'] }}", {}, "model.chat_template: T is not valid Jinja"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_templates_are_one_line(tokenizers_, tmp_path, name):
    template, kwargs, fragment = BAD[name]
    path = tmp_path / "t.jinja"
    path.write_text(template, encoding="utf-8")
    tok = copy.deepcopy(tokenizers_["bytes"])
    tok.eos_token = "</s>"
    with pytest.raises(UserError) as err:
        chat.configure(tok, path, kwargs)
    message = str(err.value).replace(str(path), "T")
    assert fragment in message and "\n" not in message, message


def test_missing_template_file(tokenizers_, tmp_path):
    with pytest.raises(UserError, match=r"^model.chat_template: .*nope.jinja: chat template file not found"):
        chat.configure(copy.deepcopy(tokenizers_["bytes"]), tmp_path / "nope.jinja", {})


def test_template_file_and_kwargs_reach_training_and_the_server(tiny_model_dir, tmp_path):
    """model.chat_template / chat_template_kwargs: the tokenizer load_tokenizer gives training and the
    server's HFBackend renders prompts identically, both with the user's template and kwargs."""
    from rlvf.generation import HFBackend
    from rlvf.modeling import load_tokenizer

    path = tmp_path / "qwen3.jinja"
    path.write_text(QWEN3, encoding="utf-8")
    kwargs = {"enable_thinking": False}
    tok = load_tokenizer(tiny_model_dir, chat_template=path, chat_template_kwargs=kwargs)
    assert tok.chat_template == QWEN3
    p, c = tokenize_conversation(tok, PROMPT, "Sure.")
    assert _text(tok, p).endswith("<think>\n\n</think>\n\n") and _text(tok, c) == "Sure.<|im_end|>\n"
    backend = HFBackend(tiny_model_dir, "m", {}, "cpu", "float32", chat_template=path, chat_template_kwargs=kwargs)
    assert backend.encode([{"role": "user", "content": PROMPT}]) == p
    plain = HFBackend(tiny_model_dir, "m", {}, "cpu", "float32", chat_template=path)  # thinking on: differs
    assert plain.encode([{"role": "user", "content": PROMPT}]) != p


def _train_cli(tmp_path, tiny_model_dir, capsys, **model) -> str:
    """stderr of ``python -m rlvf.train`` (in process) on a config with these model keys; exit 2."""
    import yaml

    from rlvf.train import main

    raw = {"model": {"path": str(tiny_model_dir), "dtype": "float32", **model},
           "data": {"dirs": [str(ROOT / "configs" / "data" / "maddie-heart")]},
           "output_dir": str(tmp_path / "run"), "train": {"max_steps": 1}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    return err


def test_train_cli_refuses_an_unknown_kwarg_and_a_bad_template(tiny_model_dir, tmp_path, capsys):
    err = _train_cli(tmp_path, tiny_model_dir, capsys, chat_template_kwargs={"enable_thinking": False})
    assert err.startswith("error: model.chat_template_kwargs: 'enable_thinking' is not read by model.path: ")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    err = _train_cli(tmp_path, tiny_model_dir, capsys, chat_template=str(bad))
    assert err.startswith(f"error: model.chat_template: {bad} has no generation marker")


def test_config_keys_documented():
    from rlvf.config import ModelConfig
    from rlvf.typed import field_docs

    docs = field_docs(ModelConfig)
    assert "chat_template" in docs and "chat_template_kwargs" in docs
    assert ModelConfig.__dataclass_fields__["chat_template_kwargs"].default_factory() == {}
    json.dumps(docs)


def test_server_renders_with_its_kwargs_and_refuses_others(tiny_model_dir, tmp_path):
    """The served student renders prompts with model.chat_template_kwargs (usage.prompt_tokens counts
    the training prompt's tokens); a request asking for other kwargs (vLLM's chat_template_kwargs) is a
    400 rather than a prompt training never saw."""
    import httpx

    from rlvf.modeling import load_tokenizer
    from rlvf.serve import start_server

    path = tmp_path / "qwen3.jinja"
    path.write_text(QWEN3, encoding="utf-8")
    kwargs = {"enable_thinking": False}
    p, _ = tokenize_conversation(load_tokenizer(tiny_model_dir, chat_template=path, chat_template_kwargs=kwargs),
                                 PROMPT, "Sure.")
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1}
    with start_server(tiny_model_dir, served_model_name="m", device="cpu", chat_template=path,
                      chat_template_kwargs=kwargs) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            ok = c.post("/chat/completions", json={**body, "chat_template_kwargs": kwargs})
            assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == len(p)
            bad = c.post("/chat/completions", json={**body, "chat_template_kwargs": {"enable_thinking": True}})
            assert bad.status_code == 400 and "chat_template_kwargs" in bad.json()["error"]["message"]


def test_replacing_the_template_reprobes(tokenizers_):
    tok = _tokenizer(tokenizers_, "zephyr")
    assert _text(tok, tokenize_conversation(tok, PROMPT, "Sure.")[1]) == "Sure.</s>\n"
    tok.chat_template = GEMMA
    assert _text(tok, tokenize_conversation(tok, PROMPT, "Sure.")[1]) == "Sure.<end_of_turn>\n"
    assert "labels = reply + end-of-turn" in chat.chat_format(tok).summary


@pytest.mark.parametrize("argv,fragment", [
    (["--model", "m", "--chat-template-kwargs", "[1]"], "argument --chat-template-kwargs: expected a JSON object"),
    (["--model", "m", "--chat-template-kwargs", "{x"], "argument --chat-template-kwargs: not valid JSON"),
    (["--teacher", "--chat-template", "t.jinja"], "--chat-template and --chat-template-kwargs apply to the --model"),
])
def test_serve_cli_options(argv, fragment, capsys):
    from rlvf.serve import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and fragment in err, err
