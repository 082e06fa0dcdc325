// Judging generated spoken digits as the SaShiMi (Goel et al. 2022, Table 2) and Mamba (Gu & Dao 2023, Table 4)
// papers do for SC09: a classifier trained on the digits (DigitClassifier) gives each clip class probabilities
// p(y|x) and penultimate features; from them (backbone SampleQuality, one implementation for every domain):
//   IS   exp E_x KL(p(y|x) || p(y))                      higher is better (at most k = 10)
//   mIS  exp E_{x,x'} KL(p(y|x) || p(y|x'))              higher is better (rewards confident *and* diverse clips)
//   AM   KL(p_ref(y) || p(y)) + E_x H(p(y|x))           lower is better; p_ref = the training split's label
//                                                         distribution (the class frequencies the model was fit to)
//   FID  Frechet distance of the classifier features of the clips to those of the test split, lower is better
// and the ceiling the papers print as their "Train"/"Test" rows: what real speech scores under the same judge,
//   IS, mIS, AM of the test split itself, and FID of as many training clips (a seeded random subset, by default as
//   many as the test split holds) against the test split.
// FID depends on the sample count (its estimate is biased upwards for few samples), so generated sets should be
// about the test split's size (the papers generate 2,048) for the two FIDs to compare; the report prints both counts.
//
// Clips: every *.wav directly in the folder (sorted by name), read with Wav.ReadMono at the classifier's rate
// (resampled when needed, channels averaged), then cropped or padded to the classifier's clip length exactly as
// AudioDataset.LoadSplit does: the middle of a longer clip, a shorter one centred between zeros (FitLength).
// A bad file stops the run with a one-line error naming it.
//
// Shapes: n clips, L samples per clip, f feature width (d_model), k classes.
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Ssm.Backbone.Generation;
using Ssm.Backbone.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>One row of the judge's table: the scores of one set of clips.</summary>
/// <param name="Name">What was scored ("generated", "test (ceiling)").</param>
/// <param name="Count">Clips scored.</param>
/// <param name="Fid">Frechet distance of the set's features to the test split's; null where not computed.</param>
/// <param name="FidCount">Clips on the set's side of the FID (the train subset for the ceiling row).</param>
/// <param name="PredictedCounts">How many clips the classifier assigns to each class (argmax), in label order.</param>
public sealed record JudgeScores(string Name, int Count, double InceptionScore, double ModifiedInceptionScore, double AmScore,
    double? Fid, int FidCount, IReadOnlyList<long> PredictedCounts)
{
    static JsonNode? Num(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;

    public JsonObject ToJson(IReadOnlyList<string> labels)
    {
        var predicted = new JsonObject();
        for (int i = 0; i < PredictedCounts.Count; i++) predicted[i < labels.Count ? labels[i] : i.ToString(CultureInfo.InvariantCulture)] = PredictedCounts[i];
        return new JsonObject
        {
            ["name"] = Name, ["count"] = Count, ["is"] = Num(InceptionScore), ["mis"] = Num(ModifiedInceptionScore), ["am"] = Num(AmScore),
            ["fid"] = Fid is double f ? Num(f) : null, ["fid_count"] = Fid is null ? null : FidCount, ["predicted"] = predicted,
        };
    }
}

/// <summary>The judge's verdict on a folder: the generated clips' scores and the real-speech ceiling.</summary>
/// <param name="Directory">The folder judged.</param>
/// <param name="Files">The clips, in the order scored.</param>
/// <param name="ReferenceCount">Test clips the FIDs compare against.</param>
public sealed record JudgeReport(string Directory, IReadOnlyList<string> Files, IReadOnlyList<string> Labels,
    JudgeScores Generated, JudgeScores Ceiling, int ReferenceCount)
{
    public JsonObject ToJson() => new()
    {
        ["directory"] = Directory,
        ["labels"] = new JsonArray(Labels.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray()),
        ["reference"] = new JsonObject { ["split"] = "test", ["count"] = ReferenceCount },
        ["am_reference"] = "train label distribution",
        ["generated"] = Generated.ToJson(Labels),
        ["ceiling"] = Ceiling.ToJson(Labels),
    };

    /// <summary>The table as the papers print it (FID, IS, mIS, AM), generated over ceiling, and the counts.</summary>
    public string Format()
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine($"{"",-26}{"count",8}{"FID",10}{"IS",8}{"mIS",9}{"AM",8}");
        foreach (var s in new[] { Generated, Ceiling })
            sb.AppendLine(string.Create(inv,
                $"{s.Name,-26}{s.Count,8}{(s.Fid is double f ? f.ToString("0.000", inv) : "-"),10}{s.InceptionScore,8:0.00}{s.ModifiedInceptionScore,9:0.00}{s.AmScore,8:0.000}"));
        sb.AppendLine(string.Create(inv, $"FID against {ReferenceCount} test clips (ceiling: {Ceiling.FidCount} training clips); AM against the training label distribution"));
        sb.Append("predicted classes of the generated clips: ");
        sb.AppendLine(string.Join(", ", Labels.Select((l, i) => $"{l} {Generated.PredictedCounts[i]}")));
        return sb.ToString();
    }
}

