# The fused SSD diagonal-block kernel (ssm_ssd_diag_fwd in libssm_cuda.so) against a float64 oracle, then its time at the
# benchmark shape beside the tensor ops it replaces (float32: the decay matrix, the weights and one batched product).
#   python3 bench/GpuBench/ssd_kernel_check.py build/libssm_cuda.so
import ctypes, sys, torch
from gpu_timing import median_ms
L = ctypes.CDLL(sys.argv[1])
def P(t): return ctypes.c_void_p(t.data_ptr())

def make(b, c, Q, g, r, p, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    h = g * r
    CB = torch.randn(b, g, c, Q, Q, device="cuda", generator=gen)
    dA = -torch.rand(b, h, c, Q, device="cuda", generator=gen) * 0.2      # dt A <= 0
    Acs = dA.cumsum(-1).contiguous()
    X = torch.randn(b, c, Q, h, p, device="cuda", generator=gen)
    return CB, Acs, X

def kernel(CB, Acs, X, g):
    b, c, Q, h, p = X.shape
    Y = torch.empty_like(X)
    assert L.ssm_ssd_diag_fwd(P(CB), P(Acs), P(X), P(Y), b, c, Q, h, g, p) == 0
    return Y

def oracle(CB, Acs, X, g, dtype=torch.float64):
    # the tensor-op form of Ssd.ChunkScan's step 1
    b, c, Q, h, p = X.shape
    r = h // g
    A = Acs.to(dtype).reshape(b, g, r, c, Q)
    Lm = (A.unsqueeze(-1) - A.unsqueeze(-2)).masked_fill(torch.ones(Q, Q, dtype=torch.bool, device=X.device).triu(1), float("-inf")).exp()
    M = Lm * CB.to(dtype).unsqueeze(2)                                      # (b, g, r, c, Q, Q)
    xk = X.to(dtype).reshape(b, c, Q, g, r, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, Q, p)
    return torch.matmul(M, xk).permute(0, 3, 4, 1, 2, 5).reshape(b, c, Q, h, p)

worst = 0.0
for (b, c, Q, g, r, p) in [(2, 3, 100, 2, 2, 40), (1, 2, 64, 1, 3, 80), (2, 2, 256, 1, 4, 64), (1, 1, 7, 1, 1, 3), (1, 4, 130, 2, 1, 130)]:
    CB, Acs, X = make(b, c, Q, g, r, p, Q + p)
    Y = kernel(CB, Acs, X, g); torch.cuda.synchronize()
    R = oracle(CB, Acs, X, g)
    err = ((Y.double() - R).abs().max() / R.abs().max()).item()
    worst = max(worst, err / 1e-5)
    print(f"b{b} c{c} Q{Q} g{g} r{r} p{p}: max abs err / max |Y| = {err:.2e} {'OK' if err < 1e-5 else 'FAIL'}", flush=True)
print("WORST (x tol 1e-5):", worst)

# the benchmark shape: b 8, l 8192, 32 heads of 64, Q 256, one group
b, c, Q, g, r, p = 8, 32, 256, 1, 32, 64
CB, Acs, X = make(b, c, Q, g, r, p, 0)
tk = median_ms(lambda: kernel(CB, Acs, X, g))
to = median_ms(lambda: oracle(CB, Acs, X, g, torch.float32))
flops = 2 * b * c * r * g * p * Q * (Q + 1) / 2
print(f"b{b} l{c * Q} h{g * r} p{p} Q{Q}: fused {tk:.3f} ms ({flops / tk / 1e9:.1f} TFLOP/s on the causal half), "
      f"tensor ops (float32) {to:.3f} ms, {to / tk:.1f}x")
