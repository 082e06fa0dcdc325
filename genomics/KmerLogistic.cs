using TorchSharp;
using static TorchSharp.torch;

// The k-mer logistic-regression baseline of issue 5 for sequence classification (splice junctions, great-apes
// species, promoters): bag-of-k-mers features and a multinomial logistic regression.
//
// Features: for each k in Ks, the counts of the 4^k k-mers over A C G T (k-mers containing any other byte, e.g. N,
// are skipped), divided by the number of counted k-mers of that k in the sequence (frequencies; all zero when there
// are none); the blocks for the different k are concatenated in the order of Ks. k-mer index = the k bases in base 4,
// oldest first, A=0 C=1 G=2 T=3 (so "AC" is 1, "CA" is 4).
// Model: logits = standardise(x) W + b, standardise with the training features' mean and standard deviation (features
// that never vary keep scale 1). Loss: mean cross-entropy + L2 * ||W||^2 (the bias is not penalised), minimised with
// Adam (full batch, or minibatches of BatchSize), learning rate decayed by a cosine to 0 over Steps. Zero init: the
// problem is convex, so the result depends on the data and options only (and the seed, for minibatches).
// Shapes: features (n, d) with d = sum_k 4^k; W (d, C); b (C); C = number of classes.
namespace Ssm.Genomics;

/// <summary>k-mer frequency features (see the file comment for the layout).</summary>
public sealed class KmerFeaturizer
{
    readonly int[] offsets;

    public IReadOnlyList<int> Ks { get; }
    public int Dimension { get; }

    public KmerFeaturizer(params int[] ks)
    {
        if (ks.Length == 0) throw new ArgumentException("at least one k is needed", nameof(ks));
        foreach (int k in ks)
            if (k < 1 || k > 10) throw new ArgumentOutOfRangeException(nameof(ks), $"k = {k} outside 1..10");
        Ks = ks.ToArray();
        offsets = new int[ks.Length];
        int d = 0;
        for (int i = 0; i < ks.Length; i++) { offsets[i] = d; d += 1 << (2 * ks[i]); }
        Dimension = d;
    }

    /// <summary>Writes the features of <paramref name="sequence"/> into <paramref name="destination"/> (length Dimension).</summary>
    public void Features(ReadOnlySpan<byte> sequence, Span<float> destination)
    {
        if (destination.Length != Dimension) throw new ArgumentException($"destination has {destination.Length} slots, not {Dimension}", nameof(destination));
        destination.Clear();
        var code = MarkovChain.Code;
        for (int j = 0; j < Ks.Count; j++)
        {
            int k = Ks[j], mask = (1 << (2 * k)) - 1, run = 0, h = 0, n = 0;
            var block = destination.Slice(offsets[j], 1 << (2 * k));
            foreach (byte c in sequence)
            {
                int x = code[c];
                if (x < 0) { run = 0; continue; }
                h = ((h << 2) | x) & mask;
                if (++run >= k) { block[h] += 1; n++; }
            }
            if (n > 0) { float inv = 1f / n; for (int i = 0; i < block.Length; i++) block[i] *= inv; }
        }
    }

    public float[] Features(ReadOnlySpan<byte> sequence)
    {
        var f = new float[Dimension];
        Features(sequence, f);
        return f;
    }

    /// <summary>The (n, Dimension) row-major feature matrix of many sequences.</summary>
    public float[] Matrix(IReadOnlyList<byte[]> sequences)
    {
        long size = (long)sequences.Count * Dimension;
        if (size > Array.MaxLength) throw new ArgumentException($"{sequences.Count} x {Dimension} features do not fit one array; use fewer k or fewer sequences");
        var m = new float[size];
        Parallel.For(0, sequences.Count, i => Features(sequences[i], m.AsSpan(i * Dimension, Dimension)));
        return m;
    }

