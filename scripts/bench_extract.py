"""Benchmark: extract() vs a raw Hugging Face forward on the same batches, in one run.

Prints, for all-MiniLM-L6-v2 (real, pretrained) and a random GPT-2 (4 layers, d=256):
  * TransformerBridge forward (full, no hooks) / raw HF forward (the bridge's own overhead)
  * extract(last layer) / raw HF encoder forward            (target <= 1.05)
  * extract(last layer) / bridge forward                    (mechunlearn's own overhead)
  * extract(layer l)    / extract(last layer), vs (l+1)/L   (early stopping)
Interleaves repetitions of each variant and reports medians, to resist machine noise.

    python scripts/bench_extract.py [--threads 1] [--n 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timeit(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench(name: str, bridge, raw_forward, texts: list[str], batch_size: int, reps: int) -> None:
    from mechunlearn import extract, resid, tokenize

    n_layers = bridge.cfg.n_layers
    tb = tokenize(bridge.tokenizer, texts)
    batches = [tb[i : i + batch_size] for i in range(0, len(tb), batch_size)]

    def raw():
        with torch.no_grad():
            for b in batches:
                raw_forward(b.input_ids, b.attention_mask)

    def ours(layer: int):
        return lambda: extract(bridge, tb, resid(layer, "post", "mean"), batch_size=batch_size,
                               progress=False)

    def bridge_forward():
        with torch.no_grad():
            for b in batches:
                bridge(b.input_ids, attention_mask=b.attention_mask, return_type=None)

    mid = n_layers // 2 - 1
    variants = {"raw": raw, "bridge": bridge_forward, "last": ours(n_layers - 1), "mid": ours(mid)}
    for v in variants.values():  # warm-up
        v()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, v in variants.items():
            times[k] += timeit(v, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== {name}: {len(texts)} texts, batch {batch_size}, {torch.get_num_threads()} thread(s), "
          f"median of {reps} ==")
    print(f"raw HF forward            {med['raw'] * 1e3:8.1f} ms")
    print(f"bridge forward, no hooks  {med['bridge'] * 1e3:8.1f} ms   ratio {med['bridge'] / med['raw']:.3f}")
    print(f"extract last layer        {med['last'] * 1e3:8.1f} ms   ratio {med['last'] / med['raw']:.3f}"
          f"  (vs bridge forward {med['last'] / med['bridge']:.3f})")
    print(f"extract layer {mid} of {n_layers}     {med['mid'] * 1e3:8.1f} ms   ratio to last "
          f"{med['mid'] / med['last']:.3f} (ideal ~{(mid + 1) / n_layers:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-encoder", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mechunlearn.models import load_minilm, tiny_gpt2

    words = "the quick brown fox jumps over the lazy dog while a cat sleeps near warm fire".split()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(j)] for j in torch.randint(0, len(words), (int(n),), generator=g))
             for n in torch.randint(8, 40, (args.n,), generator=g)]

    if not args.skip_encoder:
        from transformers import AutoModel

        from mechunlearn.models import minilm_path

        enc = load_minilm()
        plain = AutoModel.from_pretrained(str(minilm_path())).eval()
        bench("all-MiniLM-L6-v2 (vs plain AutoModel, SDPA)", enc,
              lambda i, m: plain(i, attention_mask=m), texts, args.batch_size, args.reps)
        bench("all-MiniLM-L6-v2 (vs the wrapped HF encoder, same attention impl)", enc,
              lambda i, m: enc.original_model.bert(i, attention_mask=m), texts, args.batch_size,
              args.reps)

    import tempfile

    from transformers import GPT2Model

    folder = tempfile.mkdtemp()
    gpt = tiny_gpt2(n_layer=4, d_model=256, n_head=4, n_positions=512, folder=folder)
    plain_gpt = GPT2Model.from_pretrained(folder).eval()  # unwrapped copy, same weights
    bench("random GPT-2 4x256 (vs plain HF GPT2Model)", gpt,
          lambda i, m: plain_gpt(i, attention_mask=m), texts, args.batch_size, args.reps)


if __name__ == "__main__":
    main()
