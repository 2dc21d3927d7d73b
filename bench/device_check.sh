#!/usr/bin/env bash
# One prepared device run: GPU and 16-core CPU sampling benchmarks, a CUDA-vs-CPU sampling check,
# and the sampling/divergence tests. Usage (device machine): bash bench/device_check.sh OUTDIR
set -u
OUTDIR=${1:-bench/out}
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUTDIR"
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 bench/bench_sampling.py --device cuda --problems 16 --max-new-tokens 128 --out "$OUTDIR/sampling_cuda.json"
python3 bench/bench_sampling.py --device cpu --problems 8 --max-new-tokens 64 --out "$OUTDIR/sampling_cpu.json"
python3 - <<'PY'
from deltalens.lab.tokenizer import build_char_tokenizer
from deltalens.lab.tiny_model import build_tiny_llama
from deltalens.behavior.sampling import sample
tok = build_char_tokenizer(); m = build_tiny_llama(tokenizer=tok, seed=0)
probs = [{"id": str(i), "prompt": f"{i}+{i}="} for i in range(6)]
cpu = sample(m, probs, n=8, tokenizer=tok, max_new_tokens=12, seed=3, temperature=0.7, top_p=0.9)
gpu = sample(m, probs, n=8, tokenizer=tok, max_new_tokens=12, seed=3, temperature=0.7, top_p=0.9, device="cuda")
same = sum(a["completion"] == b["completion"] for a, b in zip(cpu, gpu))
print(f"cuda vs cpu: {same}/{len(cpu)} identical completions (same per-sample seeds)")
PY
python3 -m pytest tests/behavior/test_sampling.py tests/behavior/test_divergence.py tests/behavior/test_passk.py -q -p no:cacheprovider 2>&1 | tail -5
