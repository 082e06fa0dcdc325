// AdamW (Loshchilov & Hutter 2019, Algorithm 2) written out in tensor ops, so that its state is ours to save:
// a checkpoint holds exp_avg.{name} and exp_avg_sq.{name} beside the step count, and a resumed run continues with
// exactly the moments it stopped with (torch.optim.AdamW's update, decoupled weight decay, bias correction).
// Mixed precision (Micikevicius et al. 2018): a parameter kept in bf16/fp16 for compute gets a float32 master copy
// here; the update is made on the master and rounded into the parameter, so small updates are not lost to rounding.
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//   p <- p - lr wd p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Training;

public sealed class AdamW
{
    readonly List<(string Name, Tensor Param, bool Decay)> _params;
    readonly Dictionary<string, (Tensor M, Tensor V)> _moments = new(StringComparer.Ordinal);
    readonly Dictionary<string, Tensor> _masters = new(StringComparer.Ordinal);

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }

    /// <summary>The number of updates made so far (t in the bias correction).</summary>
    public long StepCount { get; private set; }

    /// <param name="parameters">Named trainable parameters (a tied parameter listed twice is updated once).</param>
    /// <param name="decay">Whether a parameter gets weight decay; default <see cref="DefaultDecay"/>.</param>
    public AdamW(IEnumerable<(string Name, Tensor Param)> parameters, double weightDecay = 0.1,
        double beta1 = 0.9, double beta2 = 0.95, double eps = 1e-8, Func<string, Tensor, bool>? decay = null)
    {
        decay ??= DefaultDecay;
        var seen = new HashSet<IntPtr>();
        _params = parameters.Where(p => p.Param.requires_grad && seen.Add(p.Param.Handle))
            .Select(p => (p.Name, p.Param, decay(p.Name, p.Param))).ToList();
        WeightDecay = weightDecay; Beta1 = beta1; Beta2 = beta2; Eps = eps;
    }

    /// <summary>The usual rule (GPT-2, mamba_ssm): decay matrices only; never biases, norm weights, embeddings, or the
    /// SSM's A and D under any of their names (A_log, Vim's A_b_log / D_b, VMamba's stacked A_logs / Ds).</summary>
    public static bool DefaultDecay(string name, Tensor p)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return p.dim() >= 2 && last is not ("A_log" or "A_b_log" or "A_logs" or "D" or "D_b" or "Ds")
            && !name.Contains("embed", StringComparison.Ordinal)
            && !name.Contains("pos_", StringComparison.Ordinal) && !name.Contains("cls_token", StringComparison.Ordinal);
    }

    public IReadOnlyList<(string Name, Tensor Param, bool Decay)> Parameters => _params;

    public void ZeroGrad()
    {
        foreach (var (_, p, _) in _params) p.grad?.zero_();
    }

    /// <summary>Global L2 norm of all gradients, clipped in place to <paramref name="maxNorm"/> (torch clip_grad_norm_).</summary>
    public double ClipGradNorm(double maxNorm)
    {
        using var scope = torch.NewDisposeScope();
        var grads = _params.Select(p => p.Param.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return 0;
        var total = torch.stack(grads.Select(g => g.detach().to_type(ScalarType.Float32).square().sum()).ToArray()).sum().sqrt();
        double norm = total.item<float>();
        if (maxNorm > 0 && double.IsFinite(norm) && norm > maxNorm)
        {
            double scale = maxNorm / (norm + 1e-6);
            using var noGrad = torch.no_grad();
            foreach (var g in grads) g.mul_(scale);
        }
        return norm;
    }

    public void Step(double lr)
    {
        StepCount++;
        double bc1 = 1 - Math.Pow(Beta1, StepCount), bc2 = 1 - Math.Pow(Beta2, StepCount);
        using var noGrad = torch.no_grad();
        foreach (var (name, p, decay) in _params)
        {
            if (p.grad is null) continue;
            using var scope = torch.NewDisposeScope();
            var g = p.grad.to_type(ScalarType.Float32);
            if (!_moments.TryGetValue(name, out var mv))
            {
                mv = (torch.zeros_like(p, dtype: ScalarType.Float32), torch.zeros_like(p, dtype: ScalarType.Float32));
                // Owned by the optimizer for its whole life: out of every dispose scope, the caller's included.
                mv.M.DetachFromDisposeScope(); mv.V.DetachFromDisposeScope();
                _moments[name] = mv;
            }
            mv.M.mul_(Beta1).add_(g, alpha: 1 - Beta1);
            mv.V.mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);
            var target = p;
            if (p.dtype != ScalarType.Float32)
            {
                if (!_masters.TryGetValue(name, out var master))
                    _masters[name] = master = p.detach().to_type(ScalarType.Float32).DetachFromDisposeScope();
                target = master;
            }
            if (decay && WeightDecay > 0) target.mul_(1 - lr * WeightDecay);
            var denom = (mv.V / bc2).sqrt_().add_(Eps);
            target.sub_((mv.M / denom).mul_(lr / bc1));
            if (!ReferenceEquals(target, p)) p.copy_(target);
        }
    }

    /// <summary>exp_avg.{name}, exp_avg_sq.{name} (float32) for every parameter that has been updated.</summary>
    public Dictionary<string, Tensor> StateDict()
    {
        var d = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, (m, v)) in _moments) { d["exp_avg." + name] = m; d["exp_avg_sq." + name] = v; }
        foreach (var (name, master) in _masters) d["master." + name] = master;
        return d;
    }

    /// <summary>Restores moments saved by <see cref="StateDict"/> and the step count.</summary>
    /// <exception cref="InvalidDataException">A saved moment names no parameter or has the wrong shape.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> state, long stepCount)
    {
        var byName = _params.ToDictionary(p => p.Name, p => p.Param, StringComparer.Ordinal);
        foreach (var (key, t) in state)
        {
            bool isM = key.StartsWith("exp_avg.", StringComparison.Ordinal);
            bool isV = key.StartsWith("exp_avg_sq.", StringComparison.Ordinal);
            bool isMaster = key.StartsWith("master.", StringComparison.Ordinal);
            if (!isM && !isV && !isMaster) throw new InvalidDataException($"optimizer state: unexpected tensor '{key}'");
            string name = key[(key.IndexOf('.') + 1)..];
            if (!byName.TryGetValue(name, out var p)) throw new InvalidDataException($"optimizer state: '{key}' names no trainable parameter");
            if (!p.shape.SequenceEqual(t.shape)) throw new InvalidDataException($"optimizer state: '{key}' has shape [{string.Join(",", t.shape)}], the parameter [{string.Join(",", p.shape)}]");
            var moved = t.to(ScalarType.Float32, p.device).clone().DetachFromDisposeScope();
            if (isMaster)
            {
                if (p.dtype == ScalarType.Float32) throw new InvalidDataException($"optimizer state: '{key}' is a master copy of a float32 parameter");
                _masters[name] = moved;
                continue;
            }
            _moments.TryGetValue(name, out var mv);
            _moments[name] = isM ? (moved, mv.V ?? torch.zeros_like(moved)) : (mv.M ?? torch.zeros_like(moved), moved);
        }
        StepCount = stepCount;
    }
}
