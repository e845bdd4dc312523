"""The largest micro-batch a training config can hand one GPU, as the tensor shapes a memory plan
needs: encoder segments and their padded length, decoder rows and their padded length, and the
positions the loss reads logits at.

Batches are padded to their longest sample, so what sets the memory peak is the longest sample
the config allows: pretraining spans have fixed lengths; a fine-tuning prompt holds up to
n_shots + 1 documents of max_doc_tokens each (or max_chunks chunks of chunk_tokens). The text
around fine-tuning documents (template, question, answer) is not in the config: it is taken as
PROMPT_TEXT_TOKENS per example, ANSWER_TOKENS of them with loss. Encoder and decoder tokenizers
are taken to cut a text into as many tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import ARCConfig
from ..data.sources import parse_sources
from ..model.pooling import pooled_length
from ..training.config import DATA_CONFIGS, TrainConfig

PROMPT_TEXT_TOKENS = 64  # fine-tuning: decoder text tokens per example (template, question, answer)
ANSWER_TOKENS = 32  # fine-tuning: of those, the answer tokens the loss reads


@dataclass(frozen=True)
class StepShape:
    task: str
    segments: int  # S: encoder segments in the micro-batch
    segment_tokens: int  # N: their padded length
    vectors: int  # compressed vectors per segment (after pooling)
    rows: int  # B: decoder rows (samples)
    length: int  # L: their padded length (text, vectors, special tokens)
    loss_tokens: int  # T: positions the LM head and the loss read, whole micro-batch

    @property
    def encoder_tokens(self) -> int:
        return self.segments * self.segment_tokens

    @property
    def decoder_tokens(self) -> int:
        return self.rows * self.length


def compressed_length(n_tokens: int, arc: ARCConfig) -> int:
    """Vectors a segment of n_tokens becomes (Encoder.output_length's rule, without a model)."""
    if arc.pooling == "memory":
        return arc.memory_tokens
    for factor in arc.pooling_factors:
        if factor > 1:
            n_tokens = pooled_length(n_tokens, factor)
    return n_tokens


def data_settings(section: dict) -> dict:
    """A data section's settings, its pipeline's defaults where the config gives none."""
    kind = DATA_CONFIGS[section["kind"]]
    values = {f.name: f.default for f in dataclasses.fields(kind) if f.default is not dataclasses.MISSING}
    values.update({k: v for k, v in section.items() if k not in ("kind", "share")})
    return values


def step_shapes(config: TrainConfig, arc: ARCConfig) -> list[StepShape]:
    """One shape per kind of batch the config draws (pretraining: one per task), over `data`
    and every `data_mix` pipeline."""
    return [shape for _, section in config.data_sections() for shape in section_shapes(section, config, arc)]


def section_shapes(section: dict, config: TrainConfig, arc: ARCConfig) -> list[StepShape]:
    data = data_settings(section)
    B = config.batch_size
    special = 1 if arc.special_tokens else 0
    if section["kind"] == "pretrain":
        seq_len, compress, target = data["seq_len"], data["compress_tokens"], data["target_tokens"]
        prefix = data["prefix_tokens"] if data["prefix"] else 0
        m_rec, m_cont = compressed_length(seq_len, arc), compressed_length(compress, arc)
        shapes = [StepShape("continuation", B, compress, m_cont, B, prefix + m_cont + special + target, B * target)]
        if data["continuation"] < 1:
            supervised = seq_len - 1 + (1 if arc.supervise_first_token else 0)
            shapes.append(StepShape("reconstruction", B, seq_len, m_rec, B, m_rec + special + seq_len, B * supervised))
        return shapes
    sources = parse_sources(data["sources"]) if data.get("sources") else []
    documents = 1 + max([data["n_shots"]] + [s.n_shots for s in sources if s.n_shots is not None])
    if data["chunk_tokens"]:
        per_doc, N = data["max_chunks"], data["chunk_tokens"]
    else:
        per_doc, N = 1, data["max_doc_tokens"]
    m = compressed_length(N, arc)
    length = documents * (per_doc * (m + special) + PROMPT_TEXT_TOKENS)
    return [StepShape("finetune", B * documents * per_doc, N, m, B, length, B * ANSWER_TOKENS)]
