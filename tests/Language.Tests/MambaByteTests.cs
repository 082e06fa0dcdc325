// MambaByte: the loss falls on a small fixed corpus, an interrupted run resumes to the same parameters, and scoring
// in windows equals a token-by-token float64 sum of log-probabilities.
using System.Text;
using TorchSharp;
using Ssm.Backbone.Models;
using Ssm.Language;
using static TorchSharp.torch;

namespace Ssm.Language.Tests;

public class MambaByteTests
{
    const string Text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. " +
        "However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well " +
        "fixed in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters. ";

    static ByteCorpus Corpus()
    {
        var train = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat(Text, 12)) + "\0");
        var valid = Encoding.UTF8.GetBytes(Text + "\0");
        return new ByteCorpus(train, valid, valid);
    }

    static MambaByteTrainOptions Options(string dir, long steps, bool resume = false) => new()
    {
        OutputDir = dir, Config = MambaByte.Config(32, 2), Steps = steps, BatchSize = 4, SeqLen = 64, LearningRate = 1e-2,
        WarmupSteps = 10, EvalEvery = 0, EvalBytes = 0, CheckpointEvery = 20, Resume = resume, Seed = 5,
    };

    static string TempDir() => Path.Combine(Path.GetTempPath(), "ssm-mambabyte-" + Guid.NewGuid().ToString("N"));

    [Fact]
    public void LossFallsOnAFixedCorpusAndTheFolderLoadsBack()
    {
        string dir = TempDir();
        try
        {
            var corpus = Corpus();
            torch.manual_seed(5);
            using (var untrained = new MambaLM(MambaByte.Config(32, 2)))
            {
                double before = MambaByteTraining.ValidBitsPerByte(untrained, corpus.Valid, 64, 0);
                Assert.InRange(before, 7.0, 9.5);                     // about log2(256) = 8 for an untrained model
            }
            var result = MambaByteTraining.Train(corpus, Options(dir, 200), torch.CPU);
            using var tm = TextModel.Load(dir, torch.CPU);
            Assert.True(tm.ByteLevel);
            double after = MambaByteTraining.ValidBitsPerByte(tm.Model, corpus.Valid, 64, 0);
            Assert.True(after < 3.0, $"validation bits per byte after 200 steps: {after:0.000} (expected < 3 on a repeated text)");
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    [Fact]
    public void ResumeAfterInterruptionGivesTheSameParameters()
    {
        string a = TempDir(), b = TempDir();
        try
        {
            var corpus = Corpus();
            MambaByteTraining.Train(corpus, Options(a, 50), torch.CPU);
            using (var cts = new CancellationTokenSource())
            {
                // Interrupt after 30 steps (Ctrl+C: the trainer checkpoints the finished steps), then resume to 50.
                var o = Options(b, 50) with { AfterStep = done => { if (done == 30) cts.Cancel(); } };
                MambaByteTraining.Train(corpus, o, torch.CPU, cts.Token);
            }
            Assert.EndsWith("checkpoint-00000030", Ssm.Backbone.Training.Trainer.LatestCheckpoint(b));
            Assert.False(File.Exists(Path.Combine(b, "model.safetensors")), "the interrupted run must not have finished");
            MambaByteTraining.Train(corpus, Options(b, 50, resume: true), torch.CPU);
            using var ma = TextModel.Load(a, torch.CPU);
            using var mb = TextModel.Load(b, torch.CPU);
            var pa = ma.Model.state_dict();
            foreach (var (name, t) in mb.Model.state_dict())
                Assert.True(t.eq(pa[name]).all().item<bool>(), $"{name} differs between the straight and the resumed run");
        }
        finally
        {
            foreach (var d in new[] { a, b }) try { Directory.Delete(d, true); } catch (IOException) { }
        }
    }

    [Theory]
    [InlineData(7, 50)]
    [InlineData(16, 49)]
    [InlineData(100, 30)]
    public void WindowedScoreEqualsATokenByTokenSum(int window, int length)
    {
        torch.manual_seed(window + length);
        using var model = new MambaLM(MambaByte.Config(16, 2));
        model.eval();
        var rnd = new Random(window);
        var ids = Enumerable.Range(0, length).Select(_ => rnd.Next(256)).ToArray();
        var (bits, count) = TextScoring.Score(model, ids, window, batch: 3);
        Assert.Equal(length - 1, count);
        // Independent: for each target t, the context is the bytes since the start of its window (t - 1) / window * window.
        double expected = 0;
        using (torch.no_grad())
        {
            for (int t = 1; t < length; t++)
            {
                int start = (t - 1) / window * window;
                using var input = torch.tensor(ids[start..t].Select(i => (long)i).ToArray(), new long[] { 1, t - start });
                using var logp = nn.functional.log_softmax(model.forward(input)[0, -1].to_type(ScalarType.Float64), 0);
                expected -= logp[ids[t]].item<double>() / Math.Log(2);
            }
        }
        Assert.Equal(expected, bits, expected * 1e-5);
    }
}
