"""Distillation: the frozen decoder reading the raw document is the teacher of the same decoder
reading the compressed vectors.

For every supervised text token the teacher is the decoder's next-token distribution when the
compressed blocks of the sample are replaced by the text they stand for. The student is pulled
towards it with KL(teacher || student) at temperature T (scaled by T^2, so its gradients keep
their size as T changes), on top of the cross-entropy. Unlike the cross-entropy, the teacher says
how likely every other token is given the document, a denser signal of what the vectors must
carry.

    sample  text t0 t1 t2, block [v v] (from document d0 d1 d2 d3) at offset 1
    student t0 v v t1 t2          teacher t0 d0 d1 d2 d3 t1 t2
    t1 is predicted by the last v in the student, by d3 in the teacher.

With a teacher cache (teacher_cache.py) the teacher is not run: its top-k logits per supervised
token were computed once and are read from disk, and the KL is taken over those k tokens, both
distributions renormalised over them (`kl_to_top_k`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decoder import target_logits
from .splice import Sample, splice
from .teacher_cache import TeacherCache


@dataclass(frozen=True)
class Distillation:
    weight: float  # of the summed KL against the summed cross-entropy
    temperature: float = 1.0
    cache: TeacherCache | None = None  # cached top-k teacher logits instead of a teacher forward
    k: int | None = None  # with a cache: the first k of its top-k (None: all it holds)

    def __post_init__(self):
        if not self.weight > 0 or not 0 < self.temperature < float("inf"):
            raise ValueError(f"distillation needs weight > 0 and a finite temperature > 0, got {self}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"distillation k must be >= 1, got {self.k}")


def teacher_inputs(
    samples: list[Sample], document_ids: list[list[list[int]]], supervised: list[tuple[int, int]]
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Each sample's text with its documents' decoder token ids in place of the blocks, and for
    every supervised (sample, text token k) the teacher position that predicts it.

    document_ids[i][j]: decoder token ids of segment j of sample i.
    """
    texts, shifts = [], []
    for sample, docs in zip(samples, document_ids):
        ids, shift, cursor = [], [], 0
        for offset, doc in zip(sample.offsets, docs):
            shift += [len(ids) - cursor] * (offset - cursor)  # teacher position of token k, minus k
            ids += sample.text_ids[cursor:offset]
            ids += doc
            cursor = offset
        shift += [len(ids) - cursor] * (len(sample.text_ids) - cursor)
        ids += sample.text_ids[cursor:]
        texts.append(ids)
        shifts.append(shift)
    # text token k of sample i sits at teacher position k + shift; the position before predicts it
    predictors = [(i, k + shifts[i][k] - 1) for i, k in supervised]
    if any(p < 0 for _, p in predictors):
        raise ValueError("distillation: a supervised token has nothing before it in the teacher's input")
    return texts, predictors


def teacher_targets(samples: list[Sample], document_ids: list[list[list[int]]]) -> list[tuple[int, int]]:
    """Every supervised (sample i, text token k) that something precedes in the teacher's input:
    what a teacher cache stores, whichever of them the student's loss then uses."""
    out = []
    for i, (sample, docs) in enumerate(zip(samples, document_ids)):
        lead = sum(len(doc) for offset, doc in zip(sample.offsets, docs) if offset == 0)  # before token 0
        out += [(i, k) for k, t in enumerate(sample.targets or []) if t and (k > 0 or lead > 0)]
    return out


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed KL(teacher || student) over rows of [T, V] logits at `temperature`, times T^2."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2


def kl_to_top_k(
    student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Summed KL(teacher || student) over rows, restricted to each row's teacher top-k tokens with
    both distributions renormalised over those k, at `temperature`, times T^2.

    student_logits [T, V]; teacher_values [T, k] (the teacher's logits at) teacher_indices [T, k].
    Over the full vocabulary (k = V) this is kl_to_teacher. Renormalising, rather than adding a
    bucket for the tail's mass, needs nothing but the k logits, so the temperature stays a
    training setting: the top-k tokens are the same at every temperature.
    """
    picked = student_logits.float().gather(-1, teacher_indices.to(student_logits.device))  # [T, k]
    student = F.log_softmax(picked / temperature, dim=-1)
    teacher = F.log_softmax(teacher_values.to(student_logits.device).float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2


def distillation_loss(
    model, distill: Distillation, logits, samples: list[Sample], tokens, decoder: int
) -> torch.Tensor:
    """`distill.weight` times the summed KL to the teacher of the student's logits [T, V] at the
    supervised (sample, text token) pairs `tokens`: over the cached top-k when the run has a
    teacher cache, else over the vocabulary of the decoder reading the documents as text."""
    if distill.cache is not None:
        values, indices = distill.cache.rows(samples, tokens, decoder, distill.k)  # [T, k] each
        kl = kl_to_top_k(logits, values, indices, distill.temperature)
    else:
        kl = kl_to_teacher(logits, teacher_logits(model, samples, tokens, decoder), distill.temperature)
    return distill.weight * kl


def document_ids(model, encoder_ids: list[int], decoder: int) -> list[int]:
    """Decoder token ids of a segment given in encoder token ids (the same ids when the two
    tokenizers share a vocabulary, else through the text)."""
    if model.shares_vocabulary(decoder):
        return list(encoder_ids)
    enc, dec = model.encoder_tokenizer, model.decoder_tokenizers[decoder]
    return dec(enc.decode(encoder_ids), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def teacher_logits(model, samples: list[Sample], tokens: list[tuple[int, int]], decoder: int) -> torch.Tensor:
    """[T, V] logits of the decoder reading each sample's documents as text, for the
    supervised (sample, text token) pairs `tokens`."""
    dec = model.decoders[decoder]
    docs = [[document_ids(model, seg, decoder) for seg in s.segments] for s in samples]
    texts, predictors = teacher_inputs(samples, docs, tokens)
    embed = dec.get_input_embeddings()
    batch = splice([embed(torch.tensor(t, device=model.device)) for t in texts], [[]] * len(texts), [[]] * len(texts))
    L = batch.embeds.shape[1]
    index = torch.tensor([i * L + p for i, p in predictors], dtype=torch.long, device=model.device)
    return target_logits(dec, batch.embeds, batch.attention_mask, batch.position_ids, index)


@torch.no_grad()
def teacher_top_k(
    model, samples: list[Sample], decoder: int, k: int
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Per sample: the supervised text tokens the decoder reading its documents as text
    predicts, and its top-k logits there, (tokens, values [n, k] float32, indices [n, k]),
    largest first: what a teacher cache stores."""
    docs = [[document_ids(model, seg, decoder) for seg in s.segments] for s in samples]
    tokens = teacher_targets(samples, docs)
    if not tokens:
        return [([], torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)) for _ in samples]
    values, indices = teacher_logits(model, samples, tokens, decoder).float().topk(k, dim=-1)
    out = []
    for i in range(len(samples)):
        rows = [r for r, (j, _) in enumerate(tokens) if j == i]
        out.append(([tokens[r][1] for r in rows], values[rows].cpu(), indices[rows].cpu()))
    return out
