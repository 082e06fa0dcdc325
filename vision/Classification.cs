// Image-classification data, training and evaluation, for every architecture of ImageClassifier, through the
// backbone's Trainer (AdamW, warm-up + cosine, clipping, progress bar, evaluation, atomic checkpoints, exact resume).
//
// Data folder (written by data/fashion-mnist.sh and data/mnist-digits.sh; see data/README.md):
//   dataset.json   {"name", "labels": [class names], "hflip": bool, "splits": {"train": {"images", "labels"}, "val": ..., "test": ...}}
//   *.idx / *.gz   IDX files (Idx.cs): images (n, rows, cols) or (n, rows, cols, channels), labels (n)
// Without dataset.json the MNIST names are used (train-images-idx3-ubyte[.gz], t10k-...), labels "0".."9".
//
// One training step (TrainStep), all on the model's device (the whole split is uploaded once, as uint8):
//   indices = EpochSampler.Batch(global batch)                       a pure function of the step: exact resume
//   x = images[indices] / 255                                        (b c h w) in [0, 1]
//   augmentation (per sample, from the step's seeded Random): random crop of the image padded by p pixels of the
//   background colour (p = 2-4; Krizhevsky et al. 2012, and the standard CIFAR/Fashion-MNIST recipe), and a random
//   horizontal flip where the classes are mirror-symmetric (clothes: yes; digits: no, a mirrored 2 is no 2)
//   x = (x - mean) / std;  loss = cross entropy with label smoothing 0.1 (Szegedy et al. 2016, DeiT's recipe)
// Evaluation: accuracy, mean loss (no smoothing), per-class accuracy and the confusion matrix (rows true, columns predicted).
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using Ssm.Backbone.Training;
using static TorchSharp.torch;

namespace Ssm.Vision;

