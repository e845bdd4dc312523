"""Where the projectors start, before the first step of a fresh run (trainer.prepare_projectors).

- Standardizing projectors (`projector_input: standardize`) measure the per-dimension mean and
  spread of the pooled encoder outputs once, on a few training segments, and keep them fixed.
- `projector_init: lstsq` starts every fresh projector from the least-squares map from the
  encoder's output at each token to the decoder's embedding of that token: a frozen decoder then
  reads the vectors as its own tokens from step 0. A decoder with another tokenizer is fitted on
  the tokens both vocabularies spell alike (the encoder's `the` -> the decoder's `the`).
- `model.new_projector_from` (warm starts, model_init.py) starts a new decoder's projector from a
  trained decoder's, carried into the new decoder's embedding space through the tokens both
  vocabularies spell alike: the new decoder reads, from step 0, roughly the words the trained one
  reads (a fresh projector first learns the format and, for hundreds of steps, none of the content).
"""

from __future__ import annotations

import torch

from ..model.adapter import SPECIAL_KINDS
from ..model.arc import ARCModel


def pooled_rows(arc: ARCModel, adapter, segments: list[list[int]], batch_size: int) -> torch.Tensor:
    """Every pooled encoder output of these segments (encoder token ids), one row each: [R, d_e]."""
    rows = []
    for start in range(0, len(segments), batch_size):
        pooled, counts = arc.pooled_outputs(segments[start : start + batch_size], adapter)
        rows += [pooled[i, :m] for i, m in enumerate(counts)]
    return torch.cat(rows).float()


@torch.no_grad()
def calibrate_projector_inputs(arc: ARCModel, segments: list[list[int]], batch_size: int = 16) -> bool:
    """Measure the per-dimension mean and spread of the pooled encoder outputs on these
    segments (encoder token ids) for every adapter that standardizes its input and has not
    been calibrated. Returns whether any adapter was."""
    todo = [a for a in arc.adapters if hasattr(a, "calibrated") and not bool(a.calibrated)]
    if not todo:
        return False
    if not segments:
        raise ValueError("calibrating the projector inputs needs at least one segment")
    for adapter in todo:
        pooled = pooled_rows(arc, adapter, segments, batch_size)  # [R, d_e]
        adapter.input_mean.copy_(pooled.mean(0))
        adapter.input_scale.copy_(pooled.std(0, correction=0).clamp(min=1e-3))
        adapter.calibrated.fill_(True)
    return True


@torch.no_grad()
def fit_projectors_to_embeddings(
    arc: ARCModel, segments: list[list[int]], decoders: list[int] | None = None, batch_size: int = 16
) -> dict[int, float]:
    """Start each projector of `decoders` (None: all) from the least-squares map, at pooling
    factor 1, from the encoder's output at every token to the decoder's embedding of that token
    (segments: encoder token ids).

    A frozen decoder reads vectors that look like its own token embeddings at once (it copies
    them as text); from there a pooling-factor curriculum (x1 -> x2 -> x4, TrainConfig
    .pooling_schedule) keeps the document in the vectors while they learn to pack more tokens.
    For a decoder with another vocabulary the rows are the tokens it spells alike (token_spellings);
    the others are left out. Returns R^2 per decoder."""
    if not segments:
        raise ValueError("fitting the projectors needs at least one segment")
    ids = torch.tensor([t for seg in segments for t in seg], device=arc.device)  # [R] encoder ids
    r2 = {}
    for decoder in range(len(arc.adapters)) if decoders is None else decoders:
        adapter = arc.adapters[decoder]
        with arc.encoder.pooling_factor(1):
            x = pooled_rows(arc, adapter, segments, batch_size)  # [R, d_e], one row per encoder token
        target = ids
        if not arc.shares_vocabulary(decoder):
            target = encoder_to_decoder_ids(arc, decoder).to(ids.device)[ids]  # [R], -1: no such token
            kept = target >= 0
            if int(kept.sum()) < 2 * x.shape[1]:
                raise ValueError(
                    f"projector_init=lstsq: decoder {decoder} ({arc.config.decoders[decoder]}) spells only "
                    f"{int(kept.sum())} of the {len(ids)} fitting tokens alike; the fit needs at least "
                    f"{2 * x.shape[1]} (twice the encoder's width)"
                )
            x, target = x[kept], target[kept]
        y = arc.decoders[decoder].get_input_embeddings()(target).float()  # [R', d_dec]
        r2[decoder] = adapter.fit_linear(x, y)
    return r2