/// <summary>What the judge needs of the real data: test features and probabilities, training features, the class prior.</summary>
public sealed class JudgeReference : IDisposable
{
    /// <summary>(n_test, f) float32 on the CPU.</summary>
    public Tensor TestFeatures { get; }
    /// <summary>(n_test, k) float32 on the CPU.</summary>
    public Tensor TestProbs { get; }
    /// <summary>(n_train_subset, f) float32 on the CPU: the ceiling row's side of the FID.</summary>
    public Tensor TrainFeatures { get; }
    /// <summary>(k) float64: the training split's label distribution (AM's reference).</summary>
    public Tensor ClassPrior { get; }

    public JudgeReference(Tensor testFeatures, Tensor testProbs, Tensor trainFeatures, Tensor classPrior)
    {
        if (testFeatures.dim() != 2 || testProbs.dim() != 2 || testFeatures.shape[0] != testProbs.shape[0] || testFeatures.shape[0] < 2)
            throw new ArgumentException("the reference needs at least 2 test clips with one feature row and one probability row each");
        if (trainFeatures.dim() != 2 || trainFeatures.shape[1] != testFeatures.shape[1] || trainFeatures.shape[0] < 2)
            throw new ArgumentException("the reference needs at least 2 training clips with features as wide as the test features");
        if (classPrior.dim() != 1 || classPrior.shape[0] != testProbs.shape[1])
            throw new ArgumentException($"the class prior must have one entry per class ({testProbs.shape[1]})");
        TestFeatures = testFeatures; TestProbs = testProbs; TrainFeatures = trainFeatures; ClassPrior = classPrior;
    }

    /// <summary>
    /// Runs <paramref name="clf"/> over the test split and a seeded random subset of <paramref name="trainCount"/>
    /// training clips (null: as many as the test split has, at most the whole training split).
    /// </summary>
    public static JudgeReference Compute(DigitClassifier clf, AudioDataset data, int? trainCount = null, long seed = 0,
        int batchSize = 256, bool progress = false)
    {
        if (data.Labels.Count != clf.Labels.Count || !data.Labels.SequenceEqual(clf.Labels))
            throw new ArgumentException($"{data.Directory}: the data set's labels ({string.Join(", ", data.Labels)}) differ from the classifier's ({string.Join(", ", clf.Labels)})");
        var trainItems = data.Split("train");
        var testItems = data.Split("test");
        if (testItems.Count < 2) throw new InvalidDataException($"{data.Directory}: the test split has {testItems.Count} clips; the judge needs at least 2");
        int m = Math.Min(trainCount ?? testItems.Count, trainItems.Count);
        if (m < 2) throw new InvalidDataException($"{data.Directory}: {m} training clips for the ceiling FID; at least 2 are needed");

        // AM's reference: class frequencies of the whole training split (the manifest says them; no audio needed).
        var counts = new double[clf.Labels.Count];
        foreach (var it in trainItems) if (it.Label >= 0) counts[it.Label]++;
        double total = counts.Sum();
        if (total == 0) throw new InvalidDataException($"{data.Directory}: the training split has no labelled clips");
        var prior = torch.tensor(counts.Select(c => c / total).ToArray(), dtype: ScalarType.Float64);

        var order = trainItems.ToArray();
        new Random(Trainer.StepSeed(seed, 0)).Shuffle(order);
        var subset = order.Take(m).ToList();
        double seconds = (double)clf.Config.ClipSamples / clf.Config.SampleRate;

        Tensor? testF = null, testP = null, trainF = null;
        try
        {
            using (var test = data.Load(testItems, clf.Config.SampleRate, seconds))
            using (var bar = progress ? new ProgressBar("reference test", test.Count, "clips") : null)
                (testF, testP) = clf.FeaturesAndProbs(test.Audio, batchSize, bar);
            using (var train = data.Load(subset, clf.Config.SampleRate, seconds))
            using (var bar = progress ? new ProgressBar("reference train", train.Count, "clips") : null)
            {
                var (f, p) = clf.FeaturesAndProbs(train.Audio, batchSize, bar);
                p.Dispose();
                trainF = f;
            }
            return new JudgeReference(testF, testP, trainF, prior);
        }
        catch
        {
            testF?.Dispose(); testP?.Dispose(); trainF?.Dispose(); prior.Dispose();
            throw;
        }
    }

