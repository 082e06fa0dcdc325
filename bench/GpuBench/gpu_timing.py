# One timing rule for the kernel scripts here: CUDA events around each call, the median of `reps` after `warmups`.
import statistics, torch

def median_ms(fn, reps=15, warmups=3):
    for _ in range(warmups): fn()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return statistics.median(ts)
