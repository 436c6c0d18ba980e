"""Build a tiny Qwen2 chat model (random weights, fixed seed) that vLLM's CPU build can serve.

Run with the vLLM venv's Python (it has torch and transformers):

    python build_tiny_model.py OUT_DIR

No download: the byte-level BPE tokenizer is trained here with ``tokenizers`` on a fixed
text; ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` are special tokens, ``<think>`` and
``</think>`` are added non-special tokens (they stay in the text, as in DeepSeek-R1/Qwen3).
``<tool_call>``/``</tool_call>`` are added non-special tokens too (Hermes/Qwen tool calls).
``<|im_end|>`` is the eos. Prints the token ids (and the whitespace-only ones) as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]
TOOL = ["<tool_call>", "</tool_call>"]
VOCAB_SIZE = 512
# Without kwargs the prompt ends "<|im_start|>assistant\n". ``enable_thinking`` (a
# ``chat_template_kwargs`` switch, also set by ``reasoning_effort``) acts as in the reasoning
# models' templates: true opens the think block in the prompt (DeepSeek-R1, Qwen3-Thinking),
# false closes an empty one (Qwen3 with thinking off).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% elif enable_thinking is defined and enable_thinking %}{{ '<think>\\n' }}{% endif %}"
    "{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "What is two plus two? Two plus two is four. Hello world, hello there! " * 4,
    "Okay, the user asks a question. Let me think about the answer step by step. " * 4,
    "system user assistant message content answer question think reasoning " * 4,
    "0123456789 + - * / = ( ) [ ] { } < > | : ; , . ! ? \n\n" * 4,
]


def build_tokenizer(out: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(THINK) - len(TOOL),
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.add_tokens(THINK + TOOL, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    ids: dict[str, Any] = {t: fast.convert_tokens_to_ids(t) for t in SPECIAL + THINK + TOOL}
    # what a grammar lets a random model repeat forever: the tests bias these away
    ids["whitespace"] = [
        i for i in range(len(fast)) if fast.decode([i]) and not fast.decode([i]).strip()
    ]
    return ids


def build_model(out: Path, ids: dict[str, Any]) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # the CPU attention backend needs 32, 64, 80, ...; 16 crashes it
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]
    ).save_pretrained(out)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(out)
    build_model(out, ids)
    (out / "token_ids.json").write_text(json.dumps(ids))
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
