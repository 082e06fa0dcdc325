// ssm-vision's --device (the suite's shared option, resolved by Devices.Resolve): the default is auto, which runs on the
// CPU where there is no CUDA (and says so on stderr where there is), and a bad value is a one-line error on every
// command that takes the option.
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Vision.Cli;

namespace Ssm.Vision.Tests;

public sealed class VisionCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-vision-device-").FullName;
    readonly string _model;
    readonly string _image;
    static readonly string[] Labels = ["a", "b", "c", "d"];

    public VisionCliTests()
    {
        _model = Path.Combine(_dir, "model");
        torch.manual_seed(7);
        using (var clf = ImageClassifier.Create("cnn", "tiny", Labels, new ImageSpec(1, 16, [0.4f], [0.3f])))
            clf.Save(_model);
        _image = Path.Combine(_dir, "x.png");
        File.WriteAllBytes(_image, TestImages.Png(16, 16, 1, TestImages.RandomPixels(new Random(3), 256)));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = VisionCli.Run(args, o, e, defaultModelDir: Path.Combine(_dir, "no-default-model"));
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void TheDefaultDeviceIsAutoAndRunsOnTheCpuWithoutCuda()
    {
        var (code, o, e) = Run("classify", "--model", _model, "--json", "--top-k", "4", _image);
        Assert.True(code == 0, e);
        if (torch.cuda.is_available())
            Assert.StartsWith("using CUDA", ConsoleCapture.Lines(e)[0]);
        else
        {
            Assert.Equal("", e);                                         // no CUDA notice, nothing else either
            // The same numbers as an explicit --device cpu run, and as the library on the CPU.
            var (cpuCode, cpuOut, cpuErr) = Run("classify", "--model", _model, "--json", "--top-k", "4", "--device", "cpu", _image);
            Assert.True(cpuCode == 0, cpuErr);
            Assert.Equal(cpuOut, o);
        }
        var predictions = JsonNode.Parse(o)!["results"]![0]!["predictions"]!.AsArray();
        using var clf = ImageClassifier.Load(_model, torch.CPU);
        using var input = clf.Prepare(ImageIO.Load(_image));
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
            ["classify", "--model", _model, _image],
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
