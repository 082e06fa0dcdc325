// ssm-text in-process: machine output checked against the library computed independently, and every documented bad
// input gives a one-line error and a non-zero exit.
using System.Text;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.IO;
using Ssm.Backbone.Models;
using Ssm.Language;
using static TorchSharp.torch;

namespace Ssm.Language.Tests;

[Collection(ConsoleRedirectCollection.Name)]
public sealed class TextCliTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "ssm-text-cli-" + Guid.NewGuid().ToString("N"));
    readonly string _model;

    public TextCliTests()
    {
        Directory.CreateDirectory(_dir);
        _model = Path.Combine(_dir, "model");
        torch.manual_seed(21);
        using var lm = new MambaLM(MambaByte.Config(32, 2));
        TextModel.SaveByteModel(_model, lm, 64);
    }

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static (int Code, string Out, string Err) Run(params string[] args) => ConsoleCapture.Run(() => Ssm.Apps.Text.Program.Main(args));

    [Fact]
    public void ParseErrorsAreOneLineAndABareCallShowsTheHelp() => ConsoleCapture.AssertParseErrorsAreOneLine(args => Run(args));

    // Out-of-range sampling options are bad usage (exit 2) in one line, before any token is generated; a negative
    // temperature is not taken as greedy (only 0 is).
    [Theory]
    [InlineData("--temperature", "-1", "--temperature")]
    [InlineData("--top-p", "1.5", "top-p")]
    [InlineData("--top-k", "-3", "top-k")]
    [InlineData("--min-p", "2", "min-p")]
    [InlineData("--repetition-penalty", "0", "repetition penalty")]
    public void OutOfRangeSamplingOptionsAreUsageErrors(string option, string value, string named)
    {
        var r = Run("generate", "--model", _model, "--ids", "1,2", "-n", "3", option, value, "--device", "cpu");
        Assert.Equal(2, r.Code);
        Assert.Contains(named, ConsoleCapture.AssertOneLineError(r));
        Assert.Equal("", r.Out);
    }

    [Fact]
    public void GreedyIdsAsJsonEqualTheArgmaxOfFullForwardPasses()
    {
        var (code, stdout, stderr) = Run("generate", "--model", _model, "--ids", "72,101,108", "--greedy", "--max-new-tokens", "6", "--json", "--device", "cpu");
        Assert.True(code == 0, stderr);
        var json = JsonNode.Parse(stdout)!;
        var ids = json["ids"]!.AsArray().Select(n => n!.GetValue<long>()).ToArray();
        Assert.Equal(6, ids.Length);
        // Independent: recompute the whole sequence for every token and take the argmax.
        using var tm = TextModel.Load(_model, torch.CPU);
        var seq = new List<long> { 72, 101, 108 };
        using (torch.no_grad())
            for (int i = 0; i < 6; i++)
            {
                using var logits = tm.Model.forward(torch.tensor(seq.ToArray(), new long[] { 1, seq.Count }));
                seq.Add(logits[0, -1, ..256].argmax().item<long>());
            }
        Assert.Equal(seq.Skip(3), ids);
        Assert.Equal("length", json["finish_reason"]!.GetValue<string>());
    }

    [Fact]
    public void LogitsAreWrittenAsNpyEqualToTheModelsForward()
    {
        string npy = Path.Combine(_dir, "logits.npy");
        var (code, _, stderr) = Run("logits", "--model", _model, "--ids", "1,2,3,250", "--out", npy, "--device", "cpu");
        Assert.True(code == 0, stderr);
        using var saved = Npy.Load(npy);
        Assert.Equal(new long[] { 4, 256 }, saved.shape);
        using var tm = TextModel.Load(_model, torch.CPU);
        using var noGrad = torch.no_grad();
        using var expected = tm.Model.forward(torch.tensor(new long[] { 1, 2, 3, 250 }, new long[] { 1, 4 }))[0];
        Assert.True(saved.allclose(expected, rtol: 0, atol: 0), "the .npy must hold exactly the forward's float32 logits");
    }

    [Fact]
    public void ScoreReportsBitsPerByteOfTheFile()
    {
        string text = Path.Combine(_dir, "t.txt");
        File.WriteAllText(text, "Call me Ishmael. Some years ago - never mind how long precisely - having little money in my purse.");
        var (code, stdout, stderr) = Run("score", text, "--model", _model, "--json", "--window", "16", "--device", "cpu");
        Assert.True(code == 0, stderr);
        var row = JsonNode.Parse(stdout)!.AsArray()[0]!;
        using var tm = TextModel.Load(_model, torch.CPU);
        var ids = Encoding.UTF8.GetBytes(File.ReadAllText(text)).Select(b => (int)b).ToArray();
        var (bits, count) = TextScoring.Score(tm.Model, ids, 16);
        Assert.Equal(bits / count, row["bits_per_token"]!.GetValue<double>(), 9);
        Assert.Equal(bits / (ids.Length - 1), row["bits_per_byte"]!.GetValue<double>(), 9);
    }

    [Fact]
    public void BadInputsGiveOneLineErrorsAndNonZeroExits()
    {
        string bad = Path.Combine(_dir, "latin1.txt");
        File.WriteAllBytes(bad, [0x63, 0x61, 0x66, 0xE9, 0x0A]);          // "café" in Latin-1: not UTF-8
        string empty = Path.Combine(_dir, "empty.txt");
        File.WriteAllText(empty, "");
        string gpt2 = Path.Combine(_dir, "gpt2");
        Directory.CreateDirectory(gpt2);
        File.WriteAllText(Path.Combine(gpt2, "config.json"), "{\"model_type\": \"gpt2\", \"n_layer\": 2}");

        var cases = new (string[] Args, int Code, string Says)[]
        {
            (["generate", "--model", _model, "--prompt-file", bad, "--device", "cpu"], 1, "not valid UTF-8"),
            (["generate", "--model", _model, "--prompt-file", empty, "--device", "cpu"], 1, "empty"),
            (["generate", "--model", Path.Combine(_dir, "nope"), "hi", "--device", "cpu"], 1, "no such model folder"),
            (["generate", "--model", gpt2, "hi", "--device", "cpu"], 1, "gpt2"),
            (["generate", "--model", _model, "--ids", "1,x", "--device", "cpu"], 2, "'x'"),
            (["generate", "--model", _model, "--ids", "1,999", "--device", "cpu"], 2, "outside the vocabulary"),
            (["score", Path.Combine(_dir, "missing.txt"), "--model", _model, "--device", "cpu"], 1, "no such file"),
            (["score", "--windw", "3", "--model", _model], 2, ""),
            (["generate", "--model", _model, "hi", "--device", "tpu"], 1, "--device tpu"),
        };
        foreach (var (args, expected, says) in cases)
        {
            var (code, _, stderr) = Run(args);
            Assert.True(code == expected, $"{string.Join(' ', args)}: exit {code}, expected {expected}; stderr: {stderr}");
            if (says.Length > 0) Assert.Contains(says, stderr);
            Assert.DoesNotContain("   at ", stderr);                     // never a stack trace
        }
    }

    [Fact]
    public void TheDefaultDeviceIsAutoAndRunsOnTheCpuWithoutCuda()
    {
        var (code, stdout, stderr) = Run("generate", "--model", _model, "--ids", "5,6,7", "--greedy", "-n", "4", "--json");
        Assert.True(code == 0, stderr);
        bool notice = ConsoleCapture.Lines(stderr).Any(l => l.StartsWith("using CUDA", StringComparison.Ordinal));
        Assert.Equal(torch.cuda.is_available(), notice);                 // auto says so exactly when it picks CUDA
        if (!torch.cuda.is_available())
        {
            // On the CPU: the same tokens as an explicit --device cpu run.
            var cpu = Run("generate", "--model", _model, "--ids", "5,6,7", "--greedy", "-n", "4", "--json", "--device", "cpu");
            Assert.True(cpu.Code == 0, cpu.Err);
            Assert.Equal(JsonNode.Parse(cpu.Out)!["ids"]!.ToJsonString(), JsonNode.Parse(stdout)!["ids"]!.ToJsonString());
        }
    }

    [Fact]
    public void ABadDeviceIsAOneLineErrorOnEveryCommandThatTakesIt()
    {
        string text = Path.Combine(_dir, "t.txt");
        File.WriteAllText(text, "hello");
        string[][] commands =
        [
            ["generate", "--model", _model, "--ids", "1,2"],
            ["score", text, "--model", _model],
            ["eval", "--model", _model, "--data", Path.Combine(_dir, "no-corpus")],
            ["logits", "--model", _model, "--ids", "1,2", "--out", Path.Combine(_dir, "l.npy")],
            ["train", "--data", Path.Combine(_dir, "no-corpus"), "--out", Path.Combine(_dir, "run")],
        ];
        foreach (var args in commands)
        {
            var r = Run([.. args, "--device", "bogus"]);
            string line = ConsoleCapture.AssertOneLineError(r);
            Assert.Contains("--device bogus", line);
        }
        Assert.False(File.Exists(Path.Combine(_dir, "l.npy")));
        Assert.False(Directory.Exists(Path.Combine(_dir, "run")), "train must fail before it writes anything");
        // The help shows the shared option's default.
        foreach (var command in new[] { "generate", "score", "train", "eval", "logits" })
        {
            var (code, o, _) = Run(command, "--help");
            Assert.Equal(0, code);
            Assert.Contains("[default: auto]", ConsoleCapture.Lines(o).Single(l => l.StartsWith("--device", StringComparison.Ordinal)));
        }
    }

    [Fact]
    public void ALongPromptIsAcceptedWithANote()
    {
        string prompt = new string('a', 100);                            // the model was "trained" on 64-byte windows
        var (code, _, stderr) = Run("generate", prompt, "--model", _model, "-n", "3", "--device", "cpu");
        Assert.True(code == 0, stderr);
        Assert.Contains("longer than the 64", stderr);
    }
}
