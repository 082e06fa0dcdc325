// The judge of generated clips, on a small synthetic data set (a tone per class) and a tiny untrained classifier:
// its numbers equal SampleQuality applied directly to the classifier's features and probabilities, judging the test
// split's own files gives FID ~ 0 and the ceiling's IS/mIS/AM, bad folders and files give one-line errors naming
// them, and clips of other lengths and rates are fitted exactly as the data set loader fits them.
using System.Globalization;
using Ssm.Audio;
using Ssm.Backbone.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

public sealed class AudioJudgeTests : IDisposable
{
    const int Rate = 8000, Length = 4000;
    readonly string root = Path.Combine(Path.GetTempPath(), "ssm-judge-tests-" + Guid.NewGuid().ToString("N"));
    static readonly string[] Labels = DigitClassifierTests.Labels;

    public AudioJudgeTests() => Directory.CreateDirectory(root);
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    /// <summary>A data set folder: per class 4 train (2 for class 3: an uneven prior), 1 valid, 3 test tones.</summary>
    string MakeDataset()
    {
        string dir = Path.Combine(root, "digits");
        var rng = new Random(42);
        var lines = new List<string> { AudioDataset.ManifestHeader };
        var counts = new Dictionary<string, int> { ["train"] = 0, ["valid"] = 0, ["test"] = 0 };
        foreach (var (split, per) in new[] { ("train", 4), ("valid", 1), ("test", 3) })
            for (int c = 0; c < Labels.Length; c++)
                for (int i = 0; i < (split == "train" && c == 3 ? 2 : per); i++)
                {
                    string file = $"{split}/{Labels[c]}_{i}.wav";
                    Wav.Write(Path.Combine(dir, file), DigitClassifierTests.Tone(c, Length, Rate, rng), Rate, WavSampleFormat.Float32);
                    lines.Add(string.Join('\t', file, split, Labels[c], $"v{split}{i}", $"g{split}{i}", "0.5"));
                    counts[split]++;
                }
        File.WriteAllText(Path.Combine(dir, AudioDataset.ManifestName), string.Join('\n', lines) + "\n");
        File.WriteAllText(Path.Combine(dir, AudioDataset.InfoName), string.Create(CultureInfo.InvariantCulture,
            $$"""{"name": "tones", "sample_rate": {{Rate}}, "clip_seconds": 0.5, "labels": ["{{string.Join("\", \"", Labels)}}"], "splits": {"train": {{counts["train"]}}, "valid": {{counts["valid"]}}, "test": {{counts["test"]}}}, "script": "data/spoken-digits.sh"}"""));
        return dir;
    }

    static DigitClassifier Classifier(int seed)
    {
        torch.manual_seed(seed);
        return DigitClassifier.Create(DigitClassifierTests.Small, Labels);
    }

    /// <summary>Generated clips: random tones of random classes, plus some noise-only clips.</summary>
    (string Dir, float[][] Clips) MakeGenerated(string name, int count, int seed)
    {
        string dir = Path.Combine(root, name);
        Directory.CreateDirectory(dir);
        var rng = new Random(seed);
        var clips = new float[count][];
        for (int i = 0; i < count; i++)
        {
            clips[i] = i % 4 == 3 ? Enumerable.Range(0, Length).Select(_ => (float)(0.1 * (rng.NextDouble() - 0.5))).ToArray()
                                  : DigitClassifierTests.Tone(rng.Next(Labels.Length), Length, Rate, rng);
            Wav.Write(Path.Combine(dir, $"clip{i:D3}.wav"), clips[i], Rate, WavSampleFormat.Float32);
        }
        return (dir, clips);
    }

    static (Tensor F, Tensor P) Direct(DigitClassifier clf, Tensor clips)
    {
        using var noGrad = torch.no_grad();
        clf.Model.eval();
        var f = clf.Model.Features(clips);
        var p = nn.functional.softmax(clf.Model.head.forward(f), 1);
        return (f, p);
    }

    static void Close(double want, double got, string what) =>
        Assert.True(Math.Abs(want - got) <= 1e-6 * Math.Max(1, Math.Abs(want)), $"{what}: judge {got}, direct {want}");