/// <summary>Images (n, c, h, w) as bytes, CHW per image, and their class indices.</summary>
public sealed class ImageDataset
{
    public string Name { get; }
    public byte[] Pixels { get; }
    public int[] Labels { get; }
    public int Count => Labels.Length;
    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }
    public long ImageBytes => (long)Channels * Height * Width;

    public ImageDataset(string name, byte[] pixels, int[] labels, int channels, int height, int width)
    {
        if (channels <= 0 || height <= 0 || width <= 0) throw new ArgumentException($"{name}: image dimensions must be positive");
        if (pixels.LongLength != (long)labels.Length * channels * height * width)
            throw new ArgumentException($"{name}: {pixels.LongLength} pixel bytes do not hold {labels.Length} images of {channels}x{height}x{width}");
        Name = name; Pixels = pixels; Labels = labels; Channels = channels; Height = height; Width = width;
    }

    /// <summary>Reads an IDX image file and its label file; checks that they agree and that labels are in range.</summary>
    /// <exception cref="InvalidDataException">Names the file and the problem.</exception>
    public static ImageDataset FromIdx(string imagesPath, string labelsPath, int numClasses, string? name = null)
    {
        var img = Idx.Read(imagesPath);
        if (img.Dims.Length is not (3 or 4))
            throw new InvalidDataException($"{imagesPath}: has {img.Dims.Length} dimension(s), expected 3 (count, rows, cols) or 4 (count, rows, cols, channels)");
        var lab = Idx.ReadLabels(labelsPath);
        if (lab.Dims[0] != img.Dims[0])
            throw new InvalidDataException($"{labelsPath}: {lab.Dims[0]} labels for {img.Dims[0]} images in {imagesPath}");
        int n = img.Dims[0], h = img.Dims[1], w = img.Dims[2], c = img.Dims.Length == 4 ? img.Dims[3] : 1;
        var labels = new int[n];
        for (int i = 0; i < n; i++)
        {
            labels[i] = lab.Data[i];
            if (labels[i] >= numClasses)
                throw new InvalidDataException($"{labelsPath}: label {labels[i]} at index {i} is out of range for {numClasses} classes");
        }
        byte[] pixels = img.Data;
        if (c > 1)
        {
            // (n h w c) -> (n c h w)
            using var scope = torch.NewDisposeScope();
            pixels = torch.tensor(img.Data, [n, h, w, c]).permute(0, 3, 1, 2).contiguous().data<byte>().ToArray();
        }
        return new ImageDataset(name ?? Path.GetFileName(imagesPath), pixels, labels, c, h, w);
    }

    /// <summary>The first <paramref name="count"/> images (all if count is larger).</summary>
    public ImageDataset Take(int count)
    {
        if (count >= Count) return this;
        if (count <= 0) throw new ArgumentOutOfRangeException(nameof(count));
        return new ImageDataset(Name, Pixels.AsSpan(0, (int)(count * ImageBytes)).ToArray(), Labels[..count], Channels, Height, Width);
    }

    /// <summary>Per-channel mean and standard deviation of the pixels in [0, 1] (from a 256-bin histogram per channel).</summary>
    public (float[] Mean, float[] Std) Statistics()
    {
        var mean = new float[Channels];
        var std = new float[Channels];
        long plane = (long)Height * Width;
        for (int c = 0; c < Channels; c++)
        {
            var hist = new long[256];
            for (long i = 0; i < Count; i++)
            {
                var span = Pixels.AsSpan((int)(i * ImageBytes + c * plane), (int)plane);
                foreach (byte v in span) hist[v]++;
            }
            double n = 0, s = 0, s2 = 0;
            for (int v = 0; v < 256; v++) { double x = v / 255.0; n += hist[v]; s += hist[v] * x; s2 += hist[v] * x * x; }
            double m = s / n;
            mean[c] = (float)m;
            std[c] = (float)Math.Max(Math.Sqrt(Math.Max(s2 / n - m * m, 0)), 1e-3);
        }
        return (mean, std);
    }

    /// <summary>Whether the images' borders are dark on average (light objects on black, as in (Fashion-)MNIST).</summary>
    public bool DarkBackground(int sample = 1000)
    {
        double sum = 0; long n = 0;
        long plane = (long)Height * Width;
        for (int i = 0; i < Math.Min(sample, Count); i++)
            for (int c = 0; c < Channels; c++)
            {
                long o = i * ImageBytes + c * plane;
                for (int x = 0; x < Width; x++) { sum += Pixels[o + x] + Pixels[o + (Height - 1) * Width + x]; n += 2; }
                for (int y = 1; y < Height - 1; y++) { sum += Pixels[o + y * Width] + Pixels[o + y * Width + Width - 1]; n += 2; }
            }
        return n == 0 || sum / n / 255 < 0.5;
    }

    /// <summary>The images as a uint8 tensor (n, c, h, w) on <paramref name="device"/> (one upload).</summary>
    public Tensor ImagesTensor(Device device) => torch.tensor(Pixels, [Count, Channels, Height, Width], dtype: ScalarType.Byte).to(device);

    /// <summary>The labels as an int64 tensor (n) on <paramref name="device"/>.</summary>
    public Tensor LabelsTensor(Device device) => torch.tensor(Labels.Select(l => (long)l).ToArray()).to(device);
}

/// <summary>A prepared data folder: class names, whether flips are valid, and its splits.</summary>
public sealed class DataFolder
{
    public const string DescriptorFile = "dataset.json";

    public string Dir { get; }
    public string Name { get; }
    public IReadOnlyList<string> Labels { get; }
    /// <summary>Whether a mirrored image shows the same class (data augmentation may flip).</summary>
    public bool HFlip { get; }
    readonly Dictionary<string, (string Images, string Labels)> _splits;

    DataFolder(string dir, string name, IReadOnlyList<string> labels, bool hflip, Dictionary<string, (string, string)> splits)
    {
        Dir = dir; Name = name; Labels = labels; HFlip = hflip; _splits = splits;
    }

    public IReadOnlyCollection<string> SplitNames => _splits.Keys;

    public bool HasSplit(string split) => _splits.ContainsKey(split);

