// ssm-audio in-process (AudioCli.Run with the console captured) on a tiny randomly initialised SaShiMi at 8 kHz: the
// written WAVs against the library's generator, seeds, continuation, eval against the library's scoring, the unigram
// baseline against a count done here, a short train + resume, judge against AudioJudge, info, and one-line errors.
using System.Globalization;
using System.Text.Json.Nodes;
using Ssm.Apps.Audio;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

[Collection(ConsoleRedirectCollection.Name)]
public sealed class AudioCliTests : IDisposable
{
    const int Rate = 8000, ClipLength = 4000;
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-audio-cli-").FullName;
    readonly string _model;

    public AudioCliTests()
    {
        _model = Path.Combine(_dir, "model");
        torch.manual_seed(5);
        using var m = AudioModel.Create("sashimi", "tiny", Rate);
        // Jitter every weight so the untrained model's distribution is far from uniform (seeds then matter visibly).
        using (torch.no_grad())
            foreach (var p in m.Model.parameters()) p.add_(torch.randn_like(p).mul_(0.3));
        m.Save(_model);
    }

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    (int Code, string Out, string Err) Run(params string[] args) => ConsoleCapture.Run(() =>
        AudioCli.Run(args, defaultModelDir: Path.Combine(_dir, "no-default-model"), defaultJudgeDir: Path.Combine(_dir, "no-judge")));

    [Fact]
    public void ParseErrorsAreOneLineAndABareCallShowsTheHelp() => ConsoleCapture.AssertParseErrorsAreOneLine(args => Run(args));

    static JsonNode Json((int Code, string Out, string Err) r)
    {
        Assert.True(r.Code == 0, r.Err);
        return JsonNode.Parse(r.Out)!;
    }

    /// <summary>A spoken-digit-style folder: tones of 4 classes, 0.5 s clips at 8 kHz, 4 train / 1 valid / 2 test per class.</summary>
    string MakeDataset()
    {
        string dir = Path.Combine(_dir, "digits");
        var labels = DigitClassifierTests.Labels;
        var rng = new Random(42);
        var lines = new List<string> { AudioDataset.ManifestHeader };
        var counts = new Dictionary<string, int> { ["train"] = 0, ["valid"] = 0, ["test"] = 0 };
        foreach (var (split, per) in new[] { ("train", 4), ("valid", 1), ("test", 2) })
            for (int c = 0; c < labels.Length; c++)
                for (int i = 0; i < per; i++)
                {
                    string file = $"{split}/{labels[c]}_{i}.wav";
                    Wav.Write(Path.Combine(dir, file), DigitClassifierTests.Tone(c, ClipLength, Rate, rng), Rate, WavSampleFormat.Pcm16);
                    lines.Add(string.Join('\t', file, split, labels[c], $"v{split}{i}", $"g{split}{i}", "0.5"));
                    counts[split]++;
                }
        File.WriteAllText(Path.Combine(dir, AudioDataset.ManifestName), string.Join('\n', lines) + "\n");
        File.WriteAllText(Path.Combine(dir, AudioDataset.InfoName), string.Create(CultureInfo.InvariantCulture,
            $$"""{"name": "tones", "sample_rate": {{Rate}}, "clip_seconds": 0.5, "labels": ["{{string.Join("\", \"", labels)}}"], "splits": {"train": {{counts["train"]}}, "valid": {{counts["valid"]}}, "test": {{counts["test"]}}}, "script": "data/spoken-digits.sh"}"""));
        return dir;
    }