    /// <summary>The index of a k-mer string (A C G T only) within its block.</summary>
    public static int Index(string kmer)
    {
        int h = 0;
        foreach (char c in kmer)
        {
            int x = MarkovChain.Code[c & 0xFF];
            if (x < 0 || c > 0xFF) throw new ArgumentException($"'{kmer}' is not an A/C/G/T k-mer", nameof(kmer));
            h = (h << 2) | x;
        }
        return h;
    }

    /// <summary>Where the block of the i-th k (in Ks order) starts in the feature vector.</summary>
    public int Offset(int i) => offsets[i];
}

/// <summary>Options of <see cref="KmerLogistic.Fit"/>.</summary>
public sealed record KmerLogisticOptions
{
    public int[] Ks { get; init; } = [1, 2, 3, 4];
    /// <summary>Weight of ||W||^2 in the loss.</summary>
    public double L2 { get; init; } = 1e-3;
    public int Steps { get; init; } = 300;
    public double LearningRate { get; init; } = 0.05;
    /// <summary>Minibatch size; 0 (or at least the number of examples) means full batch.</summary>
    public int BatchSize { get; init; }
    public int Seed { get; init; }
}

/// <summary>A multinomial logistic regression on k-mer frequency features.</summary>
public sealed class KmerLogistic
{
    public KmerFeaturizer Featurizer { get; }
    public int Classes { get; }
    /// <summary>Standardisation: x' = (x - Mean) / Scale.</summary>
    public float[] Mean { get; }
    public float[] Scale { get; }
    /// <summary>(Dimension, Classes) row-major.</summary>
    public float[] Weights { get; }
    public float[] Bias { get; }
    /// <summary>Training loss (cross-entropy + L2) at the last step.</summary>
    public double FinalLoss { get; }

    KmerLogistic(KmerFeaturizer f, int classes, float[] mean, float[] scale, float[] w, float[] b, double loss)
    {
        Featurizer = f; Classes = classes; Mean = mean; Scale = scale; Weights = w; Bias = b; FinalLoss = loss;
    }

    /// <summary>Fits on <paramref name="sequences"/> with labels 0..classes-1.</summary>
    public static KmerLogistic Fit(IReadOnlyList<byte[]> sequences, IReadOnlyList<int> labels, int classes, KmerLogisticOptions? options = null)
    {
        var o = options ?? new KmerLogisticOptions();
        if (sequences.Count == 0) throw new ArgumentException("no training sequences", nameof(sequences));
        if (labels.Count != sequences.Count) throw new ArgumentException($"{labels.Count} labels for {sequences.Count} sequences", nameof(labels));
        if (classes < 2) throw new ArgumentOutOfRangeException(nameof(classes), "at least 2 classes");
        foreach (int y in labels) if (y < 0 || y >= classes) throw new ArgumentException($"label {y} outside 0..{classes - 1}", nameof(labels));
        if (o.Steps < 1) throw new ArgumentOutOfRangeException(nameof(options), "Steps must be at least 1");

        var f = new KmerFeaturizer(o.Ks);
        int n = sequences.Count, d = f.Dimension;
        var x = f.Matrix(sequences);
        var (mean, scale) = Standardisation(x, n, d);
        for (int i = 0; i < n; i++)
        {
            var row = x.AsSpan(i * d, d);
            for (int j = 0; j < d; j++) row[j] = (row[j] - mean[j]) / scale[j];
        }

        // Small problems run on one intra-op thread (as Generation/Generator does for small ops): their ops take
        // microseconds, and libtorch's thread pool only adds waits, badly so when the cores are oversubscribed
        // (measured: 900 x 1280 features, 150 steps: 0.5 s on 1 thread vs 20 s on 2 threads with 12 busy processes).
        using (Ssm.Backbone.Native.TorchThreads.Single((long)n * d * classes <= SmallProblem))
            return Train(f, x, n, d, labels, classes, mean, scale, o);
    }

    /// <summary>n * d * classes up to which Fit trains on one torch thread.</summary>
    public const long SmallProblem = 1L << 24;

