// Short-time Fourier transforms of waveforms: the magnitude STFT (shared by the spoken-digit classifier's log-mel
// front end), a mel filter bank, and a log-magnitude spectrogram rendered to a PNG for looking at generated clips.
//
// Shapes: b batch, l samples, f = n_fft / 2 + 1 frequency bins (0 .. sample_rate / 2), t frames, m mel bands.
//
// Framing (librosa's and torch.stft's center=True, but padded with zeros rather than reflected, so that any length
// l >= 1 works and a frame's content is easy to state):
//   frame j covers samples [j hop - n_fft/2, j hop + n_fft/2) of the clip, zeros outside it;
//   t = 1 + floor(l / hop);  window = periodic Hann of length n_fft (torch.hann_window's default);
//   X[k, j] = sum_{s=0}^{n_fft-1} w[s] x[j hop - n_fft/2 + s] exp(-2 pi i k s / n_fft),   k = 0 .. n_fft/2.
//
// The PNG (Render / SavePng): one pixel per STFT cell, so width = t and height = f; frequency bin 0 (DC) is the
// bottom row and n_fft/2 (Nyquist) the top row; time runs left to right. The colour is the viridis-like map of
// Colour over the decibel range [max - dynamic_range, max] of the clip (20 log10 |X|), quieter cells clipped to the
// darkest colour; cells of digital silence (|X| <= 1e-10) are always the darkest colour, so a silent clip is all dark.
using Ssm.Backbone.IO;
using StbImageWriteSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>How a spectrogram image is made.</summary>
/// <param name="NFft">FFT size and window length in samples (f = NFft / 2 + 1 rows in the image).</param>
/// <param name="HopLength">Samples between frames (t = 1 + l / HopLength columns).</param>
/// <param name="DynamicRangeDb">Decibels below the clip's loudest cell that still get a colour.</param>
public sealed record SpectrogramOptions(int NFft = 512, int HopLength = 64, double DynamicRangeDb = 80.0)
{
    /// <summary>Checks the sizes; the message names the option.</summary>
    public void Validate()
    {
        if (NFft < 2 || NFft % 2 != 0) throw new ArgumentException($"spectrogram n_fft must be even and at least 2, got {NFft}");
        if (HopLength < 1) throw new ArgumentException($"spectrogram hop length must be at least 1, got {HopLength}");
        if (!(DynamicRangeDb > 0) || !double.IsFinite(DynamicRangeDb))
            throw new ArgumentException($"spectrogram dynamic range must be a positive number of dB, got {DynamicRangeDb}");
    }

    /// <summary>Image width for a clip of <paramref name="samples"/> samples: the number of frames.</summary>
    public int Width(long samples) => checked((int)(1 + samples / HopLength));

    /// <summary>Image height: the number of frequency bins.</summary>
    public int Height => NFft / 2 + 1;
}

/// <summary>An RGB image, rows top to bottom, 3 bytes per pixel.</summary>
public sealed record RgbImage(int Width, int Height, byte[] Pixels)
{
    public (byte R, byte G, byte B) this[int row, int col]
    {
        get
        {
            int o = (row * Width + col) * 3;
            return (Pixels[o], Pixels[o + 1], Pixels[o + 2]);
        }
    }
}

public static class Spectrogram
{
    /// <summary>
    /// |STFT| of waveforms x (b, l) (or (l)) -> (b, f, t) (or (f, t)), float32 for float32 input, on x's device
    /// (framing in the file header).
    /// </summary>
    public static Tensor Magnitude(Tensor x, int nFft, int hopLength)
    {
        new SpectrogramOptions(nFft, hopLength).Validate();
        if (x.dim() is not (1 or 2) || x.shape[^1] < 1)
            throw new ArgumentException($"waveforms must be (l) or (b, l) with l >= 1, got ({string.Join(", ", x.shape)})");
        using var scope = torch.NewDisposeScope();
        bool single = x.dim() == 1;
        var w = single ? x.unsqueeze(0) : x;                                             // (b l)
        if (!w.is_floating_point()) w = w.to_type(ScalarType.Float32);
        // Zero padding of n_fft/2 on both sides: frame j then starts at padded sample j hop.
        var padded = nn.functional.pad(w, [nFft / 2, nFft / 2]);                          // (b l+n_fft)
        var window = torch.hann_window(nFft, periodic: true, dtype: w.dtype, device: w.device); // (n_fft)
        var spec = torch.stft(padded, nFft, hop_length: hopLength, win_length: nFft, window: window,
            center: false, onesided: true, return_complex: true);                         // (b f t) complex
        var mag = spec.abs();                                                             // (b f t)
        return (single ? mag.squeeze(0) : mag).MoveToOuterDisposeScope();
    }

    /// <summary>The decibel value of digital silence in <see cref="LogMagnitudeDb"/>: |X| is clamped to 1e-10.</summary>
    public const float SilenceDb = -200f;

    /// <summary>20 log10 max(|STFT|, 1e-10) of one waveform (l) -> (f, t) float32 on the CPU.</summary>
    public static Tensor LogMagnitudeDb(float[] samples, SpectrogramOptions? options = null)
    {
        var o = options ?? new SpectrogramOptions();
        o.Validate();
        if (samples.Length == 0) throw new ArgumentException("cannot make a spectrogram of an empty clip");
        using var scope = torch.NewDisposeScope();
        var x = torch.tensor(samples);                                                    // (l)
        var mag = Magnitude(x, o.NFft, o.HopLength);                                      // (f t)
        return (mag.clamp_min(1e-10).log10() * 20).MoveToOuterDisposeScope();
    }