    /// <summary>Opens a data folder (reads dataset.json or finds the MNIST file names); the splits load on demand.</summary>
    /// <exception cref="InvalidDataException">No such folder, a bad dataset.json, or no training split.</exception>
    public static DataFolder Open(string dir)
    {
        if (!Directory.Exists(dir)) throw new InvalidDataException($"{dir}: data folder not found (prepare one with data/fashion-mnist.sh, see data/README.md)");
        string descriptor = Path.Combine(dir, DescriptorFile);
        if (File.Exists(descriptor)) return FromDescriptor(dir, descriptor);
        // The MNIST layout as distributed (and as Debian's dataset-fashion-mnist installs it).
        string? Find(string stem) => new[] { stem, stem + ".gz" }.Select(f => Path.Combine(dir, f)).FirstOrDefault(File.Exists);
        var splits = new Dictionary<string, (string, string)>();
        foreach (var (split, prefix) in new[] { ("train", "train"), ("test", "t10k") })
            if (Find($"{prefix}-images-idx3-ubyte") is { } im && Find($"{prefix}-labels-idx1-ubyte") is { } lb) splits[split] = (im, lb);
        if (!splits.ContainsKey("train") && !splits.ContainsKey("test"))
            throw new InvalidDataException($"{dir}: neither {DescriptorFile} nor MNIST-named IDX files (train-images-idx3-ubyte[.gz], ...) found");
        return new DataFolder(dir, Path.GetFileName(Path.TrimEndingDirectorySeparator(dir)),
            Enumerable.Range(0, 10).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray(), false, splits);
    }

    static DataFolder FromDescriptor(string dir, string path)
    {
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON ({e.Message})"); }
        try
        {
            string name = o["name"]?.GetValue<string>() ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(dir));
            var labels = o["labels"]?.AsArray().Select(n => n!.GetValue<string>()).ToArray()
                ?? throw new InvalidDataException($"{path}: missing \"labels\"");
            if (labels.Length < 2) throw new InvalidDataException($"{path}: \"labels\" needs at least 2 classes");
            bool hflip = o["hflip"]?.GetValue<bool>() ?? false;
            var splits = new Dictionary<string, (string, string)>();
            foreach (var (split, node) in o["splits"]?.AsObject() ?? throw new InvalidDataException($"{path}: missing \"splits\""))
            {
                string im = node?["images"]?.GetValue<string>() ?? throw new InvalidDataException($"{path}: split '{split}' has no \"images\"");
                string lb = node?["labels"]?.GetValue<string>() ?? throw new InvalidDataException($"{path}: split '{split}' has no \"labels\"");
                splits[split] = (Path.Combine(dir, im), Path.Combine(dir, lb));
            }
            return new DataFolder(dir, name, labels, hflip, splits);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: a field has the wrong type ({e.Message})");
        }
    }

    /// <summary>Loads a split ("train", "val", "test").</summary>
    public ImageDataset Load(string split)
    {
        if (!_splits.TryGetValue(split, out var files))
            throw new InvalidDataException($"{Dir}: no '{split}' split (this folder has: {string.Join(", ", _splits.Keys)})");
        return ImageDataset.FromIdx(files.Images, files.Labels, Labels.Count, $"{Name}/{split}");
    }
}

/// <summary>Augmentation of a training batch.</summary>
public sealed record AugmentOptions(int CropPadding = 2, bool HFlip = false)
{
    public static AugmentOptions None => new(0, false);
}

/// <summary>Settings of one classification training run (beside the Trainer's own options).</summary>
public sealed record ClassificationOptions
{
    public int BatchSize { get; init; } = 128;
    public int EvalBatchSize { get; init; } = 500;
    public double LabelSmoothing { get; init; } = 0.1;
    public AugmentOptions Augment { get; init; } = new();
    /// <summary>
    /// Bf16: the model's matrices, convolutions, norms and embeddings compute in bf16 while the SSM parameters (A, D,
    /// dt bias) and AdamW's master weights stay float32 (MixedPrecision.Apply, applied by Train before the optimizer
    /// is made); logits and the loss are float32. Fp32 leaves the model as it is.
    /// </summary>
    public Precision Precision { get; init; } = Precision.Fp32;
}

public static class Classification
{
    /// <summary>A split uploaded to a device once: images uint8 (n c h w) and labels int64 (n).</summary>
    public sealed class DeviceSplit : IDisposable
    {
        public ImageDataset Data { get; }
        public Tensor Images { get; }
        public Tensor Labels { get; }

        public DeviceSplit(ImageDataset data, Device device)
        {
            Data = data;
            Images = data.ImagesTensor(device);
            Labels = data.LabelsTensor(device);
        }

        public void Dispose() { Images.Dispose(); Labels.Dispose(); }
    }

    /// <summary>uint8 images (b c h w) -> float in [0, 1].</summary>
    public static Tensor ToUnit(Tensor bytes) => bytes.to_type(ScalarType.Float32).div_(255f);

