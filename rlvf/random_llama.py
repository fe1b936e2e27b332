"""A tiny random Llama-architecture model and BPE tokenizer, written as a real HF model directory.

Used by the tests (and ``build_tokenizer`` by rlvf/tinyworld/build.py, which trains the shipped
model): the directory is loaded through the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` code
path as any Hugging Face model. The weights are random, so the model is for exercising code, not
for quality.

    python -m rlvf.random_llama --out runs/tiny-llama [--seed 0] [--corpus configs/data/maddie-heart/*.jsonl]
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import torch

# A Zephyr-like template. {% generation %} marks the assistant text, so HF's
# return_assistant_tokens_mask works; rlvf does not depend on it (see data.py).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

_BASE_CORPUS = [
    "Hello! How can I help you today?",
    "Write a short text message to a friend about dinner plans tonight.",
    "Explain photosynthesis to a child in two sentences.",
    "Here is a Python function that reverses a list: def rev(x): return x[::-1]",
    "Dear team, please find the quarterly report attached. Best regards.",
    "The capital of France is Paris. The Eiffel Tower was finished in 1889.",
    "Mix flour, eggs and milk, then fry thin pancakes in a hot pan.",
    "Roses are red, violets are blue, the sea is wide and the sky is too.",
    "Thanks for your message! I will get back to you soon. 😊 ❤️ 👍",
]


def build_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    texts: list[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 1024,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random tiny Llama (config.json, model.safetensors, tokenizer files) to ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(list(texts or []) + _BASE_CORPUS, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 16,  # odd-ish, so shape bugs show
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def corpus_from_jsonl(patterns: list[str]) -> list[str]:
    """All string fields of all rows of the JSONL files matching ``patterns``."""
    texts = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        texts += [v for v in json.loads(line).values() if isinstance(v, str)]
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write the HF model to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", nargs="*", default=[], help="JSONL files to train the tokenizer on")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    path = build_tiny_model(
        args.out, args.seed, corpus_from_jsonl(args.corpus), args.hidden_size, args.layers
    )
    print(f"wrote tiny Llama to {path}")


if __name__ == "__main__":
    main()
