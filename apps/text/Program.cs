// ssm-text: generate, score, train, eval, logits and info for Mamba language models (MambaByte or any Hugging Face
// Mamba / Mamba-2 folder). Thin: parsing and printing here, the work in Ssm.Language and the backbone.
using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ssm.Apps;
using Ssm.Backbone;
using Ssm.Backbone.Generation;
using Ssm.Backbone.IO;
using Ssm.Backbone.Training;
using Ssm.Language;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Apps.Text;

public static class Program
{
    static readonly JsonSerializerOptions Pretty = new() { WriteIndented = true };

    public static int Main(string[] args)
    {
        Console.OutputEncoding = new UTF8Encoding(false);
        var root = new RootCommand("Mamba language models: generate text, score files, train and evaluate MambaByte, inspect checkpoints.\n" +
            "The default model is the embedded MambaByte (byte-level); --model DIR takes any Hugging Face Mamba or Mamba-2 folder.");
        root.Subcommands.Add(GenerateCommand());
        root.Subcommands.Add(ScoreCommand());
        root.Subcommands.Add(TrainCommand());
        root.Subcommands.Add(EvalCommand());
        root.Subcommands.Add(LogitsCommand());
        root.Subcommands.Add(InfoCommand());
        root.Subcommands.Add(BaselinesCommand());
        root.Subcommands.Add(Doctor.Create());
        return Cli.Invoke(root, args);
    }

    // ---- options shared by several commands
    static Option<string?> ModelOption() => new("--model", "-m") { Description = "model folder (config.json + model.safetensors [+ tokenizer.json]); default: the embedded MambaByte" };
    static Option<bool> JsonOption() => new("--json") { Description = "machine-readable JSON on stdout" };

    static TextModel LoadModel(string? dir, string? device)
    {
        var dev = Devices.Resolve(device, Console.Error);
        if (dir is null)
        {
            dir = TextModel.DefaultDir;
            if (!File.Exists(Path.Combine(dir, ModelFolder.ConfigFile)))
                throw new InvalidDataException($"no default model is installed at {dir}; train one with `ssm-text train --out DIR` and pass --model DIR");
        }
        return TextModel.Load(dir, dev);
    }

    static ITextTokenizer RequireTokenizer(TextModel m) => m.Tokenizer
        ?? throw new UsageException($"{m.Dir} has no tokenizer (tokenizer.json); pass token ids with --ids");

