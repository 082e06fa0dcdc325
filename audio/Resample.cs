// Band-limited resampling by windowed-sinc interpolation (J. O. Smith, "Digital Audio Resampling Home Page",
// ccrma.stanford.edu/~jos/resample; the same design as torchaudio's sinc_interp_kaiser and libsamplerate's sinc
// converters, written here from the math below).
//
// The math. Let x[m] be sampled at rate f_in and y[n] wanted at f_out. With g = gcd(f_in, f_out), L = f_out / g and
// M = f_in / g, output n sits at t_n = n M / L input samples. The ideal band-limited reconstruction, low-passed at
// the cutoff r (in cycles per input sample) before resampling, is
//     y[n] = sum_m x[m] h(t_n - m),   h(tau) = 2r sinc(2r tau),   sinc(z) = sin(pi z) / (pi z).
// h is truncated to |tau| < T = W / (2r) (W zero crossings on each side) and tapered by a Kaiser window
//     w(tau) = I0(beta sqrt(1 - (tau/T)^2)) / I0(beta),
// so the sum has 2K terms, K = ceil(T): m = floor(t_n) - K + 1 .. floor(t_n) + K (x = 0 outside the signal).
// t_n's fractional part takes only the L values p / L, p = (n M) mod L, so the filters are precomputed once per
// phase p (a polyphase table of L x 2K taps; each row is scaled to sum to 1 so a constant signal stays exactly
// constant) and each output sample is one dot product of 2K inputs (TensorPrimitives.Dot: SIMD).
//
// Anti-aliasing. Downsampling needs r <= f_out / (2 f_in); upsampling needs r <= 1/2 (to remove the spectral images).
// So r = rolloff * min(f_in, f_out) / (2 f_in). A Kaiser window of beta = 8 gives about 80 dB of stop-band
// attenuation and a transition band about 5.0 r / W wide (Kaiser's formula: width = (A - 7.95) / (14.36 N) for a
// filter of N = W / r taps, in cycles per sample), i.e. 16% of the cutoff for W = 32. rolloff = 0.92 puts the cutoff
// at 0.92 of the lower Nyquist frequency min(f_in, f_out) / 2 so that the stop band starts right at it (0.92 x 1.08 =
// 0.99): nothing above the new Nyquist frequency aliases back (>= 80 dB down), and the pass band is flat to about
// 0.85 of it (6.8 kHz when going to 16 kHz).
//
// Cost: 2K = W f_in / (rolloff min(f_in, f_out)) multiply-adds per output sample, ~70 for 16 -> 48 kHz and ~210 for
// 48 -> 16 kHz; minutes of audio take a fraction of a second (outputs are split over the cores for long signals).
// Output length: ceil(N f_out / f_in) for N input samples (sample 0 stays at time 0).
using System.Numerics.Tensors;

namespace Ssm.Audio;

/// <summary>Windowed-sinc (Kaiser) resampling between any two integer sample rates.</summary>
public static class Resample
{
    /// <summary>Zero crossings of the sinc kept on each side of the centre (filter half-length).</summary>
    public const int ZeroCrossings = 32;

    /// <summary>Kaiser window shape: about 80 dB stop-band attenuation.</summary>
    public const double KaiserBeta = 8.0;

    /// <summary>Cutoff as a fraction of the lower Nyquist frequency (the stop band starts at that Nyquist frequency).</summary>
    public const double Rolloff = 0.92;

    // Above this many table entries (e.g. 44100 -> 44099 Hz: L = 44099 phases) each output's filter is computed
    // on the fly instead (exact, just slower).
    const long MaxTable = 1 << 22;

    /// <summary>Output length for <paramref name="inputLength"/> samples: ceil(N f_out / f_in).</summary>
    public static long OutputLength(long inputLength, int fromRate, int toRate)
    {
        CheckRates(fromRate, toRate);
        return (inputLength * toRate + fromRate - 1) / fromRate;
    }