    [Fact]
    public void GeneratedWavsAreTheLibrarysSamplesAndFollowTheSeed()
    {
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b"), c = Path.Combine(_dir, "c");
        var doc = Json(Run("generate", "--model", _model, "--n", "3", "--batch-size", "2", "--seconds", "0.02", "--seed", "9",
            "--out", a, "--spectrogram", "--json", "--device", "cpu"));
        Assert.Equal(160, doc["samples_per_clip"]!.GetValue<long>());
        Assert.Equal(6, doc["files"]!.AsArray().Count);                                 // 3 WAVs + 3 PNGs
        Assert.True(File.Exists(Path.Combine(a, "sample-0002.png")));
        Assert.True(doc["samples_per_second"]!.GetValue<double>() > 0);

        // Batch k of the CLI is the library's Generate with seed + k; WAVs hold 16-bit PCM of the decoded samples.
        using var m = AudioModel.Load(_model);
        var gen = new AudioGenerator(m);
        var first = gen.Generate(2, 160, new AudioGenerationOptions { Seed = 9 });
        var second = gen.Generate(1, 160, new AudioGenerationOptions { Seed = 10 });
        float[][] want = [first.Audio[0], first.Audio[1], second.Audio[0]];
        for (int i = 0; i < 3; i++)
        {
            var clip = Wav.Read(Path.Combine(a, $"sample-{i:D4}.wav"));
            Assert.Equal(Rate, clip.SampleRate);
            var got = clip.Channels[0];
            Assert.Equal(want[i].Length, got.Length);
            for (int t = 0; t < got.Length; t++) Assert.True(Math.Abs(got[t] - want[i][t]) <= 1.0 / 32768 + 1e-7, $"clip {i} sample {t}");
        }

        Assert.Equal(0, Run("generate", "--model", _model, "--n", "3", "--batch-size", "2", "--seconds", "0.02", "--seed", "9", "--out", b, "--device", "cpu").Code);
        Assert.Equal(0, Run("generate", "--model", _model, "--n", "3", "--batch-size", "2", "--seconds", "0.02", "--seed", "10", "--out", c, "--device", "cpu").Code);
        string wav = "sample-0000.wav";
        Assert.Equal(File.ReadAllBytes(Path.Combine(a, wav)), File.ReadAllBytes(Path.Combine(b, wav)));
        Assert.NotEqual(File.ReadAllBytes(Path.Combine(a, wav)), File.ReadAllBytes(Path.Combine(c, wav)));
    }

    [Fact]
    public void ContinuationStartsWithThePromptAndIsTheLibrarysContinuation()
    {
        string prompt = Path.Combine(_dir, "prompt.wav");
        var rng = new Random(3);
        var x = DigitClassifierTests.Tone(1, 400, Rate, rng);
        Wav.Write(prompt, x, Rate, WavSampleFormat.Pcm16);
        string outDir = Path.Combine(_dir, "cont");
        var doc = Json(Run("continue", prompt, "--model", _model, "--n", "2", "--seconds", "0.01", "--prompt-seconds", "0.025",
            "--seed", "4", "--out", outDir, "--json", "--device", "cpu"));
        Assert.Equal(200, doc["prompt_samples"]!.GetValue<long>());
        var p = Wav.ReadMono(prompt, Rate).AsSpan(0, 200).ToArray();
        using var m = AudioModel.Load(_model);
        var want = new AudioGenerator(m).Continue(p, 2, 80, new AudioGenerationOptions { Seed = 4 });
        for (int i = 0; i < 2; i++)
        {
            var got = Wav.ReadMono(Path.Combine(outDir, $"sample-{i:D4}.wav"), Rate);
            Assert.Equal(280, got.Length);
            for (int t = 0; t < 280; t++) Assert.True(Math.Abs(got[t] - want.Audio[i][t]) <= 1.0 / 32768 + 1e-7, $"clip {i} sample {t}");
            for (int t = 0; t < 200; t++) Assert.True(Math.Abs(got[t] - p[t]) <= 1.0 / 32768 + 1e-7);
        }
        // A prompt at another rate is resampled (and the note says so).
        string other = Path.Combine(_dir, "prompt16k.wav");
        Wav.Write(other, DigitClassifierTests.Tone(2, 800, 16000, rng), 16000, WavSampleFormat.Pcm16);
        var r = Run("continue", other, "--model", _model, "--n", "1", "--seconds", "0.005", "--seed", "1", "--out", Path.Combine(_dir, "c2"), "--device", "cpu");
        Assert.Equal(0, r.Code);
        Assert.Contains("resampling to the model's 8000 Hz", r.Err);
    }

