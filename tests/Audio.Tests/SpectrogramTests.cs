// Spectrogram: the STFT agrees with a direct float64 DFT of one frame (including the zero padding of the first
// frame), a pure tone lights up its own frequency row (low frequencies at the bottom of the image), the PNG has the
// documented size, and the mel filters are triangles peaking at their centre frequencies.
using System.Buffers.Binary;
using Ssm.Audio;
using static TorchSharp.torch;

namespace Ssm.Audio.Tests;

public sealed class SpectrogramTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "ssm-spectrogram-tests-" + Guid.NewGuid().ToString("N"));

    public SpectrogramTests() => Directory.CreateDirectory(root);
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    // |X[k]| of frame j by the definition in Spectrogram.cs: periodic Hann window, frame j starting at j hop - n/2.
    static double[] DirectDft(float[] x, int n, int hop, int frame)
    {
        var mag = new double[n / 2 + 1];
        for (int k = 0; k <= n / 2; k++)
        {
            double re = 0, im = 0;
            for (int s = 0; s < n; s++)
            {
                long i = (long)frame * hop - n / 2 + s;
                double v = i >= 0 && i < x.Length ? x[i] : 0.0;
                double w = 0.5 - 0.5 * Math.Cos(2 * Math.PI * s / n);
                double a = -2 * Math.PI * k * s / n;
                re += w * v * Math.Cos(a);
                im += w * v * Math.Sin(a);
            }
            mag[k] = Math.Sqrt(re * re + im * im);
        }
        return mag;
    }

    [Theory]
    [InlineData(64, 16, 300, 7)]     // a middle frame
    [InlineData(64, 16, 300, 0)]     // the first frame: half of it is zero padding
    [InlineData(32, 10, 95, 9)]      // the last frame: runs past the end
    public void MagnitudeMatchesADirectDftOfOneFrame(int n, int hop, int length, int frame)
    {
        var rng = new Random(n * 1000 + frame);
        var x = Enumerable.Range(0, length).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        using var t = tensor(x);
        using var mag = Spectrogram.Magnitude(t, n, hop);                                // (f t)
        Assert.Equal(new long[] { n / 2 + 1, 1 + length / hop }, mag.shape);
        using var col = mag.select(1, frame).to_type(ScalarType.Float64);
        var got = col.data<double>().ToArray();
        var want = DirectDft(x, n, hop, frame);
        double scale = want.Max();
        for (int k = 0; k < want.Length; k++) Assert.True(Math.Abs(got[k] - want[k]) <= 1e-5 * scale, $"bin {k}: {got[k]} vs {want[k]}");
    }

    [Fact]
    public void BatchedMagnitudeEqualsPerClip()
    {
        using var x = randn(3, 200);
        using var all = Spectrogram.Magnitude(x, 32, 8);                                 // (3 f t)
        for (int i = 0; i < 3; i++)
        {
            using var row = x[i];
            using var one = Spectrogram.Magnitude(row, 32, 8);
            using var slice = all[i];
            Assert.True(one.allclose(slice, 1e-5, 1e-6));
        }
    }

    [Fact]
    public void APureToneLightsUpItsRowNearTheBottomOfThePng()
    {
        const int rate = 8000, n = 256, hop = 32, bin = 20;                              // tone at 20 * 8000 / 256 = 625 Hz
        double hz = (double)bin * rate / n;
        var x = Enumerable.Range(0, 4000).Select(i => (float)(0.5 * Math.Sin(2 * Math.PI * hz * i / rate + 0.3))).ToArray();
        var o = new SpectrogramOptions(n, hop, 80);

        using var db = Spectrogram.LogMagnitudeDb(x, o);                                  // (f t)
        int mid = (int)db.shape[1] / 2;
        using var colDb = db.select(1, mid);
        using var peak = colDb.argmax();
        Assert.Equal(bin, peak.item<long>());

        var img = Spectrogram.Render(x, o);
        Assert.Equal((o.Width(x.Length), o.Height), (img.Width, img.Height));
        Assert.Equal((1 + 4000 / hop, n / 2 + 1), (img.Width, img.Height));
        // The colour map's red + green rises monotonically with level: the brightest pixel of the middle column is the
        // tone's bin, counted from the bottom row.
        int bestRow = Enumerable.Range(0, img.Height).MaxBy(r => { var (R, G, _) = img[r, mid]; return R + G; });
        Assert.Equal(img.Height - 1 - bin, bestRow);

        string path = Path.Combine(root, "tone.png");
        Spectrogram.SavePng(path, x, o);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4]);
        // IHDR follows the 8-byte signature and its 8-byte chunk header: width and height, big-endian.
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        Assert.Equal(img.Width, BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)));
        Assert.Equal(img.Height, BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
        Assert.Empty(Directory.GetFiles(root, "*.tmp"));
    }

    [Fact]
    public void SilenceIsUniformlyDarkAndBadOptionsAreRejected()
    {
        var img = Spectrogram.Render(new float[500], new SpectrogramOptions(64, 16));
        var dark = Spectrogram.Colour(0);
        for (int r = 0; r < img.Height; r++) for (int c = 0; c < img.Width; c++) Assert.Equal(dark, img[r, c]);
        Assert.Throws<ArgumentException>(() => Spectrogram.Render(new float[100], new SpectrogramOptions(63, 16)));
        Assert.Throws<ArgumentException>(() => Spectrogram.Render(new float[100], new SpectrogramOptions(64, 0)));
        Assert.Throws<ArgumentException>(() => Spectrogram.Render([], new SpectrogramOptions(64, 16)));
    }

    [Fact]
    public void MelFiltersAreTrianglesPeakingAtTheirCentres()
    {
        const int n = 512, rate = 16000, m = 20;
        const double lo = 0, hi = 8000;
        using var fb = Spectrogram.MelFilterBank(n, rate, m, lo, hi);                    // (f m)
        Assert.Equal(new long[] { n / 2 + 1, m }, fb.shape);
        var w = fb.data<float>().ToArray();
        double Mel(double f) => 1127 * Math.Log(1 + f / 700);                            // = 2595 log10(1 + f/700)
        double Hz(double mel) => 700 * (Math.Exp(mel / 1127) - 1);
        for (int i = 0; i < m; i++)
        {
            double centre = Hz(Mel(lo) + (Mel(hi) - Mel(lo)) * (i + 1) / (m + 1));
            int nearest = (int)Math.Round(centre * n / rate);
            var column = Enumerable.Range(0, n / 2 + 1).Select(k => w[k * m + i]).ToArray();
            int argmax = Array.IndexOf(column, column.Max());
            Assert.InRange(argmax, nearest - 1, nearest + 1);
            Assert.All(column, v => Assert.InRange(v, 0f, 1f));
        }
    }
}
