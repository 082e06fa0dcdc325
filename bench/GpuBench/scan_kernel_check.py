# The tiled selective-scan kernels of one libssm_cuda.so against a float64 sequential oracle with autograd (y, the last
# state and every gradient; partial tiles, both staging paths (l % 8 == 0 or not), n = 7, 16, 24, groups), and against a
# second build at b 2, d 64, l 2048; then kernel-only timings of both at the benchmark shape. This is how each kernel
# change was checked on the GPU before the C# side saw it.
#   python3 bench/GpuBench/scan_kernel_check.py new/libssm_cuda.so other/libssm_cuda.so [new]
# The second build takes B and C as (b, g, l, n), as the kernels before the cp.async rewrite did, unless "new" is given.
import ctypes, sys, torch
from gpu_timing import median_ms
NEW, OLD = ctypes.CDLL(sys.argv[1]), ctypes.CDLL(sys.argv[2])
OLDL = not (len(sys.argv) > 3 and sys.argv[3] == "new")  # the second lib takes B, C as (b g l n)
def P(t): return ctypes.c_void_p(t.data_ptr() if t is not None else 0)

def run(L, old, dt, u, de, A, B, C, D, z, bias, gy, glast, back=True):
    # B, C: (b g n l) in dt. old lib takes (b g l n).
    b, d, l = u.shape; n = A.shape[1]; g = B.shape[1]
    Bk = B.transpose(-1, -2).contiguous() if old else B
    Ck = C.transpose(-1, -2).contiguous() if old else C
    y = torch.empty_like(u); last = torch.empty(b, d, n, device="cuda")
    ck = torch.empty(b * d * ((l + 15) // 16) * n, device="cuda")
    bf = 1 if dt == torch.bfloat16 else 0
    assert L.ssm_scan_tiled_fwd(bf, P(u), P(de), P(A), P(Bk), P(Ck), P(D), P(z), P(bias), 1, P(y), P(last), P(ck), b, d, l, n, g) == 0
    if not back: return y, last
    gu = torch.empty_like(u); gd = torch.empty_like(u); gz = torch.empty_like(u)
    gA = torch.zeros(d, n, device="cuda"); gB = torch.zeros(Bk.shape, device="cuda"); gC = torch.zeros(Ck.shape, device="cuda")
    gD = torch.zeros(d, device="cuda"); gb = torch.zeros(d, device="cuda")
    assert L.ssm_scan_tiled_bwd(bf, P(u), P(de), P(A), P(Bk), P(Ck), P(D), P(z), P(bias), 1, P(ck), P(gy), P(glast), P(gu), P(gd), P(gA), P(gB), P(gC), P(gD), P(gz), P(gb), b, d, l, n, g) == 0
    if old: gB, gC = gB.transpose(-1, -2), gC.transpose(-1, -2)
    torch.cuda.synchronize()
    return y, last, gu, gd, gz, gA, gB, gC, gD, gb

def ref(u, de, A, B, C, D, z, bias, gy, glast):
    # float64 sequential oracle with autograd
    xs = [t.detach().double().requires_grad_() for t in (u, de, A, B, C, D, z, bias)]
    u_, de_, A_, B_, C_, D_, z_, b_ = xs
    bsz, d, l = u_.shape; n = A_.shape[1]; g = B_.shape[1]
    dt = torch.nn.functional.softplus(de_ + b_[:, None])
    Bd = B_.repeat_interleave(d // g, dim=1); Cd = C_.repeat_interleave(d // g, dim=1)  # b d n l
    h = torch.zeros(bsz, d, n, dtype=torch.float64, device=u.device); ys = []
    for t in range(l):
        h = torch.exp(dt[:, :, t, None] * A_) * h + dt[:, :, t, None] * Bd[:, :, :, t] * u_[:, :, t, None]
        ys.append((h * Cd[:, :, :, t]).sum(-1))
    y = torch.stack(ys, -1) + D_[:, None] * u_
    y = y * z_ * torch.sigmoid(z_)
    loss = (y * gy.double()).sum() + (h * glast.double()).sum()
    grads = torch.autograd.grad(loss, xs)
    return (y.detach(), h.detach()) + tuple(grads)

def rel(a, b): a = a.double(); b = b.double(); return ((a - b).norm() / (b.norm() + 1e-30)).item()
names = ["y", "last", "gu", "gdelta", "gz", "gA", "gB", "gC", "gD", "gbias"]
worst = 0.0
for (b, d, l, n, g) in [(2, 64, 70, 16, 2), (2, 64, 72, 16, 2), (2, 32, 70, 24, 1), (2, 32, 72, 24, 1), (1, 64, 40, 7, 1), (2, 64, 2048, 16, 1)]:
    for dt in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device="cuda").manual_seed(l + n)
        r = lambda *s: torch.randn(*s, device="cuda", generator=gen)
        u = r(b, d, l).to(dt); de = (r(b, d, l) * 0.5 - 1).to(dt); A = -torch.rand(d, n, device="cuda", generator=gen) * 4 - 0.5
        B = r(b, g, n, l).to(dt); C = r(b, g, n, l).to(dt); D = r(d); z = r(b, d, l).to(dt); bias = r(d) * 0.1
        gy = r(b, d, l).to(dt); glast = r(b, d, n)
        new = run(NEW, False, dt, u, de, A, B, C, D, z, bias, gy, glast)
        if l <= 100:
            R = ref(u, de, A, B, C, D, z, bias, gy, glast)
            # ref grads order: u, de, A, B, C, D, z, bias -> map to names
            Rm = {"y": R[0], "last": R[1], "gu": R[2], "gdelta": R[3], "gA": R[4], "gB": R[5], "gC": R[6], "gD": R[7], "gz": R[8], "gbias": R[9]}
            errs = {k: rel(v, Rm[k]) for k, v in zip(names, new)}
            tag = "vs f64"
        else:
            o = run(OLD, OLDL, dt, u, de, A, B, C, D, z, bias, gy, glast)
            errs = {k: rel(v, w) for k, v, w in zip(names, new, o)}
            tag = "vs old"
        m = max(errs.values()); tol = 2e-5 if dt == torch.float32 else 1e-2
        worst = max(worst, m / tol)
        print(f"b{b} d{d} l{l} n{n} g{g} {str(dt)[6:]:>8} {tag}: max rel {m:.2e} {'OK' if m < tol else 'FAIL'}  " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
print("WORST (x tol):", worst)

# timing at the bench shape
b, d, n = 8, 2048, 16
T = median_ms
for l in (2048, 8192):
    for dt in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device="cuda").manual_seed(0)
        r = lambda *s: torch.randn(*s, device="cuda", generator=gen)
        u = r(b, d, l).to(dt); de = (r(b, d, l) * 0.5 - 1).to(dt); A = -torch.rand(d, n, device="cuda", generator=gen) * 4 - 0.5
        B = r(b, 1, n, l).to(dt); C = r(b, 1, n, l).to(dt); D = r(d); z = r(b, d, l).to(dt); bias = r(d) * 0.1
        gy = r(b, d, l).to(dt); gl = torch.zeros(b, d, n, device="cuda")
        for name, L, old in (("old", OLD, OLDL), ("new", NEW, False)):
            Bk = B.transpose(-1, -2).contiguous() if old else B; Ck = C.transpose(-1, -2).contiguous() if old else C
            y = torch.empty_like(u); last = torch.empty(b, d, n, device="cuda"); ck = torch.empty(b * d * (l // 16) * n, device="cuda")
            bf = 1 if dt == torch.bfloat16 else 0
            gu = torch.empty_like(u); gd = torch.empty_like(u); gz = torch.empty_like(u)
            gA = torch.zeros(d, n, device="cuda"); gB = torch.zeros(Bk.shape, device="cuda"); gC = torch.zeros(Ck.shape, device="cuda"); gD = torch.zeros(d, device="cuda"); gb = torch.zeros(d, device="cuda")
            f0 = lambda: L.ssm_scan_tiled_fwd(bf, P(u), P(de), P(A), P(Bk), P(Ck), P(D), P(z), P(bias), 1, P(y), P(last), None, b, d, l, n, 1)
            f1 = lambda: L.ssm_scan_tiled_fwd(bf, P(u), P(de), P(A), P(Bk), P(Ck), P(D), P(z), P(bias), 1, P(y), P(last), P(ck), b, d, l, n, 1)
            bw = lambda: L.ssm_scan_tiled_bwd(bf, P(u), P(de), P(A), P(Bk), P(Ck), P(D), P(z), P(bias), 1, P(ck), P(gy), P(gl), P(gu), P(gd), P(gA), P(gB), P(gC), P(gD), P(gz), P(gb), b, d, l, n, 1)
            tf, tfc, tb = T(f0), T(f1), T(bw)
            es = 2 if dt == torch.bfloat16 else 4
            floor = es * (4 * b * d * l + 2 * b * l * n) / 3.0e12 * 1e3
            print(f"{name} l={l:5d} {str(dt)[6:]:>8}: fwd {tf:.3f} ms ({tf / floor:.2f}x floor {floor:.3f})  fwd+ck {tfc:.3f}  bwd {tb:.3f}  fwd+bwd {tfc + tb:.3f}", flush=True)