    /// <summary>Resamples <paramref name="input"/> from <paramref name="fromRate"/> to <paramref name="toRate"/> Hz.</summary>
    public static float[] Apply(float[] input, int fromRate, int toRate)
    {
        ArgumentNullException.ThrowIfNull(input);
        CheckRates(fromRate, toRate);
        if (fromRate == toRate) return (float[])input.Clone();
        int g = Gcd(fromRate, toRate);
        long L = toRate / g, M = fromRate / g;
        double r = 0.5 * Rolloff * Math.Min(fromRate, toRate) / fromRate;   // cutoff, cycles per input sample
        double T = ZeroCrossings / (2 * r);                                   // half-width, input samples
        int K = (int)Math.Ceiling(T), taps = 2 * K;
        long nOut = OutputLength(input.Length, fromRate, toRate);
        if (nOut > Array.MaxLength) throw new ArgumentException($"{nOut} output samples are too many for one array", nameof(input));

        // x padded with K zeros in front and K + 1 behind: output n reads xp[floor(t_n) + 1 .. floor(t_n) + 2K].
        var xp = new float[input.Length + taps + 1];
        input.CopyTo(xp, K);
        var y = new float[nOut];
        double i0Beta = BesselI0(KaiserBeta);

        float[]? table = null;
        if (L * taps <= MaxTable)
        {
            table = new float[L * taps];
            for (int p = 0; p < L; p++) Filter(table.AsSpan(p * taps, taps), (double)p / L, K, r, T, i0Beta);
        }

        void Range(long start, long end)
        {
            var scratch = table is null ? new float[taps] : null;
            for (long n = start; n < end; n++)
            {
                long pos = n * M, bas = pos / L;
                int p = (int)(pos - bas * L);
                ReadOnlySpan<float> h;
                if (table is not null) h = table.AsSpan(p * taps, taps);
                else { Filter(scratch, (double)p / L, K, r, T, i0Beta); h = scratch; }
                y[n] = TensorPrimitives.Dot(xp.AsSpan((int)(bas + 1), taps), h);
            }
        }

        const long Block = 1 << 15;
        long blocks = (nOut + Block - 1) / Block;
        if (blocks <= 1) Range(0, nOut);
        else Parallel.For(0, blocks, b => Range(b * Block, Math.Min(nOut, (b + 1) * Block)));
        return y;
    }

    /// <summary>
    /// The taps for fractional position <paramref name="frac"/> in [0, 1): tap j multiplies x[floor(t) - K + 1 + j],
    /// at distance tau = frac + K - 1 - j from t; scaled to sum to 1.
    /// </summary>
    static void Filter(Span<float> h, double frac, int K, double r, double T, double i0Beta)
    {
        double sum = 0;
        Span<double> tmp = h.Length <= 4096 ? stackalloc double[h.Length] : new double[h.Length];
        for (int j = 0; j < h.Length; j++)
        {
            double tau = frac + K - 1 - j;
            double v = 0;
            if (Math.Abs(tau) < T)
            {
                double z = 2 * r * tau;
                double sinc = z == 0 ? 1 : Math.Sin(Math.PI * z) / (Math.PI * z);
                double u = tau / T;
                v = 2 * r * sinc * BesselI0(KaiserBeta * Math.Sqrt(1 - u * u)) / i0Beta;
            }
            tmp[j] = v;
            sum += v;
        }
        for (int j = 0; j < h.Length; j++) h[j] = (float)(tmp[j] / sum);
    }

    /// <summary>Modified Bessel function of the first kind, order 0: sum_k ((x/2)^k / k!)^2.</summary>
    public static double BesselI0(double x)
    {
        double sum = 1, term = 1, q = x * x / 4;
        for (int k = 1; k < 500; k++)
        {
            term *= q / ((double)k * k);
            sum += term;
            if (term < 1e-17 * sum) break;
        }
        return sum;
    }

    static int Gcd(int a, int b)
    {
        while (b != 0) (a, b) = (b, a % b);
        return a;
    }

    static void CheckRates(int fromRate, int toRate)
    {
        if (fromRate <= 0) throw new ArgumentOutOfRangeException(nameof(fromRate), fromRate, "sample rate must be positive");
        if (toRate <= 0) throw new ArgumentOutOfRangeException(nameof(toRate), toRate, "sample rate must be positive");
    }
}
