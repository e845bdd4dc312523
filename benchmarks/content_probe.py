"""An independent, minimal reconstruction probe: the method written again from transformers
alone (none of arc_encoder's model, data or training code), to check the library's results against.

Encoder: the first 12 SmolLM2 blocks, bidirectional; the last block pools by 4 (or the factor of
the schedule), each pooled query attending only its own group's tokens, at its group's position
(a naive loop over groups). One linear projector. Frozen decoder reading
[v_1..v_m][rec] t_1..t_32, loss on t_1..t_32. Held-out: the first span of 64 prose lines never
trained on, and of 64 distinct SQuAD dev paragraphs; right, mismatched (another sample's vectors)
and no vectors, the content gap and token accuracy, always at x4.

    python benchmarks/content_probe.py --model ~/.cache/arc-encoder/smollm2-135m --out probe.jsonl \
        [--pf_schedule 1:25,2:50 --proj_init lstsq]
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--steps", type=int, default=100)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--span", type=int, default=32)
p.add_argument("--lr_enc", type=float, default=1e-4)
p.add_argument("--lr_proj", type=float, default=1e-3)
p.add_argument("--warmup", type=int, default=20)
p.add_argument("--betas", default="0.9,0.95")
p.add_argument("--wd", type=float, default=0.1)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--eval_every", type=int, default=25)
p.add_argument("--bos", type=int, default=-1, help="token id put before the vectors (-1: none)")
p.add_argument("--eos", type=int, default=0, help="append EOS to encoder input")
p.add_argument("--pool", default="group", help="group (own-group attention) or meanout (mean of outputs)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--proj_init", default="random", help="random or lstsq (fit x1 encoder states to token embeddings)")
p.add_argument("--pf_schedule", default="", help="e.g. 1:25,2:50 = factor 1 before step 25, 2 before 50, then 4")
p.add_argument("--out", required=True)
p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
a = p.parse_args()
torch.manual_seed(a.seed)
random.seed(a.seed)

tok = AutoTokenizer.from_pretrained(a.model)
dec = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
dec.requires_grad_(False)
enc = AutoModel.from_pretrained(a.model, dtype=torch.float32, num_hidden_layers=12)
enc.config._attn_implementation = "eager"
for layer in enc.layers:
    layer.self_attn.config._attn_implementation = "eager"
d = enc.config.hidden_size
proj = torch.nn.Linear(d, dec.config.hidden_size, bias=False)
rec = torch.nn.Parameter(torch.ones(d))

# ---- data: 32-token spans of wiki prose (train: all but the last 300 lines)
lines = open(Path(a.data) / "prose" / "wiki.txt").read().splitlines()
train_lines, held_lines = lines[:-300], lines[-300:]


def spans_of(line):
    ids = tok(line, add_special_tokens=False)["input_ids"]
    return [ids[i : i + a.span] for i in range(0, len(ids) - a.span + 1, a.span)]


def train_stream():
    rng = random.Random(a.seed)
    buf = []
    while True:
        order = list(range(len(train_lines)))
        rng.shuffle(order)
        for i in order:
            buf.extend(spans_of(train_lines[i]))
            while len(buf) >= 256:
                j = rng.randrange(len(buf))
                yield buf.pop(j)


held_prose = [spans_of(line)[0] for line in held_lines if spans_of(line)][:64]
squad, seen = [], set()
for line in open(Path(a.data) / "squad" / "dev.jsonl"):
    c = json.loads(line)["context"]
    if c in seen:
        continue
    seen.add(c)
    s = spans_of(c)
    if s:
        squad.append(s[0])
    if len(squad) == 64:
        break


def add_mask(allowed):  # [B,Q,K] bool -> [B,1,Q,K] float additive
    m = torch.zeros(allowed.shape)
    m.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return m[:, None]


FACTOR = [4]


def factor_at(step):
    for item in filter(None, a.pf_schedule.split(",")):
        f, until = (int(x) for x in item.split(":"))
        if step < until:
            return f
    return 4


def encode(spans, factor=None):
    F_ = factor or FACTOR[0]
    ids = torch.tensor([s + ([tok.eos_token_id] if a.eos else []) for s in spans])  # [B, N]
    B, N = ids.shape
    h = enc.embed_tokens(ids)
    pos = torch.arange(N)[None].expand(B, N)
    pe = enc.rotary_emb(h, pos)
    full = add_mask(torch.ones(B, N, N, dtype=torch.bool))
    for layer in enc.layers[:-1]:
        h = layer(h, attention_mask=full, position_ids=pos, position_embeddings=pe)
    last = enc.layers[-1]
    G = (N + F_ - 1) // F_
    if a.pool == "meanout":
        h = last(h, attention_mask=full, position_ids=pos, position_embeddings=pe)
        return torch.stack([h[:, F_ * g : F_ * g + F_].mean(1) for g in range(G)], 1)
    outs = []
    for g in range(G):  # naive per-group loop: F_ tokens + their mean as query
        grp = h[:, F_ * g : F_ * g + F_]
        k = grp.shape[1]
        x = torch.cat([grp, grp.mean(1, keepdim=True)], 1)  # [B, k+1, d]
        gpos = torch.tensor([F_ * g + i for i in range(k)] + [F_ * g])[None].expand(B, k + 1)
        allowed = torch.ones(B, k + 1, k + 1, dtype=torch.bool)
        allowed[:, :, k] = False  # nobody attends the pooled row
        y = last(x, attention_mask=add_mask(allowed), position_ids=gpos, position_embeddings=enc.rotary_emb(x, gpos))
        outs.append(y[:, k])
    return torch.stack(outs, 1)  # [B, G, d]


emb = dec.get_input_embeddings()
bos_id = a.bos


def losses(spans, vecs, with_block=True):
    """mean CE over the span tokens, token accuracy."""
    B = len(spans)
    tgt = torch.tensor(spans)  # [B, T]
    parts = []
    if a.bos >= 0:
        parts.append(emb(torch.full((B, 1), bos_id)))
    if with_block:
        parts.append(proj(vecs))
    parts.append(proj(rec)[None, None].expand(B, 1, -1))
    parts.append(emb(tgt))
    x = torch.cat(parts, 1)
    T = tgt.shape[1]
    logits = dec(inputs_embeds=x).logits[:, -T - 1 : -1]  # predict t_1..t_T
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    acc = (logits.argmax(-1) == tgt).float().mean()
    return ce, acc


params = [
    {"params": list(enc.parameters()), "lr": a.lr_enc},
    {"params": list(proj.parameters()) + [rec], "lr": a.lr_proj},
]
opt = torch.optim.AdamW(params, betas=tuple(float(b) for b in a.betas.split(",")), weight_decay=a.wd)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup))
out = open(a.out, "w")


@torch.no_grad()
def evaluate(step):
    enc.eval()
    row = {"step": step}
    for name, spans in (("prose", held_prose), ("squad", squad)):
        v = encode(spans, 4)
        right, acc = losses(spans, v)
        mism, _ = losses(spans, v.roll(1, 0))
        none, nacc = losses(spans, v, with_block=False)
        row[name] = dict(
            right=round(right.item(), 3),
            mism=round(mism.item(), 3),
            none=round(none.item(), 3),
            gap=round((mism - right).item(), 3),
            acc=round(acc.item(), 3),
            none_acc=round(nacc.item(), 3),
        )
    enc.train()
    print(json.dumps(row), file=out, flush=True)
    print(json.dumps(row), flush=True)


stream = train_stream()
if a.proj_init == "lstsq":
    with torch.no_grad():
        fit = [next(stream) for _ in range(64)]
        X = encode(fit, 1).reshape(-1, d)  # [64*32, d] each vector reads its own token
        Y = emb(torch.tensor(fit)).reshape(-1, d)
        W = torch.linalg.lstsq(X, Y).solution  # [d, d]: X @ W ~ Y
        proj.weight.copy_(W.T)
        r2 = 1 - ((X @ W - Y).pow(2).sum() / (Y - Y.mean(0)).pow(2).sum())
        print(json.dumps({"lstsq_r2": round(r2.item(), 3)}), file=out, flush=True)
t0 = time.time()
evaluate(0)
for step in range(1, a.steps + 1):
    spans = [next(stream) for _ in range(a.batch)]
    FACTOR[0] = factor_at(step)
    loss, _ = losses(spans, encode(spans))
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_([q for g in params for q in g["params"]], a.clip if a.clip > 0 else 1e9)
    opt.step()
    sched.step()
    opt.zero_grad()
    if step % 5 == 0:
        print(
            json.dumps(
                {"step": step, "loss": round(loss.item(), 3), "gn": round(gn.item(), 2), "t": round(time.time() - t0)}
            ),
            file=out,
            flush=True,
        )
    if step % a.eval_every == 0:
        evaluate(step)
