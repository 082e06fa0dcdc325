# Kernel-only timing of the tiled selective-scan kernels of one or more libssm_cuda.so builds, through ctypes and
# PyTorch tensors (no .NET, no autograd): CUDA events around each launch, medians of 15 after 3 warm-ups.
# b = 8, d = 2048, n = 16, l = 2048 and 8192, float32 and bfloat16; "fwd+ck" is the forward that also saves the
# states the backward needs (what training runs), and "fwd+bwd" = fwd+ck + bwd.
#   python3 bench/GpuBench/kernel_bench.py build/libssm_cuda.so [other/libssm_cuda.so ...]
import ctypes, sys, torch
from gpu_timing import median_ms
libs = sys.argv[1:]
b, d, n = 8, 2048, 16
def P(t): return ctypes.c_void_p(t.data_ptr() if t is not None else 0)
for path in libs:
    L = ctypes.CDLL(path)
    for l in (2048, 8192):
        for dt in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(0)
            u = torch.randn(b, d, l, device="cuda", generator=g).to(dt)
            de = (torch.randn(b, d, l, device="cuda", generator=g) * 0.5 - 1).to(dt)
            A = -torch.rand(d, n, device="cuda", generator=g) * 4 - 0.5
            Bm = torch.randn(b, 1, n, l, device="cuda", generator=g).to(dt)
            Cm = torch.randn(b, 1, n, l, device="cuda", generator=g).to(dt)
            D = torch.randn(d, device="cuda"); z = torch.randn(b, d, l, device="cuda").to(dt); bias = torch.randn(d, device="cuda") * 0.1
            y = torch.empty_like(u); last = torch.empty(b, d, n, device="cuda")
            nck = (l + 15) // 16
            ck = torch.empty(b * d * nck * n, device="cuda")
            bf = 1 if dt == torch.bfloat16 else 0
            fwd = lambda c: L.ssm_scan_tiled_fwd(bf, P(u), P(de), P(A), P(Bm), P(Cm), P(D), P(z), P(bias), 1, P(y), P(last), P(c), b, d, l, n, 1)
            gy = torch.randn_like(u); gl = torch.zeros(b, d, n, device="cuda")
            gu = torch.empty_like(u); gd = torch.empty_like(u); gz = torch.empty_like(u)
            gA = torch.zeros(d, n, device="cuda"); gB = torch.zeros(b, 1, n, l, device="cuda"); gC = torch.zeros_like(gB); gD = torch.zeros(d, device="cuda"); gb = torch.zeros(d, device="cuda")
            bwd = lambda: L.ssm_scan_tiled_bwd(bf, P(u), P(de), P(A), P(Bm), P(Cm), P(D), P(z), P(bias), 1, P(ck), P(gy), P(gl), P(gu), P(gd), P(gA), P(gB), P(gC), P(gD), P(gz), P(gb), b, d, l, n, 1)
            for f in (lambda: fwd(None), lambda: fwd(ck), bwd): assert f() == 0
            tf = median_ms(lambda: fwd(None)); tfc = median_ms(lambda: fwd(ck)); tb = median_ms(bwd)
            print(f"{path.split('/')[-1]:>14} l={l:5d} {str(dt)[6:]:>8}: fwd {tf:.3f} ms  fwd+ck {tfc:.3f}  bwd {tb:.3f}  fwd+bwd {tfc + tb:.3f}", flush=True)
