"""One chat layout: a model fine-tuned with `chat: true` is served, token for token, the prompt it
was trained on (the OpenAI chat route's prompt equals the fine-tuning prompt of the same example)."""

import json
import os

import pytest

from arc_encoder import Doc
from arc_encoder.data.finetune import FinetuneData, FinetuneDataConfig, Shot
from arc_encoder.model.prompting import build_prompts
from arc_encoder.serving.openai_routes import chat_request_prompt
from arc_encoder.serving.openai_schemas import ChatMessage
from data_tokenizers import CHAT_TEMPLATE, char_tokenizer

SMOLLM2 = os.path.expanduser("~/.cache/arc-encoder/smollm2-135m")
DOCUMENT = "Paris is the capital of France and its largest city."
QUESTION = "What is the capital of France?"


def finetune_sample(tmp_path, model, tokenizer):
    """The chat fine-tuning sample of (DOCUMENT, QUESTION), with no shots."""
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"passage": DOCUMENT, "question": QUESTION, "answer": "Paris"}) + "\n")
    config = FinetuneDataConfig([str(path)], n_shots=0, batch_size=1, chat=True)
    data = FinetuneData(config, model.encoder_tokenizer, tokenizer)
    return data.build([], Shot(DOCUMENT, QUESTION, "Paris"))


def served_prompt(model, tokenizer):
    """Decoder token ids and block offsets of the chat route's prompt for the same question."""
    model.decoder_tokenizers[0] = tokenizer
    parts = chat_request_prompt(tokenizer, [ChatMessage(role="user", content=QUESTION)], [Doc(DOCUMENT)])
    ids, _, offsets, _ = build_prompts(model, [parts], 0)
    return ids[0], offsets[0]


def chat_tokenizer(name: str):
    if name == "char":  # adds a BOS of its own, which a rendered chat must not get twice
        return char_tokenizer(bos=True, chat_template=CHAT_TEMPLATE)
    if not os.path.isdir(SMOLLM2):
        pytest.skip("SmolLM2 tokenizer not cached")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2)


@pytest.mark.parametrize("name", ["char", "smollm2"])
def test_served_chat_prompt_is_the_fine_tuning_prompt(tmp_path, tiny_arc, name):
    model = tiny_arc()
    tokenizer = chat_tokenizer(name)
    sample = finetune_sample(tmp_path, model, tokenizer)
    prompt_length = sample.targets.index(True)  # the reply starts where the loss does
    ids, offsets = served_prompt(model, tokenizer)
    assert tokenizer.decode(ids) == tokenizer.decode(sample.text_ids[:prompt_length])
    assert ids == sample.text_ids[:prompt_length]
    assert offsets == sample.offsets
    assert sample.segments == [c.encoder_ids for c in model.chunks_of(DOCUMENT)]
