#!/usr/bin/env bash
# One prepared run on a machine with a GPU: CUDA-vs-CPU equality of the weight diff (incl.
# spectral/frame), the CUDA spectral test, CUDA-vs-CPU sampling and kernels. Usage: bash bench/gpu_checks.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== diff: cuda vs cpu"; timeout 70 python3 bench/check_cuda.py 2>&1 | tail -25
echo "== spectral cuda test"; timeout 40 python3 -m pytest -q -p no:cacheprovider tests/weights/test_spectral.py -k cuda 2>&1 | tail -3
echo "== sampling + kernel: cuda vs cpu"
timeout 60 python3 - <<'PY'
import torch
from deltalens.lab.tokenizer import build_char_tokenizer
from deltalens.lab.tiny_model import build_tiny_llama
from deltalens.behavior.sampling import sample
from deltalens.kernel.run import run_kernel
tok = build_char_tokenizer(); m = build_tiny_llama(tokenizer=tok, seed=0)
probs = [{"id": str(i), "prompt": f"{i}+{i}="} for i in range(6)]
cpu = sample(m, probs, n=8, tokenizer=tok, max_new_tokens=12, seed=3, temperature=0.7, top_p=0.9)
gpu = sample(build_tiny_llama(tokenizer=tok, seed=0), probs, n=8, tokenizer=tok, max_new_tokens=12, seed=3, temperature=0.7, top_p=0.9, device="cuda")
same = sum(a["completion"] == b["completion"] for a, b in zip(cpu, gpu))
print(f"sampling cuda vs cpu: {same}/{len(cpu)} identical completions (same per-sample seeds)")
probes = [{"prompt": f"{i}+{i+1}=", "completion": str(2 * i + 1)} for i in range(12)]
m0, m1 = build_tiny_llama(tokenizer=tok, seed=0), build_tiny_llama(tokenizer=tok, seed=1)
rc, _ = run_kernel(m0, m1, probes, tokenizer=tok, device="cpu")
m0, m1 = build_tiny_llama(tokenizer=tok, seed=0), build_tiny_llama(tokenizer=tok, seed=1)
rg, _ = run_kernel(m0, m1, probes, tokenizer=tok, device="cuda")
ec, eg = torch.tensor(rc["base"]["eigenvalues"]), torch.tensor(rg["base"]["eigenvalues"])
print("kernel eigenvalues cuda vs cpu, max rel diff:", float(((ec - eg).abs() / ec.abs().max()).max()))
print("kernel rescale_share cpu/cuda:", rc["comparison"]["rescale_share"], rg["comparison"]["rescale_share"])
PY
