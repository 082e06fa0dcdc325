// The simplest baseline for an audio language model: the unigram (order-0) distribution of quantised samples.
//
// Fit on the training split's classes, with add-alpha smoothing so that a class never seen in training keeps a
// finite cost:  p_k = (count_k + alpha) / (N + alpha V).
// Its entropy on train, H(p) = -sum_k p_k log2 p_k, and its cross-entropy on another split with empirical frequencies
// q_k, CE(q, p) = -sum_k q_k log2 p_k, are in bits per sample: the same unit and the same samples (every sample of
// every clip) as AudioModel.Score, so the three numbers of the model card (unigram, LSTM, SaShiMi) compare directly.
// A model that has learnt nothing about time sits at the unigram cross-entropy; log2 V (8 bits) is the uniform one.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>A unigram distribution over quantised samples (see the file header).</summary>
public sealed class UnigramModel
{
    UnigramModel(double[] probabilities, long[] counts, double alpha)
    {
        Probabilities = probabilities; Counts = counts; Alpha = alpha;
    }

    /// <summary>p_k, k = 0 .. V-1 (sums to 1).</summary>
    public IReadOnlyList<double> Probabilities { get; }

    /// <summary>Training counts per class.</summary>
    public IReadOnlyList<long> Counts { get; }

    /// <summary>The add-alpha smoothing used.</summary>
    public double Alpha { get; }

    /// <summary>V.</summary>
    public int Classes => Probabilities.Count;

    /// <summary>Samples counted when fitting.</summary>
    public long Total => Counts.Sum();

    /// <summary>Class counts of <paramref name="classes"/> (any shape, integer values in [0, V)).</summary>
    public static long[] Histogram(Tensor classes, int numClasses)
    {
        ArgumentNullException.ThrowIfNull(classes);
        if (numClasses < 2) throw new ArgumentOutOfRangeException(nameof(numClasses), numClasses, "need at least 2 classes");
        if (classes.is_floating_point() || classes.is_complex())
            throw new ArgumentException($"expected integer class ids, got {classes.dtype} (encode the waveform first)", nameof(classes));
        using var scope = torch.NewDisposeScope();
        var flat = classes.reshape(-1).to_type(ScalarType.Int64);
        if (flat.numel() > 0)
        {
            long lo = flat.min().item<long>(), hi = flat.max().item<long>();
            if (lo < 0 || hi >= numClasses) throw new ArgumentException($"class ids must lie in [0, {numClasses}), got [{lo}, {hi}]", nameof(classes));
        }
        return torch.bincount(flat, minlength: numClasses).cpu().data<long>().ToArray();
    }

    /// <summary>Fits p_k = (count_k + alpha) / (N + alpha V) on <paramref name="trainClasses"/> (any shape).</summary>
    public static UnigramModel Fit(Tensor trainClasses, int numClasses = 256, double alpha = 0.5) =>
        FromCounts(Histogram(trainClasses, numClasses), alpha);

    /// <summary>The smoothed unigram of given counts.</summary>
    public static UnigramModel FromCounts(long[] counts, double alpha = 0.5)
    {
        ArgumentNullException.ThrowIfNull(counts);
        if (counts.Length < 2) throw new ArgumentException("need at least 2 classes", nameof(counts));
        if (!(alpha >= 0) || double.IsInfinity(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "smoothing must be >= 0");
        if (counts.Any(c => c < 0)) throw new ArgumentException("counts must be >= 0", nameof(counts));
        double n = counts.Sum() + alpha * counts.Length;
        if (!(n > 0)) throw new ArgumentException("no training samples and no smoothing: the distribution is undefined", nameof(counts));
        return new UnigramModel(counts.Select(c => (c + alpha) / n).ToArray(), counts.ToArray(), alpha);
    }

    /// <summary>H(p) in bits per sample: the model's own entropy.</summary>
    public double EntropyBits() => -Probabilities.Where(p => p > 0).Sum(p => p * Math.Log2(p));

    /// <summary>
    /// Cross-entropy of the empirical distribution of <paramref name="counts"/> under p, in bits per sample
    /// (infinite if a class with p_k = 0 occurs: fit with alpha &gt; 0 to avoid that).
    /// </summary>
    public double CrossEntropyBits(long[] counts)
    {
        if (counts.Length != Classes) throw new ArgumentException($"{counts.Length} counts for a {Classes}-class unigram", nameof(counts));
        long n = counts.Sum();
        if (n == 0) return double.NaN;
        double bits = 0;
        for (int k = 0; k < counts.Length; k++)
            if (counts[k] > 0) bits -= counts[k] * Math.Log2(Probabilities[k]);
        return bits / n;
    }

    /// <summary>Cross-entropy of <paramref name="classes"/> (any shape) under p, in bits per sample.</summary>
    public double CrossEntropyBits(Tensor classes) => CrossEntropyBits(Histogram(classes, Classes));
}

/// <summary>The baseline numbers of the model card, measured on the same samples as the models.</summary>
public static class AudioBaselines
{
    /// <summary>
    /// The unigram fitted on <paramref name="trainClasses"/>: its entropy on train and its cross-entropy on
    /// <paramref name="testClasses"/>, both in bits per sample.
    /// </summary>
    public static (UnigramModel Model, double TrainEntropyBits, double TestCrossEntropyBits) Unigram(
        Tensor trainClasses, Tensor testClasses, int numClasses = 256, double alpha = 0.5)
    {
        var m = UnigramModel.Fit(trainClasses, numClasses, alpha);
        return (m, m.EntropyBits(), m.CrossEntropyBits(testClasses));
    }

    /// <summary>
    /// The same, from waveforms (n, l) quantised as <paramref name="quantization"/> with <paramref name="bits"/> bits
    /// (encoded a block of rows at a time, so a whole data set never exists as int64 classes).
    /// </summary>
    public static (UnigramModel Model, double TrainEntropyBits, double TestCrossEntropyBits) Unigram(
        Tensor trainAudio, Tensor testAudio, AudioQuantization quantization, int bits = Quantization.DefaultBits, double alpha = 0.5)
    {
        var m = UnigramModel.FromCounts(Histogram(trainAudio, quantization, bits), alpha);
        return (m, m.EntropyBits(), m.CrossEntropyBits(Histogram(testAudio, quantization, bits)));
    }

    /// <summary>Class counts of waveforms (n, l) after quantisation, summed over blocks of rows.</summary>
    public static long[] Histogram(Tensor audio, AudioQuantization quantization, int bits = Quantization.DefaultBits)
    {
        ArgumentNullException.ThrowIfNull(audio);
        if (audio.dim() != 2) throw new ArgumentException($"expected waveforms (n, l), got [{string.Join(", ", audio.shape)}]", nameof(audio));
        int v = Quantization.Levels(bits);
        var counts = new long[v];
        long n = audio.size(0), l = Math.Max(1, audio.size(1)), block = Math.Max(1, (1L << 22) / l);
        for (long r = 0; r < n; r += block)
        {
            using var scope = torch.NewDisposeScope();
            var part = UnigramModel.Histogram(Quantization.Encode(audio.narrow(0, r, Math.Min(block, n - r)), quantization, bits), v);
            for (int k = 0; k < v; k++) counts[k] += part[k];
        }
        return counts;
    }
}