    [Fact]
    public void EvalEqualsTheLibrarysScoreAndBaselinesCountTheTrainSplit()
    {
        string data = MakeDataset();
        var doc = Json(Run("eval", "--model", _model, "--data", data, "--split", "test", "--json", "--device", "cpu"));
        var ds = AudioDataset.Open(data);
        using var m = AudioModel.Load(_model);
        using var test = ds.LoadSplit("test", Rate, 0.5);
        var (bits, count) = m.ScoreWaveforms(test.Audio);
        Assert.Equal(count, doc["samples"]!.GetValue<long>());
        Close(bits / count, doc["bits_per_sample"]!.GetValue<double>(), 1e-9);

        // Files: each file scored whole, the total is the sample-weighted mean.
        string one = Path.Combine(data, "test", "low_0.wav"), two = Path.Combine(data, "test", "top_1.wav");
        doc = Json(Run("eval", one, two, "--model", _model, "--json", "--device", "cpu"));
        double total = 0;
        foreach (var f in new[] { one, two })
        {
            var w = Wav.ReadMono(f, Rate);
            using var t = torch.tensor(w, new long[] { 1, w.Length });
            total += m.ScoreWaveforms(t).Bits;
        }
        Close(total / (2 * ClipLength), doc["bits_per_sample"]!.GetValue<double>(), 1e-9);
        Assert.Equal(2, doc["items"]!.AsArray().Count);

        // Unigram: entropy of the train split's mu-law histogram (counted here, add-0.5 smoothing over 256 classes).
        doc = Json(Run("baselines", "--data", data, "--sample-rate", Rate.ToString(CultureInfo.InvariantCulture), "--json"));
        using var train = ds.LoadSplit("train", Rate, 0.5);
        using var classes = Quantization.Encode(train.Audio, AudioQuantization.MuLaw);
        var hist = new double[256];
        foreach (long k in classes.flatten().data<long>()) hist[k]++;
        double n = hist.Sum() + 0.5 * 256, entropy = 0;
        foreach (var h in hist) { double q = (h + 0.5) / n; entropy -= q * Math.Log2(q); }
        Close(entropy, doc["unigram_train_entropy_bits"]!.GetValue<double>(), 1e-9);
    }

    [Fact]
    public void TrainWritesALoadableModelAndResumes()
    {
        string data = MakeDataset(), outDir = Path.Combine(_dir, "run");
        string[] common = ["train", "--data", data, "--out", outDir, "--model-type", "sashimi", "--preset", "tiny", "--sample-rate", "8000",
            "--batch-size", "2", "--crop", "500", "--eval-every", "2", "--device", "cpu", "--json"];
        var doc = Json(Run([.. common, "--steps", "2"]));
        Assert.Equal(2, doc["steps"]!.GetValue<long>());
        Assert.True(doc["valid_bits_per_sample"]!.GetValue<double>() is > 0 and < 16);
        using (var m = AudioModel.Load(outDir)) Assert.Equal(Rate, m.SampleRate);
        // The same folder again without --resume is refused; with it, a run of another length is refused (its
        // learning-rate schedule differs), and the same run resumes from its last checkpoint (already complete).
        Assert.Contains("--resume", ConsoleCapture.AssertOneLineError(Run([.. common, "--steps", "2"])));
        var refused = Run([.. common, "--steps", "4", "--resume"]);                   // notes on stderr, then the error
        Assert.Equal(1, refused.Code);
        Assert.StartsWith("error: ", ConsoleCapture.Lines(refused.Err)[^1]);
        Assert.Contains("same length", refused.Err);
        doc = Json(Run([.. common, "--steps", "2", "--resume"]));
        Assert.True(doc["completed"]!.GetValue<bool>());
    }

