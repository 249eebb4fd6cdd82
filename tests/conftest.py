"""Test-wide setup: no network model hubs, ever; the tiny-Llama builder model tests share."""

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

# Set before any test module imports transformers/ultralytics, which read them at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


TinyLlamaBuilder = Callable[[Iterable[str], int], Path]

# ChatML, as SmolLM2 uses: the tiny models render prompts the way the real one does.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def build_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLlamaBuilder:
    """Build a 2-layer Llama (hidden 64) with a byte-level BPE trained on ``corpus``.

    No pad token on purpose: code under test must fall back to eos, as with many base models.
    """

    def build(corpus: Iterable[str], vocab_size: int) -> Path:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(corpus, trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            unk_token="<|endoftext|>",
        )
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=bpe.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(config)
        # Larger-than-default weights give peaked, input-dependent distributions: mistakes in
        # position or padding handling show up as large log-prob differences, and small LoRA
        # updates can move the output within a few dozen steps.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, 0.2)
        folder = tmp_path_factory.mktemp("tiny-llama")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return build
