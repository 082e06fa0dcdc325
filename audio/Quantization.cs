// Sample quantisation for autoregressive audio models: waveforms in [-1, 1] <-> q = 2^bits classes (256 for 8 bits).
//
// Convention: exactly SaShiMi's, state-spaces/s4 src/dataloaders/audio.py (mu_law_encode / mu_law_decode,
// linear_encode / linear_decode, quantize / dequantize, q_zero), so class ids mean the same as in its SC09 and
// piano models. With mu = q - 1 and eps = 0.01 (the reference's `epsilon`):
//
//   mu-law encode   y = sign(x) ln(1 + mu |x|) / ln(1 + mu)                  companding, y in [-1, 1]
//                   u = (y + 1) / 2                                          in [0, 1]
//                   k = trunc(u (q - eps) + eps / 2)                         "quantize": 0 .. q-1; u = 1 -> q-1
//   mu-law decode   y = k / (q/2) - 1                                        "dequantize": in [-1, 1 - 2/q]
//                   x = sign(y) ((1 + mu)^|y| - 1) / mu
//   linear encode   u = (x + 1) / 2, k as above;   linear decode  x = k / (q/2) - 1
//   zero class      q/2 (= 128): both codecs map 0.0 to it and back to exactly 0.0 (q_zero, the start token).
//
// Departures, all at the edges: the reference min-max scales every clip to [-1, 1] inside mu_law_encode and to
// [0, 1] inside linear_encode; here that is the separate MinMaxScale (the reference's encode = Encode(MinMaxScale(x)))
// and Encode clamps x to [-1, 1] (and maps NaN to 0) instead. The reference adds 1e-8 inside |x| (changes y by
// < 5e-7, i.e. a class only for x within that of a class boundary); left out. Arithmetic is in the input's dtype when
// it is float64, else float32; the device is the input's.
//
// This is the "floor" (bin lower edge) decoding of the reference, not the rounding of WaveNet/torchaudio
// (k = round(u mu), x = G(2k/mu - 1)): decoded values sit at the lower edge of their bin in the companded domain, so
// a decode-encode-decode round trip may move a class above q/2 down by one (the bins are 1/(q - eps) wide, slightly
// wider than the 1/q spacing of the decoded points). Bounds, derived from the formulas above (the tests check them):
//   in the companded domain |y(x) - y(decode(encode(x)))| < h = (2 + eps) / (q - eps)   (0.00785 for q = 256)
//   mu-law:  |x - decode(encode(x))| <= h ln(1 + mu) / mu (1 + mu)^min(1, |y| + h)
//            = h ln(1 + mu) / mu (1 + mu |x|) (1 + mu)^h  (while |y| + h <= 1)
//            i.e. 1.8e-4 at x = 0 growing to 0.046 at |x| = 1 for 8 bits (G' = ln(1 + mu)(1 + mu)^|y| / mu,
//            maximal at the far end of the step)
//   linear:  |x - decode(encode(x))| < h
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Audio;

/// <summary>How waveform samples become classes.</summary>
public enum AudioQuantization { Linear, MuLaw }

/// <summary>Mu-law and linear quantisation of waveforms (state-spaces/s4's conventions; see the file header).</summary>
public static class Quantization
{
    public const int DefaultBits = 8;

    /// <summary>The reference's quantize epsilon: the top of [0, 1] maps into the last class.</summary>
    public const double Epsilon = 0.01;

    /// <summary>Number of classes, 2^bits.</summary>
    public static int Levels(int bits = DefaultBits) { CheckBits(bits); return 1 << bits; }

    /// <summary>The class of 0.0 in both codecs (q/2; the reference's q_zero, used as the start token).</summary>
    public static long ZeroClass(int bits = DefaultBits) { CheckBits(bits); return 1L << (bits - 1); }

    /// <summary>Upper bound of |y - y(decode(encode(x)))| in the domain where classes are evenly spaced.</summary>
    public static double StepBound(int bits = DefaultBits) => (2 + Epsilon) / (Levels(bits) - Epsilon);

    /// <summary>Waveform (any shape, values in [-1, 1]) -> int64 classes 0 .. 2^bits - 1.</summary>
    public static Tensor Encode(Tensor x, AudioQuantization kind, int bits = DefaultBits) => kind switch
    {
        AudioQuantization.MuLaw => MuLawEncode(x, bits),
        AudioQuantization.Linear => LinearEncode(x, bits),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown quantisation"),
    };

