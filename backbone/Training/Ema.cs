// Exponential moving average of a model's weights (Polyak averaging), as diffusion models sample from (DDPM used
// decay 0.9999; DiT 0.9999; small, short runs want a smaller decay or the warm-up below):
//   ema <- d ema + (1 - d) w,   d = min(decay, (1 + n) / (10 + n))   after the n-th optimizer step
// The warm-up (TensorFlow's ExponentialMovingAverage num_updates rule) keeps early averages from being dominated by
// the random initialisation. Averages are kept in float32 whatever the model's dtype, on the model's device.
// Plug in with Trainer.AfterStep = ema.Update, ExtraState = ema.State, LoadExtraState = ema.LoadState.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Training;

public sealed class Ema : IDisposable
{
    public const string Prefix = "ema.";

    readonly (string Name, Tensor Param)[] _params;
    readonly Dictionary<string, Tensor> _avg = new(StringComparer.Ordinal);
    long _updates;

    public double Decay { get; }

    /// <summary>Starts the average at the model's current weights (floating-point parameters only).</summary>
    public Ema(nn.Module model, double decay = 0.9999)
    {
        if (!(decay is >= 0 and < 1)) throw new ArgumentOutOfRangeException(nameof(decay), $"EMA decay must be in [0, 1), got {decay}");
        Decay = decay;
        _params = model.named_parameters().DistinctBy(p => p.parameter.Handle).Select(p => (p.name, (Tensor)p.parameter)).ToArray();
        using var noGrad = torch.no_grad();
        foreach (var (n, p) in _params) _avg[n] = p.detach().to_type(ScalarType.Float32).clone();
    }

    /// <summary>The decay used for update number <paramref name="n"/> (1-based).</summary>
    public double DecayAt(long n) => Math.Min(Decay, (1.0 + n) / (10.0 + n));

    /// <summary>One averaging step; call after each optimizer step.</summary>
    public void Update(long step)
    {
        _updates++;
        double d = DecayAt(_updates);
        using var noGrad = torch.no_grad();
        foreach (var (n, p) in _params)
        {
            using var scope = torch.NewDisposeScope();
            _avg[n].mul_(d).add_(p.detach().to_type(ScalarType.Float32), alpha: 1 - d);
        }
    }

    /// <summary>The averages, by parameter name (not copies).</summary>
    public IReadOnlyDictionary<string, Tensor> Averages => _avg;

    /// <summary>Copies the averages into the model's parameters (in their dtype).</summary>
    public void CopyTo(nn.Module model)
    {
        using var noGrad = torch.no_grad();
        foreach (var (n, p) in model.named_parameters())
            if (_avg.TryGetValue(n, out var a)) p.copy_(a);
    }

    /// <summary>For checkpoints: "ema.{name}" for each average plus the update count.</summary>
    public Dictionary<string, Tensor> State()
    {
        var d = _avg.ToDictionary(kv => Prefix + kv.Key, kv => kv.Value);
        d[Prefix + "__updates__"] = torch.tensor(new[] { _updates });
        return d;
    }

    /// <summary>Restores <see cref="State"/>; every parameter must be present with its shape.</summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        using var noGrad = torch.no_grad();
        foreach (var (n, a) in _avg)
        {
            if (!state.TryGetValue(Prefix + n, out var s)) throw new InvalidDataException($"checkpoint has no EMA average for {n}");
            if (!s.shape.SequenceEqual(a.shape)) throw new InvalidDataException($"EMA average {n}: shape ({string.Join(", ", s.shape)}) does not fit ({string.Join(", ", a.shape)})");
            a.copy_(s);
        }
        _updates = state.TryGetValue(Prefix + "__updates__", out var u) ? u.cpu().to_type(ScalarType.Int64).item<long>() : 0;
    }

    public void Dispose() { foreach (var a in _avg.Values) a.Dispose(); }
}
