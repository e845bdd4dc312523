"""GPU serving: the frozen decoder runs in vLLM, fed the spliced prompt embeddings.

ARCModel builds each prompt's decoder input (text token embeddings with compressed blocks spliced
in, model/generate.py `prompt_embeddings`); vLLM takes it as `{"prompt_embeds": [L, d]}` (its engine must be
created with `enable_prompt_embeds=True`) and decodes with its own batching and paged KV cache.
The encoder and projector stay in PyTorch. vLLM is optional and imported only here.

Memory: the ARCModel keeps its own copy of the decoder (only its input embeddings are used on this
path), so leave room for it beside vLLM's share (`gpu_memory_utilization`).
"""

from __future__ import annotations

from ..model.generate import Generation, prompt_embeddings
from ..model.registry import resolve_model

INSTALL_HINT = (
    "the vLLM backend needs vLLM (a CUDA GPU build): pip install vllm "
    "(version with prompt-embeds support, >= 0.10), or serve with --backend hf"
)


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return vllm


class VLLMBackend:
    """generate(prompts, decoder, params) with vLLM decoding; see the module doc.

    `engine` and `sampling_params` default to vllm.LLM and vllm.SamplingParams; they can be given
    (an engine with the same generate() interface) to run without vLLM.
    """

    def __init__(
        self, model, decoder: int | str = 0, engine=None, sampling_params=None, dtype: str = "bfloat16", **engine_kwargs
    ):
        import torch

        decoder = model.decoder_index(decoder)
        self.model = model
        self.decoder = decoder
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if engine is None or sampling_params is None:
            vllm = import_vllm()
            sampling_params = sampling_params or vllm.SamplingParams
            if engine is None:
                engine = vllm.LLM(
                    model=resolve_model(model.config.decoders[decoder]),
                    enable_prompt_embeds=True,
                    dtype=str(self.dtype).removeprefix("torch."),
                    **engine_kwargs,
                )
        self.engine = engine
        self.sampling_params = sampling_params

    def generate(self, prompts, decoder: int, params, on_token=None) -> list[Generation]:
        # `on_token` is not called: the engine runs a call to its end (queued jobs are still dropped,
        # and a stream gets its whole text at the end)
        if decoder != self.decoder:
            raise ValueError(f"this vLLM engine runs decoder {self.decoder}, not decoder {decoder}")
        spliced = prompt_embeddings(self.model, prompts, decoder)  # per prompt [L_i, d_dec]
        sampling = self.sampling_params(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
        )
        # CPU tensors in the engine's dtype: vLLM hands the inputs to its engine process.
        inputs = [{"prompt_embeds": p.embeds.detach().to("cpu", self.dtype)} for p in spliced]
        outputs = self.engine.generate(inputs, sampling, use_tqdm=False)
        results = []
        for p, out in zip(spliced, outputs):
            completion = out.outputs[0]
            results.append(
                Generation(
                    completion.text,
                    list(completion.token_ids),
                    p.embeds.shape[0],
                    p.document_tokens,
                    p.compressed_vectors,
                )
            )
        return results


def vllm_backend_factory(**engine_kwargs):
    """A create_app backend: builds the engine in the worker thread that will use it."""

    def build(model, decoder: int):
        return VLLMBackend(model, decoder, **engine_kwargs).generate

    return build
