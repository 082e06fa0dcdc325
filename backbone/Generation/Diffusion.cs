// Gaussian diffusion (DDPM; Ho, Jain, Abbeel 2020) with DDIM sampling (Song, Meng, Ermon 2021) and classifier-free
// guidance (Ho & Salimans 2022): the process any denoiser of the suite trains and samples with. The network is a
// callback, so the same process serves images (vision/DiffuSSM, vision/DiS) and any other modality.
//
// Notation (Ho et al. section 2; the improved-DDPM code's names): T steps, t in 0..T-1,
//   beta_t                 the noise schedule;  alpha_t = 1 - beta_t;  abar_t = prod_{s<=t} alpha_s
//   q(x_t | x_0)           = N(sqrt(abar_t) x_0, (1 - abar_t) I)                          (eq. 4)
//   posterior variance     btilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), abar_{-1} = 1 (eq. 7)
//   targets                epsilon;  or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, "v-prediction")
// Schedules: linear beta from 1e-4 to 0.02 scaled by 1000/T (DDPM), and cosine (Nichol & Dhariwal 2021 eq. 17):
//   abar(t) = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2), s = 0.008; beta_t = min(1 - abar_{t+1}/abar_t, 0.999).
// Schedules are computed in float64 on the CPU once and indexed per batch (t is a long tensor (b)).
//
// Shapes: b batch, x any (b, ...) tensor; t (b) long; y (b) long class ids (NullClass = unconditional).
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Generation;

public enum NoiseSchedule { Linear, Cosine }

/// <summary>What the network predicts.</summary>
public enum PredictionType { Epsilon, V }

/// <summary>The denoiser: (x_t (b ...), t (b) long, y (b) long or null) -> prediction shaped like x_t.</summary>
public delegate Tensor Denoiser(Tensor xt, Tensor t, Tensor? y);

public sealed class GaussianDiffusion
{
    public int Steps { get; }
    public NoiseSchedule Schedule { get; }
    public PredictionType Prediction { get; }

    /// <summary>beta_t, alpha-bar_t, alpha-bar_{t-1} and the posterior variance, float64, length T.</summary>
    public double[] Betas { get; }
    public double[] AlphasCumprod { get; }
    public double[] AlphasCumprodPrev { get; }
    public double[] PosteriorVariance { get; }

    public GaussianDiffusion(int steps = 1000, NoiseSchedule schedule = NoiseSchedule.Linear, PredictionType prediction = PredictionType.Epsilon)
    {
        if (steps < 2) throw new ArgumentOutOfRangeException(nameof(steps), $"diffusion needs at least 2 steps, got {steps}");
        Steps = steps; Schedule = schedule; Prediction = prediction;
        Betas = BetaSchedule(schedule, steps);
        AlphasCumprod = new double[steps];
        AlphasCumprodPrev = new double[steps];
        PosteriorVariance = new double[steps];
        double prod = 1;
        for (int t = 0; t < steps; t++)
        {
            AlphasCumprodPrev[t] = prod;
            prod *= 1 - Betas[t];
            AlphasCumprod[t] = prod;
            PosteriorVariance[t] = Betas[t] * (1 - AlphasCumprodPrev[t]) / (1 - prod);
        }
    }

    /// <summary>beta_t for t = 0..T-1 (float64).</summary>
    public static double[] BetaSchedule(NoiseSchedule schedule, int steps)
    {
        var b = new double[steps];
        switch (schedule)
        {
            case NoiseSchedule.Linear:
                // DDPM's 1e-4..0.02 for T = 1000, scaled so other T keep the same total noise (improved-DDPM get_named_beta_schedule).
                double scale = 1000.0 / steps, lo = scale * 1e-4, hi = scale * 0.02;
                for (int t = 0; t < steps; t++) b[t] = lo + (hi - lo) * t / (steps - 1);
                break;
            case NoiseSchedule.Cosine:
                static double F(double u) { double c = Math.Cos((u + 0.008) / 1.008 * Math.PI / 2); return c * c; }
                for (int t = 0; t < steps; t++) b[t] = Math.Min(1 - F((t + 1.0) / steps) / F((double)t / steps), 0.999);
                break;
            default: throw new ArgumentOutOfRangeException(nameof(schedule));
        }
        return b;
    }

    /// <summary>Per-sample coefficient c[t] broadcast against x: (b, 1, ..., 1) in x's dtype and device.</summary>
    static Tensor Gather(double[] table, Tensor t, Tensor like)
    {
        using var all = torch.tensor(table, dtype: ScalarType.Float64, device: t.device);
        var shape = new long[like.dim()];
        Array.Fill(shape, 1L);
        shape[0] = t.shape[0];
        return all.index_select(0, t).to_type(like.dtype).view(shape);
    }

    static double[] Map(double[] a, Func<double, double> f) => a.Select(f).ToArray();

    /// <summary>x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4 reparameterised).</summary>
    public Tensor QSample(Tensor x0, Tensor t, Tensor noise)
    {
        using var scope = torch.NewDisposeScope();
        var a = Gather(Map(AlphasCumprod, Math.Sqrt), t, x0);
        var s = Gather(Map(AlphasCumprod, v => Math.Sqrt(1 - v)), t, x0);
        return (a * x0 + s * noise).MoveToOuterDisposeScope();
    }

    /// <summary>What the network is trained to output for (x_0, eps, t): eps, or v.</summary>
    public Tensor Target(Tensor x0, Tensor noise, Tensor t)
    {
        if (Prediction == PredictionType.Epsilon) return noise.alias();
        using var scope = torch.NewDisposeScope();
        var a = Gather(Map(AlphasCumprod, Math.Sqrt), t, x0);
        var s = Gather(Map(AlphasCumprod, v => Math.Sqrt(1 - v)), t, x0);
        return (a * noise - s * x0).MoveToOuterDisposeScope();
    }

