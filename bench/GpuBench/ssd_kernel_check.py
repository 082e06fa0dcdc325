# The fused SSD diagonal-block kernels (ssm_ssd_chunk_fwd / ssm_ssd_chunk_bwd in libssm_cuda.so) against a float64 oracle
# with autograd (Y, and the gradients for CB, Acs and X), then their times at the benchmark shape beside the tensor ops
# they replace (float32: the decay matrix, the weights and one batched product, and autograd's backward of those).
#   python3 bench/GpuBench/ssd_kernel_check.py build/libssm_cuda.so
import ctypes, sys, torch
from gpu_timing import median_ms
L = ctypes.CDLL(sys.argv[1])
def P(t): return ctypes.c_void_p(t.data_ptr() if t is not None else 0)

def make(b, c, Q, g, r, p, seed, decay=0.2):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    h = g * r
    CB = torch.randn(b, g, c, Q, Q, device="cuda", generator=gen)
    dA = -torch.rand(b, h, c, Q, device="cuda", generator=gen) * decay    # dt A <= 0
    Acs = dA.cumsum(-1).contiguous()
    X = torch.randn(b, c, Q, h, p, device="cuda", generator=gen)
    return CB, Acs, X

def kernel(CB, Acs, X, g, Off=None):
    b, c, Q, h, p = X.shape
    Y = torch.empty_like(X)
    assert L.ssm_ssd_chunk_fwd(P(CB), P(Acs), P(X), P(Off), P(Y), b, c, Q, h, g, p) == 0
    return Y

def oracle(CB, Acs, X, g, dtype=torch.float64, Off=None):
    # the tensor-op form of Ssd.ChunkScan's step 1 (and, with Off, step 4's row factor and the sum)
    b, c, Q, h, p = X.shape
    r = h // g
    A = Acs.to(dtype).reshape(b, g, r, c, Q)
    Lm = (A.unsqueeze(-1) - A.unsqueeze(-2)).masked_fill(torch.ones(Q, Q, dtype=torch.bool, device=X.device).triu(1), float("-inf")).exp()
    M = Lm * CB.to(dtype).unsqueeze(2)                                      # (b, g, r, c, Q, Q)
    xk = X.to(dtype).reshape(b, c, Q, g, r, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, Q, p)
    Y = torch.matmul(M, xk).permute(0, 3, 4, 1, 2, 5).reshape(b, c, Q, h, p)
    if Off is not None: Y = Y + Off.to(dtype) * Acs.to(dtype).permute(0, 2, 3, 1).unsqueeze(-1).exp()
    return Y

def kernel_bwd(CB, Acs, X, dY, g, Off=None):
    b, c, Q, h, p = X.shape
    dX = torch.empty_like(X); dCB = torch.zeros_like(CB); dAcs = torch.zeros_like(Acs)
    dOff = torch.empty_like(X) if Off is not None else None
    CBT = CB.transpose(-1, -2).contiguous()
    assert L.ssm_ssd_chunk_bwd(P(CB), P(CBT), P(Acs), P(X), P(Off), P(dY), P(dX), P(dCB), P(dAcs), P(dOff), b, c, Q, h, g, p) == 0
    return (dCB, dAcs, dX) + ((dOff,) if Off is not None else ())

def oracle_bwd(CB, Acs, X, dY, g, dtype=torch.float64, Off=None):
    xs = [t.detach().to(dtype).requires_grad_() for t in ((CB, Acs, X) + ((Off,) if Off is not None else ()))]
    Y = oracle(xs[0], xs[1], xs[2], g, dtype, xs[3] if Off is not None else None)
    return torch.autograd.grad((Y * dY.to(dtype)).sum(), xs)

def rel(a, b): return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

worst = 0.0
# decay 3: Acs falls below -88 within a chunk, where exp(-Acs) overflows float32 (masked pairs must never reach a sum).
for (b, c, Q, g, r, p, decay) in [(2, 3, 100, 2, 2, 40, 0.2), (1, 2, 64, 1, 3, 80, 0.2), (2, 2, 256, 1, 4, 64, 0.2), (1, 1, 7, 1, 1, 3, 0.2),
                                  (1, 4, 130, 2, 1, 130, 0.2), (2, 3, 100, 2, 2, 40, 3.0), (1, 2, 130, 1, 2, 64, 3.0)]:
    CB, Acs, X = make(b, c, Q, g, r, p, Q + p, decay)
    for Off in (None, torch.randn_like(X)):
        Y = kernel(CB, Acs, X, g, Off); torch.cuda.synchronize()
        R = oracle(CB, Acs, X, g, Off=Off)
        dY = torch.randn_like(X)
        G = kernel_bwd(CB, Acs, X, dY, g, Off); torch.cuda.synchronize()
        RG = oracle_bwd(CB, Acs, X, dY, g, Off=Off)
        errs = [rel(Y, R)] + [rel(a, e) for a, e in zip(G, RG)]
        err = max(errs)
        if any(t.isnan().any().item() for t in (Y,) + tuple(G)): err = float("inf")
        worst = max(worst, err / 1e-5)
        print(f"b{b} c{c} Q{Q} g{g} r{r} p{p} decay {decay}{' +off' if Off is not None else ''}: max abs err / max |ref| "
              + " ".join(f"{k} {e:.2e}" for k, e in zip(("y", "dCB", "dAcs", "dX", "dOff"), errs)) + f" {'OK' if err < 1e-5 else 'FAIL'}", flush=True)
print("WORST (x tol 1e-5):", worst)

# the benchmark shape: b 8, l 8192, 32 heads of 64, Q 256, one group
b, c, Q, g, r, p = 8, 32, 256, 1, 32, 64
CB, Acs, X = make(b, c, Q, g, r, p, 0)
tk = median_ms(lambda: kernel(CB, Acs, X, g))
to = median_ms(lambda: oracle(CB, Acs, X, g, torch.float32))
flops = 2 * b * c * r * g * p * Q * (Q + 1) / 2
print(f"b{b} l{c * Q} h{g * r} p{p} Q{Q}: forward: fused {tk:.3f} ms ({flops / tk / 1e9:.1f} TFLOP/s on the causal half), "
      f"tensor ops (float32) {to:.3f} ms, {to / tk:.1f}x", flush=True)
dY = torch.randn_like(X)
tkb = median_ms(lambda: kernel_bwd(CB, Acs, X, dY, g))
tob = median_ms(lambda: oracle_bwd(CB, Acs, X, dY, g, torch.float32))
print(f"b{b} l{c * Q} h{g * r} p{p} Q{Q}: forward+backward: fused {tk + tkb:.3f} ms, tensor ops + autograd (float32) {tob:.3f} ms, "
      f"{tob / (tk + tkb):.1f}x")
