// The ssm-diffuse CLI run in-process (DiffuseCli.Run with Console.Out/Error redirected) on a tiny randomly initialised
// DiffuSSM for 8x8 grey images: the sample grid's layout and pixels against the library's own sampler, seeds, single
// PNGs, unknown classes, info --json, a tiny train run, eval against a tiny judge, and one-line errors for bad input.
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Apps.Diffusion;
using Ssm.Vision;

namespace Ssm.Vision.Tests;

[Collection(ConsoleRedirectCollection.Name)]
public sealed class DiffuseCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-diffuse-cli-").FullName;
    readonly string _model;
    static readonly string[] Labels = ["T-shirt/top", "Trouser", "Ankle boot"];
    const int Side = 8;

    public DiffuseCliTests()
    {
        // Untrained is enough: the CLI's job is the plumbing, the library's tests check the diffusion itself. adaLN-Zero
        // starts with a zero output layer, which would make every class and guidance scale give the same images; jitter
        // every weight so that the class and the guidance show in the pixels.
        _model = Path.Combine(_dir, "model");
        torch.manual_seed(7);
        using var gen = ImageDiffusion.Create("diffussm", "tiny", Labels, 1, Side);
        using (torch.no_grad())
            foreach (var p in gen.Model.parameters())
                p.add_(torch.randn_like(p).mul_(0.2));
        gen.Save(_model);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    (int Code, string Out, string Err) Run(params string[] args) => ConsoleCapture.Run(() =>
        DiffuseCli.Run(args, defaultModelDir: Path.Combine(_dir, "no-default-model"), defaultJudgeDir: Path.Combine(_dir, "no-judge")));

    static string[] Lines(string s) => ConsoleCapture.Lines(s);

    static string AssertOneLineError((int Code, string Out, string Err) r) => ConsoleCapture.AssertOneLineError(r);

    [Fact]
    public void SampleGridHoldsTheLibrarySamplesOneRowPerClass()
    {
        const int n = 4, steps = 3;
        string a = Path.Combine(_dir, "a.png");
        var r = Run("sample", "--model", _model, "--n", $"{n}", "--steps", $"{steps}", "--guidance", "2", "--seed", "11", "--device", "cpu", "--out", a);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("images/s", r.Out);

        // Grid geometry: n columns, one row per class, each image enlarged 2x (the default), 2-pixel gaps around every cell.
        var grid = ImageIO.Load(a);
        int cell = Side * 2;
        Assert.Equal(1, grid.Channels);
        Assert.Equal(n * cell + (n + 1) * 2, grid.Width);
        Assert.Equal(Labels.Length * cell + (Labels.Length + 1) * 2, grid.Height);

        // Every tile holds the library's sample for (row class, column), quantised as a PNG stores it.
        using var gen = ImageDiffusion.Load(_model);
        var classes = Enumerable.Range(0, Labels.Length).SelectMany(c => Enumerable.Repeat(c, n)).ToArray();
        using var x = gen.Sample(classes, steps, 2.0, seed: 11);
        using var u = ImageDiffusion.ToUnit(x);
        float[] v = u.contiguous().data<float>().ToArray();
        int worst = 0;
        for (int i = 0; i < classes.Length; i++)
        {
            int row = i / n, col = i % n;
            for (int py = 0; py < Side; py++)
                for (int px = 0; px < Side; px++)
                {
                    int expected = (int)Math.Round(v[(i * Side + py) * Side + px] * 255);
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                        {
                            int gy = 2 + row * (cell + 2) + 2 * py + dy, gx = 2 + col * (cell + 2) + 2 * px + dx;
                            worst = Math.Max(worst, Math.Abs(grid[gy, gx, 0] - expected));
                        }
                }
        }
        Assert.True(worst <= 1, $"grid differs from the library's samples by up to {worst}/255");
        // The gap is mid-grey (0.5 -> 128).
        Assert.Equal(128, grid[0, 0, 0]);
    }

    [Fact]
    public void SameSeedSameBytesOtherSeedOtherBytesAlsoWithEta()
    {
        byte[] Sample(string name, params string[] extra)
        {
            string p = Path.Combine(_dir, name);
            var r = Run(["sample", "--model", _model, "--n", "2", "--steps", "3", "--device", "cpu", "--out", p, .. extra]);
            Assert.True(r.Code == 0, r.Err);
            return File.ReadAllBytes(p);
        }
        var s1 = Sample("s1.png", "--seed", "1");
        Assert.Equal(s1, Sample("s1b.png", "--seed", "1"));
        Assert.NotEqual(s1, Sample("s2.png", "--seed", "2"));
        // eta > 0 draws fresh noise at every step: it too must follow the seed.
        var e1 = Sample("e1.png", "--seed", "3", "--eta", "1");
        Assert.Equal(e1, Sample("e1b.png", "--seed", "3", "--eta", "1"));
        Assert.NotEqual(e1, Sample("e2.png", "--seed", "4", "--eta", "1"));
    }

    [Fact]
    public void OutDirWritesOnePngPerImageNamedByClass()
    {
        string outDir = Path.Combine(_dir, "singles");
        var r = Run("sample", "--model", _model, "--class", "trouser,2", "--n", "2", "--steps", "2", "--device", "cpu", "--out-dir", outDir, "--json");
        Assert.True(r.Code == 0, r.Err);
        string[] expected = ["1-trouser-0.png", "1-trouser-1.png", "2-ankle-boot-0.png", "2-ankle-boot-1.png"];
        Assert.Equal(expected, Directory.GetFiles(outDir).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (var f in expected)
        {
            var img = ImageIO.Load(Path.Combine(outDir, f));
            Assert.Equal((Side, Side, 1), (img.Width, img.Height, img.Channels));
        }
        var doc = JsonNode.Parse(r.Out)!;
        Assert.Null(doc["grid"]); // only --out-dir: no grid
        Assert.Equal(expected.Select(f => Path.Combine(outDir, f)), doc["files"]!.AsArray().Select(x => x!.GetValue<string>()));
        Assert.Equal(4, doc["images"]!.GetValue<int>());
        Assert.Equal(new[] { 1, 2 }, doc["classes"]!.AsArray().Select(c => c!["id"]!.GetValue<int>()));

        // Guidance 0 samples the unconditional model: every image is "uncond", numbered on, none overwritten.
        string uncond = Path.Combine(_dir, "uncond");
        r = Run("sample", "--model", _model, "--class", "1", "--class", "Trouser", "--n", "2", "--guidance", "0", "--steps", "2", "--device", "cpu", "--out-dir", uncond);
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal(Enumerable.Range(0, 4).Select(i => $"uncond-{i}.png"), Directory.GetFiles(uncond).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void UnknownClassListsTheValidOnes()
    {
        string line = AssertOneLineError(Run("sample", "--model", _model, "--class", "Sock", "--steps", "2", "--device", "cpu", "--out", Path.Combine(_dir, "x.png")));
        Assert.StartsWith("error: unknown class 'Sock'", line);
        Assert.Contains("0 T-shirt/top, 1 Trouser, 2 Ankle boot", line);
        line = AssertOneLineError(Run("sample", "--model", _model, "--class", "Trouser,3", "--steps", "2", "--device", "cpu", "--out", Path.Combine(_dir, "x.png")));
        Assert.Contains("unknown class '3'", line);
        Assert.False(File.Exists(Path.Combine(_dir, "x.png")));
    }

    [Fact]
    public void BadInputIsAOneLineError()
    {
        string png = Path.Combine(_dir, "bad.png");
        string[] common = ["--model", _model, "--device", "cpu", "--out", png];
        Assert.Contains("--steps must be in 1..1000", AssertOneLineError(Run(["sample", .. common, "--steps", "0"])));
        Assert.Contains("--steps must be in 1..1000", AssertOneLineError(Run(["sample", .. common, "--steps", "1001"])));
        Assert.Contains("--n must be at least 1", AssertOneLineError(Run(["sample", .. common, "--n", "-3"])));
        Assert.Contains("--guidance", AssertOneLineError(Run(["sample", .. common, "--guidance", "-1"])));
        Assert.Contains("--eta", AssertOneLineError(Run(["sample", .. common, "--eta", "2"])));
        Assert.Contains("model folder not found", AssertOneLineError(Run("sample", "--model", Path.Combine(_dir, "nowhere"), "--out", png)));
        Assert.Contains("--device", AssertOneLineError(Run(["sample", "--model", _model, "--device", "tpu", "--out", png])));
        string broken = Path.Combine(_dir, "broken");
        Directory.CreateDirectory(broken);
        File.WriteAllText(Path.Combine(broken, "config.json"), "{\"model_type\": \"diffussm\"");
        AssertOneLineError(Run("info", "--model", broken));
        Assert.False(File.Exists(png));

        // No default model: says so and how to train one.
        string line = AssertOneLineError(Run("sample", "--out", png));
        Assert.StartsWith("error: no default model is installed", line);
        Assert.Contains("ssm-diffuse train", line);
    }

    [Fact]
    public void InfoReportsTheModel()
    {
        using var gen = ImageDiffusion.Load(_model);
        long parameters = gen.Model.parameters().Sum(p => p.numel());
        var r = Run("info", "--model", _model, "--json");
        Assert.True(r.Code == 0, r.Err);
        var doc = JsonNode.Parse(r.Out)!;
        Assert.Equal("diffussm", doc["model_type"]!.GetValue<string>());
        Assert.Equal(parameters, doc["parameters"]!.GetValue<long>());
        Assert.Equal(Labels, doc["config"]!["labels"]!.AsArray().Select(l => l!.GetValue<string>()));
        Assert.Equal(1000, doc["config"]!["diffusion"]!["timesteps"]!.GetValue<int>());

        r = Run("info", "--model", _model);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains($"parameters: {parameters.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)}", r.Out);
        Assert.Contains("2 Ankle boot", r.Out);

        r = Run("info", "--model-type", "dis", "--preset", "tiny", "--json");
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal("dis", JsonNode.Parse(r.Out)!["model_type"]!.GetValue<string>());
    }

    /// <summary>A data folder of random 8x8 images, <paramref name="n"/> per split, the three classes in turn.</summary>
    string DataFolderOf(int n, int side = Side)
    {
        string dir = Path.Combine(_dir, $"data{side}");
        Directory.CreateDirectory(dir);
        var rng = new Random(3);
        var splits = new JsonObject();
        foreach (var split in new[] { "train", "val", "test" })
        {
            var pixels = new byte[n * side * side];
            rng.NextBytes(pixels);
            Idx.Write(Path.Combine(dir, $"{split}-images.gz"), pixels, [n, side, side]);
            Idx.Write(Path.Combine(dir, $"{split}-labels"), Enumerable.Range(0, n).Select(i => (byte)(i % Labels.Length)).ToArray(), [n]);
            splits[split] = new JsonObject { ["images"] = $"{split}-images.gz", ["labels"] = $"{split}-labels" };
        }
        File.WriteAllText(Path.Combine(dir, "dataset.json"), new JsonObject
        {
            ["name"] = "toy", ["labels"] = new JsonArray(Labels.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray()),
            ["hflip"] = true, ["splits"] = splits,
        }.ToJsonString());
        return dir;
    }

    [Fact]
    public void TrainWritesAModelWithSampleGridsThatSampleUses()
    {
        string data = DataFolderOf(12);
        string output = Path.Combine(_dir, "run");
        string[] args = ["train", "--data", data, "--out", output, "--model-type", "diffussm", "--preset", "tiny", "--steps", "2",
            "--batch-size", "4", "--eval-every", "2", "--grid-per-class", "1", "--grid-steps", "2", "--timesteps", "50", "--device", "cpu"];
        var r = Run(args);
        Assert.True(r.Code == 0, r.Err);
        foreach (var f in new[] { "config.json", "model.safetensors", "log.jsonl", Path.Combine("samples", "step-00000002.png") })
            Assert.True(File.Exists(Path.Combine(output, f)), f);
        Assert.Contains("val: loss", r.Out);
        var grid = ImageIO.Load(Path.Combine(output, "samples", "step-00000002.png"));
        Assert.Equal(Side * 2 + 4, grid.Width);                          // one per class: one column, scale 2
        Assert.Equal(Labels.Length * (Side * 2 + 2) + 2, grid.Height);   // one row per class

        // The same output folder again: refused without --resume.
        Assert.Contains("--resume", AssertOneLineError(Run(args)));

        // The trained folder is a model: its settings came through, and it samples.
        var info = JsonNode.Parse(Run("info", "--model", output, "--json").Out)!;
        Assert.Equal(50, info["config"]!["diffusion"]!["timesteps"]!.GetValue<int>());
        Assert.Equal(Labels, info["config"]!["labels"]!.AsArray().Select(l => l!.GetValue<string>()));
        r = Run("sample", "--model", output, "--n", "1", "--steps", "2", "--device", "cpu", "--out", Path.Combine(_dir, "trained.png"));
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("--steps must be in 1..50", AssertOneLineError(Run("sample", "--model", output, "--steps", "51", "--device", "cpu")));
    }

    [Fact]
    public void TrainOnABadDataFolderIsAOneLineError()
    {
        string output = Path.Combine(_dir, "run-bad");
        string line = AssertOneLineError(Run("train", "--data", Path.Combine(_dir, "no-data"), "--out", output, "--steps", "1", "--device", "cpu"));
        Assert.Contains("data folder not found", line);
        string garbage = Path.Combine(_dir, "garbage");
        Directory.CreateDirectory(garbage);
        File.WriteAllText(Path.Combine(garbage, "dataset.json"), "not json");
        Assert.Contains("dataset.json", AssertOneLineError(Run("train", "--data", garbage, "--out", output, "--steps", "1", "--device", "cpu")));
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void EvalReportsEverySettingAndTheFloor()
    {
        string data = DataFolderOf(9);
        string judge = Path.Combine(_dir, "judge");
        torch.manual_seed(8);
        using (var clf = ImageClassifier.Create("cnn", "tiny", Labels, new ImageSpec(1, Side, [0.5f], [0.5f])))
            clf.Save(judge);
        var r = Run("eval", "--model", _model, "--classifier", judge, "--data", data, "--samples", "6", "--steps", "2,3", "--guidance", "1,2",
            "--device", "cpu", "--json");
        Assert.True(r.Code == 0, r.Err);
        var doc = JsonNode.Parse(r.Out)!;
        var rows = doc["results"]!.AsArray();
        Assert.Equal(new[] { (2, 1.0), (2, 2.0), (3, 1.0), (3, 2.0) },
            rows.Select(x => (x!["steps"]!.GetValue<int>(), x["guidance"]!.GetValue<double>())));
        foreach (var row in rows)
        {
            Assert.Equal(6, row!["samples"]!.GetValue<int>());
            Assert.InRange(row["class_fidelity"]!.GetValue<double>(), 0, 1);
            Assert.True(row["fid"]!.GetValue<double>() >= -1e-6);
            Assert.True(row["images_per_second"]!.GetValue<double>() > 0);
        }
        // The floor: the first 6 real training images against the test split, as the library computes it.
        var folder = DataFolder.Open(data);
        using (var clf = ImageClassifier.Load(judge))
        {
            double floor = ImageDiffusion.RealFid(clf, folder.Load("train").Take(6), folder.Load("test"));
            Assert.Equal(floor, doc["floor"]!["fid"]!.GetValue<double>(), 9);
        }
        Assert.Equal(6, doc["floor"]!["count"]!.GetValue<int>());

        r = Run("eval", "--model", _model, "--classifier", judge, "--data", data, "--samples", "3", "--steps", "2", "--guidance", "2", "--device", "cpu");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("class fidelity", r.Out);
        Assert.Contains("real train vs test", r.Out);

        // A judge for other images is refused before any sampling.
        string judge16 = Path.Combine(_dir, "judge16");
        using (var clf = ImageClassifier.Create("cnn", "tiny", Labels, new ImageSpec(1, 16, [0.5f], [0.5f])))
            clf.Save(judge16);
        Assert.Contains("16x16", AssertOneLineError(Run("eval", "--model", _model, "--classifier", judge16, "--data", data, "--device", "cpu")));
        Assert.Contains("no judge classifier is installed", AssertOneLineError(Run("eval", "--model", _model, "--data", data, "--device", "cpu")));
    }

    [Theory]
    [InlineData("sample")]
    [InlineData("train")]
    [InlineData("eval")]
    [InlineData("info")]
    [InlineData("doctor")]
    [InlineData(null)]
    public void EveryCommandHasHelp(string? command)
    {
        var (code, o, _) = command is null ? Run("--help") : Run(command, "--help");
        Assert.Equal(0, code);
        Assert.Contains("Usage:", o);
        Assert.Contains("--help", o);
    }

    [Fact]
    public void ParseErrorsAreOneLineAndABareCallShowsTheHelp() => ConsoleCapture.AssertParseErrorsAreOneLine(args => Run(args));
}
