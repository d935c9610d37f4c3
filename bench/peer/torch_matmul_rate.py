"""torch's float32 GEMM rate on this machine, measured as `sdgen bench` measures onnxruntime's:
2048x2048 matrices, 4 chained products per call, 2 threads, 2 warm-up calls, median and best of 8.
Prints one JSON line. Run with Debian's interpreter (see README.md); needs only torch."""
import os, time, statistics, json
os.environ.setdefault("OMP_NUM_THREADS", "2"); os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import torch
torch.set_num_threads(2)
n = 2048
g = torch.Generator().manual_seed(0)
a = torch.randn(n, n, generator=g); b = torch.randn(n, n, generator=g)
with torch.no_grad():
    for _ in range(2): (((a @ b) @ b) @ b) @ b
    ts = []
    for _ in range(8):
        t = time.perf_counter(); (((a @ b) @ b) @ b) @ b; ts.append(time.perf_counter() - t)
flops = 4 * 2 * n ** 3
print(json.dumps({"what": "torch matmul rate, float32 2048x2048 x4 chained, 2 threads", "torch": torch.__version__,
  "median_gflops": flops / statistics.median(ts) / 1e9, "best_gflops": flops / min(ts) / 1e9}))
