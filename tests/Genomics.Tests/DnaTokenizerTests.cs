// The DNA tokenizer against independent definitions: Caduceus' id rule (specials in their listed order, then the
// characters "ACGTN" from id 7), a letter-by-letter normalisation written here, and a base-pairing dictionary for the
// reverse complement; round trips and involutions on fresh random sequences with lower case and other bytes.
using System.Text;
using TorchSharp;
using Ssm.Genomics;
using static TorchSharp.torch;

namespace Ssm.Genomics.Tests;

public class DnaTokenizerTests
{
    static readonly string[] CaduceusSpecials = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"];
    const string Characters = "ACGTN";

    static (Random Rng, int Seed) Fresh()
    {
        int seed = Environment.TickCount ^ Guid.NewGuid().GetHashCode();
        return (new Random(seed), seed);
    }

    /// <summary>Random bytes: mostly bases in either case, some other letters, some non-letters.</summary>
    static byte[] RandomBases(Random rng, int n)
    {
        const string pool = "ACGTNacgtnRYKMSWBDHVryxzQ-.*0 \n";
        var b = new byte[n];
        for (int i = 0; i < n; i++)
            b[i] = rng.NextDouble() < 0.1 ? (byte)rng.Next(256) : (byte)pool[rng.Next(rng.NextDouble() < 0.8 ? 10 : pool.Length)];
        return b;
    }

    /// <summary>The tokenizer's rule written out: A/C/G/T/N either case, other ASCII letters N, anything else [UNK].</summary>
    static long ExpectedId(byte b)
    {
        char c = (char)b;
        int k = Characters.IndexOf(char.ToUpperInvariant(c));
        if (b < 128 && k >= 0) return CaduceusSpecials.Length + k;
        return (c is >= 'A' and <= 'Z') || (c is >= 'a' and <= 'z') ? CaduceusSpecials.Length + 4 : 6;
    }

    static readonly Dictionary<char, char> Pair = new()
    {
        ['A'] = 'T', ['T'] = 'A', ['C'] = 'G', ['G'] = 'C', ['N'] = 'N',
    };