    [Fact]
    public void JudgeReportsWhatAudioJudgeComputes()
    {
        string data = MakeDataset(), clfDir = Path.Combine(_dir, "clf"), gen = Path.Combine(_dir, "gen");
        torch.manual_seed(2);
        using (var clf = DigitClassifier.Create(DigitClassifierTests.Small, DigitClassifierTests.Labels)) clf.Save(clfDir);
        Directory.CreateDirectory(gen);
        var rng = new Random(8);
        for (int i = 0; i < 6; i++) Wav.Write(Path.Combine(gen, $"g{i}.wav"), DigitClassifierTests.Tone(i % 4, ClipLength, Rate, rng), Rate, WavSampleFormat.Pcm16);
        var doc = Json(Run("judge", gen, "--classifier", clfDir, "--data", data, "--json", "--device", "cpu"));
        using var c = DigitClassifier.Load(clfDir);
        var want = AudioJudge.Judge(c, gen, AudioDataset.Open(data)).ToJson();
        Assert.Equal(want.ToJsonString(), doc.ToJsonString());
        Assert.Contains("no judge classifier is installed", ConsoleCapture.AssertOneLineError(Run("judge", gen, "--data", data)));
    }

    [Fact]
    public void InfoDescribesFoldersAndPresets()
    {
        var doc = Json(Run("info", "--model", _model, "--json"));
        using var m = AudioModel.Load(_model);
        Assert.Equal(m.ParameterCount, doc["parameters"]!.GetValue<long>());
        Assert.Equal(4 * m.ParameterCount, doc["bytes"]!.GetValue<long>());
        doc = Json(Run("info", "--model-type", "lstm", "--preset", "small", "--json"));
        // 256 E + 4H(E + H + 2) + 4H(2H + 2) + (H V + V) with E = V = 256, H = 361, two layers.
        const long H = 361, E = 256, V = 256;
        Assert.Equal(V * E + 4 * H * (E + H + 2) + 4 * H * (2 * H + 2) + H * V + V, doc["parameters"]!.GetValue<long>());
    }

    [Fact]
    public void BadInputIsAOneLineError()
    {
        string o = Path.Combine(_dir, "bad");
        string[] gen = ["generate", "--model", _model, "--out", o, "--device", "cpu"];
        Assert.Contains("--seconds must be positive", ConsoleCapture.AssertOneLineError(Run([.. gen, "--seconds", "0"])));
        Assert.Contains("--n must be at least 1", ConsoleCapture.AssertOneLineError(Run([.. gen, "--n", "0"])));
        Assert.Contains("--temperature must be positive", ConsoleCapture.AssertOneLineError(Run([.. gen, "--temperature", "0"])));
        Assert.Contains("--top-p", ConsoleCapture.AssertOneLineError(Run([.. gen, "--top-p", "1.5"])));
        Assert.Contains("no such file", ConsoleCapture.AssertOneLineError(Run("continue", Path.Combine(_dir, "none.wav"), "--model", _model, "--out", o)));
        string corrupt = Path.Combine(_dir, "corrupt.wav");
        File.WriteAllBytes(corrupt, "RIFF\x04\0\0\0WAVEjunk"u8.ToArray());
        Assert.Contains("corrupt.wav", ConsoleCapture.AssertOneLineError(Run("continue", corrupt, "--model", _model, "--out", o, "--device", "cpu")));
        Assert.Contains("no .wav files", ConsoleCapture.AssertOneLineError(Run("eval", _dir + "/model", "--model", _model, "--device", "cpu")));
        var line = ConsoleCapture.AssertOneLineError(Run("generate", "--out", o));
        Assert.StartsWith("error: no default audio model is installed", line);
        Assert.Contains("ssm-audio train", line);
        Assert.False(Directory.Exists(o) && Directory.EnumerateFiles(o).Any());
    }

    static void Close(double want, double got, double tol) =>
        Assert.True(Math.Abs(want - got) <= tol * Math.Max(1, Math.Abs(want)), $"want {want}, got {got}");
}
