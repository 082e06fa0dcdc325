// The character tokenizer of Caduceus and HyenaDNA (caduceus tokenization_caduceus.py CaduceusTokenizer, HyenaDNA's
// CharacterTokenizer), with their ids, and the reverse complement on bases and on ids.
//
//   id:    0      1      2      3       4      5           6      7  8  9  10  11
//   token: [CLS]  [SEP]  [BOS]  [MASK]  [PAD]  [RESERVED]  [UNK]  A  C  G  T   N
//
// The vocabulary has 12 entries and is padded to 16 rows in the models (mamba_ssm pads to a multiple of 8; Caduceus
// maps the padding ids to themselves in its complement map, as ComplementMap does here).
//
// Bases come in as ASCII bytes. Encode accepts either case; any other letter (IUPAC ambiguity codes R, Y, K, ...)
// becomes N, and any non-letter byte becomes [UNK] (Caduceus' rule for characters outside its alphabet). The parsers
// of this library already hand over upper-case A/C/G/T/N.
//
// Reverse complement: A<->T, C<->G, N->N and every special fixed; on ids it is "complement, then flip along the last
// dimension", the map under which an RC-equivariant model must commute (Caduceus, section 3.2).
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Genomics;

public static class DnaTokenizer
{
    public const long Cls = 0, Sep = 1, Bos = 2, Mask = 3, Pad = 4, Reserved = 5, Unk = 6;
    public const long A = 7, C = 8, G = 9, T = 10, N = 11;

    /// <summary>Entries of the tokenizer's vocabulary (7 specials + A, C, G, T, N).</summary>
    public const long VocabSize = 12;

    /// <summary>Rows of the models' embedding and output matrices (VocabSize rounded up to a multiple of 8).</summary>
    public const long PaddedVocab = 16;

    /// <summary>Token strings by id (the padding rows 12..15 have none).</summary>
    public static IReadOnlyList<string> Tokens { get; } =
        ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"];

    /// <summary>The four bases' ids A, C, G, T are contiguous: A + k for k = 0..3 (the order of <see cref="BaseLetters"/>).</summary>
    public const string BaseLetters = "ACGT";

    /// <summary>True for the ids of A, C, G and T (not N, not specials).</summary>
    public static bool IsBase(long id) => id >= A && id <= T;

    /// <summary>True for A, C, G, T and N: the ids that stand for a position of the sequence.</summary>
    public static bool IsNucleotide(long id) => id >= A && id <= N;

    // ------------------------------------------------------------------------------------------ tables

    static readonly long[] ByteToId = BuildByteTable();
    static readonly byte[] ByteComplement = BuildByteComplement();

    /// <summary>id -> complement id over the padded vocabulary (length 16): A<->T, C<->G, everything else fixed.</summary>
    public static IReadOnlyList<long> ComplementMap { get; } = BuildComplementMap();

    static long[] BuildByteTable()
    {
        var t = new long[256];
        for (int b = 0; b < 256; b++)
            t[b] = (b is >= 'A' and <= 'Z') || (b is >= 'a' and <= 'z') ? N : Unk;
        foreach (var (ch, id) in new[] { ('A', A), ('C', C), ('G', G), ('T', T), ('N', N) })
        {
            t[ch] = id;
            t[char.ToLowerInvariant(ch)] = id;
        }
        return t;
    }

    static long[] BuildComplementMap()
    {
        var m = new long[PaddedVocab];
        for (int i = 0; i < m.Length; i++) m[i] = i;
        m[A] = T; m[T] = A; m[C] = G; m[G] = C;
        return m;
    }

    /// <summary>IUPAC complements (case kept; an involution); bytes that are not nucleotide codes map to themselves.</summary>
    static byte[] BuildByteComplement()
    {
        var t = new byte[256];
        for (int b = 0; b < 256; b++) t[b] = (byte)b;
        foreach (var (x, y) in new[] { ('A', 'T'), ('C', 'G'), ('R', 'Y'), ('K', 'M'), ('B', 'V'), ('D', 'H') })
        {
            foreach (var (p, q) in new[] { (x, y), (char.ToLowerInvariant(x), char.ToLowerInvariant(y)) })
            {
                t[p] = (byte)q;
                t[q] = (byte)p;
            }
        }
        return t;
    }

    // ------------------------------------------------------------------------------------------ bytes <-> ids

    /// <summary>The id of one base byte (see the file header for lower case and other bytes).</summary>
    public static long Id(byte b) => ByteToId[b];