    /// <summary>The normalisation constants of <paramref name="spec"/> as (1, c, 1, 1) tensors on a device (made once per run).</summary>
    public static (Tensor Mean, Tensor Std) NormalizationTensors(ImageSpec spec, Device device) =>
        (torch.tensor(spec.Mean, device: device).view(1, -1, 1, 1), torch.tensor(spec.Std, device: device).view(1, -1, 1, 1));

    /// <summary>(x - mean) / std per channel, x (b c h w) in [0, 1].</summary>
    public static Tensor Normalize(Tensor x, (Tensor Mean, Tensor Std) n) => (x - n.Mean) / n.Std;

    /// <summary>(x - mean) / std per channel, x (b c h w) in [0, 1], on x's device.</summary>
    public static Tensor Normalize(Tensor x, ImageSpec spec)
    {
        using var scope = torch.NewDisposeScope();
        return Normalize(x, NormalizationTensors(spec, x.device)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Random crop of each image padded by <see cref="AugmentOptions.CropPadding"/> pixels of <paramref name="fill"/>,
    /// and (if enabled) a random horizontal flip with probability 1/2, as one gather on x's device.
    /// Offsets and flips come from <paramref name="rng"/>, so a step's augmentation is fixed by its seed.
    /// </summary>
    /// <param name="x">(b c h w) float.</param>
    public static Tensor Augment(Tensor x, AugmentOptions aug, Random rng, double fill = 0)
    {
        int p = aug.CropPadding;
        if (p < 0) throw new ArgumentOutOfRangeException(nameof(aug), "crop padding must be >= 0");
        if (p == 0 && !aug.HFlip) return x;
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3], wp = w + 2 * p;
        var dy = new long[b]; var dx = new long[b]; var flip = new bool[b];
        for (int i = 0; i < b; i++)
        {
            dy[i] = rng.Next(2 * p + 1);
            dx[i] = rng.Next(2 * p + 1);
            flip[i] = aug.HFlip && rng.Next(2) == 1;
        }
        using var scope = torch.NewDisposeScope();
        var dev = x.device;
        var padded = p > 0 ? nn.functional.pad(x, [p, p, p, p], value: fill) : x;   // (b c h+2p w+2p)
        var ar = torch.arange(h, dtype: ScalarType.Int64, device: dev);
        var ac = torch.arange(w, dtype: ScalarType.Int64, device: dev);
        var rows = torch.tensor(dy, device: dev).view(-1, 1) + ar.view(1, -1);                  // (b h)
        var cols = torch.where(torch.tensor(flip, device: dev).view(-1, 1), ac.flip(0).view(1, -1), ac.view(1, -1))
            + torch.tensor(dx, device: dev).view(-1, 1);                                          // (b w)
        var flat = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w);
        return padded.flatten(2).gather(2, flat).view(b, c, h, w).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Trains <paramref name="clf"/> on <paramref name="train"/> through the backbone Trainer (the model must already be
    /// on its device). Validation (if given) runs every EvalEvery steps and at the end: val_loss and val_accuracy.
    /// </summary>
    public static TrainResult Train(ImageClassifier clf, ImageDataset train, ImageDataset? val, TrainOptions options,
        ClassificationOptions co, CancellationToken cancel = default, Action<long>? afterStep = null)
    {
        if (train.Channels != clf.Spec.Channels || train.Height != clf.Spec.Size || train.Width != clf.Spec.Size)
            throw new ArgumentException($"{train.Name}: images are {train.Channels}x{train.Height}x{train.Width}, the model takes {clf.Spec.Channels}x{clf.Spec.Size}x{clf.Spec.Size}");
        if (co.BatchSize <= 0) throw new ArgumentException("batch size must be positive");
        if (co.LabelSmoothing is < 0 or >= 1) throw new ArgumentException("label smoothing must be in [0, 1)");
        var device = clf.Device;
        // Before the Trainer makes its AdamW: the cast replaces the float32 exceptions' parameter objects.
        MixedPrecision.CheckResume(options.OutputDir, options.Resume, co.Precision);
        if (co.Precision != Precision.Fp32) MixedPrecision.Apply(clf.Model, co.Precision);
        using var data = new DeviceSplit(train, device);
        using var valData = val is null ? null : new DeviceSplit(val, device);
        var sampler = new EpochSampler(train.Count, co.BatchSize, options.Seed);
        double fill = clf.Spec.DarkBackground ? 0 : 1;
        var (mean, std) = NormalizationTensors(clf.Spec, device);
        using var meanT = mean;
        using var stdT = std;
        // Weight decay follows the architecture's own rule (Vim and VMamba also spare A_b_log / A_logs, the class token
        // and the position embedding) unless the caller chose one.
        options = options with { Decay = options.Decay ?? clf.Arch.Decay };
        var trainer = new Trainer(clf.Model, options, (step, micro, rng) =>
        {
            var idx = torch.tensor(sampler.Batch(step * options.Accumulation + micro).Select(i => (long)i).ToArray(), device: device);
            var x = Augment(ToUnit(data.Images.index_select(0, idx)), co.Augment, rng, fill);
            var logits = clf.Model.call(Normalize(x, (meanT, stdT)));
            var loss = nn.functional.cross_entropy(logits.to_type(ScalarType.Float32), data.Labels.index_select(0, idx), label_smoothing: co.LabelSmoothing);
            return (loss, idx.shape[0]);
        }, clf.ConfigJson)
        {
            Evaluate = valData is null ? null : _ =>
            {
                var r = Evaluate(clf, valData, co.EvalBatchSize, "val", progress: false);
                return new Dictionary<string, double> { ["val_loss"] = r.Loss, ["val_accuracy"] = r.Accuracy };
            },
            AfterStep = afterStep,
        };
        return trainer.Run(cancel);
    }

    /// <summary>Evaluates on a split (uploads it to the model's device once).</summary>
    public static EvalResult Evaluate(ImageClassifier clf, ImageDataset data, int batchSize = 500, string? split = null, bool progress = false)
    {
        using var d = new DeviceSplit(data, clf.Device);
        return Evaluate(clf, d, batchSize, split ?? data.Name, progress);
    }

    /// <summary>Accuracy, loss and confusion matrix of the model on an uploaded split (eval mode, no grad).</summary>
    public static EvalResult Evaluate(ImageClassifier clf, DeviceSplit d, int batchSize, string split, bool progress)
    {
        var data = d.Data;
        if (data.Channels != clf.Spec.Channels || data.Height != clf.Spec.Size || data.Width != clf.Spec.Size)
            throw new ArgumentException($"{data.Name}: images are {data.Channels}x{data.Height}x{data.Width}, the model takes {clf.Spec.Channels}x{clf.Spec.Size}x{clf.Spec.Size}");
        if (batchSize <= 0) throw new ArgumentException("batch size must be positive");
        int k = clf.Labels.Count;
        bool wasTraining = clf.Model.training;
        clf.Model.eval();
        using var noGrad = torch.no_grad();
        using var confusion = torch.zeros(k * k, dtype: ScalarType.Int64, device: d.Images.device);
        using var lossSum = torch.zeros(1, dtype: ScalarType.Float64, device: d.Images.device);
        using var bar = progress ? new ProgressBar("eval", data.Count, "img") : null;
        var (mean, std) = NormalizationTensors(clf.Spec, d.Images.device);
        using var meanT = mean;
        using var stdT = std;
        try
        {
            for (int start = 0; start < data.Count; start += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                int n = Math.Min(batchSize, data.Count - start);
                var x = Normalize(ToUnit(d.Images.narrow(0, start, n)), (meanT, stdT));
                var y = d.Labels.narrow(0, start, n);
                var logits = clf.Model.call(x).to_type(ScalarType.Float32);
                lossSum.add_(nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).to_type(ScalarType.Float64));
                var pred = logits.argmax(1);
                confusion.add_((y * k + pred).bincount(null, k * k));
                bar?.Report(start + n);
            }
        }
        finally { if (wasTraining) clf.Model.train(); }
        long[] flat = confusion.cpu().data<long>().ToArray();
        var m = new long[k, k];
        for (int i = 0; i < k; i++) for (int j = 0; j < k; j++) m[i, j] = flat[i * k + j];
        double loss = data.Count == 0 ? double.NaN : lossSum.cpu().item<double>() / data.Count;
        return new EvalResult(split, clf.Labels, m, loss);
    }

    /// <summary>Indices of misclassified samples (in order) and their predictions, at most <paramref name="max"/>.</summary>
    public static List<(int Index, int Predicted)> Mistakes(ImageClassifier clf, ImageDataset data, int max, int batchSize = 500)
    {
        var list = new List<(int, int)>();
        using var d = new DeviceSplit(data, clf.Device);
        clf.Model.eval();
        using var noGrad = torch.no_grad();
        for (int start = 0; start < data.Count && list.Count < max; start += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            int n = Math.Min(batchSize, data.Count - start);
            long[] pred = clf.Model.call(Normalize(ToUnit(d.Images.narrow(0, start, n)), clf.Spec)).argmax(1).cpu().data<long>().ToArray();
            for (int i = 0; i < n && list.Count < max; i++)
                if (pred[i] != data.Labels[start + i]) list.Add((start + i, (int)pred[i]));
        }
        return list;
    }
}

/// <summary>
/// The 5,000 handwritten digits of OpenCV's samples (opencv-doc: examples/data/digits.png, a 2000 x 1000 grey image of
/// 20 x 20 cells, white on black, 100 per row; rows 5d .. 5d+4 hold 500 samples of digit d; a subset of MNIST) as a data
/// folder like Fashion-MNIST's: each cell padded by 4 black pixels to 28 x 28 (MNIST's own 20 x 20 box in a 28 x 28
/// frame). Split per class, in the image's reading order (row by row, left to right): the first 360 samples train, the
/// next 40 validate, the last 100 test; so train 3,600, val 400, test 1,000, balanced.
/// </summary>
public static class OpenCvDigits
{
    public const int Cell = 20, PerRow = 100, RowsPerClass = 5, Classes = 10, Padding = 4, Side = Cell + 2 * Padding;
    public const int TrainPerClass = 360, ValPerClass = 40, TestPerClass = 100;