    // ---- generate
    static Command GenerateCommand()
    {
        var prompt = new Argument<string?>("prompt") { Description = "the prompt text (or --prompt-file, or standard input)", Arity = ArgumentArity.ZeroOrOne };
        var promptFile = new Option<string?>("--prompt-file", "-f") { Description = "read the prompt from a file ('-' = standard input)" };
        var promptsFile = new Option<string?>("--prompts-file") { Description = "batch: one prompt per line, generated together" };
        var ids = new Option<string?>("--ids") { Description = "prompt as token ids, e.g. 1,2,3 (instead of text)" };
        var model = ModelOption();
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "tokens to generate", DefaultValueFactory = _ => 200 };
        var temperature = new Option<double>("--temperature", "-t") { Description = "sampling temperature (0 = greedy)", DefaultValueFactory = _ => 0.8 };
        var topK = new Option<int>("--top-k") { Description = "keep the k most likely tokens (0 = off)", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "nucleus sampling: keep the smallest set with this much probability (1 = off)", DefaultValueFactory = _ => 1.0 };
        var minP = new Option<double>("--min-p") { Description = "drop tokens below min-p x the top probability (0 = off)", DefaultValueFactory = _ => 0.0 };
        var repPenalty = new Option<double>("--repetition-penalty") { Description = "penalise tokens already present (1 = off; CTRL-style, as transformers)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { Description = "random seed (the same seed gives the same text)", DefaultValueFactory = _ => 0 };
        var stop = new Option<string[]>("--stop") { Description = "stop when this string is generated (repeatable)", AllowMultipleArgumentsPerToken = false };
        var greedy = new Option<bool>("--greedy") { Description = "always take the most likely token" };
        var precision = new Option<string>("--precision") { Description = "weights for decoding: fp32, bf16 or int8 (int8: CPU only; bf16 on CUDA casts the model, SSM parameters stay fp32)", DefaultValueFactory = _ => "fp32" };
        var device = Cli.DeviceOption();
        var json = JsonOption();
        var cmd = new Command("generate", "Generate a continuation: prefill the prompt with the fast scan, then constant-time recurrent steps; text streams to stdout.")
        { prompt, promptFile, promptsFile, ids, model, maxNew, temperature, topK, topP, minP, repPenalty, seed, stop, greedy, precision, device, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            if (pr.GetValue(maxNew) < 0) throw new UsageException("--max-new-tokens must be >= 0");
            if (!(pr.GetValue(temperature) >= 0)) throw new UsageException($"--temperature must be >= 0 (0 = greedy), got {pr.GetValue(temperature)}");
            bool isGreedy = pr.GetValue(greedy) || pr.GetValue(temperature) <= 0;
            var options = new GenerationOptions(
                MaxNewTokens: pr.GetValue(maxNew), Temperature: isGreedy ? 1.0 : pr.GetValue(temperature), TopK: pr.GetValue(topK),
                TopP: pr.GetValue(topP), MinP: pr.GetValue(minP), RepetitionPenalty: pr.GetValue(repPenalty), Seed: (ulong)pr.GetValue(seed),
                StopStrings: pr.GetValue(stop) ?? [], Greedy: isGreedy);
            // An out-of-range option is bad usage, reported before the model is loaded.
            try { options.Validate(); }
            catch (ArgumentException e) { throw new UsageException(e.Message); }
            using var tm = LoadModel(pr.GetValue(model), pr.GetValue(device));
            options = options with { EosTokenId = tm.Tokenizer?.EosId };
            var prompts = ReadPrompts(tm, pr.GetValue(prompt), pr.GetValue(promptFile), pr.GetValue(promptsFile), pr.GetValue(ids));
            WarnIfLong(tm, prompts);
            return Generate(tm, prompts, options, ParsePrecision(pr.GetValue(precision)), pr.GetValue(json), pr.GetValue(ids) is not null);
        }));
        return cmd;
    }

    static WeightFormat ParsePrecision(string? s) => (s ?? "fp32").ToLowerInvariant() switch
    {
        "fp32" => WeightFormat.Float32, "bf16" => WeightFormat.BFloat16, "int8" => WeightFormat.Int8,
        _ => throw new UsageException($"--precision {s}: expected fp32, bf16 or int8"),
    };

    static List<int[]> ReadPrompts(TextModel tm, string? text, string? file, string? batchFile, string? ids)
    {
        int sources = (text is not null ? 1 : 0) + (file is not null ? 1 : 0) + (batchFile is not null ? 1 : 0) + (ids is not null ? 1 : 0);
        if (sources > 1) throw new UsageException("give the prompt one way: an argument, --prompt-file, --prompts-file or --ids");
        if (ids is not null)
        {
            var parsed = Cli.ParseIds(ids);
            long vocab = tm.Model.Config.VocabSize;
            foreach (int id in parsed) if (id >= vocab) throw new UsageException($"--ids: {id} is outside the vocabulary (size {vocab})");
            return [parsed];
        }
        var tok = RequireTokenizer(tm);
        if (batchFile is not null)
        {
            var lines = ReadText(batchFile).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0).ToList();
            if (lines.Count == 0) throw new InvalidDataException($"{batchFile}: no prompts (one per line)");
            return lines.Select(l => tok.Encode(l).ToArray()).ToList();
        }
        if (text is null && file is null)
        {
            if (!Console.IsInputRedirected) throw new UsageException("no prompt: give it as an argument, with --prompt-file, --ids, or on standard input");
            file = "-";
        }
        string prompt = text ?? ReadText(file!);
        var encoded = tok.Encode(prompt).ToArray();
        if (encoded.Length == 0) throw new InvalidDataException((file is null ? "the prompt" : file == "-" ? "standard input" : file) + " is empty: nothing to continue from");
        return [encoded];
    }

    /// <summary>A file's text ('-' = stdin), refusing invalid UTF-8 with a one-line error.</summary>
    static string ReadText(string path)
    {
        byte[] bytes;
        if (path == "-")
        {
            using var ms = new MemoryStream();
            Console.OpenStandardInput().CopyTo(ms);
            bytes = ms.ToArray();
        }
        else
        {
            if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such file");
            bytes = File.ReadAllBytes(path);
        }
        string name = path == "-" ? "standard input" : path;
        int skip = bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF ? 3 : 0;
        if (!ByteTokenizer.TryDecodeStrict(bytes[skip..], out string text)) throw new InvalidDataException($"{name}: not valid UTF-8 text");
        return text;
    }

    static void WarnIfLong(TextModel tm, List<int[]> prompts)
    {
        int? context = TrainedContext(tm);
        int longest = prompts.Max(p => p.Length);
        if (context is int c && longest > c)
            Console.Error.WriteLine($"note: the prompt ({longest} tokens) is longer than the {c} the model was trained on; " +
                "an SSM carries its state past that, but quality may degrade");
    }

    static int? TrainedContext(TextModel tm)
    {
        string path = Path.Combine(tm.Dir, "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        var v = JsonNode.Parse(File.ReadAllText(path))?["model_max_length"];
        return v is JsonValue jv && jv.TryGetValue(out int n) && n > 0 && n < 1_000_000_000 ? n : null;
    }

    static int Generate(TextModel tm, List<int[]> prompts, GenerationOptions options, WeightFormat weights, bool json, bool idsMode)
    {
        var tok = tm.Tokenizer;
        Func<IReadOnlyList<long>, string>? decode = tok is null ? null : ids => tok.Decode(ids.Select(i => (int)i).ToArray());
        bool stream = !json && prompts.Count == 1 && decode is not null && !idsMode;
        var decoder = stream ? new IncrementalDecoder(decode!) : null;
        var stdout = Console.Out;
        if (stream) { stdout.Write(tok!.Decode(prompts[0])); stdout.Flush(); }
        // On CUDA the decode engine reads the model's own weights: bf16 there means casting the model (SSM parameters
        // and states stay float32); int8 is a CPU-engine format.
        if (tm.Model.backbone.embeddings.weight!.device_type == DeviceType.CUDA && weights != WeightFormat.Float32)
        {
            if (weights == WeightFormat.Int8) throw new UsageException("--precision int8 is a CPU decode format; on CUDA use fp32 or bf16");
            Ssm.Backbone.Training.MixedPrecision.Apply(tm.Model, Ssm.Backbone.Training.Precision.Bf16);
            weights = WeightFormat.Float32;
        }
        using var generator = new TokenGenerator(tm.Model, DecodeBackend.Auto, weights);
        var longPrompts = prompts.Select(p => (IReadOnlyList<long>)p.Select(i => (long)i).ToArray()).ToList();
        var results = generator.GenerateBatch(longPrompts, options,
            onToken: stream ? (_, id) => { stdout.Write(decoder!.Push(id)); stdout.Flush(); } : null, decode: decode);
        if (stream) { stdout.Write(decoder!.Flush()); stdout.WriteLine(); stdout.Flush(); }
        if (json)
        {
            var arr = new JsonArray();
            for (int i = 0; i < results.Count; i++)
            {
                var r = results[i];
                var o = new JsonObject
                {
                    ["prompt_ids"] = new JsonArray(prompts[i].Select(t => (JsonNode)t).ToArray()),
                    ["ids"] = new JsonArray(r.Tokens.Select(t => (JsonNode)t).ToArray()),
                    ["finish_reason"] = r.Reason switch { StopReason.EndOfSequence => "eos", StopReason.StopString => "stop", _ => "length" },
                };
                if (r.StopString is not null) o["stop_string"] = r.StopString;
                if (decode is not null) o["text"] = decode(r.Tokens);
                arr.Add(o);
            }
            stdout.WriteLine((prompts.Count == 1 ? arr[0]! : arr).ToJsonString(Pretty));
        }
        else if (!stream)
        {
            for (int i = 0; i < results.Count; i++)
            {
                if (results.Count > 1) stdout.WriteLine($"--- {i + 1}");
                stdout.WriteLine(decode is null || idsMode ? string.Join(",", results[i].Tokens) : decode(prompts[i].Select(t => (long)t).Concat(results[i].Tokens).ToArray()));
            }
        }
        if (results.Count > 0)
        {
            var timing = results[0].Timing;
            long generated = results.Sum(r => (long)r.Tokens.Count);
            double decodeSeconds = timing.StepSeconds.Sum();
            long promptTokens = prompts.Sum(p => (long)p.Length);
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"[{generator.Backend}, {weights}] prefill {promptTokens} tokens in {timing.PrefillSeconds:0.000} s ({promptTokens / Math.Max(timing.PrefillSeconds, 1e-9):0} tok/s); " +
                $"decode {generated} tokens in {decodeSeconds:0.000} s ({Math.Max(0, generated - results.Count) / Math.Max(decodeSeconds, 1e-9):0.0} tok/s)"));
        }
        return Cli.Ok;
    }

    // ---- score
    static Command ScoreCommand()
    {
        var files = new Argument<string[]>("files") { Description = "text files ('-' = standard input)", Arity = ArgumentArity.OneOrMore };
        var model = ModelOption();
        var window = new Option<int?>("--window") { Description = "context window in tokens (default: the training context, else 2048)" };
        var device = Cli.DeviceOption();
        var json = JsonOption();
        var cmd = new Command("score", "Bits per byte (and per token, and perplexity) of text files under the model.") { files, model, window, device, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            var paths = pr.GetValue(files) ?? [];
            Cli.RejectOptionLike(paths.Where(p => p != "-"));
            using var tm = LoadModel(pr.GetValue(model), pr.GetValue(device));
            var tok = RequireTokenizer(tm);
            int w = pr.GetValue(window) ?? TrainedContext(tm) ?? 2048;
            if (w < 1) throw new UsageException("--window must be positive");
            int failed = 0;
            var rows = new JsonArray();
            foreach (var path in paths)
            {
                try
                {
                    string text = ReadText(path);
                    if (text.Length == 0) throw new InvalidDataException($"{path}: empty file, nothing to score");
                    var idsList = tok.Encode(text);
                    long bytes = Encoding.UTF8.GetByteCount(text);
                    using var bar = new ProgressBar(Path.GetFileName(path), idsList.Count, "tok");
                    var (bits, count) = TextScoring.Score(tm.Model, idsList, w, progress: bar);
                    if (count == 0) throw new InvalidDataException($"{path}: a single token has nothing to predict");
                    var row = new JsonObject
                    {
                        ["file"] = path, ["bytes"] = bytes, ["tokens"] = idsList.Count, ["predicted_tokens"] = count,
                        ["bits_per_token"] = bits / count, ["perplexity"] = Math.Pow(2, bits / count),
                        // Bits per byte over the bytes of the predicted tokens (the first token is context only).
                        ["bits_per_byte"] = bits / Math.Max(1, bytes - Encoding.UTF8.GetByteCount(tok.Decode([idsList[0]]))),
                    };
                    rows.Add(row);
                    if (!pr.GetValue(json))
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{path}\t{(double)row["bits_per_byte"]!:0.0000} bits/byte\t{(double)row["bits_per_token"]!:0.0000} bits/token\tppl {(double)row["perplexity"]!:0.00}\t{idsList.Count} tokens"));
                }
                catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
                {
                    Console.Error.WriteLine($"error: {e.Message}");
                    failed++;
                }
            }
            if (pr.GetValue(json)) Console.WriteLine(rows.ToJsonString(Pretty));
            return failed > 0 ? Cli.Failed : Cli.Ok;
        }));
        return cmd;
    }

    // ---- train
    static Command TrainCommand()
    {
        var data = new Option<string>("--data") { Description = "prepared corpus folder (data/text-corpus.sh)", DefaultValueFactory = _ => "data/cache/text" };
        var outDir = new Option<string>("--out", "-o") { Description = "output folder: checkpoints, log and the final model", Required = true };
        var preset = new Option<string>("--preset") { Description = "model size: " + string.Join(", ", MambaByte.Presets.Keys), DefaultValueFactory = _ => "small" };
        var steps = new Option<long>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 3000 };
        var batch = new Option<int>("--batch-size") { Description = "windows per step", DefaultValueFactory = _ => 16 };
        var seqLen = new Option<int>("--seq-len") { Description = "window length in bytes", DefaultValueFactory = _ => 1024 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate", DefaultValueFactory = _ => 2e-3 };
        var warmup = new Option<long>("--warmup") { Description = "linear warm-up steps", DefaultValueFactory = _ => 200 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW weight decay (matrices only)", DefaultValueFactory = _ => 0.1 };
        var clip = new Option<double>("--grad-clip") { Description = "global gradient-norm clip (0 = off)", DefaultValueFactory = _ => 1.0 };
        var precision = Cli.PrecisionOption();
        var evalEvery = new Option<long>("--eval-every") { Description = "validate every N steps (bits per byte)", DefaultValueFactory = _ => 500 };
        var evalBytes = new Option<int>("--eval-bytes") { Description = "validation bytes scored each time (0 = the whole split)", DefaultValueFactory = _ => 262144 };
        var ckEvery = new Option<long>("--checkpoint-every") { Description = "checkpoint every N steps", DefaultValueFactory = _ => 250 };
        var resume = new Option<bool>("--resume") { Description = "continue from the newest checkpoint in --out (same data order)" };
        var seed = new Option<long>("--seed") { Description = "random seed", DefaultValueFactory = _ => 0 };
        var device = Cli.DeviceOption();
        var cmd = new Command("train", "Train a byte-level MambaByte model on the prepared corpus (AdamW, warm-up + cosine, clipping, atomic checkpoints, exact --resume).")
        { data, outDir, preset, steps, batch, seqLen, lr, warmup, wd, clip, precision, evalEvery, evalBytes, ckEvery, resume, seed, device };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            if (!MambaByte.Presets.TryGetValue(pr.GetValue(preset)!, out var config))
                throw new UsageException($"--preset {pr.GetValue(preset)}: expected one of {string.Join(", ", MambaByte.Presets.Keys)}");
            var prec = Cli.ParsePrecision(pr.GetValue(precision));
            var options = new MambaByteTrainOptions
            {
                DataDir = pr.GetValue(data)!, OutputDir = pr.GetValue(outDir)!, Config = config, Steps = pr.GetValue(steps),
                BatchSize = pr.GetValue(batch), SeqLen = pr.GetValue(seqLen), LearningRate = pr.GetValue(lr), WarmupSteps = pr.GetValue(warmup),
                WeightDecay = pr.GetValue(wd), GradClip = pr.GetValue(clip), Precision = prec, EvalEvery = pr.GetValue(evalEvery),
                EvalBytes = pr.GetValue(evalBytes), CheckpointEvery = pr.GetValue(ckEvery), Resume = pr.GetValue(resume), Seed = pr.GetValue(seed),
            };
            var result = MambaByteTraining.Train(options, Devices.Resolve(pr.GetValue(device), Console.Error), Cli.Interrupt);
            string evals = string.Concat(result.LastEval.Select(kv => FormattableString.Invariant($", {kv.Key} {kv.Value:0.0000}")));
            Console.WriteLine($"steps {result.Steps}, last loss {MambaByte.FormatBits(result.LastLoss)}{evals}; model in {options.OutputDir}");
            return Cli.Interrupt.IsCancellationRequested ? Cli.Interrupted : Cli.Ok;
        }));
        return cmd;
    }

    // ---- eval
    static Command EvalCommand()
    {
        var data = new Option<string>("--data") { Description = "prepared corpus folder (data/text-corpus.sh)", DefaultValueFactory = _ => "data/cache/text" };
        var split = new Option<string>("--split") { Description = "valid or test", DefaultValueFactory = _ => "test" };
        var model = ModelOption();
        var window = new Option<int?>("--window") { Description = "context window in bytes (default: the training context)" };
        var device = Cli.DeviceOption();
        var json = JsonOption();
        var cmd = new Command("eval", "Bits per byte of a byte-level model on a split of the prepared corpus.") { data, split, model, window, device, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            string s = pr.GetValue(split)!;
            if (s is not ("valid" or "test" or "train")) throw new UsageException($"--split {s}: expected valid or test");
            using var tm = LoadModel(pr.GetValue(model), pr.GetValue(device));
            if (!tm.ByteLevel) throw new UsageException($"{tm.Dir}: eval on the byte corpus needs a byte-level model; use `score FILE` for token models");
            var bytes = ByteCorpus.Load(pr.GetValue(data)!)[ByteCorpus.ParseSplit(s)];
            int w = pr.GetValue(window) ?? TrainedContext(tm) ?? 1024;
            using var bar = new ProgressBar($"eval {s}", bytes.Length, "B");
            var (bits, count) = MambaByte.Score(tm.Model, bytes, w, progress: bar);
            var row = new JsonObject { ["split"] = s, ["bytes"] = count, ["bits_per_byte"] = bits / count, ["window"] = w, ["model"] = tm.Dir };
            Console.WriteLine(pr.GetValue(json) ? row.ToJsonString(Pretty) : string.Create(CultureInfo.InvariantCulture, $"{s}: {bits / count:0.0000} bits/byte over {count} bytes (window {w})"));
            return Cli.Ok;
        }));
        return cmd;
    }

    // ---- baselines
    static Command BaselinesCommand()
    {
        var data = new Option<string>("--data") { Description = "prepared corpus folder (data/text-corpus.sh)", DefaultValueFactory = _ => "data/cache/text" };
        var order = new Option<int>("--max-order") { Description = "longest n-gram context (1-7)", DefaultValueFactory = _ => 7 };
        var json = JsonOption();
        var cmd = new Command("baselines", "Reference numbers for the model card on the same split: unigram entropy, gzip/Brotli, and a Kneser-Ney byte n-gram (context chosen on valid).") { data, order, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            int k = pr.GetValue(order);
            if (k < 1 || k > 7) throw new UsageException("--max-order must be 1..7");
            var corpus = ByteCorpus.Load(pr.GetValue(data)!);
            var r = ByteBaselines.Measure(corpus, k, m => Console.Error.WriteLine(m));
            if (pr.GetValue(json)) { Console.WriteLine(JsonSerializer.Serialize(r, Pretty)); return Cli.Ok; }
            Console.WriteLine(FormattableString.Invariant($"test bytes {r.TestBytes:N0} (train {r.TrainBytes:N0}, valid {r.ValidBytes:N0})"));
            Console.WriteLine(FormattableString.Invariant($"unigram entropy of test          {r.UnigramEntropyTest:0.000} bits/byte"));
            Console.WriteLine(FormattableString.Invariant($"gzip (test file alone)           {r.GzipTest:0.000} bits/byte"));
            Console.WriteLine(FormattableString.Invariant($"Brotli q11 (test file alone)     {r.BrotliTest:0.000} bits/byte"));
            for (int i = 0; i < r.NGramValid.Length; i++)
                Console.WriteLine(FormattableString.Invariant($"n-gram k={i}: valid {r.NGramValid[i]:0.0000}, test {r.NGramTest[i]:0.0000}") + (i == r.BestOrder ? "  <- best on valid" : ""));
            Console.WriteLine(FormattableString.Invariant($"n-gram (k={r.BestOrder}) test          {r.NGramBestTest:0.000} bits/byte"));
            return Cli.Ok;
        }));
        return cmd;
    }

    // ---- logits
    static Command LogitsCommand()
    {
        var model = new Option<string>("--model", "-m") { Description = "model folder", Required = true };
        var ids = new Option<string>("--ids") { Description = "token ids, e.g. 1,2,3", Required = true };
        var outFile = new Option<string>("--out", "-o") { Description = "output .npy (float32, shape [tokens, vocab])", Required = true };
        var device = Cli.DeviceOption();
        var cmd = new Command("logits", "Write the model's logits for a sequence of ids as a NumPy .npy file (interoperability checks).") { model, ids, outFile, device };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            using var tm = LoadModel(pr.GetValue(model), pr.GetValue(device));
            var parsed = Cli.ParseIds(pr.GetValue(ids)!);
            long vocab = tm.Model.Config.VocabSize;
            foreach (int id in parsed) if (id >= vocab) throw new UsageException($"--ids: {id} is outside the vocabulary (size {vocab})");
            using var noGrad = torch.no_grad();
            using var input = torch.tensor(parsed.Select(i => (long)i).ToArray(), new long[] { 1, parsed.Length }, device: tm.Model.lm_head.weight!.device);
            using var logits = tm.Model.forward(input)[0, .., ..(int)vocab].contiguous();
            Npy.Save(pr.GetValue(outFile)!, logits);
            Console.Error.WriteLine($"wrote {pr.GetValue(outFile)} [{logits.shape[0]}, {logits.shape[1]}] float32");
            return Cli.Ok;
        }));
        return cmd;
    }

    // ---- info
    static Command InfoCommand()
    {
        var model = ModelOption();
        var json = JsonOption();
        var cmd = new Command("info", "The model's configuration, parameter count and tokenizer.") { model, json };
        cmd.SetAction(pr => Cli.Guard(() =>
        {
            using var tm = LoadModel(pr.GetValue(model), "cpu");
            long parameters = ModelFolder.Weights(tm.Model).Values.Sum(t => t.numel());
            var c = tm.Model.Config;
            var o = new JsonObject
            {
                ["folder"] = Path.GetFullPath(tm.Dir), ["mixer"] = c.Mixer.ToString(), ["d_model"] = c.DModel, ["n_layer"] = c.NLayer,
                ["vocab_size"] = c.VocabSize, ["parameters"] = parameters, ["tied_embeddings"] = c.TieEmbeddings,
                ["tokenizer"] = tm.Tokenizer?.Name ?? "none", ["trained_context"] = TrainedContext(tm),
                ["config"] = ModelFolder.ReadConfig(tm.Dir),
            };
            if (pr.GetValue(json)) Console.WriteLine(o.ToJsonString(Pretty));
            else
            {
                Console.WriteLine($"folder      {o["folder"]}");
                Console.WriteLine($"model       {c.Mixer} LM, {c.NLayer} layers, d_model {c.DModel}, vocab {c.VocabSize}");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"parameters  {parameters:N0} ({parameters * 4 / 1e6:0.0} MB in float32)"));
                Console.WriteLine($"tokenizer   {o["tokenizer"]}");
                if (TrainedContext(tm) is int ctx) Console.WriteLine($"context     {ctx} (training window)");
            }
            return Cli.Ok;
        }));
        return cmd;
    }
}
