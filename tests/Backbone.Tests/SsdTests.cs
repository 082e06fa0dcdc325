// Tests of the Mamba-2 SSD scan (backbone/Scans/Ssd.cs): the chunked algorithm against the sequential oracle in
// float64 and float32, for every option, several chunk sizes and lengths that are not a multiple of the chunk size;
// chunk-size independence; gradients with respect to every input; the one-token Step against the oracle; dtypes.
// Inputs are random at realistic scales: dt = softplus(N(-3, 0.5)) ~ 0.05 so exp(dt A) is in (0, 1) and the state
// remembers ~10 tokens (it crosses chunk boundaries), A = -exp(U(0, 1)).
// Each test seeds torch per test; set SSM_TEST_SEED to an integer to draw other random inputs.
using Ssm.Backbone.Scans;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using static Ssm.Tests.TestUtil;

namespace Ssm.Backbone.Tests;

public class SsdTests
{
    private const double Tol64 = 1e-9;
    private const double Tol32 = 1e-4;

    /// <summary>A named shape plus the options it turns on.</summary>
    public sealed record Case(
        long Batch, long Len, long Heads, long HeadDim, long Groups, long State,
        bool WithD = false, bool DPerChannel = false, bool WithZ = false, bool WithBias = false,
        bool Softplus = false, bool WithInit = false);

    private static readonly Dictionary<string, Case> Cases = new()
    {
        ["plain g=1"] = new(2, 37, 4, 5, 1, 6),
        ["groups g=3, D(h), z"] = new(2, 37, 6, 4, 3, 5, WithD: true, WithZ: true),
        ["all options, D(h,p)"] = new(1, 37, 4, 3, 2, 4, WithD: true, DPerChannel: true, WithZ: true, WithBias: true, Softplus: true, WithInit: true),
        ["bias without softplus, initial states, g=h"] = new(2, 37, 3, 4, 3, 5, WithD: true, WithBias: true, WithInit: true),
        ["short l=5"] = new(2, 5, 4, 3, 2, 3, WithD: true, WithZ: true, WithBias: true, Softplus: true, WithInit: true),
        ["single token"] = new(1, 1, 2, 3, 1, 4, WithD: true, WithInit: true),
    };

    private static readonly int[] ChunkSizes = { 1, 3, 8, 16, 64 };

    public static IEnumerable<object[]> CaseChunkDtype() =>
        from name in Cases.Keys
        from chunk in ChunkSizes
        from dtype in new[] { "float64", "float32" }
        select new object[] { name, chunk, dtype };

    public static IEnumerable<object[]> CaseDtype() =>
        from name in Cases.Keys
        from dtype in new[] { "float64", "float32" }
        select new object[] { name, dtype };

    public static IEnumerable<object[]> CaseNames() => Cases.Keys.Select(k => new object[] { k });

    // ------------------------------------------------------------------ chunked == sequential

