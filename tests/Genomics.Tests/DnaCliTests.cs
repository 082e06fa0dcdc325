// The ssm-dna CLI run in-process (DnaCli.Run with Console.Out/Error redirected) on a tiny randomly initialised DNA LM
// and Caduceus classifier, generated FASTA/VCF files and a tiny fake prepared-data folder. Every number the CLI prints
// is checked against the library called independently: record scores against one full forward (ScoreFull) on the
// normalised bases, --strand both against the explicit reverse complement, --region against the sub-sequence, variant
// llr against LogLikelihood of windows built here, classification against DnaModel.Classify, eval against ScoreFull
// over the validation windows, Markov baselines against counts made here; plus a 3-step training run that loads and
// resumes exactly, and one-line errors with the documented exit codes.
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Apps.Dna;
using Ssm.Genomics;

namespace Ssm.Genomics.Tests;

[Collection(ConsoleRedirectCollection.Name)]
public sealed class DnaCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ssm-dna-cli-").FullName;
    readonly string _lm, _clf;
    readonly int _seed = Environment.TickCount ^ Guid.NewGuid().GetHashCode();
    readonly Random _rng;
    static readonly string[] SpliceLabels = ["EI", "IE", "N"];
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public DnaCliTests()
    {
        _rng = new Random(_seed);
        // Untrained models are enough: the CLI's job is the plumbing. The LM's weights are jittered (and its dt bias
        // raised, for longer memory) so that its predictions depend clearly on the context and the strand.
        _lm = Path.Combine(_dir, "lm");
        torch.manual_seed(_seed);
        using (var lm = DnaModel.Create(DnaModel.CausalModelType, "tiny"))
        {
            using (torch.no_grad())
                foreach (var (name, p) in lm.Module.named_parameters())
                {
                    p.add_(torch.randn_like(p).mul_(0.3));
                    if (name.EndsWith("dt_proj.bias", StringComparison.Ordinal)) p.add_(1.0);
                }
            lm.Save(_lm);
        }
        _clf = Path.Combine(_dir, "splice-clf");
        using (var clf = DnaModel.Create(DnaModel.CaduceusModelType, "tiny", labels: SpliceLabels))
            clf.Save(_clf);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    string Seed => $"(seed {_seed})";

    (int Code, string Out, string Err) Run(params string[] args) =>
        ConsoleCapture.Run(() => DnaCli.Run(args, defaultModelsDir: Path.Combine(_dir, "no-models")));

    static string[] Lines(string s) => ConsoleCapture.Lines(s);

    /// <summary>
    /// Asserts a failed run with the given exit code: one "error:" line on stderr, last, and no stack trace. (Unlike
    /// ConsoleCapture.AssertOneLineError, a progress-bar line before it is allowed: a FASTA error is found while streaming.)
    /// </summary>
    static string AssertOneLineError((int Code, string Out, string Err) r, int code)
    {
        Assert.True(r.Code == code, $"exit {r.Code}, expected {code}; stderr: {r.Err}");
        var lines = Lines(r.Err);
        var errors = lines.Where(l => l.StartsWith("error:", StringComparison.Ordinal)).ToArray();
        Assert.True(errors.Length == 1, r.Err);
        Assert.Equal(errors[0], lines[^1]);
        Assert.DoesNotContain("   at ", r.Err);
        return errors[0];
    }

    static void AssertOk((int Code, string Out, string Err) r) => Assert.True(r.Code == 0, $"exit {r.Code}: {r.Err}");

    /// <summary>Random bases, mostly ACGT with some lower case and N when <paramref name="messy"/>.</summary>
    string RandomSeq(int n, bool messy = false)
    {
        const string clean = "ACGT", pool = "ACGTACGTACGTACGTacgtN";
        var sb = new StringBuilder(n);
        for (int i = 0; i < n; i++) sb.Append(messy ? pool[_rng.Next(pool.Length)] : clean[_rng.Next(4)]);
        return sb.ToString();
    }

    string WriteFasta(string name, params (string Name, string Seq)[] records)
    {
        string path = Path.Combine(_dir, name);
        var sb = new StringBuilder();
        foreach (var (n, s) in records)
        {
            sb.Append('>').Append(n).Append(" generated\n");
            for (int i = 0; i < s.Length; i += 50) sb.Append(s, i, Math.Min(50, s.Length - i)).Append('\n');
        }
        File.WriteAllText(path, sb.ToString());
        return path;
    }

    static byte[] Upper(string s) => Encoding.ASCII.GetBytes(s.ToUpperInvariant());

    static int Acgt(byte[] b) => b.Count(x => x is (byte)'A' or (byte)'C' or (byte)'G' or (byte)'T');

    static double D(string s) => double.Parse(s, Inv);

    static void Near(double expected, double actual, double tol, string what) =>
        Assert.True(Math.Abs(expected - actual) <= tol * Math.Max(1, Math.Abs(expected)), $"{what}: expected {expected:R}, got {actual:R}");

    // ------------------------------------------------------------------ score

    [Fact]
    public void ScoreTsvEqualsOneFullForwardOnTheNormalisedBasesOfEachRecord()
    {
        var records = new[] { ("mixed", RandomSeq(317, messy: true)), ("clean", RandomSeq(64)), ("lower", RandomSeq(40).ToLowerInvariant() + "NNNN" + RandomSeq(9)) };
        string fa = WriteFasta("s.fa", records);
        var r = Run("score", fa, "--model", _lm, "--device", "cpu", "--chunk", "7");
        AssertOk(r);
        var rows = Lines(r.Out);
        Assert.Equal("name\tlength\tscored_bases\tlog_likelihood\tbits_per_base", rows[0]);
        Assert.Equal(records.Length + 1, rows.Length);
        using var model = DnaModel.Load(_lm, torch.CPU);
        for (int i = 0; i < records.Length; i++)
        {
            var f = rows[i + 1].Split('\t');
            var bases = Upper(records[i].Item2);
            var expected = DnaScoring.ScoreFull(model.AsCausal, bases);
            Assert.Equal(records[i].Item1, f[0]);
            Assert.Equal(bases.Length, long.Parse(f[1], Inv));
            Assert.Equal(Acgt(bases), long.Parse(f[2], Inv));
            Near(expected.LogLikelihood, D(f[3]), 2e-4, $"{f[0]} log_likelihood {Seed}");
            Near(expected.BitsPerBase, D(f[4]), 2e-5, $"{f[0]} bits_per_base {Seed}");
        }
    }

    [Fact]
    public void StrandBothIsTheMeanOfTheForwardAndTheExplicitReverseComplement()
    {
        var records = new[] { ("a", RandomSeq(150, messy: true)), ("b", RandomSeq(33)) };
        string fa = WriteFasta("both.fa", records);
        var r = Run("score", fa, "--strand", "both", "--model", _lm, "--device", "cpu", "--chunk", "16", "--json");
        AssertOk(r);
        var rows = JsonNode.Parse(r.Out)!.AsArray();
        Assert.Equal(records.Length, rows.Count);
        using var model = DnaModel.Load(_lm, torch.CPU);
        for (int i = 0; i < records.Length; i++)
        {
            var bases = Upper(records[i].Item2);
            double fwd = DnaScoring.ScoreFull(model.AsCausal, bases).LogLikelihood;
            double rev = DnaScoring.ScoreFull(model.AsCausal, DnaTokenizer.ReverseComplement(bases)).LogLikelihood;
            var row = rows[i]!;
            Near(fwd, row["log_likelihood_fwd"]!.GetValue<double>(), 1e-5, $"forward {Seed}");
            Near(rev, row["log_likelihood_rev"]!.GetValue<double>(), 1e-5, $"reverse {Seed}");
            Near((fwd + rev) / 2, row["log_likelihood"]!.GetValue<double>(), 1e-5, $"both {Seed}");
            Assert.NotEqual(fwd, rev);   // the strands really differ, so the average means something
            Near(-(fwd + rev) / 2 / Math.Log(2) / Acgt(bases), row["bits_per_base"]!.GetValue<double>(), 1e-5, "bits per base");
        }
        r = Run("score", fa, "--strand", "reverse", "--model", _lm, "--device", "cpu", "--chunk", "10", "--json");
        AssertOk(r);
        rows = JsonNode.Parse(r.Out)!.AsArray();
        for (int i = 0; i < records.Length; i++)
        {
            var rc = DnaTokenizer.ReverseComplement(Upper(records[i].Item2));
            Near(DnaScoring.ScoreFull(model.AsCausal, rc).LogLikelihood, rows[i]!["log_likelihood"]!.GetValue<double>(), 1e-5, $"--strand reverse {Seed}");
        }
    }

    [Fact]
    public void RegionScoresExactlyTheSubsequenceAndClipsAnOpenEnd()
    {
        string seq = RandomSeq(260, messy: true);
        string fa = WriteFasta("region.fa", ("other", RandomSeq(30)), ("chrT", seq));
        using var model = DnaModel.Load(_lm, torch.CPU);

        var r = Run("score", fa, "--region", "chrT:11-60", "--model", _lm, "--device", "cpu", "--json", "--chunk", "9");
        AssertOk(r);
        var row = Assert.Single(JsonNode.Parse(r.Out)!.AsArray())!;
        var part = Upper(seq.Substring(10, 50));
        Assert.Equal("chrT:11-60", row["name"]!.GetValue<string>());
        Assert.Equal(50, row["length"]!.GetValue<long>());
        Near(DnaScoring.ScoreFull(model.AsCausal, part).LogLikelihood, row["log_likelihood"]!.GetValue<double>(), 1e-5, $"region {Seed}");

        // An end past the record is clipped to it; both strands of the region.
        r = Run("score", fa, "--region", "chrT:201-999", "--strand", "both", "--model", _lm, "--device", "cpu", "--json");
        AssertOk(r);
        row = Assert.Single(JsonNode.Parse(r.Out)!.AsArray())!;
        var tail = Upper(seq[200..]);
        Assert.Equal("chrT:201-260", row["name"]!.GetValue<string>());
        double both = (DnaScoring.ScoreFull(model.AsCausal, tail).LogLikelihood + DnaScoring.ScoreFull(model.AsCausal, DnaTokenizer.ReverseComplement(tail)).LogLikelihood) / 2;
        Near(both, row["log_likelihood"]!.GetValue<double>(), 1e-5, $"clipped region {Seed}");

        Assert.Contains("starts beyond the end of chrT", AssertOneLineError(Run("score", fa, "--region", "chrT:300-400", "--model", _lm, "--device", "cpu"), 1));
        Assert.Contains("no record named 'chrZ'", AssertOneLineError(Run("score", fa, "--region", "chrZ:1-10", "--model", _lm, "--device", "cpu"), 1));
    }

    // ------------------------------------------------------------------ variants

    /// <summary>The windows of a biallelic variant as documented: REF with (W - |REF|) / 2 bases before, the rest after, clipped.</summary>
    static (byte[] Ref, byte[] Alt) Windows(string chrom, int pos, string refAllele, string alt, int w)
    {
        int s = pos - 1, e = s + refAllele.Length;
        int left = (w - refAllele.Length) / 2, right = w - refAllele.Length - left;
        int ws = Math.Max(0, s - left), we = Math.Min(chrom.Length, e + right);
        return (Encoding.ASCII.GetBytes(chrom[ws..we]), Encoding.ASCII.GetBytes(chrom[ws..s] + alt + chrom[e..we]));
    }

    static double ExpectedLlr(DnaLM lm, (byte[] Ref, byte[] Alt) w) =>
        ((DnaScoring.LogLikelihood(lm, w.Alt) - DnaScoring.LogLikelihood(lm, w.Ref)) +
         (DnaScoring.LogLikelihood(lm, DnaTokenizer.ReverseComplement(w.Alt)) - DnaScoring.LogLikelihood(lm, DnaTokenizer.ReverseComplement(w.Ref)))) / 2;

    static string Other(char b, int k = 1) => "ACGT"[("ACGT".IndexOf(b) + k) % 4].ToString();

    [Fact]
    public void VariantLlrEqualsWindowLogLikelihoodsOnBothStrandsWithMismatchClippingAndSplitRows()
    {
        var chars = RandomSeq(200).ToCharArray();
        chars[105] = 'N';                                                  // inside the window of the variant at 100
        string chrom = new(chars);
        string fa = WriteFasta("ref.fa", ("chrB", RandomSeq(80)), ("chrA", chrom));
        const int W = 21;
        string vcf = Path.Combine(_dir, "v.vcf");
        char b100 = chrom[99], b120 = chrom[119], b3 = chrom[2], b150 = chrom[149];
        File.WriteAllText(vcf,
            "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" +
            $"chrA\t100\tsnv\t{b100}\t{Other(b100)}\t.\t.\t.\n" +
            $"chrA\t120\tbad\t{Other(b120)}\t{b120}\t.\t.\t.\n" +
            $"chrA\t3\tnear\t{b3}\t{Other(b3, 2)}\t.\t.\t.\n" +
            $"chrA\t150\tmulti\t{b150}\t{Other(b150)},{Other(b150, 3)}\t.\t.\t.\n");
        var r = Run("variants", "--ref", fa, "--vcf", vcf, "--window", $"{W}", "--model", _lm, "--device", "cpu", "--json", "--batch-size", "3");
        AssertOk(r);
        var rows = JsonNode.Parse(r.Out)!.AsArray().Select(n => n!).ToArray();
        Assert.Equal(5, rows.Length);                                      // the multi-allelic record gives two rows
        Assert.Contains("1 variant allele(s) not scored: REF does not match", r.Err);
        using var model = DnaModel.Load(_lm, torch.CPU);
        var lm = model.AsCausal;

        void Check(JsonNode row, int pos, string refAllele, string alt, string note)
        {
            Assert.Equal("chrA", row["chrom"]!.GetValue<string>());
            Assert.Equal(pos, row["pos"]!.GetValue<long>());
            Assert.Equal(alt, row["alt"]!.GetValue<string>());
            Assert.Equal("ok", row["status"]!.GetValue<string>());
            Assert.Equal(note, row["note"]!.GetValue<string>());
            var w = Windows(chrom, pos, refAllele, alt, W);
            double fwd = DnaScoring.LogLikelihood(lm, w.Alt) - DnaScoring.LogLikelihood(lm, w.Ref);
            Near(fwd, row["llr_fwd"]!.GetValue<double>(), 1e-4, $"llr_fwd at {pos} {Seed}");
            Near(ExpectedLlr(lm, w), row["llr"]!.GetValue<double>(), 1e-4, $"llr at {pos} {Seed}");
        }

        Check(rows[0], 100, b100.ToString(), Other(b100), "n_in_window=1");
        Assert.Equal("ref_mismatch", rows[1]["status"]!.GetValue<string>());
        Assert.Null(rows[1]["llr"]);
        Assert.Equal(120, rows[1]["pos"]!.GetValue<long>());
        Check(rows[2], 3, b3.ToString(), Other(b3, 2), "clipped_start");
        Assert.Equal(1, rows[2]["window_start"]!.GetValue<long>());        // 1-based: the window starts at the chromosome's start
        Assert.Equal(13, rows[2]["window_end"]!.GetValue<long>());         // 3 + 10
        Check(rows[3], 150, b150.ToString(), Other(b150), "");
        Check(rows[4], 150, b150.ToString(), Other(b150, 3), "");

        // TSV: the documented columns, NA for the unscored row; --strict turns the mismatch into an error naming the line.
        r = Run("variants", "--ref", fa, "--vcf", vcf, "--window", $"{W}", "--model", _lm, "--device", "cpu");
        AssertOk(r);
        var tsv = Lines(r.Out);
        Assert.Equal("chrom\tpos\tref\talt\tllr\tllr_fwd\tllr_rev\tstatus\tnote", tsv[0]);
        var mismatch = tsv[2].Split('\t');
        Assert.Equal(new[] { "NA", "NA", "NA", "ref_mismatch" }, mismatch[4..8]);
        Near(rows[0]["llr"]!.GetValue<double>(), D(tsv[1].Split('\t')[4]), 1e-5, "TSV llr");
        Assert.Contains($"{vcf}:4: REF", AssertOneLineError(Run("variants", "--ref", fa, "--vcf", vcf, "--strict", "--model", _lm, "--device", "cpu"), 1));
    }

    // ------------------------------------------------------------------ classify

    [Fact]
    public void ClassifyGivesTheModelsLabelsAndProbabilities()
    {
        var seqs = new[] { RandomSeq(60), RandomSeq(60, messy: true), RandomSeq(45) };
        string fa = WriteFasta("c.fa", seqs.Select((s, i) => ($"seq{i}", s)).ToArray());
        using var model = DnaModel.Load(_clf, torch.CPU);
        foreach (bool conjoin in new[] { false, true })
        {
            var r = Run(["classify", fa, "--model", _clf, "--task", "splice", "--device", "cpu", "--json", .. conjoin ? new[] { "--conjoin" } : []]);
            AssertOk(r);
            var rows = JsonNode.Parse(r.Out)!.AsArray();
            var expected = model.Classify(seqs.Select(s => (ReadOnlyMemory<byte>)Upper(s)).ToList(), conjoin: conjoin);
            Assert.Equal(seqs.Length, rows.Count);
            for (int i = 0; i < seqs.Length; i++)
            {
                Assert.Equal($"seq{i}", rows[i]!["name"]!.GetValue<string>());
                var p = rows[i]!["probabilities"]!.AsObject();
                Assert.Equal(SpliceLabels, p.Select(kv => kv.Key).ToArray());
                for (int k = 0; k < SpliceLabels.Length; k++)
                    Near(expected[i].Probabilities[k], p[SpliceLabels[k]]!.GetValue<double>(), 1e-6, $"p({SpliceLabels[k]}) of seq{i} {Seed}");
                int best = Array.IndexOf(expected[i].Probabilities, expected[i].Probabilities.Max());
                Assert.Equal(SpliceLabels[best], rows[i]!["label"]!.GetValue<string>());
            }
        }
        var tsv = Run("classify", fa, "--model", _clf, "--device", "cpu");
        AssertOk(tsv);
        Assert.Equal("name\tlabel\tp_EI\tp_IE\tp_N", Lines(tsv.Out)[0]);
        // A model with other labels than the task's, an unknown task, and no embedded classifier installed.
        Assert.Contains("not those of the apes task", AssertOneLineError(Run("classify", fa, "--model", _clf, "--task", "apes", "--device", "cpu"), 1));
        AssertOneLineError(Run("classify", fa, "--task", "nope", "--device", "cpu"), 2);
        Assert.Contains("not installed", AssertOneLineError(Run("classify", fa, "--task", "splice", "--device", "cpu"), 1));
    }

    // ------------------------------------------------------------------ errors, info

    [Fact]
    public void BadInputGivesOneLineErrorsWithTheDocumentedExitCodes()
    {
        string bad = Path.Combine(_dir, "bad.fa");
        File.WriteAllText(bad, ">a\nACGT\nAC-GT\n");
        string line = AssertOneLineError(Run("score", bad, "--model", _lm, "--device", "cpu"), 1);
        Assert.Contains($"{bad}:3:", line);
        Assert.Contains("'-'", line);
        string fa = WriteFasta("ok.fa", ("x", RandomSeq(20)));
        Assert.Contains("--region", AssertOneLineError(Run("score", fa, "--region", "x:10-5", "--model", _lm, "--device", "cpu"), 2));
        Assert.Contains("--region", AssertOneLineError(Run("score", fa, "--region", "x:a-b", "--model", _lm, "--device", "cpu"), 2));
        AssertOneLineError(Run("score", fa, "--strand", "sideways", "--model", _lm), 2);
        AssertOneLineError(Run("train", "--task", "nope", "--out", Path.Combine(_dir, "t")), 2);
        Assert.Contains("no default DNA language model", AssertOneLineError(Run("score", fa, "--device", "cpu"), 1));
        Assert.Contains("causal LM", AssertOneLineError(Run("score", fa, "--model", _clf, "--device", "cpu"), 1));
        string vcf = Path.Combine(_dir, "bad.vcf");
        File.WriteAllText(vcf, "#CHROM\tPOS\tID\tREF\tALT\nx\t0\t.\tA\tC\n");
        Assert.Contains($"{vcf}:2:", AssertOneLineError(Run("variants", "--ref", fa, "--vcf", vcf, "--model", _lm, "--device", "cpu"), 1));
    }

    [Theory]
    [InlineData("score")]
    [InlineData("variants")]
    [InlineData("classify")]
    [InlineData("train")]
    [InlineData("eval")]
    [InlineData("baselines")]
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

    [Fact]
    public void InfoJsonDescribesFoldersAndFreshModels()
    {
        var r = Run("info", "--model", _lm, "--json");
        AssertOk(r);
        var doc = JsonNode.Parse(r.Out)!;
        using var lm = DnaModel.Load(_lm);
        Assert.Equal(DnaModel.CausalModelType, doc["model_type"]!.GetValue<string>());
        Assert.Equal("causal-lm", doc["task"]!.GetValue<string>());
        Assert.Equal(lm.ParameterCount, doc["parameters"]!.GetValue<long>());
        Assert.Equal(4 * lm.ParameterCount, doc["bytes"]!.GetValue<long>());   // float32
        Assert.Equal(DnaLMConfig.Tiny.DModel, doc["config"]!["d_model"]!.GetValue<long>());
        Assert.Empty(doc["labels"]!.AsArray());

        r = Run("info", "--model", _clf, "--json");
        AssertOk(r);
        Assert.Equal(SpliceLabels, JsonNode.Parse(r.Out)!["labels"]!.AsArray().Select(n => n!.GetValue<string>()).ToArray());

        r = Run("info", "--model-type", "caduceus", "--preset", "tiny-ps", "--json");
        AssertOk(r);
        doc = JsonNode.Parse(r.Out)!;
        using var fresh = DnaModel.Create("caduceus", "tiny-ps");
        Assert.Equal(fresh.ParameterCount, doc["parameters"]!.GetValue<long>());
        Assert.True(doc["rc_equivariant"]!.GetValue<bool>());
        Assert.Equal("masked-lm", doc["task"]!.GetValue<string>());
    }

    // ------------------------------------------------------------------ data: eval, baselines, train

    /// <summary>A prepared-data folder as data/dna.sh writes it: human/human.json and raw .seq files.</summary>
    (string Dir, string Train, string Valid) FakeData()
    {
        string train = RandomSeq(3000) + new string('N', 200) + RandomSeq(1000);
        string valid = RandomSeq(500) + "NNNNN" + RandomSeq(1500);
        return (WriteHumanData(Path.Combine(_dir, "data"), train, valid), train, valid);
    }

    /// <summary>Writes dir/human/{t,v}.seq and human.json (one train and one valid chromosome); returns dir.</summary>
    internal static string WriteHumanData(string dir, string train, string valid)
    {
        string human = Path.Combine(dir, "human");
        Directory.CreateDirectory(human);
        File.WriteAllText(Path.Combine(human, "t.seq"), train);
        File.WriteAllText(Path.Combine(human, "v.seq"), valid);
        File.WriteAllText(Path.Combine(human, "human.json"), $$"""
            {"name": "fake", "files": [
              {"name": "chrT", "file": "t.seq", "split": "train", "length": {{train.Length}}},
              {"name": "chrV", "file": "v.seq", "split": "valid", "length": {{valid.Length}}}],
             "split_rule": "test data"}
            """);
        return dir;
    }

    /// <summary>The validation windows the CLI draws, read back through the library's own types.</summary>
    static byte[][] ValidWindows(string dataDir, int count, int length, long seed)
    {
        using var human = DnaDatasets.OpenHuman(dataDir);
        return DnaTraining.ValidationWindowBytes(DnaDatasets.WindowSource(human.Split("valid")), count, length, seed);
    }

    static double BitsPerBaseOfWindows(DnaLM lm, byte[][] windows)
    {
        var total = DnaScore.Zero;
        foreach (var w in windows) total += DnaScoring.ScoreFull(lm, w);
        return total.BitsPerBase;
    }

    [Fact]
    public void EvalAndMarkovBaselinesScoreTheSameFixedValidationWindows()
    {
        var (data, train, _) = FakeData();
        const int n = 5, len = 40;
        const long seed = 9;
        var windows = ValidWindows(data, n, len, seed);
        Assert.Equal(n, windows.Length);
        Assert.Equal(windows.Select(w => Convert.ToBase64String(w)), ValidWindows(data, n, len, seed).Select(w => Convert.ToBase64String(w)));  // fixed

        var r = Run("eval", "--model", _lm, "--data", data, "--windows", $"{n}", "--length", $"{len}", "--seed", $"{seed}", "--batch-size", "2", "--device", "cpu", "--json");
        AssertOk(r);
        var doc = JsonNode.Parse(r.Out)!;
        using var model = DnaModel.Load(_lm, torch.CPU);
        Near(BitsPerBaseOfWindows(model.AsCausal, windows), doc["bits_per_base"]!.GetValue<double>(), 1e-5, $"eval bits/base {Seed}");
        Assert.Equal(windows.Sum(Acgt), doc["scored_bases"]!.GetValue<long>());

        // Markov chains of order 0..3 with counts made here: every A/C/G/T of a window is scored, its context cut to
        // the valid bases before it within the window (what the LM sees after [BOS]).
        const int maxOrder = 3;
        r = Run("baselines", "--markov", "--max-order", $"{maxOrder}", "--data", data, "--windows", $"{n}", "--length", $"{len}", "--seed", $"{seed}", "--json");
        AssertOk(r);
        var orders = JsonNode.Parse(r.Out)!["markov"]!["orders"]!.AsArray();
        Assert.Equal(maxOrder + 1, orders.Count);
        static bool Valid(char c) => c is 'A' or 'C' or 'G' or 'T';
        for (int k = 0; k <= maxOrder; k++)
        {
            var counts = new Dictionary<string, long>[maxOrder + 1];
            for (int e = 0; e <= k; e++)
            {
                counts[e] = [];
                for (int i = e; i < train.Length; i++)
                {
                    string s = train.Substring(i - e, e + 1);
                    if (s.All(Valid)) counts[e][s] = counts[e].GetValueOrDefault(s) + 1;
                }
            }
            double bits = 0;
            long scored = 0;
            foreach (var wb in windows)
            {
                string w = Encoding.ASCII.GetString(wb);
                for (int i = 0; i < w.Length; i++)
                {
                    if (!Valid(w[i])) continue;
                    int run = 0;
                    while (i - run >= 0 && Valid(w[i - run])) run++;
                    int e = Math.Min(k, run - 1);
                    string ctx = w.Substring(i - e, e);
                    double num = counts[e].GetValueOrDefault(ctx + w[i]) + 1.0;
                    double den = "ACGT".Sum(b => counts[e].GetValueOrDefault(ctx + b)) + 4.0;
                    bits -= Math.Log2(num / den);
                    scored++;
                }
            }
            Assert.Equal(scored, orders[k]!["scored_bases"]!.GetValue<long>());
            Near(bits / scored, orders[k]!["valid_bits_per_base"]!.GetValue<double>(), 1e-9, $"order {k} {Seed}");
        }
    }

    [Fact]
    public void TrainLmWritesALoadableModelAndEvalJsonAndResumesExactly()
    {
        var (data, _, _) = FakeData();
        string outDir = Path.Combine(_dir, "run");
        string[] Args(params string[] extra) =>
        [
            "train", "--task", "lm", "--data", data, "--out", outDir, "--preset", "tiny", "--steps", "3", "--batch-size", "2", "--length", "32",
            "--eval-windows", "4", "--eval-every", "0", "--checkpoint-every", "1", "--log-every", "1", "--seed", "3", "--device", "cpu", .. extra,
        ];
        var r = Run(Args("--json"));
        AssertOk(r);
        var summary = JsonNode.Parse(r.Out)!;
        Assert.True(summary["completed"]!.GetValue<bool>());
        Assert.Equal(3, summary["steps"]!.GetValue<long>());
        var evalJson = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "eval.json")))!;
        double[] trained;
        using (var model = DnaModel.Load(outDir, torch.CPU))
        {
            Assert.Equal(DnaModel.CausalModelType, model.ModelType);
            // eval.json's validation number is bits/base on the fixed windows (the eval defaults' seed, --length, --eval-windows).
            var windows = ValidWindows(data, 4, 32, DnaCli.DefaultEvalSeed);
            Near(BitsPerBaseOfWindows(model.AsCausal, windows), evalJson["valid_bits_per_base"]!.GetValue<double>(), 1e-5, $"valid bits/base {Seed}");
            trained = Flat(model);
        }

        // The same folder again needs --resume.
        Assert.Contains("--resume", AssertOneLineError(Run(Args()), 2));

        // Interrupted after step 2: only checkpoint 2 left. Resuming runs step 3 again and ends with the same weights.
        Directory.Delete(Path.Combine(outDir, "checkpoint-00000003"), recursive: true);
        foreach (var f in new[] { "config.json", "model.safetensors", "eval.json" }) File.Delete(Path.Combine(outDir, f));
        Assert.True(Directory.Exists(Path.Combine(outDir, "checkpoint-00000002")));
        r = Run(Args("--resume"));
        AssertOk(r);
        Assert.Contains("resuming from", r.Err);
        Assert.Contains("checkpoint-00000002", r.Err);
        Assert.True(File.Exists(Path.Combine(outDir, "eval.json")));
        using var resumed = DnaModel.Load(outDir, torch.CPU);
        var again = Flat(resumed);
        Assert.Equal(trained.Length, again.Length);
        double worst = trained.Zip(again, (a, b) => Math.Abs(a - b)).Max();
        Assert.True(worst <= 1e-6, $"resumed weights differ by {worst:E2}");
    }

    [Fact]
    public void ClassifierEvalAndFineTuningReportAccuracyOnTheTaskSplits()
    {
        // A fake splice task (the loader's fixed labels EI, IE, N when TASK.json is absent).
        string data = Path.Combine(_dir, "tasks");
        Directory.CreateDirectory(Path.Combine(data, "splice"));
        var rows = Enumerable.Range(0, 48).Select(i => (Split: i % 4 == 0 ? "test" : i % 4 == 1 ? "valid" : "train", Label: _rng.Next(3), Seq: RandomSeq(24))).ToArray();
        File.WriteAllText(Path.Combine(data, "splice", "splice.tsv"),
            "split\tclass\tsequence\n" + string.Concat(rows.Select(r => $"{r.Split}\t{SpliceLabels[r.Label]}\t{r.Seq}\n")));
        var test = rows.Where(r => r.Split == "test").ToArray();

        double Accuracy(string modelDir)
        {
            using var m = DnaModel.Load(modelDir, torch.CPU);
            var results = m.Classify(test.Select(r => (ReadOnlyMemory<byte>)Upper(r.Seq)).ToList());
            return test.Where((r, i) => results[i].Label == r.Label).Count() / (double)test.Length;
        }

        var r = Run("eval", "--model", _clf, "--data", data, "--split", "test", "--device", "cpu", "--json");
        AssertOk(r);
        var doc = JsonNode.Parse(r.Out)!;
        Assert.Equal("splice", doc["task"]!.GetValue<string>());           // inferred from the model's labels
        Assert.Equal(test.Length, doc["count"]!.GetValue<long>());
        Near(Accuracy(_clf), doc["accuracy"]!.GetValue<double>(), 1e-12, "eval accuracy");
        long confusionTotal = doc["confusion"]!.AsObject().Sum(t => t.Value!.AsObject().Sum(p => p.Value!.GetValue<long>()));
        Assert.Equal(test.Length, confusionTotal);

        // Fine-tuning from a pretrained folder (a new head on its backbone): eval.json's test accuracy is the saved model's.
        string outDir = Path.Combine(_dir, "splice-run");
        r = Run("train", "--task", "splice", "--init", _clf, "--data", data, "--out", outDir, "--steps", "2", "--batch-size", "8", "--device", "cpu");
        AssertOk(r);
        var evalJson = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "eval.json")))!;
        Near(Accuracy(outDir), evalJson["test_accuracy"]!.GetValue<double>(), 1e-12, "test accuracy after training");
        Assert.Equal(test.Length, evalJson["test_count"]!.GetValue<long>());
        Assert.Contains("--init", AssertOneLineError(Run("train", "--task", "splice", "--init", _clf, "--preset", "tiny", "--data", data, "--out", Path.Combine(_dir, "x")), 2));
    }

    static double[] Flat(DnaModel m)
    {
        using var scope = torch.NewDisposeScope();
        return m.Module.named_parameters().OrderBy(p => p.name, StringComparer.Ordinal)
            .SelectMany(p => p.parameter.detach().cpu().to_type(torch.ScalarType.Float64).data<double>().ToArray()).ToArray();
    }
}
