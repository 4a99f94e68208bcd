#!/usr/bin/env bash
# Follow-up to scripts/gpu_check.sh on a lent GPU: does torch's own AOTInductor CUDA round trip
# work in the image (no mlpack), and where did the mlpack steps die (faulthandler frames).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
cat > /tmp/plain.py <<'PY'
import torch, time
class M(torch.nn.Module):
    def __init__(s): super().__init__(); s.c=torch.nn.Conv2d(3,8,3); s.l=torch.nn.Linear(8,4)
    def forward(s,x): return s.l(s.c(x).mean((2,3)))
m=M().cuda().eval(); x=torch.randn(2,3,32,32,device="cuda")
t=time.time()
ep=torch.export.export(m,(x,),dynamic_shapes=({0:torch.export.Dim("b",min=1,max=16)},))
p=torch._inductor.aoti_compile_and_package(ep, package_path="/tmp/p.pt2")
r=torch._inductor.aoti_load_package(p)
print("plain aoti cuda ok", (r(x)-m(x)).abs().max().item(), time.time()-t)
PY
timeout 150 python3 /tmp/plain.py > $OUT/plain.txt 2>&1; echo "plain rc=$?" >> $OUT/plain.txt
timeout 150 python3 -m toolchain build recipes/cnn-cuda.yaml --out /tmp/art > $OUT/cnn.txt 2>&1
cp /tmp/art/tiny-cnn-cuda*/logs/aoti.log $OUT/cnn_aoti.log
timeout 120 python3 -m toolchain build recipes/tiny-llama-cuda.yaml --target aoti --out /tmp/art > $OUT/llama.txt 2>&1
cp /tmp/art/tiny-llama-cuda*/logs/aoti.log $OUT/llama_aoti.log
tail -n 5 $OUT/*.txt; grep -n "Fatal\|File \"" $OUT/cnn_aoti.log | head -40
