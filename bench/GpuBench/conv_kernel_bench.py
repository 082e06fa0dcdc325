# The fused causal conv1d + SiLU kernels of libssm_cuda.so through ctypes (no .NET): forward and backward against
# float64 PyTorch on shapes that cross the 2,048-step tiles (kernel widths 1-8, with and without bias, float32 and
# bfloat16; max relative error of y, dL/dx, dL/dw, dL/dbias), then CUDA-event medians at b 8, c 2048, k 4 against
# PyTorch's conv1d + slice + silu, with the forward's bandwidth floor (x read and y written once at 2.95 TB/s).
#   python3 bench/GpuBench/conv_kernel_bench.py build/libssm_cuda.so      (results/conv-kernel.txt)
import ctypes, sys, torch
from gpu_timing import median_ms
L = ctypes.CDLL(sys.argv[1])
def P(t): return ctypes.c_void_p(t.data_ptr() if t is not None else 0)
def ref(x, w, b, gy):
    x64 = x.double().requires_grad_(); w64 = w.double().requires_grad_(); b64 = b.double().requires_grad_() if b is not None else None
    k = w.shape[-1]; l = x.shape[-1]
    y = torch.nn.functional.silu(torch.nn.functional.conv1d(x64, w64.unsqueeze(1), b64, padding=k - 1, groups=x.shape[1])[..., :l])
    gs = torch.autograd.grad(y, [x64, w64] + ([b64] if b is not None else []), gy.double())
    return [y.detach()] + list(gs)
def fused(x, w, b, gy):
    bb, c, l = x.shape; k = w.shape[-1]; bf = int(x.dtype == torch.bfloat16)
    y = torch.empty_like(x)
    assert L.ssm_conv_silu_fwd(bf, P(x), P(w), P(b), P(y), bb, c, l, k) == 0
    gx = torch.empty_like(x); gw = torch.zeros(c, k, device="cuda"); gb = torch.zeros(c, device="cuda")
    assert L.ssm_conv_silu_bwd(bf, P(x), P(w), P(b), P(gy.contiguous()), P(gx), P(gw), P(gb if b is not None else None), bb, c, l, k) == 0
    torch.cuda.synchronize()
    return [y, gx, gw] + ([gb] if b is not None else [])
def rel(a, b): a = a.double(); b = b.double(); return ((a - b).abs().max() / (b.abs().max() + 1e-30)).item()
worst = 0
for (bb, c, l, k, bias) in [(2, 6, 2100, 4, True), (3, 5, 70, 3, False), (1, 4, 5000, 2, True), (2, 8, 4096, 4, True), (1, 3, 1, 4, True), (2, 6, 2049, 8, True), (1, 2, 33, 1, False)]:
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator(device="cuda").manual_seed(l * 10 + k)
        x = torch.randn(bb, c, l, device="cuda", generator=g).to(dt); w = torch.randn(c, k, device="cuda", generator=g) * 0.5
        b = torch.randn(c, device="cuda", generator=g) if bias else None; gy = torch.randn(bb, c, l, device="cuda", generator=g).to(dt)
        R = ref(x, w, b, gy); F = fused(x, w, b, gy)
        errs = [rel(f, r) for f, r in zip(F, R)]
        tol = 1e-5 if dt == torch.float32 else 1e-2
        worst = max(worst, max(errs) / tol)
        print(f"b{bb} c{c} l{l} k{k} bias={bias} {str(dt)[6:]:>8}: " + " ".join(f"{e:.1e}" for e in errs) + ("  OK" if max(errs) < tol else "  FAIL"), flush=True)
print("WORST (x tol):", worst)
T = lambda fn: median_ms(fn, reps=20)
bb, c, k = 8, 2048, 4
for l in (2048, 8192):
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(bb, c, l, device="cuda").to(dt); w = torch.randn(c, k, device="cuda") * 0.5; b = torch.randn(c, device="cuda"); gy = torch.randn(bb, c, l, device="cuda").to(dt)
        y = torch.empty_like(x); gx = torch.empty_like(x); gw = torch.zeros(c, k, device="cuda"); gb = torch.zeros(c, device="cuda"); bf = int(dt == torch.bfloat16)
        ff = lambda: L.ssm_conv_silu_fwd(bf, P(x), P(w), P(b), P(y), bb, c, l, k)
        fb = lambda: L.ssm_conv_silu_bwd(bf, P(x), P(w), P(b), P(gy), P(gx), P(gw), P(gb), bb, c, l, k)
        wt = w.to(dt).unsqueeze(1); bt = b.to(dt)
        tf = lambda: torch.nn.functional.silu(torch.nn.functional.conv1d(x, wt, bt, padding=k - 1, groups=c)[..., :l].contiguous())
        xr = x.detach().requires_grad_(); wr = wt.detach().requires_grad_(); br = bt.detach().requires_grad_()
        def tfb():
            yy = torch.nn.functional.silu(torch.nn.functional.conv1d(xr, wr, br, padding=k - 1, groups=c)[..., :l].contiguous())
            torch.autograd.grad(yy, [xr, wr, br], gy)
        a, bwd, t1, t2 = T(ff), T(fb), T(tf), T(tfb)
        es = 2 if dt == torch.bfloat16 else 4
        floor = 2 * es * bb * c * l / 2.95e12 * 1e3
        print(f"l={l} {str(dt)[6:]:>8}: fused fwd {a:.3f} ms ({a / floor:.2f}x floor {floor:.3f})  fwd+bwd {a + bwd:.3f}   torch conv1d+silu fwd {t1:.3f}  fwd+bwd {t2:.3f}", flush=True)