    /// <summary>The ceiling row: the test split's IS, mIS, AM, and FID of the training subset against the test split.</summary>
    public JudgeScores Ceiling() => AudioJudge.Score("test (ceiling)", TestFeatures, TestProbs, this, fidFeatures: TrainFeatures);

    public void Dispose()
    {
        TestFeatures.Dispose(); TestProbs.Dispose(); TrainFeatures.Dispose(); ClassPrior.Dispose();
    }
}

public static class AudioJudge
{
    /// <summary>
    /// <paramref name="x"/> at exactly <paramref name="length"/> samples: the middle of a longer clip, a shorter one
    /// centred between zeros (AudioDataset's rule: offset (len - length) / 2, truncated towards zero).
    /// </summary>
    public static float[] FitLength(float[] x, int length)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (length <= 0) throw new ArgumentOutOfRangeException(nameof(length), length, "clip length must be positive");
        if (x.Length == length) return x;
        var y = new float[length];
        long start = ((long)x.Length - length) / 2;                                     // > 0: crop; < 0: pad in front
        long from = Math.Max(0, start), to = Math.Min(x.Length, start + length);
        if (to > from) x.AsSpan((int)from, (int)(to - from)).CopyTo(y.AsSpan((int)(from - start)));
        return y;
    }

    /// <summary>The *.wav files directly in <paramref name="dir"/>, sorted by name (ordinal).</summary>
    /// <exception cref="InvalidDataException">No such folder, or no WAV file in it.</exception>
    public static string[] ListClips(string dir)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: folder not found");
        var files = Directory.EnumerateFiles(dir, "*.wav", new EnumerationOptions { MatchCasing = MatchCasing.CaseInsensitive, RecurseSubdirectories = false })
            .Order(StringComparer.Ordinal).ToArray();
        if (files.Length == 0) throw new InvalidDataException($"{dir}: no .wav files to judge");
        return files;
    }

    /// <summary>
    /// Reads <paramref name="files"/> as clips (n, L) float32 on the CPU: mono at <paramref name="sampleRate"/>, fitted
    /// to <paramref name="length"/> samples (FitLength).
    /// </summary>
    /// <exception cref="InvalidDataException">"FILE: reason" for the first file that cannot be used.</exception>
    public static Tensor ReadClips(IReadOnlyList<string> files, int sampleRate, int length)
    {
        var rows = new float[files.Count][];
        var errors = new Exception?[files.Count];
        Parallel.For(0, files.Count, i =>
        {
            try
            {
                var x = Wav.ReadMono(files[i], sampleRate);
                if (x.Length == 0) throw new InvalidDataException($"{files[i]}: the clip has no samples");
                for (int s = 0; s < x.Length; s++)
                    if (!float.IsFinite(x[s])) throw new InvalidDataException($"{files[i]}: sample {s} is {x[s]} (not a finite number)");
                rows[i] = FitLength(x, length);
            }
            catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
            {
                errors[i] = e is InvalidDataException ? e : new InvalidDataException($"{files[i]}: {e.Message}", e);
            }
        });
        // The first bad file in name order, so the message does not depend on thread scheduling.
        if (errors.FirstOrDefault(e => e is not null) is { } err) throw err;
        var flat = new float[(long)files.Count * length];
        for (int i = 0; i < rows.Length; i++) rows[i].CopyTo(flat, (long)i * length);
        return torch.tensor(flat, [files.Count, length]);
    }

    /// <summary>
    /// The scores of one set from its classifier features (n, f) and probabilities (n, k): IS, mIS, AM against the
    /// reference's class prior, and FID of <paramref name="fidFeatures"/> (default: <paramref name="features"/>)
    /// against the reference's test features.
    /// </summary>
    public static JudgeScores Score(string name, Tensor features, Tensor probs, JudgeReference reference, Tensor? fidFeatures = null)
    {
        if (probs.dim() != 2 || probs.shape[1] != reference.TestProbs.shape[1])
            throw new ArgumentException($"probabilities must be (n, {reference.TestProbs.shape[1]}), got ({string.Join(", ", probs.shape)})");
        var fidSide = fidFeatures ?? features;
        if (fidSide.shape[0] < 2) throw new ArgumentException($"{name}: {fidSide.shape[0]} clips; FID needs at least 2");
        double fid = SampleQuality.FrechetDistance(fidSide, reference.TestFeatures);
        double inception = SampleQuality.InceptionScore(probs);
        double modified = SampleQuality.ModifiedInceptionScore(probs);
        double am = SampleQuality.AmScore(probs, reference.ClassPrior);
        int k = (int)probs.shape[1];
        long[] predicted;
        using (var arg = probs.argmax(1))
        using (var counts = arg.bincount(null, k))
            predicted = counts.cpu().data<long>().ToArray();
        return new JudgeScores(name, (int)probs.shape[0], inception, modified, am, fid, (int)fidSide.shape[0], predicted);
    }

    /// <summary>Judges clips (n, L) already at the classifier's rate and length.</summary>
    public static JudgeScores ScoreClips(DigitClassifier clf, Tensor clips, JudgeReference reference, string name = "generated", int batchSize = 256)
    {
        if (clips.dim() != 2 || clips.shape[0] < 2) throw new ArgumentException($"{name}: need at least 2 clips (n, L), got ({string.Join(", ", clips.shape)})");
        var (f, p) = clf.FeaturesAndProbs(clips, batchSize);
        using (f) using (p) return Score(name, f, p, reference);
    }

    /// <summary>Judges every WAV clip in <paramref name="dir"/> against a reference computed beforehand.</summary>
    public static JudgeReport Judge(DigitClassifier clf, string dir, JudgeReference reference, int batchSize = 256)
    {
        var files = ListClips(dir);
        if (files.Length < 2) throw new InvalidDataException($"{dir}: {files.Length} .wav file; the judge needs at least 2 clips (FID)");
        using var clips = ReadClips(files, clf.Config.SampleRate, clf.Config.ClipSamples);
        var generated = ScoreClips(clf, clips, reference, "generated", batchSize);
        return new JudgeReport(Path.GetFullPath(dir), files.Select(Path.GetFileName).ToArray()!, clf.Labels, generated,
            reference.Ceiling(), (int)reference.TestFeatures.shape[0]);
    }

    /// <summary>Judges every WAV clip in <paramref name="dir"/> against the test split of <paramref name="data"/>.</summary>
    /// <param name="ceilingTrainCount">Training clips in the ceiling FID (null: as many as the test split has).</param>
    public static JudgeReport Judge(DigitClassifier clf, string dir, AudioDataset data, int? ceilingTrainCount = null, long seed = 0,
        int batchSize = 256, bool progress = false)
    {
        ListClips(dir);                                                // fail on a bad folder before the reference's work
        using var reference = JudgeReference.Compute(clf, data, ceilingTrainCount, seed, batchSize, progress);
        return Judge(clf, dir, reference, batchSize);
    }
}