    /// <summary>The spectrogram image of one clip (layout in the file header).</summary>
    public static RgbImage Render(float[] samples, SpectrogramOptions? options = null)
    {
        var o = options ?? new SpectrogramOptions();
        using var db = LogMagnitudeDb(samples, o);                                        // (f t)
        int f = (int)db.shape[0], t = (int)db.shape[1];
        float[] v = db.data<float>().ToArray();                                           // row-major (f t)
        float top = v.Max();
        double floor = top - o.DynamicRangeDb;
        var pixels = new byte[f * t * 3];
        for (int k = 0; k < f; k++)
        {
            int row = f - 1 - k;                                                          // low frequencies at the bottom
            for (int j = 0; j < t; j++)
            {
                // A cell at the clamp (|X| <= 1e-10: digital silence) is always the darkest colour.
                double u = v[k * t + j] <= SilenceDb + 0.01 ? 0 : (v[k * t + j] - floor) / o.DynamicRangeDb;
                var (r, g, b) = Colour(u);
                int p = (row * t + j) * 3;
                pixels[p] = r; pixels[p + 1] = g; pixels[p + 2] = b;
            }
        }
        return new RgbImage(t, f, pixels);
    }

    /// <summary>Writes the spectrogram of <paramref name="samples"/> as a PNG, atomically.</summary>
    public static void SavePng(string path, float[] samples, SpectrogramOptions? options = null) => SavePng(path, Render(samples, options));

    /// <summary>Writes an RGB image as a PNG, atomically.</summary>
    public static void SavePng(string path, RgbImage image)
    {
        if (image.Pixels.Length != image.Width * image.Height * 3)
            throw new ArgumentException($"{path}: image of {image.Width}x{image.Height} needs {image.Width * image.Height * 3} bytes, has {image.Pixels.Length}");
        AtomicFile.Write(path, s => new ImageWriter().WritePng(image.Pixels, image.Width, image.Height, ColorComponents.RedGreenBlue, s));
    }

    // Anchor colours of a perceptually ordered dark-blue -> green -> yellow map (viridis-like), equally spaced on [0, 1].
    static readonly (double R, double G, double B)[] Anchors =
    [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ];

    /// <summary>The colour of u in [0, 1] (clipped outside), by linear interpolation between the anchors.</summary>
    public static (byte R, byte G, byte B) Colour(double u)
    {
        if (double.IsNaN(u)) u = 0;
        u = Math.Clamp(u, 0, 1) * (Anchors.Length - 1);
        int i = Math.Min((int)u, Anchors.Length - 2);
        double a = u - i;
        var (p, q) = (Anchors[i], Anchors[i + 1]);
        static byte Mix(double x, double y, double a) => (byte)Math.Round(x + (y - x) * a);
        return (Mix(p.R, q.R, a), Mix(p.G, q.G, a), Mix(p.B, q.B, a));
    }

    /// <summary>
    /// Triangular mel filters (HTK mel scale, mel = 2595 log10(1 + hz / 700); no area normalisation) as a (f, m)
    /// float32 matrix on the CPU: power or magnitude spectra (.., f) times it give m band energies. Band i rises from
    /// mel point i to i + 1 and falls to i + 2, with m + 2 points equally spaced in mel between fMin and fMax.
    /// </summary>
    public static Tensor MelFilterBank(int nFft, int sampleRate, int nMels, double fMin, double fMax)
    {
        if (nFft < 2 || nFft % 2 != 0) throw new ArgumentException($"n_fft must be even and at least 2, got {nFft}");
        if (sampleRate <= 0) throw new ArgumentException($"sample rate must be positive, got {sampleRate}");
        if (nMels < 1) throw new ArgumentException($"n_mels must be at least 1, got {nMels}");
        if (!(fMin >= 0 && fMax > fMin && fMax <= sampleRate / 2.0))
            throw new ArgumentException($"mel band edges must satisfy 0 <= f_min < f_max <= {sampleRate / 2.0} Hz, got {fMin}, {fMax}");
        static double ToMel(double hz) => 2595 * Math.Log10(1 + hz / 700);
        static double ToHz(double mel) => 700 * (Math.Pow(10, mel / 2595) - 1);
        int f = nFft / 2 + 1;
        double lo = ToMel(fMin), hi = ToMel(fMax);
        var edges = Enumerable.Range(0, nMels + 2).Select(i => ToHz(lo + (hi - lo) * i / (nMels + 1))).ToArray();
        var w = new float[f * nMels];
        for (int k = 0; k < f; k++)
        {
            double hz = (double)k * sampleRate / nFft;
            for (int i = 0; i < nMels; i++)
            {
                double rise = (hz - edges[i]) / (edges[i + 1] - edges[i]);
                double fall = (edges[i + 2] - hz) / (edges[i + 2] - edges[i + 1]);
                w[k * nMels + i] = (float)Math.Max(0, Math.Min(rise, fall));
            }
        }
        return torch.tensor(w, [f, nMels]);
    }
}
