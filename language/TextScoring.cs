// Scoring a sequence under an LM: the total negative log-likelihood in bits of every token after the first.
using TorchSharp;
using Ssm.Backbone.Models;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Language;

public static class TextScoring
{
    /// <summary>
    /// Every token but the first is predicted, with the context restarting every <paramref name="window"/> tokens
    /// (windows overlap by one token, so none is skipped); full windows run in batches of <paramref name="batch"/>, the
    /// last shorter one alone. Returns (total bits, predicted tokens).
    /// </summary>
    public static (double Bits, long Count) Score(MambaLM model, IReadOnlyList<int> ids, int window, int batch = 8, ProgressBar? progress = null)
    {
        if (window < 1) throw new ArgumentOutOfRangeException(nameof(window));
        if (ids.Count < 2) return (0, 0);
        var device = model.lm_head.weight!.device;
        long predicted = ids.Count - 1;
        long full = predicted / window;
        double nats = 0;
        using var noGrad = torch.no_grad();
        for (long w0 = 0; w0 < full; w0 += batch)
        {
            using var scope = torch.NewDisposeScope();
            int nb = (int)Math.Min(batch, full - w0);
            var buf = new long[nb * (window + 1)];
            for (int i = 0; i < nb; i++)
                for (int j = 0; j <= window; j++) buf[i * (window + 1) + j] = ids[(int)((w0 + i) * window + j)];
            nats += SumNats(model, torch.tensor(buf, new long[] { nb, window + 1 }, device: device));
            progress?.Advance(nb * (long)window);
        }
        long rest = predicted - full * window;
        if (rest > 0)
        {
            using var scope = torch.NewDisposeScope();
            var tail = new long[rest + 1];
            for (int j = 0; j <= rest; j++) tail[j] = ids[(int)(full * window + j)];
            nats += SumNats(model, torch.tensor(tail, new long[] { 1, rest + 1 }, device: device));
            progress?.Advance(rest);
        }
        return (nats / Math.Log(2), predicted);
    }

    static double SumNats(MambaLM model, Tensor ids)
    {
        long L = ids.shape[1] - 1;
        var logits = model.forward(ids[.., ..(int)L]);
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), ids[.., 1..].reshape(-1), reduction: nn.Reduction.Sum)
            .to_type(ScalarType.Float64).item<double>();
    }
}