    /// <summary>Cuts digits.png into (images (n, 28, 28), labels (n)) per split: "train", "val", "test".</summary>
    /// <exception cref="InvalidDataException">Not a 2000 x 1000 image.</exception>
    public static Dictionary<string, ImageDataset> Split(string pngPath)
    {
        var img = ImageIO.Load(pngPath);
        if (img.Width != Cell * PerRow || img.Height != Cell * RowsPerClass * Classes)
            throw new InvalidDataException($"{pngPath}: {img.Width}x{img.Height}, expected OpenCV's digits.png ({Cell * PerRow}x{Cell * RowsPerClass * Classes})");
        var parts = new (string Name, int From, int Count)[] { ("train", 0, TrainPerClass), ("val", TrainPerClass, ValPerClass), ("test", TrainPerClass + ValPerClass, TestPerClass) };
        var result = new Dictionary<string, ImageDataset>();
        foreach (var (name, from, count) in parts)
        {
            var pixels = new byte[Classes * count * Side * Side];
            var labels = new int[Classes * count];
            for (int d = 0; d < Classes; d++)
                for (int s = 0; s < count; s++)
                {
                    int n = d * count + s, sample = from + s;
                    int y0 = (d * RowsPerClass + sample / PerRow) * Cell, x0 = sample % PerRow * Cell;
                    labels[n] = d;
                    for (int y = 0; y < Cell; y++)
                        for (int x = 0; x < Cell; x++)
                        {
                            // Grey files have one channel; for any other layout take the first (the digits are grey).
                            pixels[(long)n * Side * Side + (y + Padding) * Side + x + Padding] = img[y0 + y, x0 + x, 0];
                        }
                }
            result[name] = new ImageDataset($"mnist-digits/{name}", pixels, labels, 1, Side, Side);
        }
        return result;
    }

