// The ssm-vision CLI run in-process (VisionCli.Run with captured stdout/stderr): classify on PNG, JPEG, grey, RGBA,
// BMP/GIF/TGA fixtures and on bad files in the same batch, --json, directories and globs, the missing default model,
// info, eval with the heat map, a tiny train + resume, and --help on every command.
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Vision;
using Ssm.Vision.Cli;

namespace Ssm.Vision.Tests;

public sealed class CliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-cli-").FullName;
    readonly string _model;
    readonly string _images;
    static readonly string[] Labels = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"];

    public CliTests()
    {
        // An untrained tiny CNN is enough: the CLI's job is the plumbing, not the accuracy.
        _model = Path.Combine(_dir, "model");
        torch.manual_seed(1);
        using (var clf = ImageClassifier.Create("cnn", "tiny", Labels, new ImageSpec(1, 16, [0.3f], [0.35f])))
            clf.Save(_model);
        _images = Path.Combine(_dir, "images");
        Directory.CreateDirectory(_images);
        var rng = new Random(2);
        Write("grey.png", TestImages.Png(20, 20, 1, TestImages.RandomPixels(rng, 400)));
        Write("rgb.png", TestImages.Png(31, 17, 3, TestImages.RandomPixels(rng, 31 * 17 * 3)));
        Write("rgba.png", TestImages.Png(12, 12, 4, TestImages.RandomPixels(rng, 12 * 12 * 4)));
        Write("photo.jpg", TestImages.Jpeg(64, 48, 3, TestImages.Smooth(64, 48, 3)));
        Write("scan.bmp", TestImages.Bmp(9, 9, TestImages.RandomPixels(rng, 243)));
        Write("icon.gif", TestImages.Gif(8, 8, TestImages.RandomPixels(rng, 192).Select(v => (byte)(v & 0xC0)).ToArray()));
        Write("old.tga", TestImages.Tga(10, 6, 3, TestImages.RandomPixels(rng, 180)));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string Write(string name, byte[] bytes, string? dir = null)
    {
        string p = Path.Combine(dir ?? _images, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    string Img(string name) => Path.Combine(_images, name);

    static readonly string[] Good = ["grey.png", "rgb.png", "rgba.png", "photo.jpg", "scan.bmp", "icon.gif", "old.tga"];

    (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = VisionCli.Run(args, o, e, defaultModelDir: Path.Combine(_dir, "no-default-model"));
        return (code, o.ToString(), e.ToString());
    }

    static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    [Fact]
    public void ClassifiesEveryFormatAndLayout()
    {
        var (code, o, e) = Run(["classify", "--model", _model, "--top-k", "2", .. Good.Select(Img)]);
        Assert.True(code == 0, e);
        Assert.Equal("", e);
        var lines = Lines(o);
        Assert.Equal(Good.Length, lines.Length);
        for (int i = 0; i < Good.Length; i++)
        {
            Assert.StartsWith(Img(Good[i]) + ": ", lines[i]);
            Assert.Equal(2, lines[i].Split(", ").Length);
            Assert.Matches(@"\d+\.\d%", lines[i]);
        }
    }

    [Fact]
    public void BadFilesAreReportedByNameAndTheOthersStillClassified()
    {
        var png = File.ReadAllBytes(Img("rgb.png"));
        string truncated = Write("truncated.png", png[..(png.Length / 2)], _dir);
        var jpg = File.ReadAllBytes(Img("photo.jpg"));
        string truncatedJpg = Write("truncated.jpg", jpg[..(jpg.Length * 2 / 3)], _dir);
        string empty = Write("empty.png", [], _dir);
        string text = Write("readme.jpg", "not an image"u8.ToArray(), _dir);
        string missing = Path.Combine(_dir, "missing.png");
        var args = new[] { "classify", "--model", _model, "--batch-size", "3", Img("grey.png"), truncated, Img("rgba.png"), empty,
            truncatedJpg, text, missing, Img("photo.jpg") };
        var (code, o, e) = Run(args);
        Assert.NotEqual(0, code);
        var outLines = Lines(o);
        Assert.Equal(3, outLines.Length);
        Assert.StartsWith(Img("grey.png") + ": ", outLines[0]);
        Assert.StartsWith(Img("rgba.png") + ": ", outLines[1]);
        Assert.StartsWith(Img("photo.jpg") + ": ", outLines[2]);
        var errLines = Lines(e);
        Assert.Equal(5, errLines.Length); // one line per bad file, no stack trace
        string[] bad = [truncated, empty, truncatedJpg, text, missing];
        for (int i = 0; i < bad.Length; i++) Assert.StartsWith($"error: {bad[i]}: ", errLines[i]);
        Assert.Contains("truncated JPEG", errLines[2]);
        Assert.Contains("empty", errLines[1]);
        Assert.Contains("not found", errLines[4]);
        Assert.DoesNotContain("   at ", e);
    }

    [Fact]
    public void JsonOutputParses()
    {
        string corrupt = Write("corrupt.gif", "GIF89a"u8.ToArray(), _dir);
        var (code, o, e) = Run(["classify", "--model", _model, "--json", "--top-k", "3", Img("rgb.png"), Img("photo.jpg"), corrupt]);
        Assert.Equal(1, code);
        var doc = JsonNode.Parse(o)!.AsObject();
        Assert.Equal("cnn", doc["model_type"]!.GetValue<string>());
        var results = doc["results"]!.AsArray();
        Assert.Equal(2, results.Count);
        Assert.Equal(Img("rgb.png"), results[0]!["file"]!.GetValue<string>());
        foreach (var r in results)
        {
            var preds = r!["predictions"]!.AsArray().Select(p => (Label: p!["label"]!.GetValue<string>(), Index: p["index"]!.GetValue<int>(), P: p["probability"]!.GetValue<double>())).ToList();
            Assert.Equal(3, preds.Count);
            Assert.True(preds.Zip(preds.Skip(1)).All(z => z.First.P >= z.Second.P));
            Assert.All(preds, p => Assert.Equal(Labels[p.Index], p.Label));
            Assert.InRange(preds.Sum(p => p.P), 0, 1.0001);
        }
        var errors = doc["errors"]!.AsArray();
        Assert.Single(errors);
        Assert.Equal(corrupt, errors[0]!["file"]!.GetValue<string>());
        Assert.StartsWith($"error: {corrupt}: ", e);
    }

    [Fact]
    public void DirectoriesAndGlobsExpandToTheirImages()
    {
        Write("notes.txt", "x"u8.ToArray());
        var (code, o, e) = Run("classify", "--model", _model, _images);
        Assert.True(code == 0, e);
        Assert.Equal(Good.Length, Lines(o).Length); // notes.txt is not an image name

        (code, o, e) = Run("classify", "--model", _model, Path.Combine(_images, "*.png"));
        Assert.True(code == 0, e);
        Assert.Equal(new[] { "grey.png", "rgb.png", "rgba.png" }.Select(Img), Lines(o).Select(l => l[..l.IndexOf(": ", StringComparison.Ordinal)]));

        Directory.CreateDirectory(Path.Combine(_images, "sub", "deeper"));
        File.Copy(Img("grey.png"), Path.Combine(_images, "sub", "deeper", "x.png"));
        Assert.Equal([Img("grey.png"), Img("rgb.png"), Img("rgba.png"), Path.Combine(_images, "sub", "deeper", "x.png")],
            VisionCli.Glob(_images + "/**/*.png"));

        (code, _, e) = Run("classify", "--model", _model, Path.Combine(_images, "*.webp"));
        Assert.Equal(1, code);
        Assert.Contains("no files match", e);
        string emptyDir = Path.Combine(_dir, "nothing");
        Directory.CreateDirectory(emptyDir);
        (code, _, e) = Run("classify", "--model", _model, emptyDir);
        Assert.Equal(1, code);
        Assert.Contains("no image files", e);
    }

    [Fact]
    public void MissingDefaultModelSaysHowToGetOne()
    {
        var (code, o, e) = Run("classify", Img("grey.png"));
        Assert.NotEqual(0, code);
        Assert.Equal("", o);
        Assert.StartsWith("error: no default model is installed", e);
        Assert.Contains("ssm-vision train", e);
        Assert.Single(Lines(e));
    }

    [Fact]
    public void UserErrorsAreOneLine()
    {
        var (code, _, e) = Run("classify", "--model", Path.Combine(_dir, "nowhere"), Img("grey.png"));
        Assert.Equal(1, code);
        Assert.Single(Lines(e));
        Assert.Contains("model folder not found", e);

        if (!torch.cuda.is_available())
        {
            (code, _, e) = Run("classify", "--model", _model, "--device", "cuda", Img("grey.png"));
            Assert.Equal(1, code);
            Assert.StartsWith("error: --device cuda: CUDA is not available", e);
        }
        (code, _, e) = Run("classify", "--model", _model, "--device", "tpu", Img("grey.png"));
        Assert.Equal(1, code);
        Assert.Contains("--device tpu: expected cpu, cuda, cuda:N or auto", e);
        (code, _, e) = Run("classify", "--model", _model, "--top-k", "0", Img("grey.png"));
        Assert.NotEqual(0, code);
        Assert.Contains("--top-k must be at least 1", e);
    }

    [Fact]
    public void InfoShowsConfigAndParameterCount()
    {
        using var clf = ImageClassifier.Load(_model);
        var (code, o, e) = Run("info", "--model", _model);
        Assert.True(code == 0, e);
        Assert.Contains($"parameters: {clf.ParameterCount.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)}", o);
        Assert.Contains("cnn", o);
        (code, o, _) = Run("info", "--model", _model, "--json");
        Assert.Equal(0, code);
        var doc = JsonNode.Parse(o)!;
        Assert.Equal(clf.ParameterCount, doc["parameters"]!.GetValue<long>());
        Assert.Equal(Labels.Length, doc["config"]!["labels"]!.AsArray().Count);
        (code, o, _) = Run("info", "--model-type", "cnn", "--preset", "tiny", "--json");
        Assert.Equal(0, code);
        Assert.Equal("cnn", JsonNode.Parse(o)!["model_type"]!.GetValue<string>());
    }

    /// <summary>A data folder of n random 16x16 images per split, 5 classes.</summary>
    string DataFolderOf(int n)
    {
        string dir = Path.Combine(_dir, "data");
        Directory.CreateDirectory(dir);
        var rng = new Random(3);
        foreach (var split in new[] { "train", "val", "test" })
        {
            Idx.Write(Path.Combine(dir, $"{split}-images.gz"), TestImages.RandomPixels(rng, n * 256), [n, 16, 16]);
            Idx.Write(Path.Combine(dir, $"{split}-labels"), Enumerable.Range(0, n).Select(i => (byte)(i % 5)).ToArray(), [n]);
        }
        var splits = new JsonObject();
        foreach (var split in new[] { "train", "val", "test" })
            splits[split] = new JsonObject { ["images"] = $"{split}-images.gz", ["labels"] = $"{split}-labels" };
        File.WriteAllText(Path.Combine(dir, "dataset.json"), new JsonObject
        {
            ["name"] = "toy", ["labels"] = new JsonArray(Labels.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray()),
            ["hflip"] = true, ["splits"] = splits,
        }.ToJsonString());
        return dir;
    }

    [Fact]
    public void EvalPrintsTheTablesAndWritesTheHeatMap()
    {
        string data = DataFolderOf(30);
        string png = Path.Combine(_dir, "confusion.png");
        string errors = Path.Combine(_dir, "errors.png");
        var (code, o, e) = Run("eval", "--model", _model, "--data", data, "--confusion-png", png, "--errors-png", errors);
        Assert.True(code == 0, e);
        Assert.Contains("test: accuracy", o);
        Assert.Contains("confusion matrix", o);
        foreach (var l in Labels) Assert.Contains(l, o);
        var heat = ImageIO.Load(png);
        Assert.Equal(3, heat.Channels);
        Assert.True(heat.Width > 5 * ImageIO.HeatCell);
        (code, o, _) = Run("eval", "--model", _model, "--data", data, "--split", "val", "--json");
        Assert.Equal(0, code);
        var doc = JsonNode.Parse(o)!;
        Assert.Equal(30, doc["count"]!.GetValue<long>());
        Assert.Equal(5, doc["confusion"]!.AsArray().Count);
    }

    [Fact]
    public void TrainWritesAModelThatTheOtherCommandsUse()
    {
        string data = DataFolderOf(24);
        string output = Path.Combine(_dir, "run");
        string[] args = ["train", "--data", data, "--out", output, "--model-type", "cnn", "--preset", "tiny", "--steps", "4",
            "--batch-size", "8", "--checkpoint-every", "2", "--eval-every", "2", "--device", "cpu"];
        var (code, o, e) = Run(args);
        Assert.True(code == 0, e);
        Assert.Contains("test: accuracy", o);
        foreach (var f in new[] { "config.json", "model.safetensors", "eval.json", "confusion.png", "log.jsonl" })
            Assert.True(File.Exists(Path.Combine(output, f)), f);
        Assert.Equal("cnn", ModelFolder.ReadConfig(output)["model_type"]!.GetValue<string>());

        // The same output folder again: refused without --resume, a no-op continuation with it.
        (code, _, e) = Run(args);
        Assert.Equal(1, code);
        Assert.Contains("--resume", e);
        (code, _, e) = Run([.. args, "--resume"]);
        Assert.True(code == 0, e);

        (code, o, e) = Run("classify", "--model", output, Img("rgb.png"));
        Assert.True(code == 0, e);
        Assert.StartsWith(Img("rgb.png") + ": ", o);
    }

    [Theory]
    [InlineData("classify")]
    [InlineData("train")]
    [InlineData("eval")]
    [InlineData("info")]
    [InlineData("prepare-digits")]
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

    // --device (the suite's shared option, resolved by Devices.Resolve): the default is auto, which runs on the CPU where
    // there is no CUDA (and says so on stderr where there is), and a bad value is a one-line error on every command.
    string Image => Path.Combine(_images, "grey.png");

    [Fact]
    public void TheDefaultDeviceIsAutoAndRunsOnTheCpuWithoutCuda()
    {
        var (code, o, e) = Run("classify", "--model", _model, "--json", "--top-k", "4", Image);
        Assert.True(code == 0, e);
        if (torch.cuda.is_available())
            Assert.StartsWith("using CUDA", ConsoleCapture.Lines(e)[0]);
        else
        {
            Assert.Equal("", e);                                         // no CUDA notice, nothing else either
            // The same numbers as an explicit --device cpu run, and as the library on the CPU.
            var (cpuCode, cpuOut, cpuErr) = Run("classify", "--model", _model, "--json", "--top-k", "4", "--device", "cpu", Image);
            Assert.True(cpuCode == 0, cpuErr);
            Assert.Equal(cpuOut, o);
        }
        var predictions = JsonNode.Parse(o)!["results"]![0]!["predictions"]!.AsArray();
        using var clf = ImageClassifier.Load(_model, torch.CPU);
        using var input = clf.Prepare(ImageIO.Load(Image));
        var expected = clf.Classify([input], 4)[0];
        Assert.Equal(expected.Length, predictions.Count);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.Equal(expected[i].Index, predictions[i]!["index"]!.GetValue<int>());
            Assert.Equal(expected[i].Probability, predictions[i]!["probability"]!.GetValue<double>(), 1e-5);
        }
    }

    [Fact]
    public void ABadDeviceIsAOneLineErrorOnEveryCommandThatTakesIt()
    {
        string data = Path.Combine(_dir, "no-data");
        string[][] commands =
        [
            ["classify", "--model", _model, Image],
            ["eval", "--model", _model, "--data", data],
            ["train", "--data", data, "--out", Path.Combine(_dir, "out"), "--model-type", "cnn"],
        ];
        foreach (var args in commands)
        {
            var r = Run([.. args, "--device", "bogus"]);
            string line = ConsoleCapture.AssertOneLineError(r);
            Assert.Contains("--device bogus", line);
            Assert.Equal(1, r.Code);
        }
        Assert.False(Directory.Exists(Path.Combine(_dir, "out")), "train must fail before it writes anything");
    }

    [Fact]
    public void HelpShowsTheAutoDefault()
    {
        foreach (var command in new[] { "classify", "eval", "train" })
        {
            var (code, o, _) = Run(command, "--help");
            Assert.Equal(0, code);
            string line = ConsoleCapture.Lines(o).Single(l => l.StartsWith("--device", StringComparison.Ordinal));
            Assert.Contains("auto", line);
            Assert.Contains("[default: auto]", line);
        }
    }
}