    /// <summary>Classes -> waveform in [-1, 1) (float32 unless <paramref name="dtype"/> says otherwise).</summary>
    public static Tensor Decode(Tensor classes, AudioQuantization kind, int bits = DefaultBits, ScalarType? dtype = null) => kind switch
    {
        AudioQuantization.MuLaw => MuLawDecode(classes, bits, dtype),
        AudioQuantization.Linear => LinearDecode(classes, bits, dtype),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown quantisation"),
    };

    /// <summary>mu-law companding (mu = 2^bits - 1) then uniform quantisation: x in [-1, 1] -> int64 classes.</summary>
    public static Tensor MuLawEncode(Tensor x, int bits = DefaultBits)
    {
        int q = Levels(bits);
        double mu = q - 1;
        using var scope = NewDisposeScope();
        var v = Prepare(x);
        var y = v.sign() * torch.log1p(v.abs() * mu) / Math.Log(1 + mu);   // (same shape) in [-1, 1]
        return Bin(y, q).MoveToOuterDisposeScope();
    }

    /// <summary>Inverse of <see cref="MuLawEncode"/> up to the quantisation step: classes -> x in [-1, 1).</summary>
    public static Tensor MuLawDecode(Tensor classes, int bits = DefaultBits, ScalarType? dtype = null)
    {
        int q = Levels(bits);
        double mu = q - 1;
        using var scope = NewDisposeScope();
        var y = Unbin(classes, q, dtype);
        // (1 + mu)^|y| as exp(|y| ln(1 + mu)): expm1 keeps small |y| accurate.
        var x = y.sign() * torch.expm1(y.abs() * Math.Log(1 + mu)) / mu;
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>Uniform quantisation: x in [-1, 1] -> int64 classes 0 .. 2^bits - 1.</summary>
    public static Tensor LinearEncode(Tensor x, int bits = DefaultBits)
    {
        int q = Levels(bits);
        using var scope = NewDisposeScope();
        return Bin(Prepare(x), q).MoveToOuterDisposeScope();
    }

    /// <summary>Classes -> k / (q/2) - 1.</summary>
    public static Tensor LinearDecode(Tensor classes, int bits = DefaultBits, ScalarType? dtype = null)
    {
        int q = Levels(bits);
        using var scope = NewDisposeScope();
        return Unbin(classes, q, dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The reference's per-clip min-max scaling: each slice along <paramref name="dim"/> mapped affinely so its
    /// minimum goes to -1 and its maximum to (almost) 1: -1 + 2 (x - min) / (max - min + 1e-6).
    /// </summary>
    public static Tensor MinMaxScale(Tensor x, long dim = -1)
    {
        using var scope = NewDisposeScope();
        var lo = x.amin([dim], keepdim: true);
        var hi = x.amax([dim], keepdim: true);
        return ((x - lo) / (hi - lo + 1e-6) * 2 - 1).MoveToOuterDisposeScope();
    }

    static Tensor Prepare(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (!x.is_floating_point()) throw new ArgumentException($"expected a floating-point waveform, got {x.dtype}", nameof(x));
        var v = x.dtype == ScalarType.Float64 ? x : x.to_type(ScalarType.Float32);
        return torch.nan_to_num(v, 0.0, 1.0, -1.0).clamp(-1.0, 1.0);
    }

    /// <summary>y in [-1, 1] -> trunc(u (q - eps) + eps/2) with u = (y + 1)/2, as int64 in [0, q - 1].</summary>
    static Tensor Bin(Tensor y, int q)
    {
        var u = (y + 1) * 0.5;
        // u >= 0, so floor is the reference's truncating .long(); the clamp only guards rounding at u = 1.
        return (u * (q - Epsilon) + Epsilon / 2).floor().clamp(0, q - 1).to_type(ScalarType.Int64);
    }

    static Tensor Unbin(Tensor classes, int q, ScalarType? dtype)
    {
        ArgumentNullException.ThrowIfNull(classes);
        var t = dtype ?? ScalarType.Float32;
        if (t is not (ScalarType.Float32 or ScalarType.Float64 or ScalarType.Float16 or ScalarType.BFloat16)) throw new ArgumentException($"decode dtype must be floating point, got {t}", nameof(dtype));
        return classes.to_type(t) / (q / 2.0) - 1;
    }

    static void CheckBits(int bits)
    {
        if (bits is < 1 or > 16) throw new ArgumentOutOfRangeException(nameof(bits), bits, "bits must be 1 to 16");
    }
}