    static KmerLogistic Train(KmerFeaturizer f, float[] x, int n, int d, IReadOnlyList<int> labels, int classes,
        float[] mean, float[] scale, KmerLogisticOptions o)
    {
        using var scope = torch.NewDisposeScope();
        var X = torch.tensor(x, [n, d]);
        var Y = torch.tensor(labels.Select(v => (long)v).ToArray());
        var W = new TorchSharp.Modules.Parameter(torch.zeros(d, classes));
        var B = new TorchSharp.Modules.Parameter(torch.zeros(classes));
        using var opt = torch.optim.Adam([W, B], lr: o.LearningRate);
        int batch = o.BatchSize <= 0 || o.BatchSize >= n ? n : o.BatchSize;
        var rng = new Random(o.Seed);
        var perm = Enumerable.Range(0, n).ToArray();
        int cursor = n;
        double loss = double.NaN;
        for (int step = 0; step < o.Steps; step++)
        {
            using var stepScope = torch.NewDisposeScope();
            foreach (var g in opt.ParamGroups) g.LearningRate = o.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * step / o.Steps));
            Tensor xb = X, yb = Y;
            if (batch < n)
            {
                if (cursor + batch > n) { rng.Shuffle(perm); cursor = 0; }
                var idx = torch.tensor(perm.AsSpan(cursor, batch).ToArray().Select(v => (long)v).ToArray());
                cursor += batch;
                xb = X.index_select(0, idx); yb = Y.index_select(0, idx);
            }
            opt.zero_grad();
            var logits = xb.mm(W) + B;
            var l = nn.functional.cross_entropy(logits, yb) + o.L2 * W.pow(2).sum();
            l.backward();
            opt.step();
            loss = l.item<float>();
        }
        return new KmerLogistic(f, classes, mean, scale, W.detach().contiguous().data<float>().ToArray(), B.detach().data<float>().ToArray(), loss);
    }

    static (float[] Mean, float[] Scale) Standardisation(float[] x, int n, int d)
    {
        var sum = new double[d];
        var sq = new double[d];
        for (int i = 0; i < n; i++)
        {
            var row = x.AsSpan(i * d, d);
            for (int j = 0; j < d; j++) { sum[j] += row[j]; sq[j] += (double)row[j] * row[j]; }
        }
        var mean = new float[d];
        var scale = new float[d];
        for (int j = 0; j < d; j++)
        {
            double m = sum[j] / n, v = Math.Max(0, sq[j] / n - m * m);
            mean[j] = (float)m;
            scale[j] = v > 1e-12 ? (float)Math.Sqrt(v) : 1f;
        }
        return (mean, scale);
    }

    /// <summary>Class scores (logits) of one sequence.</summary>
    public float[] Logits(ReadOnlySpan<byte> sequence)
    {
        var x = Featurizer.Features(sequence);
        var z = (float[])Bias.Clone();
        for (int j = 0; j < x.Length; j++)
        {
            float v = (x[j] - Mean[j]) / Scale[j];
            if (v == 0) continue;
            for (int c = 0; c < Classes; c++) z[c] += v * Weights[j * Classes + c];
        }
        return z;
    }

    /// <summary>The most likely class of each sequence.</summary>
    public int[] Predict(IReadOnlyList<byte[]> sequences)
    {
        var p = new int[sequences.Count];
        Parallel.For(0, sequences.Count, i =>
        {
            var z = Logits(sequences[i]);
            int best = 0;
            for (int c = 1; c < z.Length; c++) if (z[c] > z[best]) best = c;
            p[i] = best;
        });
        return p;
    }

    /// <summary>Fraction of <paramref name="sequences"/> predicted as their label.</summary>
    public double Accuracy(IReadOnlyList<byte[]> sequences, IReadOnlyList<int> labels)
    {
        if (labels.Count != sequences.Count) throw new ArgumentException($"{labels.Count} labels for {sequences.Count} sequences", nameof(labels));
        if (sequences.Count == 0) return double.NaN;
        var p = Predict(sequences);
        int ok = 0;
        for (int i = 0; i < p.Length; i++) if (p[i] == labels[i]) ok++;
        return (double)ok / p.Length;
    }
}
