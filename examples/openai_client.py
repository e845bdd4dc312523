"""The official `openai` client talking to arc-encoder, with compressed documents.

    pip install 'arc-encoder[serve,openai]'
    python examples/openai_client.py                          # a service in this process
    python examples/openai_client.py --url http://127.0.0.1:8000/v1 --model NAME [--api-key KEY]

Without --url it starts the service in a background thread on the embedded default model (or
--model-dir, a trained model folder) and a store in a temporary folder. The untrained default
encoder shows the mechanics, not good answers: train one first (`arc-encoder quickstart`).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

from openai import OpenAI

PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)


@contextlib.contextmanager
def local_service(model_dir: str):
    from arc_encoder.loading import load_model
    from arc_encoder.serving.app import create_app
    from arc_encoder.serving.background import BackgroundServer

    model = load_model(model_dir).eval()
    with tempfile.TemporaryDirectory() as store, BackgroundServer(create_app(model, store, model_name="local")) as s:
        yield f"{s.url}/v1", "local"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running service, ending in /v1")
    parser.add_argument("--model", default="local", help="the server's model id (GET /v1/models)")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--model-dir", default="smollm2-arc4", help="without --url: the model to serve")
    args = parser.parse_args()
    service = contextlib.nullcontext((args.url, args.model)) if args.url else local_service(args.model_dir)
    with service as (url, name):
        client = OpenAI(base_url=url, api_key=args.api_key)
        print("models:", [m.id for m in client.models.list().data])

        # 1. A document compressed for this request (extension field `documents`).
        t = time.perf_counter()
        r = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Who designed the Eiffel Tower?"}],
            max_tokens=24,
            temperature=0,
            extra_body={"documents": [PARAGRAPH]},
        )
        arc = r.model_extra["arc"]
        print(f"\nanswer: {r.choices[0].message.content!r} ({time.perf_counter() - t:.1f} s)")
        print(
            f"prompt positions {r.usage.prompt_tokens}; the document's {arc['document_tokens']} tokens became "
            f"{arc['compressed_vectors']} vectors (x{arc['compression_ratio']:.1f}, {arc['positions_saved']} saved)"
        )

        # 2. Store it once, then read its vectors by id (no encoder run), streaming the answer.
        client.post("/documents", cast_to=object, body={"documents": [{"id": "eiffel", "text": PARAGRAPH}]})
        print("\nstreamed: ", end="", flush=True)
        for chunk in client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "When was the tower built?"}],
            max_tokens=24,
            temperature=0,
            stream=True,
            extra_body={"document_ids": ["eiffel"]},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()

        # 3. Retrieval inside the request: the store's best chunks for a query.
        r = client.completions.create(
            model=name,
            prompt="Question: Who was the tower named after?\nAnswer:",
            max_tokens=16,
            temperature=0,
            extra_body={"retrieve": {"query": "tower named after engineer", "k": 1}},
        )
        print(
            f"\nwith retrieval: {r.choices[0].text!r}; sources {[s['doc_id'] for s in r.model_extra['arc']['sources']]}"
        )


if __name__ == "__main__":
    main()
