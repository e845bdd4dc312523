"""ARCModel: encoder + one adapter per frozen decoder. Compress, score, generate, save, load."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..config import PRESETS, ARCConfig
from ..devices import cast_weights
from ..prompt import Doc
from .adapter import DecoderAdapter
from .chunking import Chunk, chunk_document
from .compression import compress_documents
from .decoder import (
    end_and_pad_ids,
    generate_ids,
    load_frozen_decoder,
    target_logits,
)
from .delta import SHIPPED, check_checksum, delta_of, expected_in_delta, shipped_folder
from .detokenize import StopStrings
from .distill import Distillation, kl_to_teacher, kl_to_top_k, teacher_inputs, teacher_targets
from .encoder import Encoder
from .prefix import PrefixMemo
from .prompting import Compressed, prompt_positions, splice_prompts
from .registry import resolve_model, sha256_of
from .splice import Sample, loss_positions, splice
from .weights import check_tensors, read_weights, shapes_of

FORMAT_VERSION = 1
CONFIG_FILE = "arc_config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_DIR = "encoder"  # the truncated backbone's HF config and tokenizer


class PromptTooLong(ValueError):
    """A sequence longer than the decoder's positions (or a stated window): refused, never cut."""


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_length: int  # decoder input positions: text tokens + compressed vectors + special tokens
    document_tokens: int  # decoder-tokenizer tokens of the compressed documents
    compressed_vectors: int  # vectors those documents became (special tokens excluded)

    @property
    def compression_ratio(self) -> float | None:
        return self.document_tokens / self.compressed_vectors if self.compressed_vectors else None


@dataclass
class PromptEmbeddings:
    """One prompt as the decoder reads it: text embeddings with compressed blocks spliced in."""

    embeds: torch.Tensor  # [L, d_dec]
    document_tokens: int  # decoder-tokenizer tokens of the compressed documents
    compressed_vectors: int  # vectors those documents became (special tokens excluded)


