// A plain convolutional baseline for small images, the yardstick the SSM classifiers are compared with: the same
// training script, data split, augmentation and schedule, only the network differs.
//
// Shapes: b batch, c in_chans, s img_size, k num_classes, w = widths.
//   x (b c s s) -> for each width w_i: conv3x3 (padding 1) -> BatchNorm -> ReLU -> maxpool 2    (b w_i s/2^i s/2^i)
//   -> flatten (b w_last * f * f), f = s / 2^stages -> Linear hidden -> ReLU -> Dropout -> Linear k -> logits (b k)
// With the default widths 32/64/128 on 28x28 inputs: 28 -> 14 -> 7 -> 3, about 0.4 M parameters, the size class of
// the fashion-mnist benchmark's conv nets (zalandoresearch/fashion-mnist, benchmark/convnet.py: two conv layers, 91-92%).
//
// The convolutions run as im2col + matrix product (unfold, then weight (o, c*9) @ columns (b, c*9, h*w)): the same
// function as conv2d with padding 1, but its backward goes through unfold's and matmul's. The reason: on the CPU,
// TorchSharp-cpu 0.107's (libtorch 2.10) float32 conv2d backward with respect to the input (and conv_transpose2d)
// returns wrong values on this project's machines for batches above 1 (errors of 20-30% against float64, varying
// from call to call), while unfold and matmul are exact; ClassificationTests checks the gradients against float64.
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>Sizes of <see cref="SimpleCnn"/>.</summary>
public sealed record SimpleCnnConfig
{
    public long InChans { get; init; } = 1;
    public long NumClasses { get; init; } = 10;
    public long ImgSize { get; init; } = 28;
    /// <summary>Output channels of the conv stages (each halves the resolution).</summary>
    public long[] Widths { get; init; } = [32, 64, 128];
    public long Hidden { get; init; } = 256;
    public double Dropout { get; init; } = 0.25;

    /// <summary>The default baseline for 28x28 images.</summary>
    public static SimpleCnnConfig Small28 => new();

    /// <summary>A very small one, for tests.</summary>
    public static SimpleCnnConfig Tiny => new() { Widths = [4, 8], Hidden = 16, Dropout = 0 };

    /// <summary>Side of the last feature map.</summary>
    [System.Text.Json.Serialization.JsonIgnore] public long FinalSize => ImgSize >> Widths.Length;

    public void Validate()
    {
        if (InChans <= 0 || NumClasses <= 1) throw new ArgumentException("SimpleCnn needs in_chans >= 1 and num_classes >= 2");
        if (Widths.Length == 0 || Widths.Any(w => w <= 0)) throw new ArgumentException("SimpleCnn needs at least one positive width");
        if (FinalSize < 1) throw new ArgumentException($"img_size {ImgSize} is too small for {Widths.Length} pooling stages");
        if (Hidden <= 0 || Dropout is < 0 or >= 1) throw new ArgumentException("SimpleCnn needs hidden > 0 and 0 <= dropout < 1");
    }
}

/// <summary>conv 3x3 (padding 1, no bias) -> BatchNorm -> ReLU -> maxpool 2.</summary>
public sealed class SimpleCnnStage : nn.Module<Tensor, Tensor>
{
    public Conv2d conv;
    public BatchNorm2d bn;

    public SimpleCnnStage(long inChannels, long outChannels) : base(nameof(SimpleCnnStage))
    {
        // No conv bias: BatchNorm's shift replaces it. The module holds the weight (o, c, 3, 3) and its initialisation.
        conv = nn.Conv2d(inChannels, outChannels, 3, padding: 1, bias: false);
        bn = nn.BatchNorm2d(outChannels);
        RegisterComponents();
    }

    /// <summary>3x3 convolution with padding 1 as unfold + matmul: x (b c h w) -> (b o h w). See the file comment.</summary>
    public static Tensor Conv3x3(Tensor x, Tensor weight)
    {
        long b = x.shape[0], h = x.shape[2], w = x.shape[3], o = weight.shape[0];
        var cols = nn.functional.unfold(x, 3, padding: 1);                 // (b, c*9, h*w)
        return weight.view(o, -1).matmul(cols).view(b, o, h, w);           // (b, o, h, w)
    }

    /// <summary>x (b c h w) -> (b o h/2 w/2).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = nn.functional.relu(bn.call(Conv3x3(x, conv.weight!)));
        return nn.functional.max_pool2d(y, 2).MoveToOuterDisposeScope();
    }
}

public sealed class SimpleCnn : nn.Module<Tensor, Tensor>, IImageFeatures
{
    public ModuleList<SimpleCnnStage> features;
    public Linear fc1;
    public Dropout dropout;
    public Linear head;

    public SimpleCnnConfig Config { get; }

    public SimpleCnn(SimpleCnnConfig config) : base(nameof(SimpleCnn))
    {
        config.Validate();
        Config = config;
        features = new ModuleList<SimpleCnnStage>();
        long inC = config.InChans;
        foreach (long w in config.Widths)
        {
            features.Add(new SimpleCnnStage(inC, w));
            inC = w;
        }
        fc1 = nn.Linear(inC * config.FinalSize * config.FinalSize, config.Hidden);
        dropout = nn.Dropout(config.Dropout);
        head = nn.Linear(config.Hidden, config.NumClasses);
        RegisterComponents();
    }

    /// <summary>x (b, c, s, s) float -> logits (b, k).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return Ssm.Backbone.Training.MixedPrecision.Widen(head.call(dropout.call(Features(x)))).MoveToOuterDisposeScope(); // (b k), float32 under mixed precision
    }

    /// <summary>The head's input: the hidden layer after ReLU (b, hidden).</summary>
    public Tensor Features(Tensor x)
    {
        if (x.dim() != 4 || x.shape[1] != Config.InChans || x.shape[2] != Config.ImgSize || x.shape[3] != Config.ImgSize)
            throw new ArgumentException($"SimpleCnn expects images (b, {Config.InChans}, {Config.ImgSize}, {Config.ImgSize}), got [{string.Join(", ", x.shape)}]");
        using var scope = torch.NewDisposeScope();
        var h = x.to_type(features[0].conv.weight!.dtype);                  // a bf16 model computes in its weights' dtype
        foreach (var stage in features) h = stage.call(h);                  // (b w_last f f)
        return nn.functional.relu(fc1.call(h.flatten(1))).MoveToOuterDisposeScope(); // (b hidden)
    }
}
