// Scoring a sequence under an LM: the total negative log-likelihood in bits of every token after the first.
using TorchSharp;
using Ssm.Backbone.Models;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Language;

public static class TextScoring
{
    /// <summary>
    /// The scoring windows over <paramref name="n"/> tokens: (offset, tokens) with tokens = window + 1 except for a shorter
    /// last one; consecutive windows overlap by one token, so each of the tokens 1 .. n-1 is a target exactly once, with
    /// the context restarting every <paramref name="window"/> tokens.
    /// </summary>
    public static IEnumerable<(long Offset, int Length)> Windows(long n, int window)
    {
        if (window < 1) throw new ArgumentOutOfRangeException(nameof(window), "the window length must be at least 1");
        for (long o = 0; o + 1 < n; o += window)
            yield return (o, (int)Math.Min(window + 1, n - o));
    }

    /// <summary>
    /// Total bits of every token but the first (see <see cref="Windows"/>); full windows run in batches of
    /// <paramref name="batch"/>, a shorter last one alone. Returns (total bits, predicted tokens).
    /// </summary>
    public static (double Bits, long Count) Score(MambaLM model, IReadOnlyList<int> ids, int window, int batch = 8, ProgressBar? progress = null)
    {
        var device = model.lm_head.weight!.device;
        double nats = 0;
        long predicted = 0;
        var pending = new List<(long Offset, int Length)>(batch);
        void Flush()
        {
            if (pending.Count == 0) return;
            using var scope = torch.NewDisposeScope();
            int w = pending[0].Length;
            var buf = new long[pending.Count * w];
            for (int i = 0; i < pending.Count; i++)
                for (int j = 0; j < w; j++) buf[i * w + j] = ids[(int)(pending[i].Offset + j)];
            nats += SumNats(model, torch.tensor(buf, new long[] { pending.Count, w }, device: device));
            long done = pending.Count * (long)(w - 1);
            predicted += done;
            progress?.Advance(done);
            pending.Clear();
        }
        using var noGrad = torch.no_grad();
        foreach (var win in Windows(ids.Count, window))
        {
            if (pending.Count > 0 && (win.Length != pending[0].Length || pending.Count == batch)) Flush();
            pending.Add(win);
        }
        Flush();
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
