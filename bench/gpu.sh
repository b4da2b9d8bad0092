#!/usr/bin/env bash
# The indexing figures of bench/README.md on one CUDA GPU, in one go (about 6 minutes on an
# H200): end-to-end index with hiera-tiny and hiera-large, the non-model cost, and SST's
# per-query tracking (recipe vs per-object vs batched). Run from the repository root with the
# project importable (an installed environment, or PYTHONPATH=$PWD).
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
B="python3 bench/bench_index.py --device cuda --image-size 1024 --size 384x512 --species 4 --per-species 100 --commit-every 32"
echo "== index, hiera-tiny, bioclip";        timeout 150 $B --embedder bioclip --rows serial,pipeline --repeat 2
echo "== index, hiera-tiny, color-pattern";  timeout 90 $B --embedder color-pattern --rows pipeline --repeat 2
echo "== index, hiera-large, bioclip";       timeout 120 $B --embedder bioclip --model sam2.1-hiera-large --rows pipeline --repeat 2
echo "== index --masks (no SAM 2), bioclip"; timeout 60 $B --embedder bioclip --masks --rows serial,pipeline
echo "== segment, K=8, query batch 4";       timeout 150 python3 bench/bench_segment.py --device cuda --image-size 1024 --traits 8 --n 64 --methods recipe,per-object,batched --query-batch 4
echo "== segment, K=8, query batch 16";      timeout 60 python3 bench/bench_segment.py --device cuda --image-size 1024 --traits 8 --n 64 --methods batched --query-batch 16
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
