#!/usr/bin/env bash
# The CUDA paths, run on a lent GPU machine (the `device` tool): AOTInductor on cuda for a CNN, a
# transformer encoder and a generator with its cache; ONNX Runtime's CUDA provider where the image
# has it; bench on the GPU. Uses the machine's own torch; mlpack's pure deps travel as wheels in .whl/
# (see docs/benchmarks.md, "CUDA paths"). Writes logs and manifests to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1  # the kinds are entry points
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
{
  nvidia-smi -L; lscpu | grep "Model name"
  python3 -c "import torch, onnxruntime as o, transformers as t; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0)); print('onnxruntime', o.__version__, o.get_available_providers()); print('transformers', t.__version__)"
} 2>&1 | tee "$OUT/env.txt"
for r in cnn-cuda tiny-bert-cuda tiny-llama-cuda; do
  echo "=== build $r"
  timeout 200 python3 -m toolchain build recipes/$r.yaml --out /tmp/art 2>&1 | tail -40
  echo "rc=${PIPESTATUS[0]}"
done 2>&1 | tee "$OUT/build.txt"
for d in /tmp/art/*/; do cp "$d/manifest.json" "$OUT/$(basename "$d").manifest.json" 2>/dev/null; done
{
  echo "=== bench cnn-cuda"
  timeout 90 python3 -m toolchain bench /tmp/art/tiny-cnn-cuda --batch 1,16 --seconds 2 2>&1 | tail -30
  echo "=== bench tiny-llama-cuda"
  timeout 90 python3 -m toolchain bench /tmp/art/tiny-llama-cuda --batch 1,4 --seconds 2 --new-tokens 32 2>&1 | tail -30
} 2>&1 | tee "$OUT/bench.txt"