def encoder_to_decoder_ids(arc: ARCModel, decoder: int) -> torch.Tensor:
    """[encoder vocabulary]: the decoder's id of the token each encoder token spells alike, -1 where
    the decoder has none (special tokens, and spellings only the encoder has)."""
    enc, dec = arc.encoder_tokenizer, arc.decoder_tokenizers[decoder]
    enc_ids, dec_ids = spelled_alike(enc, dec)
    table = torch.full((max(enc.get_vocab().values()) + 1,), -1, dtype=torch.long)
    table[torch.tensor(enc_ids, dtype=torch.long)] = torch.tensor(dec_ids, dtype=torch.long)
    return table


# how byte-level BPE (GPT-2, SmolLM2) and SentencePiece (Llama-2, Gemma) mark a word's leading space
_SPACE_MARKERS = ("\u0120", "\u2581")  # 'Ġ', '▁'


def token_spellings(tokenizer) -> dict[str, int]:
    """{spelling: token id} of a tokenizer's ordinary tokens spelled in printable ASCII, a
    word-start marker read as a space (' the' for 'Ġthe' and for '▁the'). Tokens of two
    vocabularies with the same spelling stand for the same text. Special tokens are left out;
    of two tokens with one spelling, the lower id is kept."""
    special = set(tokenizer.all_special_tokens)
    spellings: dict[str, int] = {}
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token in special:
            continue
        text = token
        for marker in _SPACE_MARKERS:
            text = text.replace(marker, " ")
        if text and all(32 <= ord(c) < 127 for c in text):
            spellings.setdefault(text, i)
    return spellings


def spelled_alike(first, second) -> tuple[list[int], list[int]]:
    """Ids of the tokens two tokenizers spell alike, in matching order: (first's, second's)."""
    a, b = token_spellings(first), token_spellings(second)
    shared = sorted(set(a) & set(b))
    return [a[s] for s in shared], [b[s] for s in shared]


@torch.no_grad()
def transfer_projector(arc: ARCModel, source: int, target: int, scale: float = 1.0) -> tuple[float, int]:
    """Start decoder `target`'s projector from decoder `source`'s, followed by M: the
    least-squares map from the source decoder's input embeddings to the target's over the tokens
    both vocabularies spell alike, times `scale`. A vector the source decoder reads as a word
    then reaches the target decoder near its embedding of that word. Returns R^2 of M and the
    number of tokens it was fitted on. <Rec>/<Cont> are not touched (`new_special_from`)."""
    src_ids, dst_ids = spelled_alike(arc.decoder_tokenizers[source], arc.decoder_tokenizers[target])
    src_embed, dst_embed = arc.decoders[source].get_input_embeddings(), arc.decoders[target].get_input_embeddings()
    width = src_embed.weight.shape[1]
    if len(src_ids) < 2 * width:
        raise ValueError(
            f"decoders {source} and {target} spell only {len(src_ids)} tokens alike; carrying a "
            f"projector across needs at least {2 * width} (twice the source decoder's width)"
        )
    device = src_embed.weight.device
    # the embedding modules' own forward: some (Gemma) scale the table by sqrt(width)
    x = src_embed(torch.tensor(src_ids, device=device)).float()  # [N, d_src]
    y = dst_embed(torch.tensor(dst_ids, device=device)).float()  # [N, d_dst]
    m = torch.linalg.lstsq(x, y).solution  # [d_src, d_dst]: x @ m ~ y
    r2 = 1.0 - float((x @ m - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    old, new = arc.adapters[source], arc.adapters[target]
    not_projector = ("up", "memory", *SPECIAL_KINDS)  # `up` is carried over below; the rest are not the projector
    projector = {k: v for k, v in old.state_dict().items() if k.split(".")[0] not in not_projector}
    new.load_state_dict(projector, strict=False)  # down and the input statistics, as they are
    new.up.weight.copy_(scale * m.T @ old.up.weight.float())  # [d_dst, d_src] @ [d_src, r] -> [d_dst, r]
    return r2, len(src_ids)
