// The on-disk audio data set format (audio/AudioDataset.cs): a tiny folder made here loads with the right splits,
// labels and samples; broken folders give the documented errors.
using System.Globalization;
using Ssm.Audio;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

public sealed class AudioDatasetTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "ssm-audioset-tests-" + Guid.NewGuid().ToString("N"));

    public AudioDatasetTests() => Directory.CreateDirectory(root);
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    static readonly string[] Words = ["zero", "one", "two"];

    // (file, split, label, speaker, group, samples at 8 kHz): each file's sample i is (file index + 1) * 0.01 + i * 1e-5
    // so every value says which file and which position it came from.
    static readonly (string File, string Split, string Label, string Speaker, string Group, int Samples)[] Files =
    [
        ("train/two_a.wav", "train", "two", "a-p1", "a", 8000),
        ("train/zero_a.wav", "train", "zero", "a-p1", "a", 7000),
        ("train/one_b.wav", "train", "one", "b-p3", "b", 9000),
        ("valid/one_c.wav", "valid", "one", "c-p2", "c", 8000),
        ("test/zero_d.wav", "test", "zero", "d-p9", "d", 8000),
        ("test/two_d.wav", "test", "two", "d-p9", "d", 8000),
    ];

    static float Value(int file, long i) => (file + 1) * 0.01f + i * 1e-5f;

    string Make(string name, Func<string, string>? editManifest = null, string? info = null)
    {
        string dir = Path.Combine(root, name);
        for (int f = 0; f < Files.Length; f++)
        {
            var x = new float[Files[f].Samples];
            for (int i = 0; i < x.Length; i++) x[i] = Value(f, i);
            Wav.Write(Path.Combine(dir, Files[f].File), x, 8000, WavSampleFormat.Float32);
        }
        var lines = new List<string> { AudioDataset.ManifestHeader };
        lines.AddRange(Files.Select(f => string.Join('\t', f.File, f.Split, f.Label, f.Speaker, f.Group,
            (f.Samples / 8000.0).ToString(CultureInfo.InvariantCulture))));
        string manifest = string.Join('\n', lines) + "\n";
        File.WriteAllText(Path.Combine(dir, AudioDataset.ManifestName), editManifest?.Invoke(manifest) ?? manifest);
        File.WriteAllText(Path.Combine(dir, AudioDataset.InfoName), info ??
            """{"name": "tiny", "sample_rate": 8000, "clip_seconds": 1.0, "labels": ["zero", "one", "two"], "splits": {"train": 3, "valid": 1, "test": 2}, "script": "data/spoken-digits.sh"}""");
        return dir;
    }

    [Fact]
    public void OpensAndLoadsSplitsWithLabels()
    {
        var ds = AudioDataset.Open(Make("ok"));
        Assert.Equal(("tiny", 8000, 1.0), (ds.Name, ds.SampleRate, ds.ClipSeconds!.Value));
        Assert.Equal(Words, ds.Labels);
        Assert.Equal(6, ds.Items.Count);
        Assert.Equal(new[] { 3, 1, 2 }, AudioDataset.SplitNames.Select(s => ds.Split(s).Count));

        using var b = ds.LoadSplit("train", 8000, 1.0);
        Assert.Equal(new long[] { 3, 8000 }, b.Audio.shape);
        Assert.Equal(new long[] { 2, 0, 1 }, b.Labels.data<long>().ToArray());
        var a = b.Audio.data<float>().ToArray();
        // file 0: 8000 samples, taken whole; file 1: 7000, centred between 500 zeros each side; file 2: 9000, middle 8000.
        for (int i = 0; i < 8000; i++)
        {
            Assert.Equal(Value(0, i), a[i], 6);
            Assert.Equal(i < 500 || i >= 7500 ? 0f : Value(1, i - 500), a[8000 + i], 6);
            Assert.Equal(Value(2, i + 500), a[16000 + i], 6);
        }
        Assert.Equal(new long[] { 0, -500, 500 }, b.Starts);

        using var t = ds.LoadSplit("test", 8000, 1.0);
        Assert.Equal(new long[] { 0, 2 }, t.Labels.data<long>().ToArray());
        Assert.All(t.Items, i => Assert.Equal("d", i.Group));
    }

    [Fact]
    public void ResamplesAndCutsChunks()
    {
        var ds = AudioDataset.Open(Make("chunks"));
        using var r = ds.LoadSplit("valid", 16000, 0.5);
        Assert.Equal(new long[] { 1, 8000 }, r.Audio.shape);

        using var c = ds.LoadChunks("train", 8000, 0.25);   // 2000-sample windows: 4 + 3 + 4 (the tails dropped)
        Assert.Equal(new long[] { 11, 2000 }, c.Audio.shape);
        Assert.Equal(new long[] { 0, 2000, 4000, 6000, 0, 2000, 4000, 0, 2000, 4000, 6000 }, c.Starts);
        var a = c.Audio.data<float>().ToArray();
        int[] fileOfRow = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
        for (int row = 0; row < 11; row++)
            for (int i = 0; i < 2000; i += 97)
                Assert.Equal(Value(fileOfRow[row], c.Starts[row] + i), a[row * 2000 + i], 6);
        Assert.Equal(new long[] { 2, 2, 2, 2, 0, 0, 0, 1, 1, 1, 1 }, c.Labels.data<long>().ToArray());

        using var only = ds.LoadChunks("train", 8000, 0.25, i => i.Speaker == "b-p3");
        Assert.Equal(new long[] { 4, 2000 }, only.Audio.shape);
        Assert.All(only.Items, i => Assert.Equal("train/one_b.wav", i.File));
    }

    [Fact]
    public void UnlabelledDataGivesMinusOne()
    {
        string dir = Make("unlabelled", m => string.Join('\n', m.Split('\n').Select((l, i) =>
            i == 0 || l.Length == 0 ? l : string.Join('\t', l.Split('\t').Select((f, j) => j == 2 ? "" : f)))),
            """{"name": "piano", "sample_rate": 8000, "clip_seconds": null, "labels": []}""");
        var ds = AudioDataset.Open(dir, AudioDataset.PianoScript);
        Assert.Null(ds.ClipSeconds);
        using var b = ds.LoadSplit("test", 8000, 0.5);
        Assert.All(b.Labels.data<long>().ToArray(), v => Assert.Equal(-1L, v));
    }

    [Fact]
    public void MissingPiecesSayWhichScriptToRun()
    {
        string nowhere = Path.Combine(root, "nowhere");
        var e = Assert.Throws<DirectoryNotFoundException>(() => AudioDataset.OpenSpokenDigits(nowhere));
        Assert.Equal($"audio data set folder {nowhere} does not exist: run data/spoken-digits.sh first", e.Message);
        Assert.Contains("run data/piano.sh first", Assert.Throws<DirectoryNotFoundException>(() => AudioDataset.OpenPiano(nowhere)).Message);

        string dir = Make("noinfo");
        File.Delete(Path.Combine(dir, AudioDataset.InfoName));
        Assert.Equal($"{Path.Combine(dir, "dataset.json")} is missing: run data/spoken-digits.sh first",
            Assert.Throws<FileNotFoundException>(() => AudioDataset.Open(dir)).Message);

        dir = Make("nomanifest");
        File.Delete(Path.Combine(dir, AudioDataset.ManifestName));
        Assert.Equal($"{Path.Combine(dir, "manifest.tsv")} is missing: run data/spoken-digits.sh first",
            Assert.Throws<FileNotFoundException>(() => AudioDataset.Open(dir)).Message);

        dir = Make("nowav");
        File.Delete(Path.Combine(dir, "valid/one_c.wav"));
        var ds = AudioDataset.Open(dir);
        Assert.Equal($"{Path.Combine(dir, "valid/one_c.wav")} is listed in manifest.tsv but missing: rerun data/spoken-digits.sh",
            Assert.Throws<FileNotFoundException>(() => ds.LoadSplit("valid", 8000, 1)).Message);
        Assert.Throws<ArgumentException>(() => ds.LoadSplit("validation", 8000, 1));
    }

    public static TheoryData<string, string, string?, string> Broken() => new()
    {
        { "header", "file\tsplit\tlabel\n", null,
          "manifest.tsv: expected the header 'file<TAB>split<TAB>label<TAB>speaker<TAB>group<TAB>seconds'; rerun data/spoken-digits.sh" },
        { "fields", "train/two_a.wav\ttrain\ttwo\n", null, "manifest.tsv line 2: expected 6 tab-separated fields, found 3" },
        { "split", "train/two_a.wav\ttraining\ttwo\ta\ta\t1\n", null, "manifest.tsv line 2: unknown split 'training' (train, valid or test)" },
        { "label", "train/two_a.wav\ttrain\tten\ta\ta\t1\n", null, "manifest.tsv line 2: label 'ten' is not one of the 3 labels in dataset.json" },
        { "seconds", "train/two_a.wav\ttrain\ttwo\ta\ta\tlong\n", null, "manifest.tsv line 2: seconds 'long' is not a non-negative number" },
        { "escape", "../two_a.wav\ttrain\ttwo\ta\ta\t1\n", null, "manifest.tsv line 2: file '../two_a.wav' must be a path inside the data set folder" },
        { "groups", "train/two_a.wav\ttrain\ttwo\ta\ta\t1\ntest/zero_d.wav\ttest\tzero\ta\ta\t1\n", null,
          "manifest.tsv line 3: group 'a' is in both train and test (splits must be group-disjoint); rerun data/spoken-digits.sh" },
        { "counts", "train/two_a.wav\ttrain\ttwo\ta\ta\t1\n",
          """{"name": "x", "sample_rate": 8000, "labels": ["zero", "one", "two"], "splits": {"train": 3}}""",
          "dataset.json says 3 train files, manifest.tsv lists 1: rerun data/spoken-digits.sh" },
        { "rate", "train/two_a.wav\ttrain\ttwo\ta\ta\t1\n", """{"name": "x", "labels": []}""",
          "dataset.json: \"sample_rate\" (a positive integer) is missing" },
        { "json", "train/two_a.wav\ttrain\ttwo\ta\ta\t1\n", "{\"name\": ", "dataset.json: not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(Broken))]
    public void BrokenFoldersGiveTheDocumentedError(string what, string body, string? info, string message)
    {
        string dir = Make("broken-" + what, m => what == "header" ? body : AudioDataset.ManifestHeader + "\n" + body, info);
        var e = Assert.Throws<InvalidDataException>(() => AudioDataset.Open(dir));
        string expected = Path.Combine(dir, message);
        Assert.True(what == "json" ? e.Message.StartsWith(expected + " (") : e.Message == expected, $"{what}: got '{e.Message}'");
    }
}