class ARCModel(nn.Module):
    def __init__(
        self,
        config: ARCConfig,
        encoder: Encoder,
        decoders: list[nn.Module],
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizers: list[PreTrainedTokenizerBase],
    ):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.adapters = nn.ModuleList(
            DecoderAdapter(
                encoder.hidden_size,
                config.bottleneck,
                d.config.hidden_size,
                config.memory_tokens,
                config.projector_input == "standardize",
            )
            for d in decoders
        )
        # Registered so .to() and FSDP see them; frozen, kept in eval mode, never saved.
        self.decoders = nn.ModuleList(decoders)
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizers = decoder_tokenizers
        # (decoder, prefix embeddings [P, d], their keys/values): the shots of an evaluation,
        # computed for the first batch and reused by the next ones (see generate)
        self._prefix_memo = PrefixMemo()
        self._shared_vocab: dict[int, bool] = {}  # decoder -> its tokenizer has the encoder's vocabulary
        self._pinned_fingerprint: str | None = None  # set by to_dtype

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls, config: ARCConfig | str, pretrained: bool = True, decoder_dtype: torch.dtype = torch.float32
    ) -> ARCModel:
        """Build a fresh model: encoder from the backbone, untrained adapters, frozen decoders.

        `pretrained=False` initialises the backbone and decoders randomly (tests, dry runs).
        `decoder_dtype`: what the frozen decoders are stored in (bfloat16 halves their memory on a
        GPU; float32, the default, is faster on a CPU). The encoder and adapters stay float32.
        """
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown preset {config!r}; presets: {sorted(PRESETS)}")
            config = PRESETS[config]
        backbone = resolve_model(config.backbone)
        encoder = Encoder.from_backbone(backbone, config, pretrained=pretrained)
        return cls._with_decoders(config, encoder, AutoTokenizer.from_pretrained(backbone), pretrained, decoder_dtype)

    @classmethod
    def from_saved_architecture(
        cls, path: str | Path, config: ARCConfig, pretrained: bool = True, decoder_dtype: torch.dtype = torch.float32
    ) -> ARCModel:
        """The model a saved folder describes, before any of its weights are read: the encoder
        built from the folder's (truncated) backbone config and tokenizer, untrained adapters, and
        the frozen decoders `config` names. `from_pretrained` and training warm starts load into it."""
        path = Path(path)
        hf_config = AutoConfig.from_pretrained(path / ENCODER_DIR)
        hf_config._attn_implementation = config.attn_implementation
        tokenizer = AutoTokenizer.from_pretrained(path / ENCODER_DIR)
        return cls._with_decoders(config, Encoder(hf_config, config), tokenizer, pretrained, decoder_dtype)

    @classmethod
    def _with_decoders(
        cls, config: ARCConfig, encoder: Encoder, encoder_tokenizer, pretrained: bool, decoder_dtype: torch.dtype
    ) -> ARCModel:
        paths = [resolve_model(d) for d in config.decoders]
        decoders = [
            load_frozen_decoder(
                p, config.attn_implementation, pretrained, AutoConfig.from_pretrained(p), dtype=decoder_dtype
            )
            for p in paths
        ]
        return cls(config, encoder, decoders, encoder_tokenizer, [AutoTokenizer.from_pretrained(p) for p in paths])

    def train(self, mode: bool = True):
        super().train(mode)
        self.decoders.eval()  # frozen decoders never switch to training behaviour
        return self

    @property
    def device(self) -> torch.device:
        return self.adapters[0].rec.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the trained weights (encoder, adapters): compressed vectors enter in it."""
        return self.adapters[0].rec.dtype

    @property
    def vector_dim(self) -> int:
        """Width of the compressed vectors compress() returns and a store keeps."""
        return self.adapters[0].vector_dim

    def trainable_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("decoders.")]

    # ----------------------------------------------------------------------------- encoder side
    def _check_decoder(self, decoder: int) -> int:
        if not isinstance(decoder, int) or not 0 <= decoder < len(self.decoders):
            names = ", ".join(f"{i}: {n}" for i, n in enumerate(self.config.decoders))
            raise ValueError(f"decoder index {decoder!r} does not exist; this model has {names}")
        return decoder

    def chunks_of(self, text: str, chunk_tokens: int | None = None) -> list[Chunk]:
        """A document's chunks (encoder ids and character spans) of `chunk_tokens` (default: the
        config's), cut at word boundaries (model/chunking.py); more than max_chunks is an error."""
        size = self.config.chunk_tokens if chunk_tokens is None else chunk_tokens
        limit = self.encoder.hf_config.max_position_embeddings
        if size > limit:
            raise ValueError(f"chunk_tokens={size} exceeds the encoder's {limit} positions")
        chunks = chunk_document(text, self.encoder_tokenizer, size)
        if len(chunks) > self.config.max_chunks:
            raise ValueError(
                f"document of {sum(len(c.encoder_ids) for c in chunks)} encoder tokens needs {len(chunks)} chunks of "
                f"{size}, more than max_chunks={self.config.max_chunks}; raise max_chunks or chunk_tokens"
            )
        return chunks

    def tokenize_document(self, text: str) -> list[list[int]]:
        """Encoder token ids of a document's chunks."""
        return [c.encoder_ids for c in self.chunks_of(text)]

    def encode_segments(self, segments: list[list[int]], decoder: int) -> list[torch.Tensor]:
        """Encoder token ids per segment -> bottleneck vectors per segment [m_i, bottleneck]."""
        adapter = self.adapters[self._check_decoder(decoder)]
        pooled, counts = self._pooled(segments, adapter)
        bottleneck = adapter.compress(pooled)  # [S, M, d_b]
        return [bottleneck[i, :m] for i, m in enumerate(counts)]

    def _pooled(self, segments: list[list[int]], adapter) -> tuple[torch.Tensor, list[int]]:
        """Encoder token ids per segment -> right-padded pooled outputs [S, M, d_e] and counts."""
        lengths = [len(s) for s in segments]
        if min(lengths) < 1:
            raise ValueError("cannot compress an empty segment")
        pad = self.encoder_tokenizer.pad_token_id or 0
        ids = torch.full((len(segments), max(lengths)), pad, dtype=torch.long)
        for i, seg in enumerate(segments):
            ids[i, : len(seg)] = torch.tensor(seg)
        return self.encoder(ids.to(self.device), lengths, adapter.memory)

    @torch.no_grad()
    def calibrate_projector_inputs(self, segments: list[list[int]], batch_size: int = 16) -> bool:
        """Measure the per-dimension mean and spread of the pooled encoder outputs on these
        segments (encoder token ids) for every adapter that standardizes its input and has not
        been calibrated. Returns whether any adapter was."""
        todo = [a for a in self.adapters if hasattr(a, "calibrated") and not bool(a.calibrated)]
        if not todo:
            return False
        if not segments:
            raise ValueError("calibrating the projector inputs needs at least one segment")
        for adapter in todo:
            rows = []
            for start in range(0, len(segments), batch_size):
                pooled, counts = self._pooled(segments[start : start + batch_size], adapter)
                rows += [pooled[i, :m] for i, m in enumerate(counts)]
            pooled = torch.cat(rows).float()  # [R, d_e]
            adapter.input_mean.copy_(pooled.mean(0))
            adapter.input_scale.copy_(pooled.std(0, correction=0).clamp(min=1e-3))
            adapter.calibrated.fill_(True)
        return True

    @torch.no_grad()
    def fit_projectors_to_embeddings(self, segments: list[list[int]], batch_size: int = 16) -> dict[int, float]:
        """Start each projector from the least-squares map, at pooling factor 1, from the encoder's
        output at every token to the decoder's embedding of that token (segments: encoder token ids).

        A frozen decoder reads vectors that look like its own token embeddings at once (it copies
        them as text); from there a pooling-factor curriculum (x1 -> x2 -> x4, TrainConfig
        .pooling_schedule) keeps the document in the vectors while they learn to pack more tokens.
        Needs decoders that share the encoder's vocabulary. Returns R^2 per decoder."""
        if not segments:
            raise ValueError("fitting the projectors needs at least one segment")
        r2 = {}
        for decoder, adapter in enumerate(self.adapters):
            if not self.shares_vocabulary(decoder):
                raise ValueError(
                    f"projector_init=lstsq needs a decoder with the encoder's vocabulary; decoder {decoder} "
                    f"({self.config.decoders[decoder]}) has another tokenizer"
                )
            rows = []
            with self.encoder.pooling_factor(1):
                for start in range(0, len(segments), batch_size):
                    pooled, counts = self._pooled(segments[start : start + batch_size], adapter)
                    rows += [pooled[i, :m] for i, m in enumerate(counts)]
            x = torch.cat(rows).float()  # [R, d_e], one row per encoder token
            ids = torch.tensor([t for seg in segments for t in seg], device=self.device)
            y = self.decoders[decoder].get_input_embeddings()(ids).float()  # [R, d_dec]
            r2[decoder] = adapter.fit_linear(x, y)
        return r2

    @torch.no_grad()
    def compress(self, texts: str | list[str], decoder: int = 0, batch_size: int = 16) -> list[Compressed]:
        """Compress documents into bottleneck vectors that can be stored and spliced later (the one
        compressor of the library, the store and the service: model/compression.py)."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise TypeError("compress() takes a non-empty list of strings")
        return compress_documents(self, texts, self._check_decoder(decoder), batch_size)

    def decoder_blocks(self, chunks: list[torch.Tensor], decoder: int, special: str | None) -> list[torch.Tensor]:
        """Bottleneck chunks -> decoder-space blocks [m_i (+1), d_dec], special token appended.

        Chunks are moved to the adapter's device and dtype first: vectors a store kept in float32
        feed a bfloat16 model, and a bfloat16 model's vectors a float32 one."""
        adapter = self.adapters[decoder]
        blocks = []
        for chunk in chunks:
            chunk = chunk.to(device=adapter.rec.device, dtype=adapter.rec.dtype)
            if self.config.special_tokens and special is not None:
                chunk = torch.cat([chunk, adapter.special_bottleneck(special)[None]])
            blocks.append(adapter.expand(chunk))
        return blocks

    def sample_blocks(self, samples: list[Sample], decoder: int, special: str) -> list[list[torch.Tensor]]:
        """Each sample's segments compressed in one encoder batch, as decoder blocks [m_i (+1), d_dec]."""
        segments = [seg for s in samples for seg in s.segments]
        vectors = self.encode_segments(segments, decoder) if segments else []
        blocks, cursor = [], 0
        for s in samples:
            blocks.append(self.decoder_blocks(vectors[cursor : cursor + len(s.segments)], decoder, special))
            cursor += len(s.segments)
        return blocks

    # ----------------------------------------------------------------------------- training
    def loss(
        self,
        samples: list[Sample],
        decoder: int = 0,
        special: str = "cont",
        with_accuracy: bool = False,
        distill: Distillation | None = None,
    ):
        """Summed next-token loss over supervised text tokens, and how many there are.

        Returns (loss_sum, n_tokens); divide for the mean. Summing lets gradient accumulation and
        data-parallel ranks weight every token equally. `with_accuracy` adds a third value: how
        many supervised tokens are the decoder's argmax (teacher-forced accuracy). `distill` adds
        its weight times the summed KL to the decoder reading the documents as text (model/distill.py).
        """
        self._check_decoder(decoder)
        dec = self.decoders[decoder]
        blocks = self.sample_blocks(samples, decoder, special)
        embed = dec.get_input_embeddings()
        text = [embed(torch.tensor(s.text_ids, device=self.device)) for s in samples]
        batch = splice(text, blocks, [s.offsets for s in samples])
        self._check_positions(batch.embeds.shape[1], 0, decoder)
        index, labels, tokens = loss_positions(batch, samples, self.config.supervise_first_token)
        if index.numel() == 0:
            raise ValueError("no supervised token in this batch")
        logits = target_logits(dec, batch.embeds, batch.attention_mask, batch.position_ids, index)  # [T, V]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        if distill is not None and any(s.segments for s in samples):
            if distill.cache is not None:  # the teacher's top-k, computed before the run
                values, indices = distill.cache.rows(samples, tokens, decoder, distill.k)  # [T, k] each
                kl = kl_to_top_k(logits, values, indices, distill.temperature)
            else:
                kl = kl_to_teacher(logits, self._teacher_logits(samples, tokens, decoder), distill.temperature)
            loss = loss + distill.weight * kl
        if with_accuracy:
            return loss, index.numel(), int((logits.argmax(-1) == labels).sum())
        return loss, index.numel()

    @torch.no_grad()
    def teacher_top_k(
        self, samples: list[Sample], decoder: int, k: int
    ) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Per sample: the supervised text tokens the decoder reading its documents as text
        predicts, and its top-k logits there, (tokens, values [n, k] float32, indices [n, k]),
        largest first: what a teacher cache stores."""
        docs = [[self._decoder_ids(seg, decoder) for seg in s.segments] for s in samples]
        tokens = teacher_targets(samples, docs)
        if not tokens:
            return [([], torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)) for _ in samples]
        values, indices = self._teacher_logits(samples, tokens, decoder).float().topk(k, dim=-1)
        out = []
        for i in range(len(samples)):
            rows = [r for r, (j, _) in enumerate(tokens) if j == i]
            out.append(([tokens[r][1] for r in rows], values[rows].cpu(), indices[rows].cpu()))
        return out

    @torch.no_grad()
    def _teacher_logits(self, samples: list[Sample], tokens: list[tuple[int, int]], decoder: int) -> torch.Tensor:
        """[T, V] logits of the decoder reading each sample's documents as text, for the
        supervised (sample, text token) pairs `tokens`."""
        dec = self.decoders[decoder]
        docs = [[self._decoder_ids(seg, decoder) for seg in s.segments] for s in samples]
        texts, predictors = teacher_inputs(samples, docs, tokens)
        embed = dec.get_input_embeddings()
        batch = splice(
            [embed(torch.tensor(t, device=self.device)) for t in texts], [[]] * len(texts), [[]] * len(texts)
        )
        L = batch.embeds.shape[1]
        index = torch.tensor([i * L + p for i, p in predictors], dtype=torch.long, device=self.device)
        return target_logits(dec, batch.embeds, batch.attention_mask, batch.position_ids, index)

    def check_prompt(
        self,
        prompt: list,
        decoder: int,
        max_new_tokens: int,
        special: str | None = "cont",
        doc_chunks=None,
        window: int | None = None,
    ) -> int:
        """Refuse (ValueError) a prompt that, with max_new_tokens, needs more positions than the
        decoder has (or than `window`), counted from token counts before anything is compressed
        (prompting.prompt_positions; `doc_chunks` as there). Returns the prompt's positions."""
        positions = prompt_positions(self, prompt, decoder, special, doc_chunks)
        self._check_positions(positions, max_new_tokens, decoder, window)
        return positions

    def _check_positions(self, prompt_positions: int, new_tokens: int, decoder: int, window: int | None = None) -> None:
        """Refuse, before running anything, a sequence longer than the decoder's positions, or
        than `window` positions when one is given (an evaluation's stated context window)."""
        limit = getattr(self.decoders[decoder].config, "max_position_embeddings", None)
        if window is not None and (limit is None or window < limit):
            if window < 1:
                raise ValueError(f"window must be at least 1 position, got {window}")
            limit, whose = window, f"the window of {window} positions"
        else:
            whose = f"decoder {decoder}'s {limit}"
        if limit is not None and prompt_positions + new_tokens > limit:
            asked = f" + {new_tokens} new tokens" if new_tokens else ""
            raise PromptTooLong(
                f"the input takes {prompt_positions} decoder positions{asked}, more than {whose}: "
                "shorten the prompt or documents, or ask for fewer new tokens"
            )

    def _decoder_ids(self, encoder_ids: list[int], decoder: int) -> list[int]:
        """Decoder token ids of a segment given in encoder token ids (the same ids when the two
        tokenizers share a vocabulary, else through the text)."""
        if self.shares_vocabulary(decoder):
            return list(encoder_ids)
        enc, dec = self.encoder_tokenizer, self.decoder_tokenizers[decoder]
        return dec(enc.decode(encoder_ids), add_special_tokens=False)["input_ids"]

    def shares_vocabulary(self, decoder: int) -> bool:
        """Whether the decoder's tokenizer has the encoder's vocabulary (ids mean the same tokens)."""
        if decoder not in self._shared_vocab:
            enc, dec = self.encoder_tokenizer, self.decoder_tokenizers[decoder]
            self._shared_vocab[decoder] = enc is dec or (len(enc) == len(dec) and enc.get_vocab() == dec.get_vocab())
        return self._shared_vocab[decoder]

    # ----------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        prompts,
        decoder: int = 0,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        batch_size: int = 8,
        special: str = "cont",
        share_prefix: bool = True,
        on_token: Callable[[int, list[int]], bool] | None = None,
        window: int | None = None,
    ) -> list[Generation]:
        """Answer prompts whose parts are text (str), documents to compress (Doc) or stored
        vectors (Compressed). Greedy at temperature 0; stops at EOS or any `stop` string.
        `special="rec"` follows each document with <Rec>: the decoder then reconstructs it.
        `share_prefix` runs the decoder once over the positions all prompts start with (few-shot
        examples) and reuses their keys and values, for this batch and the following ones.
        `on_token(i, ids)` is called after every new token of prompt i with its new token ids so
        far; it may stream them, and returning True ends prompt i there (a client that has gone).
        `window`: refuse (PromptTooLong) any prompt whose positions plus `max_new_tokens` exceed
        it, as for the decoder's own limit: a context window smaller than the decoder's."""
        if not isinstance(prompts, list) or not prompts:
            raise TypeError("generate() takes a non-empty list of prompts")
        if all(isinstance(p, (str, Doc, Compressed)) for p in prompts):
            prompts = [prompts]  # a single prompt given as a flat list of parts
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self._check_decoder(decoder)
        results = []
        for start in range(0, len(prompts), batch_size):
            results += self._generate_batch(
                prompts[start : start + batch_size],
                decoder,
                max_new_tokens,
                temperature,
                top_p,
                stop or [],
                seed,
                special,
                share_prefix,
                None if on_token is None else (lambda i, ids, start=start: on_token(start + i, ids)),
                window,
            )
        return results

    @torch.no_grad()
    def prompt_embeddings(self, prompts, decoder: int = 0) -> list[PromptEmbeddings]:
        """The decoder input embeddings generate() would feed, per prompt, without running the decoder.

        For engines that take prompt embeddings (vLLM's `prompt_embeds`): positions run 0..L-1 over
        text tokens and spliced vectors alike, so the engine's own positions match.
        """
        if not isinstance(prompts, list) or not prompts:
            raise TypeError("prompt_embeddings() takes a non-empty list of prompts")
        if all(isinstance(p, (str, Doc, Compressed)) for p in prompts):
            prompts = [prompts]  # a single prompt given as a flat list of parts
        self._check_decoder(decoder)
        batch, stats = splice_prompts(self, prompts, decoder)
        real = batch.attention_mask.bool()  # [B, L]; left padding is dropped below
        return [PromptEmbeddings(batch.embeds[i][real[i]], *stats[i]) for i in range(len(prompts))]

    def _generate_batch(
        self,
        prompts,
        decoder,
        max_new_tokens,
        temperature,
        top_p,
        stop,
        seed,
        special,
        share_prefix=True,
        on_token=None,
        window=None,
    ):
        dec, tokenizer = self.decoders[decoder], self.decoder_tokenizers[decoder]
        for prompt in prompts:  # before any document is compressed
            self.check_prompt(prompt, decoder, max_new_tokens, special, window=window)
        batch, stats = splice_prompts(self, prompts, decoder, special)
        embeds, mask, positions, cache = (
            self._prefix_memo.split(self.decoders[decoder], decoder, batch)
            if share_prefix
            else (batch.embeds, batch.attention_mask, batch.position_ids, None)
        )
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed if seed is not None else random.randrange(2**31))

        stops = [StopStrings(tokenizer, stop) for _ in prompts]  # each decodes only its newest tokens

        def should_stop(i, ids):
            if on_token is not None and on_token(i, ids):
                return True
            return stops[i].reached(ids)

        eos, pad = end_and_pad_ids(dec, tokenizer)
        new_ids = generate_ids(
            dec, embeds, mask, positions, max_new_tokens, eos, pad, temperature, top_p, generator, should_stop, cache
        )
        out = []
        for i, ids in enumerate(new_ids):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            out.append(Generation(text, ids, int(batch.attention_mask[i].sum()), *stats[i]))
        return out

    # ----------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Weights (encoder + adapters) in safetensors, config in JSON, the encoder's HF config
        and tokenizer beside them. Decoders are not saved: they are named in the config.

        `state_dict` replaces this module's own tensors (the trainer passes full tensors gathered
        from sharded FSDP parameters)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = saved_tensors(state_dict or self.state_dict())
        dims = [d.config.hidden_size for d in self.decoders]
        write_saved_model(path, state, self.config, dims, self.encoder.hf_config, self.encoder_tokenizer)

    def save_delta(self, path: str | Path, max_mb: float | None = None, dtype: torch.dtype | None = None) -> int:
        """Save only what differs from the backbone (model/delta.py): the trained encoder blocks,
        projectors and special tokens. `from_pretrained` rebuilds the rest from the backbone, bit
        for bit unless `dtype` (e.g. torch.float16: half the bytes) rounds the saved tensors.
        Refuses (before writing) a delta larger than `max_mb`. Returns its size in bytes."""
        state = saved_tensors(self.state_dict())
        backbone = Encoder.from_backbone(resolve_model(self.config.backbone), self.config).state_dict()
        delta = delta_of(state, {f"encoder.{k}": v for k, v in backbone.items()})
        if dtype is not None:
            delta = {k: v.to(dtype) if v.is_floating_point() else v for k, v in delta.items()}
        size = sum(v.numel() * v.element_size() for v in delta.values())
        if max_mb is not None and size > max_mb * 2**20:
            changed = sorted({k.split(".")[2] for k in delta if k.startswith("encoder.layers.")}, key=int)
            raise ValueError(
                f"the delta is {size / 2**20:.1f} MB, over the {max_mb} MB asked for: encoder blocks {changed} "
                "differ from the backbone (train fewer with train_encoder_blocks)"
            )
        dims = [d.config.hidden_size for d in self.decoders]
        write_saved_model(path, delta, self.config, dims, self.encoder.hf_config, None)
        return size

    @classmethod
    def from_pretrained(
        cls, path: str | Path, decoders: list[str] | None = None, decoder_dtype: torch.dtype = torch.float32
    ) -> ARCModel:
        """Load a saved model: a folder (full or delta), or the name of a model shipped in this
        package (model/delta.py SHIPPED, e.g. "smollm2-arc4"). `decoders` overrides the recorded
        decoder names or paths (same count and widths), e.g. to point at local copies.
        `decoder_dtype`: what the frozen decoders are read into (see `from_config`)."""
        pinned = SHIPPED.get(str(path))
        path = shipped_folder(str(path)) or Path(path)
        if not path.is_dir():
            shipped = ", ".join(sorted(SHIPPED))
            raise FileNotFoundError(f"{path} is neither a saved model folder nor a shipped model ({shipped})")
        meta, config = read_saved_config(path)
        if decoders is not None:
            if len(decoders) != len(config.decoders):
                raise ValueError(
                    f"{path} was trained for {len(config.decoders)} decoder(s), got {len(decoders)} replacement(s)"
                )
            config.decoders = list(decoders)
        delta = meta.get("weights") == "delta"
        # a delta's encoder is the backbone's own blocks, overwritten below where they differ
        model = (
            cls.from_config(config, decoder_dtype=decoder_dtype)
            if delta
            else cls.from_saved_architecture(path, config, decoder_dtype=decoder_dtype)
        )
        for i, (dec, dim) in enumerate(zip(model.decoders, meta["decoder_dims"])):
            if dec.config.hidden_size != dim:
                raise ValueError(
                    f"decoder {i} ({config.decoders[i]}) has width "
                    f"{dec.config.hidden_size}, but {path} was trained for width {dim}"
                )
        if delta:
            check_checksum(path / WEIGHTS_FILE, meta.get("sha256"), pinned)
        model.load_weights(path / WEIGHTS_FILE, delta=delta)
        return model

    def load_weights(self, file: str | Path, delta: bool = False) -> None:
        """Load encoder + adapter weights, refusing any missing, unexpected or mis-shaped tensor.
        `delta`: the file may leave out backbone tensors (they keep their current values)."""
        state = read_weights(file)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("decoders.")}
        expected = expected_in_delta(own, state) if delta else shapes_of(own)
        check_tensors(state, expected, f"checkpoint {file} (against this model)")
        self.load_state_dict(state, strict=False)

    def to_dtype(self, dtype: torch.dtype) -> ARCModel:
        """Cast every weight to `dtype` for inference (`devices.cast_weights`: RoPE tables stay
        float32). The fingerprint stays that of the weights before the cast: vectors made at
        either precision belong to one store."""
        if self._pinned_fingerprint is None:
            self._pinned_fingerprint = self.fingerprint()
        cast_weights(self, dtype)
        return self

    def fingerprint(self) -> str:
        """A short hash of the trainable weights: stores refuse vectors from another model.
        A model cast with `to_dtype` keeps the hash of its weights before the cast."""
        if self._pinned_fingerprint is not None:
            return self._pinned_fingerprint
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if not name.startswith("decoders."):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]


