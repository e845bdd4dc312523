"""ARCModel: an encoder and one adapter per frozen decoder.

    text -> chunks (model/chunking.py) -> encoder (pooled, model/encoder.py) -> adapter (projector,
    model/adapter.py) -> vectors spliced among the decoder's text embeddings (model/splice.py)
    -> frozen decoder -> next-token loss (`forward`) or answers (`generate`, model/generate.py).

Only the encoder and the adapters are trained and saved; the decoders are named in the config.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..config import PRESETS, ARCConfig
from ..devices import cast_weights
from . import generate as generation
from . import saved
from .adapter import DecoderAdapter
from .chunking import Chunk, chunk_document
from .compression import compress_documents
from .contrast import Contrast, contrastive_loss
from .decoder import load_frozen_decoder, target_logits
from .decoder_names import decoder_index
from .deferred import DecoderList, DeferredDecoder, DeferredTokenizer, TokenizerList, decoder_width
from .distill import Distillation, distillation_loss
from .encoder import Encoder
from .generate import Generation
from .prefix import PrefixMemo
from .prompting import Compressed, check_positions, prompt_positions
from .registry import resolve_model
from .splice import Sample, loss_positions, mismatched, splice

DECODERS = "decoders."  # state-dict names of the frozen decoders: never trained, never saved


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
                decoder_width(d),
                config.memory_tokens,
                config.projector_input == "standardize",
            )
            for d in decoders
        )
        # Registered so .to() and FSDP see them; frozen, kept in eval mode, never saved. A
        # DeferredDecoder (from_pretrained) is read, with its tokenizer, on first use.
        self.decoders = DecoderList(decoders)
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizers = TokenizerList(decoder_tokenizers)
        # (decoder, prefix embeddings [P, d], their keys/values): the shots of an evaluation,
        # computed for the first batch and reused by the next ones (see generate)
        self._prefix_memo = PrefixMemo()
        self._shared_vocab: dict[int, bool] = {}  # decoder -> its tokenizer has the encoder's vocabulary
        self._pinned_fingerprint: str | None = None  # set by to_dtype

    @classmethod
    def from_config(
        cls,
        config: ARCConfig | str,
        pretrained: bool = True,
        decoder_dtype: torch.dtype = torch.float32,
        encoder_dir: str | Path | None = None,
        deferred_widths: list[int] | None = None,
    ) -> ARCModel:
        """A model with untrained adapters and the frozen decoders the config (or preset) names;
        the encoder cut from the backbone, or (`encoder_dir`, a saved model's) built untrained.
        `pretrained=False` initialises the backbone and decoders randomly (tests, dry runs).
        `decoder_dtype`: what the frozen decoders are stored in (bfloat16 halves their memory on a
        GPU; float32, the default, is faster on a CPU). The encoder and adapters stay float32.
        `deferred_widths`: the decoders' widths, known from a saved model; then no decoder is read
        before it is used (model/deferred.py)."""
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown preset {config!r}; presets: {sorted(PRESETS)}")
            config = PRESETS[config]
        if encoder_dir is None:
            backbone = resolve_model(config.backbone)
            encoder = Encoder.from_backbone(backbone, config, pretrained=pretrained)
            tokenizer = AutoTokenizer.from_pretrained(backbone)
        else:
            encoder, tokenizer = Encoder.from_saved(encoder_dir, config), AutoTokenizer.from_pretrained(encoder_dir)
        if deferred_widths is not None:
            decoders = [
                DeferredDecoder(name, width, config.attn_implementation, pretrained, decoder_dtype)
                for name, width in zip(config.decoders, deferred_widths, strict=True)
            ]
            return cls(config, encoder, decoders, tokenizer, [DeferredTokenizer(name) for name in config.decoders])
        paths = [resolve_model(d) for d in config.decoders]
        decoders = [
            load_frozen_decoder(p, config.attn_implementation, pretrained, AutoConfig.from_pretrained(p), decoder_dtype)
            for p in paths
        ]
        return cls(config, encoder, decoders, tokenizer, [AutoTokenizer.from_pretrained(p) for p in paths])

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
    def decoder_widths(self) -> list[int]:
        """Each decoder's hidden size (what its adapter projects to), without reading any decoder."""
        return [a.up.out_features for a in self.adapters]

    @property
    def vector_dim(self) -> int:
        """Width of the compressed vectors compress() returns and a store keeps."""
        return self.adapters[0].vector_dim

    def decoder_index(self, decoder: int | str) -> int:
        """The index of a decoder given by index or by name ("gemma3-270m", as `config.decoders`
        lists it: model/decoder_names.py); ValueError naming the decoders this model has."""
        return decoder_index(self.config.decoders, decoder)

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

    def encode_segments(self, segments: list[list[int]], decoder: int | str) -> list[torch.Tensor]:
        """Encoder token ids per segment -> bottleneck vectors per segment [m_i, bottleneck]."""
        adapter = self.adapters[self.decoder_index(decoder)]
        pooled, counts = self.pooled_outputs(segments, adapter)
        bottleneck = adapter.compress(pooled)  # [S, M, d_b]
        return [bottleneck[i, :m] for i, m in enumerate(counts)]

    def pooled_outputs(self, segments: list[list[int]], adapter) -> tuple[torch.Tensor, list[int]]:
        """Encoder token ids per segment -> right-padded pooled outputs [S, M, d_e] and counts."""
        return self.encoder.encode_ids(segments, self.encoder_tokenizer.pad_token_id or 0, adapter.memory)

    @torch.no_grad()
    def compress(self, texts: str | list[str], decoder: int | str = 0, batch_size: int = 16) -> list[Compressed]:
        """Compress documents into bottleneck vectors that can be stored and spliced later (the one
        compressor of the library, the store and the service: model/compression.py)."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise TypeError("compress() takes a non-empty list of strings")
        return compress_documents(self, texts, self.decoder_index(decoder), batch_size)

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

    def forward(
        self,
        samples: list[Sample],
        decoder: int | str = 0,
        special: str = "cont",
        with_accuracy: bool = False,
        distill: Distillation | None = None,
        contrast: Contrast | None = None,
    ):
        """Summed next-token loss over the batch's supervised text tokens, and how many there are.

        Returns (loss_sum, n_tokens): summed, so that gradient accumulation and data-parallel ranks
        weight every token equally. `special`: the token after each compressed segment (Batch.special).
        `with_accuracy` adds how many supervised tokens are the decoder's argmax. `distill` adds its
        weight times the summed KL to the decoder reading the documents as text (model/distill.py);
        `contrast` a hinge on the content gap, the batch read a second time with swapped documents
        in the same forward (model/contrast.py)."""
        if contrast is not None and (distill is not None or with_accuracy):
            raise ValueError("the contrastive loss combines with neither distillation nor accuracy counts")
        right_samples = len(samples)
        if contrast is not None:
            samples = samples + mismatched(samples)
        decoder = self.decoder_index(decoder)
        dec = self.decoders[decoder]
        blocks = self.sample_blocks(samples, decoder, special)  # per sample [m_i (+1), d_dec] each
        embed = dec.get_input_embeddings()
        text = [embed(torch.tensor(s.text_ids, device=self.device)) for s in samples]  # [n_i, d_dec] each
        batch = splice(text, blocks, [s.offsets for s in samples])  # right-padded [B, L, d_dec]
        check_positions(self, batch.embeds.shape[1], 0, decoder)
        index, labels, tokens = loss_positions(batch, samples, self.config.supervise_first_token)
        if index.numel() == 0:
            raise ValueError("no supervised token in this batch")
        logits = target_logits(dec, batch.embeds, batch.attention_mask, batch.position_ids, index)  # [T, V]
        if contrast is not None:
            token_losses = F.cross_entropy(logits, labels, reduction="none")  # [T]
            return contrastive_loss(token_losses, [i for i, _ in tokens], right_samples, contrast)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        if distill is not None and any(s.segments for s in samples):
            loss = loss + distillation_loss(self, distill, logits, samples, tokens, decoder)
        if with_accuracy:
            return loss, index.numel(), int((logits.argmax(-1) == labels).sum())
        return loss, index.numel()

    def check_prompt(
        self,
        prompt: list,
        decoder: int | str,
        max_new_tokens: int,
        special: str | None = "cont",
        doc_chunks=None,
        window: int | None = None,
    ) -> int:
        """Refuse (ValueError) a prompt that, with max_new_tokens, needs more positions than the
        decoder has (or than `window`), counted from token counts before anything is compressed
        (prompting.prompt_positions; `doc_chunks` as there). Returns the prompt's positions."""
        decoder = self.decoder_index(decoder)
        positions = prompt_positions(self, prompt, decoder, special, doc_chunks)
        check_positions(self, positions, max_new_tokens, decoder, window)
        return positions

    def shares_vocabulary(self, decoder: int | str) -> bool:
        """Whether the decoder's tokenizer has the encoder's vocabulary (ids mean the same tokens)."""
        decoder = self.decoder_index(decoder)
        if decoder not in self._shared_vocab:
            enc, dec = self.encoder_tokenizer, self.decoder_tokenizers[decoder]
            self._shared_vocab[decoder] = enc is dec or (len(enc) == len(dec) and enc.get_vocab() == dec.get_vocab())
        return self._shared_vocab[decoder]

    def generate(self, prompts, decoder: int | str = 0, **options) -> list[Generation]:
        """Answer prompts of text (str), documents (Doc) and stored vectors (Compressed):
        model/generate.py's `generate`, with its options (max_new_tokens, temperature, stop, ...)."""
        return generation.generate(self, prompts, self.decoder_index(decoder), **options)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The state dict less the frozen decoders: what a save holds (DTensors when sharded)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(DECODERS)}

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters by name, less the frozen decoders'."""
        return {k: p for k, p in self.named_parameters() if not k.startswith(DECODERS)}

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The model as a saved folder (model/saved.py); decoders are named, not saved.
        `state_dict` replaces the trained tensors (full tensors gathered from FSDP shards)."""
        saved.save_pretrained(self, path, state_dict)

    def save_delta(self, path: str | Path, max_mb: float | None = None, dtype: torch.dtype | None = None) -> int:
        """Save only what differs from the backbone (model/saved.py); returns its size in bytes."""
        return saved.save_delta(self, path, max_mb, dtype)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, decoders: list[str] | None = None, decoder_dtype: torch.dtype = torch.float32
    ) -> ARCModel:
        """A saved folder (full or delta), a run folder (its latest checkpoint) or a shipped model's name
        (model/saved.py); `decoders` replaces the recorded decoder names or paths (same widths).
        Each decoder is read the first time it is used (model/deferred.py): a model serving two
        decoders costs the memory of the one in use."""
        return saved.load(cls, path, decoders, decoder_dtype, deferred=True)

    def to_dtype(self, dtype: torch.dtype) -> ARCModel:
        """Cast every weight to `dtype` for inference (RoPE tables stay float32), keeping the
        fingerprint of the weights before the cast: vectors made at either precision are one store's."""
        self._pinned_fingerprint = self.fingerprint()  # the pinned one if cast before
        cast_weights(self, dtype)
        return self

    def fingerprint(self) -> str:
        """A short hash of the trainable weights: stores refuse vectors from another model.
        A model cast with `to_dtype` keeps the hash of its weights before the cast."""
        return self._pinned_fingerprint or saved.fingerprint(self.trained_state())