    [Fact]
    public void ScoresEqualSampleQualityOnTheClassifiersOutputs()
    {
        string data = MakeDataset();
        var ds = AudioDataset.Open(data);
        using var clf = Classifier(1);
        var (dir, clips) = MakeGenerated("gen", 10, 3);
        // Every training clip in the ceiling (the subset is then the whole split, in some order: FID does not care).
        var report = AudioJudge.Judge(clf, dir, ds, ceilingTrainCount: 1000, batchSize: 4);

        using var gen = tensor(clips.SelectMany(c => c).ToArray(), [clips.Length, Length]);
        using var test = ds.LoadSplit("test", Rate, 0.5);
        using var train = ds.LoadSplit("train", Rate, 0.5);
        var (gf, gp) = Direct(clf, gen);
        var (tf, tp) = Direct(clf, test.Audio);
        var (rf, rp) = Direct(clf, train.Audio);
        using var prior = tensor(new[] { 4.0, 4, 4, 2 }.Select(c => c / 14).ToArray());
        using (gf) using (gp) using (tf) using (tp) using (rf) using (rp)
        {
            Close(SampleQuality.InceptionScore(gp), report.Generated.InceptionScore, "IS");
            Close(SampleQuality.ModifiedInceptionScore(gp), report.Generated.ModifiedInceptionScore, "mIS");
            Close(SampleQuality.AmScore(gp, prior), report.Generated.AmScore, "AM");
            Close(SampleQuality.FrechetDistance(gf, tf), report.Generated.Fid!.Value, "FID");
            Close(SampleQuality.InceptionScore(tp), report.Ceiling.InceptionScore, "ceiling IS");
            Close(SampleQuality.ModifiedInceptionScore(tp), report.Ceiling.ModifiedInceptionScore, "ceiling mIS");
            Close(SampleQuality.AmScore(tp, prior), report.Ceiling.AmScore, "ceiling AM");
            Close(SampleQuality.FrechetDistance(rf, tf), report.Ceiling.Fid!.Value, "ceiling FID");
            using var pred = gp.argmax(1).bincount(null, Labels.Length);
            Assert.Equal(pred.data<long>().ToArray(), report.Generated.PredictedCounts);
        }
        Assert.Equal((10, 10, 12, 14), (report.Generated.Count, report.Generated.FidCount, report.ReferenceCount, report.Ceiling.FidCount));
        Assert.Equal(Enumerable.Range(0, 10).Select(i => $"clip{i:D3}.wav"), report.Files);
        var json = report.ToJson();
        Assert.Equal(report.Generated.InceptionScore, json["generated"]!["is"]!.GetValue<double>());
        Assert.Equal(report.Ceiling.Fid!.Value, json["ceiling"]!["fid"]!.GetValue<double>());
        Assert.Contains("generated", report.Format());
    }