    /// <summary>Bases -> ids (int64), one per byte.</summary>
    public static long[] Encode(ReadOnlySpan<byte> bases)
    {
        var ids = new long[bases.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = ByteToId[bases[i]];
        return ids;
    }

    /// <summary>Bases -> ids (int64) written into <paramref name="ids"/> (same length).</summary>
    public static void Encode(ReadOnlySpan<byte> bases, Span<long> ids)
    {
        if (ids.Length != bases.Length) throw new ArgumentException($"ids has {ids.Length} entries for {bases.Length} bases", nameof(ids));
        for (int i = 0; i < ids.Length; i++) ids[i] = ByteToId[bases[i]];
    }

    /// <summary>Bases -> a 1-D int64 tensor of ids on <paramref name="device"/> (default CPU).</summary>
    public static Tensor EncodeTensor(ReadOnlySpan<byte> bases, Device? device = null)
    {
        var ids = Encode(bases);
        var t = torch.tensor(ids, new long[] { ids.Length }, ScalarType.Int64);
        return device is null || device.type == DeviceType.CPU ? t : MoveAndDispose(t, device);
    }

    static Tensor MoveAndDispose(Tensor t, Device device)
    {
        var moved = t.to(device);
        t.Dispose();
        return moved;
    }

    /// <summary>
    /// Bases as a uint8 tensor (any shape, ASCII) -> int64 ids of the same shape and device, through the 256-entry
    /// lookup table (one gather, no per-element loop).
    /// </summary>
    public static Tensor Encode(Tensor bases)
    {
        ArgumentNullException.ThrowIfNull(bases);
        if (bases.dtype != ScalarType.Byte) throw new ArgumentException($"expected ASCII bases as a uint8 tensor, got {bases.dtype}", nameof(bases));
        using var scope = torch.NewDisposeScope();
        var table = torch.tensor(ByteToId, new long[] { 256 }, ScalarType.Int64, bases.device);
        var ids = table.index_select(0, bases.flatten().to_type(ScalarType.Int64)).reshape(bases.shape);
        return ids.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A training/scoring batch as token ids: a uint8 tensor is read as ASCII bases and encoded; an integer tensor is
    /// taken as ids already (checked to lie in the padded vocabulary). Returns int64 on the same device.
    /// </summary>
    public static Tensor AsIds(Tensor basesOrIds)
    {
        ArgumentNullException.ThrowIfNull(basesOrIds);
        if (basesOrIds.dtype == ScalarType.Byte) return Encode(basesOrIds);
        if (basesOrIds.is_floating_point() || basesOrIds.dtype == ScalarType.Bool)
            throw new ArgumentException($"expected ASCII bases (uint8) or token ids (integers), got {basesOrIds.dtype}", nameof(basesOrIds));
        var ids = basesOrIds.to_type(ScalarType.Int64);
        if (ids.numel() > 0)
        {
            using var lo = ids.min();
            using var hi = ids.max();
            long min = lo.item<long>(), max = hi.item<long>();
            if (min < 0 || max >= PaddedVocab)
            {
                ids.Dispose();
                throw new ArgumentException($"token ids must lie in [0, {PaddedVocab}), got values from {min} to {max}", nameof(basesOrIds));
            }
        }
        return ids;
    }

    /// <summary>Ids -> text: bases as letters, specials by name ("[MASK]"); ids outside the vocabulary as "[UNK]".</summary>
    public static string Decode(ReadOnlySpan<long> ids)
    {
        var sb = new StringBuilder(ids.Length);
        foreach (long id in ids) sb.Append(id >= 0 && id < VocabSize ? Tokens[(int)id] : "[UNK]");
        return sb.ToString();
    }

    /// <summary>Ids of A/C/G/T/N -> upper-case ASCII bases.</summary>
    /// <exception cref="ArgumentException">An id that is not a nucleotide (a special or padding id), naming its position.</exception>
    public static byte[] ToBases(ReadOnlySpan<long> ids)
    {
        var bases = new byte[ids.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            long id = ids[i];
            if (!IsNucleotide(id)) throw new ArgumentException($"id {id} at position {i} is not a nucleotide (A=7, C=8, G=9, T=10, N=11)", nameof(ids));
            bases[i] = (byte)"ACGTN"[(int)(id - A)];
        }
        return bases;
    }

    /// <summary>Bases as the tokenizer sees them: upper case A/C/G/T/N, other letters N, other bytes kept (they encode to [UNK]).</summary>
    public static byte[] Normalise(ReadOnlySpan<byte> bases)
    {
        var o = new byte[bases.Length];
        for (int i = 0; i < o.Length; i++)
        {
            long id = ByteToId[bases[i]];
            o[i] = id == Unk ? bases[i] : (byte)"ACGTN"[(int)(id - A)];
        }
        return o;
    }

    // ------------------------------------------------------------------------------------------ reverse complement

    /// <summary>The complement of one id (A<->T, C<->G, others fixed).</summary>
    public static long Complement(long id) => id >= 0 && id < PaddedVocab ? ComplementMap[(int)id] : id;

    /// <summary>The complement map as an int64 tensor (16) on <paramref name="device"/>.</summary>
    public static Tensor ComplementTensor(Device? device = null) =>
        torch.tensor(ComplementMap.ToArray(), new long[] { PaddedVocab }, ScalarType.Int64, device);

    /// <summary>Ids (any shape, int64, values in [0, 16)) -> complemented ids, same shape and device.</summary>
    public static Tensor ComplementIds(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var map = ComplementTensor(ids.device);
        return map.index_select(0, ids.flatten().to_type(ScalarType.Int64)).reshape(ids.shape).MoveToOuterDisposeScope();
    }

    /// <summary>Ids (..., l) -> their reverse complement: complemented, then flipped along the last dimension.</summary>
    public static Tensor ReverseComplement(Tensor ids)
    {
        using var c = ComplementIds(ids);
        return c.flip(-1);
    }

    /// <summary>The reverse complement of ASCII bases (IUPAC complements, case kept; other bytes unchanged).</summary>
    public static byte[] ReverseComplement(ReadOnlySpan<byte> bases)
    {
        var o = new byte[bases.Length];
        for (int i = 0; i < o.Length; i++) o[i] = ByteComplement[bases[bases.Length - 1 - i]];
        return o;
    }

    /// <summary>Reverse-complements ASCII bases in place.</summary>
    public static void ReverseComplementInPlace(Span<byte> bases)
    {
        bases.Reverse();
        for (int i = 0; i < bases.Length; i++) bases[i] = ByteComplement[bases[i]];
    }

    /// <summary>The reverse complement of ids (A<->T, C<->G, reversed).</summary>
    public static long[] ReverseComplement(ReadOnlySpan<long> ids)
    {
        var o = new long[ids.Length];
        for (int i = 0; i < o.Length; i++) o[i] = Complement(ids[ids.Length - 1 - i]);
        return o;
    }
}