    /// <summary>The simple DDPM loss (Ho et al. eq. 14): mean squared error between the prediction and the target at uniform t.</summary>
    public Tensor TrainingLoss(Denoiser model, Tensor x0, Tensor? y, Generator? generator = null)
    {
        using var scope = torch.NewDisposeScope();
        long b = x0.shape[0];
        var t = torch.randint(0, Steps, [b], dtype: ScalarType.Int64, device: x0.device, generator: generator);
        var noise = torch.randn(x0.shape, dtype: x0.dtype, device: x0.device, generator: generator);
        var pred = model(QSample(x0, t, noise), t, y);
        var loss = nn.functional.mse_loss(pred.to_type(ScalarType.Float32), Target(x0, noise, t).to_type(ScalarType.Float32));
        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>(x_0, eps) implied by a network output at (x_t, t).</summary>
    public (Tensor X0, Tensor Eps) Split(Tensor xt, Tensor t, Tensor output)
    {
        using var scope = torch.NewDisposeScope();
        var a = Gather(Map(AlphasCumprod, Math.Sqrt), t, xt);
        var s = Gather(Map(AlphasCumprod, v => Math.Sqrt(1 - v)), t, xt);
        Tensor x0, eps;
        if (Prediction == PredictionType.Epsilon) { eps = output.alias(); x0 = (xt - s * eps) / a; }
        else { x0 = a * xt - s * output; eps = s * xt + a * output; }
        return (x0.MoveToOuterDisposeScope(), eps.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The DDIM time steps for <paramref name="count"/> sampling steps, descending: evenly spaced over 0..T-1 ending at
    /// T-1 (the "trailing" spacing, so the first step starts from pure noise; Lin et al. 2024 table 2).
    /// </summary>
    public int[] SamplingTimesteps(int count)
    {
        if (count < 1 || count > Steps) throw new ArgumentOutOfRangeException(nameof(count), $"sampling steps must be in 1..{Steps}, got {count}");
        var ts = new int[count];
        for (int i = 0; i < count; i++) ts[i] = (int)Math.Round((double)Steps * (count - i) / count) - 1;
        return ts;
    }

    /// <summary>
    /// Classifier-free guidance (Ho & Salimans eq. 6): out = out_uncond + g (out_cond - out_uncond), with both halves
    /// in one batched call. g = 1 is the plain conditional model; y null is unconditional sampling.
    /// </summary>
    public static Tensor Guided(Denoiser model, Tensor xt, Tensor t, Tensor? y, long nullClass, double guidance)
    {
        if (y is null || guidance == 1) return model(xt, t, y);
        using var scope = torch.NewDisposeScope();
        var yy = torch.cat(new[] { y, torch.full_like(y, nullClass) });
        var both = model(torch.cat(new[] { xt, xt }), torch.cat(new[] { t, t }), yy);
        var (c, u) = (both.narrow(0, 0, xt.shape[0]), both.narrow(0, xt.shape[0], xt.shape[0]));
        return (u + guidance * (c - u)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// DDIM sampling (Song et al. eq. 12) from x_T = <paramref name="noise"/>: for each step t -> t' (t' = previous
    /// sampling step, abar_{-1} = 1), predict x_0 (clipped to [-clip, clip] when clip > 0) and eps, then
    ///   sigma = eta sqrt((1 - abar_t') / (1 - abar_t)) sqrt(1 - abar_t / abar_t')
    ///   x_t' = sqrt(abar_t') x_0 + sqrt(1 - abar_t' - sigma^2) eps + sigma z.
    /// eta = 0 is deterministic given the noise; eta = 1 with all T steps is ancestral DDPM sampling.
    /// </summary>
    public Tensor SampleDdim(Denoiser model, Tensor noise, Tensor? y, long nullClass, int steps, double guidance = 1,
        double eta = 0, double clip = 1, Generator? generator = null, Action<int>? progress = null)
    {
        var ts = SamplingTimesteps(steps);
        var x = noise.alias();
        long b = noise.shape[0];
        using var noGrad = torch.no_grad();
        for (int i = 0; i < ts.Length; i++)
        {
            using var scope = torch.NewDisposeScope();
            int t = ts[i];
            double abar = AlphasCumprod[t], abarPrev = i + 1 < ts.Length ? AlphasCumprod[ts[i + 1]] : 1.0;
            var tt = torch.full(new long[] { b }, t, dtype: ScalarType.Int64, device: noise.device);
            var output = Guided(model, x, tt, y, nullClass, guidance).to_type(x.dtype);
            var (x0, eps) = Split(x, tt, output);
            if (clip > 0)
            {
                x0 = x0.clamp(-clip, clip);
                // Re-derive eps from the clipped x_0 so the two stay consistent (as the DDIM reference does).
                eps = (x - Math.Sqrt(abar) * x0) / Math.Sqrt(1 - abar);
            }
            double sigma = eta * Math.Sqrt((1 - abarPrev) / (1 - abar)) * Math.Sqrt(1 - abar / abarPrev);
            var next = Math.Sqrt(abarPrev) * x0 + Math.Sqrt(Math.Max(1 - abarPrev - sigma * sigma, 0)) * eps;
            // With a generator the noise is drawn on the CPU (where the generator lives) and moved: a seed then gives the
            // same samples on every device.
            if (sigma > 0) next = next + sigma * (generator is null
                ? torch.randn(x.shape, dtype: x.dtype, device: x.device)
                : torch.randn(x.shape, dtype: x.dtype, generator: generator).to(x.device));
            x.Dispose();
            x = next.MoveToOuterDisposeScope();
            progress?.Invoke(i + 1);
        }
        return x;
    }
}
