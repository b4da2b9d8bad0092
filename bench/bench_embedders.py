"""Seconds per trait crop through each embedder's image tower on this machine, at the
embedders' own input size, with random weights (the cost does not depend on the values):
what choosing BioCLIP 2 over BioCLIP costs on CPU.

    python bench/bench_embedders.py [--embedders bioclip,bioclip-2,color-pattern] [--crops 32] [--batch 16]

Prints the load average before and after: wall times only mean something on an idle machine;
CPU seconds per crop move far less when other work shares the CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedders", default="bioclip,bioclip-2,color-pattern")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    import torch

    from sst_search.builder import create_embedder
    from sst_search.embed import EmbedItem

    print(f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(384, 512, 3), dtype=np.uint8)
    label_map = np.zeros(image.shape[:2], np.uint8)
    label_map[40:200, 60:300] = 1
    items = [EmbedItem(image, label_map, [1]) for _ in range(args.crops // 2)]  # a trait crop + the whole specimen each
    for name in args.embedders.split(","):
        weights = None if name == "color-pattern" else "random"
        started = time.perf_counter()
        embedder = create_embedder(name, weights=weights, device="cpu", **({} if weights is None else {"batch_size": args.batch}))
        built = time.perf_counter() - started
        embedder.embed_batch(items[:1])  # warm-up
        wall, cpu = time.perf_counter(), _cpu()
        embedder.embed_batch(items)
        crops = 2 * len(items)
        wall, cpu = (time.perf_counter() - wall) / crops, (_cpu() - cpu) / crops
        print(f"{name:>14}: dim {embedder.dim:4d}, built in {built:5.1f} s, {wall * 1000:7.1f} ms wall "
              f"({cpu * 1000:7.1f} ms CPU) per crop")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