    [Fact]
    public void TheTestSplitJudgedAsGeneratedHasFidZeroAndTheCeilingsScores()
    {
        string data = MakeDataset();
        var ds = AudioDataset.Open(data);
        using var clf = Classifier(2);
        string dir = Path.Combine(root, "copy");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(Path.Combine(data, "test"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        // Default ceiling: as many training clips as test clips (12 of 14).
        var report = AudioJudge.Judge(clf, dir, ds);
        Assert.Equal(12, report.Ceiling.FidCount);
        using var test = ds.LoadSplit("test", Rate, 0.5);
        var (features, probs) = clf.FeaturesAndProbs(test.Audio);
        double spread;                                                                   // tr(Sigma): the FID's scale
        using (features) using (probs) spread = features.var([0]).sum().item<float>();
        Assert.True(Math.Abs(report.Generated.Fid!.Value) < 1e-6 * Math.Max(1, spread), $"FID {report.Generated.Fid} (scale {spread})");
        Close(report.Ceiling.InceptionScore, report.Generated.InceptionScore, "IS");
        Close(report.Ceiling.ModifiedInceptionScore, report.Generated.ModifiedInceptionScore, "mIS");
        Close(report.Ceiling.AmScore, report.Generated.AmScore, "AM");
    }

    [Fact]
    public void BadFoldersAndFilesGiveOneLineErrorsNamingThem()
    {
        string data = MakeDataset();
        var ds = AudioDataset.Open(data);
        using var clf = Classifier(3);
        var (dir, _) = MakeGenerated("bad", 3, 5);
        File.WriteAllBytes(Path.Combine(dir, "clip001.wav"), "RIFF\0\0\0\0WAVEjunk"u8.ToArray());
        var e = Assert.Throws<InvalidDataException>(() => AudioJudge.Judge(clf, dir, ds));
        Assert.Contains("clip001.wav", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        string nan = Path.Combine(root, "nan");
        Directory.CreateDirectory(nan);
        Wav.Write(Path.Combine(nan, "a.wav"), new float[Length], Rate, WavSampleFormat.Float32);
        var withNan = new float[Length];
        withNan[17] = float.NaN;
        Wav.Write(Path.Combine(nan, "b.wav"), withNan, Rate, WavSampleFormat.Float32);
        var n = Assert.Throws<InvalidDataException>(() => AudioJudge.ReadClips(AudioJudge.ListClips(nan), Rate, Length));
        Assert.Contains("b.wav", n.Message);
        Assert.Contains("sample 17", n.Message);

        string empty = Path.Combine(root, "empty");
        Directory.CreateDirectory(empty);
        File.WriteAllText(Path.Combine(empty, "notes.txt"), "no audio here");
        var m = Assert.Throws<InvalidDataException>(() => AudioJudge.Judge(clf, empty, ds));
        Assert.Contains(empty, m.Message);
        var missing = Assert.Throws<InvalidDataException>(() => AudioJudge.Judge(clf, Path.Combine(root, "nowhere"), ds));
        Assert.Contains("nowhere", missing.Message);

        string one = Path.Combine(root, "one");
        Directory.CreateDirectory(one);
        Wav.Write(Path.Combine(one, "only.wav"), new float[Length], Rate);
        Assert.Contains("at least 2", Assert.Throws<InvalidDataException>(() => AudioJudge.Judge(clf, one, ds)).Message);
    }

    [Fact]
    public void ClipsAreFittedLikeTheDataSetFitsThem()
    {
        // FitLength by its rule: offset (len - L) / 2 truncated towards zero; crop the middle, or centre between zeros.
        float[] seven = [1, 2, 3, 4, 5, 6, 7];
        Assert.Equal(new float[] { 2, 3, 4, 5 }, AudioJudge.FitLength(seven, 4));
        Assert.Equal(new float[] { 3, 4, 5 }, AudioJudge.FitLength(seven, 3));
        Assert.Equal(new float[] { 0, 1, 2, 0, 0 }, AudioJudge.FitLength([1, 2], 5));
        Assert.Equal(new float[] { 0, 1, 2, 0 }, AudioJudge.FitLength([1, 2], 4));
        Assert.Same(seven, AudioJudge.FitLength(seven, 7));

        // Longer, shorter, other-rate and stereo files: ReadClips gives what AudioDataset.Load gives for the same files.
        string dir = Path.Combine(root, "lengths");
        var rng = new Random(8);
        float[] Noise(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        Wav.Write(Path.Combine(dir, "test/long.wav"), Noise(5301), Rate, WavSampleFormat.Float32);
        Wav.Write(Path.Combine(dir, "test/short.wav"), Noise(2999), Rate, WavSampleFormat.Float32);
        Wav.Write(Path.Combine(dir, "test/fast.wav"), Noise(16000), 32000, WavSampleFormat.Float32);
        Wav.Write(Path.Combine(dir, "test/stereo.wav"), new AudioClip([Noise(4000), Noise(4000)], Rate), WavSampleFormat.Float32);
        string[] names = ["fast.wav", "long.wav", "short.wav", "stereo.wav"];
        File.WriteAllText(Path.Combine(dir, AudioDataset.ManifestName), AudioDataset.ManifestHeader + "\n" +
            string.Join("\n", names.Select(f => $"test/{f}\ttest\t\tx\tg\t0.5")) + "\n");
        File.WriteAllText(Path.Combine(dir, AudioDataset.InfoName),
            """{"name": "lengths", "sample_rate": 8000, "clip_seconds": null, "labels": [], "splits": {"test": 4} }""");
        var ds = AudioDataset.Open(dir);
        using var want = ds.LoadSplit("test", Rate, 0.5);
        Assert.Equal(names, want.Items.Select(i => Path.GetFileName(i.File)));
        var files = AudioJudge.ListClips(Path.Combine(dir, "test"));
        Assert.Equal(names, files.Select(Path.GetFileName));
        using var got = AudioJudge.ReadClips(files, Rate, Length);
        Assert.Equal(new long[] { 4, Length }, got.shape);
        Assert.True(got.eq(want.Audio).all().item<bool>());
    }
}