    [Theory]
    [MemberData(nameof(CaseChunkDtype))]
    public void ChunkScanMatchesReference(string caseName, int chunkSize, string dtypeName)
    {
        using var scope = torch.NewDisposeScope();
        var k = Cases[caseName];
        var dtype = ParseDtype(dtypeName);
        var t = Inputs.Make(k, dtype, Seed(caseName, chunkSize));
        double tol = dtype == ScalarType.Float64 ? Tol64 : Tol32;

        var (y, fin) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, chunkSize, t.D, t.Z, t.DtBias, t.Init,
            dtSoftplus: k.Softplus, returnFinalStates: true);
        var (yRef, finRef) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, t.Z, t.DtBias, t.Init,
            dtSoftplus: k.Softplus, returnFinalStates: true);

        Assert.Equal(dtype, y.dtype);
        Assert.Equal(t.X.shape, y.shape);
        Assert.Equal(dtype, fin!.dtype);
        Assert.Equal(new[] { k.Batch, k.Heads, k.HeadDim, k.State }, fin.shape);
        AssertClose(yRef, y, tol, "y");
        AssertClose(finRef!, fin, tol, "final states");
    }

    [Fact]
    public void ResultIsIndependentOfChunkSize()
    {
        using var scope = torch.NewDisposeScope();
        var k = Cases["all options, D(h,p)"] with { Len = 41 };
        var t = Inputs.Make(k, ScalarType.Float64, Seed("chunk independence"));
        var (y1, f1) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 1, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        foreach (var chunk in new[] { 2, 3, 5, 7, 8, 16, 40, 41, 64, 100 })
        {
            var (y, f) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, chunk, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
            AssertClose(y1, y, Tol64, $"y, chunk {chunk} vs 1");
            AssertClose(f1!, f!, Tol64, $"final states, chunk {chunk} vs 1");
        }
    }

    [Fact]
    public void FinalStatesAreNullUnlessAskedFor()
    {
        using var scope = torch.NewDisposeScope();
        var t = Inputs.Make(Cases["plain g=1"], ScalarType.Float64, Seed("null final"));
        Assert.Null(Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8).finalStates);
        Assert.Null(Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C).finalStates);
    }

    [Fact]
    public void EmptySequenceReturnsTheInitialState()
    {
        using var scope = torch.NewDisposeScope();
        var k = Cases["all options, D(h,p)"] with { Len = 0 };
        var t = Inputs.Make(k, ScalarType.Float32, Seed("empty"));
        var (y, f) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        var (yRef, fRef) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        Assert.Equal(new[] { k.Batch, 0L, k.Heads, k.HeadDim }, y.shape);
        Assert.Equal(y.shape, yRef.shape);
        AssertClose(t.Init!, f!, 0.0, "chunked final");
        AssertClose(t.Init!, fRef!, 0.0, "reference final");
    }

    // ------------------------------------------------------------------ the data exercise every option

    [Theory]
    [InlineData("D")]
    [InlineData("z")]
    [InlineData("dtBias")]
    [InlineData("softplus")]
    [InlineData("initialStates")]
    public void EveryOptionChangesTheOutput(string option)
    {
        // Guards the equality tests: an option that a scan silently dropped would be caught only if it matters here.
        using var scope = torch.NewDisposeScope();
        var t = Inputs.Make(Cases["all options, D(h,p)"], ScalarType.Float64, Seed("option " + option));
        var (yAll, _) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true);
        var (yWithout, _) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C,
            D: option == "D" ? null : t.D,
            z: option == "z" ? null : t.Z,
            dtBias: option == "dtBias" ? null : t.DtBias,
            initialStates: option == "initialStates" ? null : t.Init,
            dtSoftplus: option != "softplus");
        Assert.True(RelErr(yAll, yWithout) > 1e-2, $"dropping {option} changes y by only {RelErr(yAll, yWithout):E2}");
    }

    // ------------------------------------------------------------------ semantics checked by hand

    [Fact]
    public void HeadReadsGroupHeadIndexOverHeadsPerGroup()
    {
        // g = 2 groups, h = 6 heads: heads 0-2 read group 0, heads 3-5 group 1. Expand B, C to one group per head by
        // hand and compare; this checks the mapping of both scans independently of repeat_interleave / reshape.
        using var scope = torch.NewDisposeScope();
        var k = new Case(2, 19, 6, 3, 2, 4, WithD: true);
        var t = Inputs.Make(k, ScalarType.Float64, Seed("groups"));
        var index = torch.tensor(new long[] { 0, 0, 0, 1, 1, 1 });
        var Bh = t.B.index_select(2, index);
        var Ch = t.C.index_select(2, index);
        var (yExpanded, fExpanded) = Ssd.Reference(t.X, t.Dt, t.A, Bh, Ch, t.D, returnFinalStates: true);
        var (yRef, fRef) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, returnFinalStates: true);
        var (yChunk, fChunk) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 4, t.D, returnFinalStates: true);
        AssertClose(yExpanded, yRef, Tol64, "reference y");
        AssertClose(fExpanded!, fRef!, Tol64, "reference final");
        AssertClose(yExpanded, yChunk, Tol64, "chunked y");
        AssertClose(fExpanded!, fChunk!, Tol64, "chunked final");
    }

    [Fact]
    public void DtBiasThenSoftplusThenClampAtZero()
    {
        using var scope = torch.NewDisposeScope();
        var k = Cases["all options, D(h,p)"];
        var t = Inputs.Make(k, ScalarType.Float64, Seed("dt semantics"));
        // softplus(dt + bias), done by hand, passed as a plain dt
        var dtHand = F.softplus(t.Dt + t.DtBias!);
        var (yHand, fHand) = Ssd.Reference(t.X, dtHand, t.A, t.B, t.C, t.D, t.Z, null, t.Init, returnFinalStates: true);
        var (yChunk, fChunk) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        AssertClose(yHand, yChunk, Tol64, "y");
        AssertClose(fHand!, fChunk!, Tol64, "final");

        // Without softplus, dt is clamped to dtMin = 0 as mamba_ssm's default dt_limit (0, inf) does.
        var dtSigned = torch.randn(k.Batch, k.Len, k.Heads, dtype: ScalarType.Float64) * 0.1;
        var (yClamped, _) = Ssd.Reference(t.X, dtSigned.clamp_min(0.0), t.A, t.B, t.C, t.D, t.Z, dtMin: double.NegativeInfinity);
        var (yDefault, _) = Ssd.ChunkScan(t.X, dtSigned, t.A, t.B, t.C, 8, t.D, t.Z);
        AssertClose(yClamped, yDefault, Tol64, "clamped dt");
    }

    [Fact]
    public void GateIsAppliedAfterTheSkip()
    {
        // l = 1, no initial state: y = (dt (C . B) x + D x) * silu(z), written out by hand.
        using var scope = torch.NewDisposeScope();
        var k = new Case(2, 1, 3, 4, 1, 5, WithD: true, DPerChannel: true, WithZ: true);
        var t = Inputs.Make(k, ScalarType.Float64, Seed("gate order"));
        var cb = (t.C * t.B).sum(-1, keepdim: true);                       // (b, 1, 1, 1)
        var expected = (t.Dt.unsqueeze(-1) * cb * t.X + t.D! * t.X) * F.silu(t.Z!);
        AssertClose(expected, Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, t.Z).y, Tol64, "reference");
        AssertClose(expected, Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 4, t.D, t.Z).y, Tol64, "chunked");
    }

    // ------------------------------------------------------------------ gradients

    [Theory]
    [InlineData("plain g=1", 8)]
    [InlineData("groups g=3, D(h), z", 8)]
    [InlineData("all options, D(h,p)", 8)]
    [InlineData("all options, D(h,p)", 3)]
    [InlineData("bias without softplus, initial states, g=h", 16)]
    [InlineData("short l=5", 16)]
    public void GradientsMatchReference(string caseName, int chunkSize)
    {
        using var scope = torch.NewDisposeScope();
        var k = Cases[caseName];
        var t = Inputs.Make(k, ScalarType.Float64, Seed("grad " + caseName, chunkSize));
        var leaves = t.All().ToList();
        foreach (var leaf in leaves) leaf.requires_grad_(true);
        var wy = torch.randn(t.X.shape, dtype: ScalarType.Float64);
        var wf = torch.randn(new[] { k.Batch, k.Heads, k.HeadDim, k.State }, dtype: ScalarType.Float64);

        var (y, f) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, chunkSize, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: k.Softplus, returnFinalStates: true);
        var loss = (y * wy).sum() + (f! * wf).sum();
        var grads = torch.autograd.grad(new[] { loss }, leaves, allow_unused: true);

        var (yRef, fRef) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: k.Softplus, returnFinalStates: true);
        var lossRef = (yRef * wy).sum() + (fRef! * wf).sum();
        var gradsRef = torch.autograd.grad(new[] { lossRef }, leaves, allow_unused: true);

        AssertClose(yRef, y, Tol64, "y (recording gradients)");
        AssertClose(fRef!, f!, Tol64, "final states (recording gradients)");
        var names = t.Names().ToList();
        Assert.Equal(leaves.Count, grads.Count);
        for (int i = 0; i < leaves.Count; i++)
        {
            // allow_unused: an input the graph never reached gives an undefined gradient instead of a native abort.
            Assert.True(Defined(gradsRef[i]), $"the reference has no gradient for {names[i]}");
            Assert.True(Defined(grads[i]), $"ChunkScan has no gradient for {names[i]}");
            Assert.True(gradsRef[i].abs().max().item<double>() > 0, $"reference gradient of {names[i]} is zero");
            AssertClose(gradsRef[i], grads[i], Tol64, "d loss / d " + names[i]);
        }
    }

    // ------------------------------------------------------------------ recurrent step

    [Theory]
    [MemberData(nameof(CaseDtype))]
    public void StepTokenByTokenMatchesReference(string caseName, string dtypeName)
    {
        using var scope = torch.NewDisposeScope();
        var k = Cases[caseName];
        var dtype = ParseDtype(dtypeName);
        var stateType = dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var t = Inputs.Make(k, dtype, Seed("step " + caseName));
        double tol = dtype == ScalarType.Float64 ? Tol64 : Tol32;

        var state = t.Init is null
            ? torch.zeros(new[] { k.Batch, k.Heads, k.HeadDim, k.State }, dtype: stateType)
            : t.Init.to(stateType).clone();
        var ys = new List<Tensor>();
        for (long i = 0; i < k.Len; i++)
        {
            var yT = Ssd.Step(t.X.select(1, i), t.Dt.select(1, i), t.A, t.B.select(1, i), t.C.select(1, i), state,
                t.D, t.Z?.select(1, i), t.DtBias, k.Softplus);
            Assert.Equal(new[] { k.Batch, k.Heads, k.HeadDim }, yT.shape);
            Assert.Equal(dtype, yT.dtype);
            ys.Add(yT);
        }
        var (yRef, fRef) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: k.Softplus, returnFinalStates: true);
        AssertClose(yRef, torch.stack(ys, 1), tol, "y");
        AssertClose(fRef!, state, tol, "state");
    }

    [Fact]
    public void StepUpdatesTheCallersStateInPlace()
    {
        using var scope = torch.NewDisposeScope();
        var k = new Case(2, 1, 4, 3, 2, 5, WithInit: true);
        var t = Inputs.Make(k, ScalarType.Float32, Seed("in place"));
        var cache = t.Init!.clone();
        var before = cache.clone();
        var cacheRef = cache;                                           // what an inference cache would hold
        Ssd.Step(t.X.select(1, 0), t.Dt.select(1, 0), t.A, t.B.select(1, 0), t.C.select(1, 0), cache);
        Assert.Same(cacheRef, cache);
        Assert.True(RelErr(cacheRef, before) > 1e-3, "the state did not change");
        var (_, fRef) = Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, initialStates: t.Init, returnFinalStates: true);
        AssertClose(fRef!, cacheRef, Tol32, "state after one step");
    }

    // ------------------------------------------------------------------ dtypes, inputs untouched, bad shapes

    [Theory]
    [InlineData("bfloat16")]
    [InlineData("float16")]
    public void HalfInputsComputeInFloat32(string dtypeName)
    {
        using var scope = torch.NewDisposeScope();
        var dtype = ParseDtype(dtypeName);
        var k = Cases["all options, D(h,p)"];
        var t = Inputs.Make(k, dtype, Seed("half " + dtypeName));
        var (y, f) = Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        Assert.Equal(dtype, y.dtype);
        Assert.Equal(ScalarType.Float32, f!.dtype);

        // The same (exactly representable) values in float32: the states agree to float32 accuracy, y to its rounding.
        Tensor? Up(Tensor? a) => a?.to(ScalarType.Float32);
        var (yRef, fRef) = Ssd.Reference(Up(t.X)!, Up(t.Dt)!, Up(t.A)!, Up(t.B)!, Up(t.C)!, Up(t.D), Up(t.Z), Up(t.DtBias), Up(t.Init),
            dtSoftplus: true, returnFinalStates: true);
        AssertClose(fRef!, f, Tol32, "final states");
        AssertClose(yRef, y.to(ScalarType.Float32), 1e-2, "y");
    }

    [Fact]
    public void InputsAreNotModified()
    {
        using var scope = torch.NewDisposeScope();
        var t = Inputs.Make(Cases["all options, D(h,p)"], ScalarType.Float32, Seed("untouched"));
        var copies = t.All().Select(a => a.clone()).ToList();
        Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, t.D, t.Z, t.DtBias, t.Init, dtSoftplus: true, returnFinalStates: true);
        foreach (var (a, c) in t.All().Zip(copies)) Assert.True(a.eq(c).all().item<bool>());
    }

    [Fact]
    public void RejectsInconsistentShapes()
    {
        using var scope = torch.NewDisposeScope();
        var t = Inputs.Make(Cases["plain g=1"], ScalarType.Float32, Seed("shapes"));
        var B3 = torch.randn(2, 37, 3, 6);                                // 4 heads, 3 groups
        Assert.Throws<ArgumentException>(() => Ssd.ChunkScan(t.X, t.Dt, t.A, B3, B3, 8));
        Assert.Throws<ArgumentException>(() => Ssd.ChunkScan(t.X, t.Dt.narrow(1, 0, 5), t.A, t.B, t.C, 8));
        Assert.Throws<ArgumentException>(() => Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 8, D: torch.ones(5)));
        Assert.Throws<ArgumentOutOfRangeException>(() => Ssd.ChunkScan(t.X, t.Dt, t.A, t.B, t.C, 0));
        Assert.Throws<ArgumentException>(() => Ssd.Reference(t.X, t.Dt, t.A, t.B, t.C, initialStates: torch.zeros(2, 4, 5, 5)));
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>Random inputs for a case; optional tensors are null when the case leaves the option off.</summary>
    private sealed record Inputs(Tensor X, Tensor Dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? Z, Tensor? DtBias, Tensor? Init)
    {
        public static Inputs Make(Case k, ScalarType dtype, long seed)
        {
            torch.manual_seed(seed);
            var f64 = ScalarType.Float64;
            var x = torch.randn(new[] { k.Batch, k.Len, k.Heads, k.HeadDim }, dtype: f64);
            // dt ~ 0.05 after processing: raw pre-softplus values when the scan applies softplus, else already positive.
            var raw = torch.randn(new[] { k.Batch, k.Len, k.Heads }, dtype: f64) * 0.5 - 3.0;
            Tensor? bias = null;
            Tensor dt;
            if (k.Softplus)
            {
                // |bias| in [0.4, 0.8] with a random sign: dt = softplus(raw + bias) moves by a factor ~1.5 either way
                bias = k.WithBias ? (torch.rand(new[] { k.Heads }, dtype: f64) * 0.4 + 0.4) * torch.randn(new[] { k.Heads }, dtype: f64).sign() : null;
                dt = raw;
            }
            else
            {
                bias = k.WithBias ? torch.rand(new[] { k.Heads }, dtype: f64) * 0.05 + 0.01 : null;
                dt = F.softplus(raw);
            }
            var A = -torch.rand(new[] { k.Heads }, dtype: f64).exp();        // in [-e, -1]
            var B = torch.randn(new[] { k.Batch, k.Len, k.Groups, k.State }, dtype: f64);
            var C = torch.randn(new[] { k.Batch, k.Len, k.Groups, k.State }, dtype: f64);
            var D = k.WithD ? torch.randn(k.DPerChannel ? new[] { k.Heads, k.HeadDim } : new[] { k.Heads }, dtype: f64) : null;
            var z = k.WithZ ? torch.randn(new[] { k.Batch, k.Len, k.Heads, k.HeadDim }, dtype: f64) : null;
            var init = k.WithInit ? torch.randn(new[] { k.Batch, k.Heads, k.HeadDim, k.State }, dtype: f64) : null;
            Tensor? To(Tensor? a) => a?.to(dtype).detach();
            return new Inputs(To(x)!, To(dt)!, To(A)!, To(B)!, To(C)!, To(D), To(z), To(bias), To(init));
        }

        public IEnumerable<Tensor> All() =>
            new[] { X, Dt, A, B, C, D, Z, DtBias, Init }.Where(a => a is not null).Select(a => a!);

        public IEnumerable<string> Names() =>
            new[] { ("x", X), ("dt", Dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", Z), ("dtBias", DtBias), ("initialStates", Init) }
                .Where(p => p.Item2 is not null).Select(p => p.Item1);
    }

    private static bool Defined(Tensor? t) => t is not null && !t.IsInvalid;

    private static void AssertClose(Tensor expected, Tensor actual, double tol, string what) => Close(actual, expected, tol, what);

    private static ScalarType ParseDtype(string name) => name switch
    {
        "float64" => ScalarType.Float64,
        "float32" => ScalarType.Float32,
        "bfloat16" => ScalarType.BFloat16,
        "float16" => ScalarType.Float16,
        _ => throw new ArgumentException(name),
    };

    /// <summary>A per-test seed; SSM_TEST_SEED shifts every seed to draw other inputs.</summary>
    private static long Seed(string test, int variant = 0)
    {
        long h = 17;
        foreach (char ch in test) h = unchecked(h * 31 + ch);
        h = unchecked(h * 31 + variant);
        if (long.TryParse(Environment.GetEnvironmentVariable("SSM_TEST_SEED"), out var shift)) h = unchecked(h + shift * 1_000_003);
        return h & 0x7FFF_FFFF;
    }
}
