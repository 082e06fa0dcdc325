// VMamba's cross-scan and cross-merge (Liu et al. 2024, "VMamba", Sec. 3 and Fig. 2: the 2D-selective-scan SS2D;
// MzeroMiko/VMamba classification/models/vmamba/vmamba.py, SS2D.forward_corev0): a feature map is read as four 1-D
// sequences, each is scanned by its own selective scan, and the four outputs are put back in place and summed.
//
// Shapes: b batch, c channels, h x w the map, l = h * w, k = 4 directions.
//   Scan:  x (b c h w) -> (b k c l), direction k:
//     0  row-major            position p = i * w + j   holds x[.., i, j]
//     1  column-major         position p = j * h + i   holds x[.., i, j]
//     2  row-major reversed   position p holds direction 0's position l - 1 - p
//     3  column-major reversed position p holds direction 1's position l - 1 - p
//   Merge: y (b k c l) -> (b c l) in row-major order: each direction's output is moved back to the pixel it was read
//          from and the four are summed, so Merge(Scan(x)) = 4 x (flattened).
// Pure index operations (views, transposes, flips): device- and dtype-generic, differentiable by torch.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Layers;

public static class CrossScan
{
    /// <summary>The number of scan directions.</summary>
    public const int Directions = 4;

    /// <summary>x (b, c, h, w) -> (b, 4, c, h*w) in the four orders (row-major, column-major, and both reversed).</summary>
    public static Tensor Scan(Tensor x)
    {
        if (x.dim() != 4) throw new ArgumentException($"CrossScan.Scan: input must be (b, c, h, w), got ({string.Join(", ", x.shape)})");
        using var scope = torch.NewDisposeScope();
        var rows = x.flatten(2);                                                   // (b c l)   p = i w + j
        var cols = x.transpose(2, 3).flatten(2);                                   // (b c l)   p = j h + i
        var hw = torch.stack(new[] { rows, cols }, 1);                             // (b 2 c l)
        return torch.cat(new[] { hw, hw.flip(-1) }, 1).MoveToOuterDisposeScope();  // (b 4 c l)
    }

    /// <summary>y (b, 4, c, h*w) in the orders of <see cref="Scan"/> -> (b, c, h*w) row-major, the sum of the four.</summary>
    public static Tensor Merge(Tensor y, long h, long w)
    {
        if (y.dim() != 4 || y.shape[1] != Directions || y.shape[3] != h * w)
            throw new ArgumentException($"CrossScan.Merge: input must be (b, 4, c, h*w={h * w}), got ({string.Join(", ", y.shape)})");
        using var scope = torch.NewDisposeScope();
        long b = y.shape[0], c = y.shape[2], l = h * w;
        // Undo the reversals first: directions 2 and 3 flipped back line up with 0 and 1.
        var two = y.narrow(1, 0, 2) + y.narrow(1, 2, 2).flip(-1);                  // (b 2 c l)
        var rows = two.select(1, 0);                                               // (b c l) row-major already
        var cols = two.select(1, 1).reshape(b, c, w, h).transpose(2, 3).reshape(b, c, l); // column-major -> row-major
        return (rows + cols).MoveToOuterDisposeScope();
    }
}