    [Fact]
    public void IdsAreCaduceusCharacterTokenizerIds()
    {
        // CaduceusTokenizer: {"[CLS]": 0, ..., "[UNK]": 6, **{ch: i + 7 for i, ch in enumerate(characters)}}
        for (int i = 0; i < CaduceusSpecials.Length; i++) Assert.Equal(CaduceusSpecials[i], DnaTokenizer.Tokens[i]);
        for (int i = 0; i < Characters.Length; i++)
        {
            Assert.Equal(CaduceusSpecials.Length + i, DnaTokenizer.Id((byte)Characters[i]));
            Assert.Equal(Characters[i].ToString(), DnaTokenizer.Tokens[CaduceusSpecials.Length + i]);
        }
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 },
            new[] { DnaTokenizer.Cls, DnaTokenizer.Sep, DnaTokenizer.Bos, DnaTokenizer.Mask, DnaTokenizer.Pad, DnaTokenizer.Reserved,
                    DnaTokenizer.Unk, DnaTokenizer.A, DnaTokenizer.C, DnaTokenizer.G, DnaTokenizer.T, DnaTokenizer.N });
        Assert.Equal(12, DnaTokenizer.VocabSize);
        Assert.Equal(16, DnaTokenizer.PaddedVocab);                         // 12 rounded up to a multiple of 8
        Assert.Equal(DnaTokenizer.VocabSize, DnaTokenizer.Tokens.Count);
    }

    [Fact]
    public void EveryByteEncodesByTheRule()
    {
        var all = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();
        var ids = DnaTokenizer.Encode(all);
        for (int b = 0; b < 256; b++) Assert.True(ExpectedId((byte)b) == ids[b], $"byte {b} ('{(char)b}'): {ids[b]} != {ExpectedId((byte)b)}");
        // the tensor path (one gather through the table) agrees on every byte, in any shape
        using var t = torch.tensor(all, new long[] { 16, 16 }, ScalarType.Byte);
        using var tid = DnaTokenizer.Encode(t);
        Assert.Equal(new long[] { 16, 16 }, tid.shape);
        Assert.Equal(ids, tid.reshape(-1).data<long>().ToArray());
    }

    [Fact]
    public void EncodeDecodeRoundTripsOnRandomSequences()
    {
        var (rng, seed) = Fresh();
        for (int rep = 0; rep < 20; rep++)
        {
            var x = RandomBases(rng, rng.Next(0, 500));
            var ids = DnaTokenizer.Encode(x);
            // Decode writes the tokens; a byte's token is its rule id's string
            var expected = new StringBuilder();
            foreach (var b in x) expected.Append(DnaTokenizer.Tokens[(int)ExpectedId(b)]);
            Assert.True(expected.ToString() == DnaTokenizer.Decode(ids), $"seed {seed}");
            // letters only: ToBases(Encode(x)) is the upper-case sequence with non-ACGT letters as N
            var letters = x.Where(b => ExpectedId(b) != DnaTokenizer.Unk).ToArray();
            var back = DnaTokenizer.ToBases(DnaTokenizer.Encode(letters));
            var want = letters.Select(b => (byte)Characters[(int)(ExpectedId(b) - 7)]).ToArray();
            Assert.True(want.SequenceEqual(back), $"seed {seed}");
            Assert.True(want.SequenceEqual(DnaTokenizer.Normalise(letters)), $"seed {seed}");
            // encoding is idempotent through the normalised bases and through the tensor path
            Assert.Equal(ids, DnaTokenizer.Encode(DnaTokenizer.Normalise(x)));
            using var t = DnaTokenizer.EncodeTensor(x);
            Assert.Equal(ids, t.data<long>().ToArray());
        }
    }

    [Fact]
    public void ToBasesRejectsSpecialsByPosition()
    {
        var e = Assert.Throws<ArgumentException>(() => DnaTokenizer.ToBases(new long[] { 7, 8, DnaTokenizer.Mask }));
        Assert.Contains("position 2", e.Message);
    }

    [Fact]
    public void ComplementMapPairsBasesAndFixesTheRest()
    {
        var m = DnaTokenizer.ComplementMap;
        Assert.Equal(16, m.Count);
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(i, m[(int)m[i]]);                                   // an involution
            string tok = i < DnaTokenizer.VocabSize ? DnaTokenizer.Tokens[i] : "";
            long expected = tok.Length == 1 && Pair.TryGetValue(tok[0], out var p) ? DnaTokenizer.Id((byte)p) : i;
            Assert.Equal(expected, m[i]);
        }
    }

    [Fact]
    public void ReverseComplementIsAnInvolutionAndCommutesWithEncode()
    {
        var (rng, seed) = Fresh();
        for (int rep = 0; rep < 20; rep++)
        {
            var x = RandomBases(rng, rng.Next(0, 400));
            var rc = DnaTokenizer.ReverseComplement(x);
            Assert.True(x.SequenceEqual(DnaTokenizer.ReverseComplement(rc)), $"seed {seed}: rc(rc(x)) != x");
            // on ids: rc(encode(x)) == encode(rc(x)), for the array and the tensor forms
            var ids = DnaTokenizer.Encode(x);
            var rcIds = DnaTokenizer.Encode(rc);
            Assert.True(rcIds.SequenceEqual(DnaTokenizer.ReverseComplement(ids)), $"seed {seed}");
            using var t = torch.tensor(ids, new long[] { 1, ids.Length });
            using var tr = DnaTokenizer.ReverseComplement(t);
            Assert.True(rcIds.SequenceEqual(tr.data<long>().ToArray()), $"seed {seed}");
            using var trr = DnaTokenizer.ReverseComplement(tr);
            Assert.True(ids.SequenceEqual(trr.data<long>().ToArray()), $"seed {seed}");
            var inPlace = (byte[])x.Clone();
            DnaTokenizer.ReverseComplementInPlace(inPlace);
            Assert.Equal(rc, inPlace);
        }
        // upper-case ACGTN against the pairing dictionary, reversed
        var s = new string(Enumerable.Range(0, 300).Select(_ => Characters[rng.Next(5)]).ToArray());
        var expected = new string(s.Reverse().Select(c => Pair[c]).ToArray());
        Assert.Equal(expected, Encoding.ASCII.GetString(DnaTokenizer.ReverseComplement(Encoding.ASCII.GetBytes(s))));
    }

    [Fact]
    public void ReverseComplementOfABatchWorksRowByRow()
    {
        var (rng, _) = Fresh();
        var ids = Enumerable.Range(0, 3 * 50).Select(_ => (long)rng.Next(16)).ToArray();
        using var t = torch.tensor(ids, new long[] { 3, 50 });
        using var rc = DnaTokenizer.ReverseComplement(t);
        for (int r = 0; r < 3; r++)
        {
            var row = ids.AsSpan(r * 50, 50);
            using var got = rc[r];
            Assert.Equal(DnaTokenizer.ReverseComplement(row), got.data<long>().ToArray());
        }
    }

    [Fact]
    public void AsIdsTellsBasesFromIdsByDtype()
    {
        using var bases = torch.tensor(Encoding.ASCII.GetBytes("ACGTN"), new long[] { 1, 5 }, ScalarType.Byte);
        using var fromBases = DnaTokenizer.AsIds(bases);
        Assert.Equal(new long[] { 7, 8, 9, 10, 11 }, fromBases.data<long>().ToArray());
        using var ints = torch.tensor(new int[] { 7, 3, 15 }, new long[] { 1, 3 });
        using var fromInts = DnaTokenizer.AsIds(ints);
        Assert.Equal(ScalarType.Int64, fromInts.dtype);
        Assert.Equal(new long[] { 7, 3, 15 }, fromInts.data<long>().ToArray());
        using var bad = torch.tensor(new long[] { 7, 16 });
        Assert.Throws<ArgumentException>(() => DnaTokenizer.AsIds(bad));
        using var f = torch.zeros(3);
        Assert.Throws<ArgumentException>(() => DnaTokenizer.AsIds(f));
    }
}