def saved_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a save holds of a state dict: everything but the frozen decoders, on the CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if not k.startswith("decoders.")}


def write_saved_model(
    path: str | Path,
    state: dict[str, torch.Tensor],
    config: ARCConfig,
    decoder_dims: list[int],
    encoder_hf_config,
    encoder_tokenizer,
) -> None:
    """The saved-model format, the one place that writes it: encoder + adapter tensors
    (model.safetensors), arc_config.json (format version, config, decoder widths), and the
    truncated backbone's HF config and tokenizer (encoder/). `from_pretrained` reads it back.

    Without a tokenizer the tensors are a delta (model/delta.py): no encoder/ folder (the backbone
    provides it), and arc_config.json records the weights file's SHA-256 for loading to check."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "decoder_dims": list(decoder_dims),
        "encoder_dim": encoder_hf_config.hidden_size,
    }
    if encoder_tokenizer is None:
        meta.update(weights="delta", sha256=sha256_of(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if encoder_tokenizer is not None:
        encoder_hf_config.save_pretrained(path / ENCODER_DIR)
        encoder_tokenizer.save_pretrained(path / ENCODER_DIR)


def read_saved_config(path: str | Path) -> tuple[dict, ARCConfig]:
    """The metadata and ARCConfig of a saved model folder; a missing, corrupt or mistyped
    arc_config.json is an error naming the file and what is wrong with it."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}: not a saved ARC model")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {meta.get('format_version')!r} (expected {FORMAT_VERSION})")
        for key, kind in (("config", dict), ("decoder_dims", list)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"'{key}' is missing or not a {kind.__name__}")
        config = ARCConfig.from_dict(meta["config"], "config")
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{file}: {e}") from None
    return meta, config