    /// <summary>Writes the split data set as gzip IDX files and dataset.json into <paramref name="outDir"/>.</summary>
    public static void Prepare(string pngPath, string outDir)
    {
        var splits = Split(pngPath);
        Directory.CreateDirectory(outDir);
        var splitJson = new JsonObject();
        foreach (var (name, ds) in splits)
        {
            string images = $"{name}-images-idx3-ubyte.gz", labels = $"{name}-labels-idx1-ubyte.gz";
            Idx.Write(Path.Combine(outDir, images), ds.Pixels, [ds.Count, ds.Height, ds.Width]);
            Idx.Write(Path.Combine(outDir, labels), ds.Labels.Select(l => (byte)l).ToArray(), [ds.Count]);
            splitJson[name] = new JsonObject { ["images"] = images, ["labels"] = labels, ["count"] = ds.Count };
        }
        var descriptor = new JsonObject
        {
            ["name"] = "mnist-digits",
            ["labels"] = new JsonArray(Enumerable.Range(0, Classes).Select(i => (JsonNode?)JsonValue.Create(i.ToString(CultureInfo.InvariantCulture))).ToArray()),
            ["hflip"] = false,
            ["splits"] = splitJson,
            ["source"] = "opencv-doc: /usr/share/doc/opencv-doc/examples/data/digits.png (5,000 MNIST digits, 20x20)",
            ["split_rule"] = $"per class in reading order: first {TrainPerClass} train, next {ValPerClass} val, last {TestPerClass} test; each 20x20 cell padded by {Padding} px to 28x28",
        };
        Ssm.Backbone.IO.AtomicFile.WriteAllText(Path.Combine(outDir, DataFolder.DescriptorFile),
            descriptor.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}

/// <summary>Everything one `ssm-vision train` run needs (the CLI fills it from its options).</summary>
public sealed record TrainJob
{
    public required string DataDir { get; init; }
    public required string OutputDir { get; init; }
    public string ModelType { get; init; } = "vim";
    public string? Preset { get; init; }
    /// <summary>Config fields to change (snake_case name, JSON value).</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Overrides { get; init; } = [];
    /// <summary>Length of the run in epochs over the training split (ignored when <see cref="Steps"/> is set).</summary>
    public double Epochs { get; init; } = 10;
    public long? Steps { get; init; }
    public int BatchSize { get; init; } = 128;
    public double LearningRate { get; init; } = 1e-3;
    public double WeightDecay { get; init; } = 0.05;
    /// <summary>Linear warm-up steps (null: 5% of the run).</summary>
    public long? WarmupSteps { get; init; }
    public double LabelSmoothing { get; init; } = 0.1;
    public int CropPadding { get; init; } = 2;
    /// <summary>Random horizontal flips (null: as the data folder says).</summary>
    public bool? HFlip { get; init; }
    public long Seed { get; init; }
    public bool Resume { get; init; }
    public Device Device { get; init; } = torch.CPU;
    /// <summary>Validation every this many steps (null: once per epoch; 0: only at the end).</summary>
    public long? EvalEvery { get; init; }
    /// <summary>A checkpoint every this many steps (null: once per epoch; 0: only at the end).</summary>
    public long? CheckpointEvery { get; init; }
    public long LogEvery { get; init; } = 50;
    public double GradClip { get; init; } = 1.0;
    /// <summary>Use only the first N training images (quick runs).</summary>
    public int? TrainLimit { get; init; }
    /// <summary>Bf16 mixed precision (see <see cref="ClassificationOptions.Precision"/>) or plain float32.</summary>
    public Precision Precision { get; init; } = Precision.Fp32;
}

/// <summary>What a training run produced (ValAccuracy: of the final model, null without a val split).</summary>
public sealed record TrainSummary(TrainResult Result, long TotalSteps, long Parameters, double? ValAccuracy, EvalResult? Test, bool Completed);

public static class ClassificationJob
{
    /// <summary>
    /// Opens the data, builds (or resumes) the model, trains, and evaluates the final model on the test split, writing
    /// OUT/{config.json, model.safetensors} (the Trainer), OUT/eval.json and OUT/confusion.png. Notes go to <paramref name="log"/>.
    /// </summary>
    public static TrainSummary Run(TrainJob job, TextWriter log, CancellationToken cancel = default)
    {
        var inv = CultureInfo.InvariantCulture;
        if (job.BatchSize <= 0) throw new ArgumentException("--batch-size must be positive");
        if (job.LearningRate <= 0 || !double.IsFinite(job.LearningRate)) throw new ArgumentException("--lr must be positive");
        if (job.WeightDecay < 0) throw new ArgumentException("--weight-decay must be >= 0");
        if (job.CropPadding is < 0 or > 8) throw new ArgumentException("--crop-padding must be 0 to 8 pixels");
        bool existing = Directory.Exists(job.OutputDir) && (File.Exists(Path.Combine(job.OutputDir, Ssm.Backbone.IO.ModelFolder.ConfigFile))
            || Trainer.LatestCheckpoint(job.OutputDir) is not null);
        if (existing && !job.Resume)
            throw new ArgumentException($"{job.OutputDir}: already holds a training run; pass --resume to continue it, or choose another --out");

        var folder = DataFolder.Open(job.DataDir);
        var train = folder.Load("train");
        if (job.TrainLimit is int lim) train = train.Take(lim);
        var val = folder.HasSplit("val") ? folder.Load("val") : null;
        var (mean, std) = train.Statistics();
        var spec = new ImageSpec(train.Channels, train.Height, mean, std, train.DarkBackground());
        if (train.Height != train.Width) throw new InvalidDataException($"{train.Name}: images are {train.Height}x{train.Width}; the classifiers take square images");

        long perEpoch = Math.Max(1, (train.Count + job.BatchSize - 1) / job.BatchSize);
        long steps = job.Steps ?? (long)Math.Ceiling(job.Epochs * train.Count / job.BatchSize);
        if (steps <= 0) throw new ArgumentException("the run has no steps: give --epochs or --steps above 0");
        long warmup = job.WarmupSteps ?? (long)Math.Round(0.05 * steps);

        torch.manual_seed(job.Seed);
        using var clf = ImageClassifier.Create(job.ModelType, job.Preset, folder.Labels, spec, job.Overrides).To(job.Device);
        log.WriteLine(string.Create(inv, $"{clf.ModelType} ({clf.ParameterCount:N0} parameters) on {job.Device.type.ToString().ToLowerInvariant()}; " +
            $"{folder.Name}: {train.Count} train{(val is null ? "" : $", {val.Count} val")} images {train.Channels}x{train.Height}x{train.Width}; " +
            $"{steps} steps of {job.BatchSize} ({(double)steps * job.BatchSize / train.Count:0.##} epochs), warm-up {warmup}" +
            $"{(job.Precision == Precision.Fp32 ? "" : ", bf16 mixed precision")}"));

        var options = new TrainOptions
        {
            Steps = steps, LearningRate = job.LearningRate, WeightDecay = job.WeightDecay,
            // Vision's usual AdamW betas (DeiT, Vim, VMamba: 0.9, 0.999) and a cosine down to 1% of the peak.
            Beta1 = 0.9, Beta2 = 0.999, WarmupSteps = warmup, MinLrRatio = 0.01, GradClip = job.GradClip,
            EvalEvery = job.EvalEvery ?? perEpoch, CheckpointEvery = job.CheckpointEvery ?? perEpoch,
            LogEvery = job.LogEvery, Seed = job.Seed, OutputDir = job.OutputDir, Resume = job.Resume, Unit = "img",
        };
        var co = new ClassificationOptions
        {
            BatchSize = job.BatchSize, LabelSmoothing = job.LabelSmoothing,
            Augment = new AugmentOptions(job.CropPadding, job.HFlip ?? folder.HFlip), Precision = job.Precision,
        };
        var result = Classification.Train(clf, train, val, options, co, cancel);
        bool completed = result.Steps >= steps;
        EvalResult? test = null;
        double? valAccuracy = null;
        if (completed)
        {
            // The trainer validates the final model (at its last step); only a run resumed at its end has not.
            if (val is not null)
                valAccuracy = result.LastEval.TryGetValue("val_accuracy", out double a) ? a
                    : Classification.Evaluate(clf, val, co.EvalBatchSize, "val").Accuracy;
            if (folder.HasSplit("test"))
            {
                test = Classification.Evaluate(clf, folder.Load("test"), co.EvalBatchSize, "test");
                var report = test.ToJson();
                report["model_type"] = clf.ModelType;
                report["parameters"] = clf.ParameterCount;
                report["steps"] = steps;
                report["val_accuracy"] = valAccuracy;
                Ssm.Backbone.IO.AtomicFile.WriteAllText(Path.Combine(job.OutputDir, "eval.json"),
                    report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                ImageIO.SavePng(Path.Combine(job.OutputDir, "confusion.png"), ImageIO.ConfusionHeatMap(test.Confusion));
            }
        }
        return new TrainSummary(result, steps, clf.ParameterCount, valAccuracy, test, completed);
    }
}
