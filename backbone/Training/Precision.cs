// Mixed precision without autocast (TorchSharp has none): the model's matrices, embeddings and norms are cast to a
// 16-bit compute dtype while the SSM's sensitive parameters stay float32 (A_log, D and the dt bias: the references
// keep them in fp32 because exp(Δ A) and softplus lose too much in bf16; DESIGN.md "Numerics"). The scans already
// compute in float32 whatever their inputs' dtype, and ResidualBlock keeps the residual stream in float32.
// AdamW keeps float32 master copies of the 16-bit parameters, so updates are not lost to rounding.
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace Ssm.Backbone.Training;

public enum Precision { Fp32, Bf16 }

/// <summary>
/// A model with parameters beyond <see cref="MixedPrecision.KeepsFp32"/>'s names that must stay float32 under mixed
/// precision: a layer that computes in float32 as a whole (e.g. S4D, whose FFT convolution has no bf16 kernels) and
/// whose caller casts its activations in and out. <see cref="MixedPrecision.Apply"/> asks the model it is given.
/// </summary>
public interface IFp32Parameters
{
    /// <summary>Whether the parameter of this state-dict name stays float32.</summary>
    bool KeepsFp32(string name);
}

public static class MixedPrecision
{
    /// <summary>Parameters that stay float32 under mixed precision (by the last part of their name).</summary>
    public static bool KeepsFp32(string name)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return last is "A_log" or "A_b_log" or "A_logs" or "D" or "D_b" or "Ds" or "dt_bias" or "dt_projs_bias"
            || name.EndsWith("dt_proj.bias", StringComparison.Ordinal) || name.EndsWith("dt_proj_b.bias", StringComparison.Ordinal)
            // S4D's kernel (s4d.py names): the step size, the diagonal A and the complex C (kept as a real view) feed
            // exp(dt A) and a complex Vandermonde product, as sensitive as Mamba's A_log and dt.
            || last is "log_dt" or "log_A_real" or "A_imag" || name == "kernel.C" || name.EndsWith(".kernel.C", StringComparison.Ordinal);
    }

    /// <summary>"fp32" or "bf16" (any case) as a <see cref="Precision"/>, for a --precision option.</summary>
    /// <exception cref="ArgumentException">Any other value, as one line naming the option.</exception>
    public static Precision Parse(string? value, string option = "--precision") => value?.Trim().ToLowerInvariant() switch
    {
        "fp32" => Precision.Fp32,
        "bf16" => Precision.Bf16,
        _ => throw new ArgumentException($"{option} {value}: expected fp32 or bf16"),
    };

    /// <summary>A 16-bit floating tensor (bf16, fp16) as float32, any other tensor as it is: model outputs (logits,
    /// predictions) leave a mixed-precision model in float32, and a float64 model's stay float64.</summary>
    public static Tensor Widen(Tensor t) => IsHalf(t) ? t.to_type(ScalarType.Float32) : t;

    /// <summary>Whether a tensor (e.g. a model's first weight) is 16-bit floating point.</summary>
    public static bool IsHalf(Tensor t) => t.dtype is ScalarType.BFloat16 or ScalarType.Float16;

    public static ScalarType DType(Precision p) => p == Precision.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>
    /// Refuses to resume a run in another precision than the one it was trained in. The newest checkpoint under
    /// <paramref name="outputDir"/> holds AdamW master copies ("master.*" in optimizer.safetensors) exactly when it was
    /// a mixed-precision run; resuming it in fp32 would fail on those, and resuming an fp32 run in bf16 would silently
    /// round its weights. A no-op without <paramref name="resume"/> or a checkpoint. Call before Trainer.Run.
    /// </summary>
    /// <exception cref="InvalidDataException">The checkpoint's precision differs; names the checkpoint and the option.</exception>
    public static void CheckResume(string? outputDir, bool resume, Precision precision)
    {
        if (!resume || outputDir is null || Trainer.LatestCheckpoint(outputDir) is not { } checkpoint) return;
        string optimizer = Path.Combine(checkpoint, "optimizer.safetensors");
        if (!File.Exists(optimizer)) return;
        bool mixed;
        using (var f = IO.SafeTensors.Open(optimizer)) mixed = f.Names.Any(n => n.StartsWith("master.", StringComparison.Ordinal));
        if (mixed == (precision != Precision.Fp32)) return;
        string was = mixed ? "bf16" : "fp32";
        throw new InvalidDataException($"{checkpoint}: the run was trained in {was}, this one asks for {precision.ToString().ToLowerInvariant()}; " +
            $"resume with --precision {was} or start a new output folder");
    }

    /// <summary>
    /// Casts every floating parameter except those of <see cref="KeepsFp32"/> (and, for a model that is an
    /// <see cref="IFp32Parameters"/>, those it names) to the compute dtype, in place: each leaf
    /// module is converted with Module.to (TorchSharp cannot change a parameter's dtype in place), the float32
    /// exceptions are put back, and tied parameters (lm_head.weight = embeddings.weight) are tied again.
    /// </summary>
    public static void Apply(nn.Module model, Precision precision)
    {
        var dtype = DType(precision);
        if (precision == Precision.Fp32) { RestoreFp32(model, _ => true); return; }
        Func<string, bool> keep = model is IFp32Parameters own32 ? n => KeepsFp32(n) || own32.KeepsFp32(n) : KeepsFp32;
        var aliases = Aliases(model);
        using (torch.no_grad())
        {
            CastShared(model, dtype, keep);
            foreach (var (name, m) in model.named_modules())
            {
                if (m.named_children().Any()) continue;                                   // leaves only
                var own = m.named_parameters(recurse: false).ToList();
                if (own.Count == 0 || own.All(p => keep(Join(name, p.name)))) continue;
                m.to(dtype);
            }
        }
        RestoreFp32(model, keep);
        Retie(model, aliases);
    }

    /// <summary>Moves a model to a device keeping tied parameters tied (Module.to converts each module on its own,
    /// which would give lm_head and the embeddings two separate copies).</summary>
    public static T MoveTo<T>(T model, Device device, ScalarType? dtype = null) where T : nn.Module
    {
        var aliases = Aliases(model);
        if (dtype is ScalarType t) model.to(t);
        model.to(device);
        Retie(model, aliases);
        return model;
    }

    /// <summary>
    /// Makes every pair of parameters that share storage one parameter object. Assigning a tied weight
    /// (lm_head.weight = embeddings.weight) leaves TorchSharp with two wrappers of one storage in the registry, and an
    /// optimizer keyed by parameter object would then update the shared matrix twice per step.
    /// </summary>
    internal static void Tie(nn.Module model) => Retie(model, Aliases(model));

    static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;

    /// <summary>
    /// Casts each parameter registered in more than one module (a tied LM head: one Parameter object owned by the
    /// embedding and by lm_head) once, and registers the cast in every owner. Module.to on one owner would replace the
    /// shared object under no_grad and leave the other owner without a live parameter: the embedding then vanished from
    /// the state dict, so the saved checkpoint lacked it. The leaf casts that follow find these already converted.
    /// </summary>
    static void CastShared(nn.Module model, ScalarType dtype, Func<string, bool> keep)
    {
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        foreach (var group in Registrations(model, modules).Where(g => g.Count > 1))
        {
            var first = group[0].P;
            if (!first.is_floating_point() || first.dtype == dtype || group.Any(r => keep(Join(r.Owner, r.Name)))) continue;
            var cast = new Parameter(first.detach().to_type(dtype), first.requires_grad);
            foreach (var (owner, name, _) in group) Replace(owner.Length == 0 ? model : modules[owner], name, cast);
        }
    }

    /// <summary>Every registration of a parameter (owner module name, parameter name, parameter), grouped by storage:
    /// a tied parameter is one group with a registration per owner (named_parameters lists it once).</summary>
    static List<List<(string Owner, string Name, Parameter P)>> Registrations(nn.Module model, Dictionary<string, nn.Module> modules) =>
        model.named_parameters(recurse: false).Select(p => (Owner: "", Name: p.name, P: p.parameter))
            .Concat(modules.SelectMany(m => m.Value.named_parameters(recurse: false).Select(p => (Owner: m.Key, Name: p.name, P: p.parameter))))
            .GroupBy(r => Native.TensorPointer.Of(r.P) is var ptr && ptr != IntPtr.Zero ? ptr : r.P.Handle)   // empty tensors have no storage
            .Select(g => g.ToList()).ToList();

    /// <summary>alias name -> the name it shares storage with.</summary>
    static Dictionary<string, string> Aliases(nn.Module model)
    {
        var first = new Dictionary<IntPtr, string>();
        var aliases = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, p) in model.named_parameters())
        {
            var ptr = Native.TensorPointer.Of(p);
            if (first.TryGetValue(ptr, out var original)) aliases[name] = original; else first[ptr] = name;
        }
        return aliases;
    }

    static void RestoreFp32(nn.Module model, Func<string, bool> which)
    {
        using var noGrad = torch.no_grad();
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        // Per storage, so that a tied parameter becomes one float32 object in every owner (not in the first one only).
        foreach (var group in Registrations(model, modules))
        {
            var p = group[0].P;
            if (!p.is_floating_point() || p.dtype == ScalarType.Float32 || !group.Any(r => which(Join(r.Owner, r.Name)))) continue;
            var p32 = new Parameter(p.detach().to_type(ScalarType.Float32), p.requires_grad);
            foreach (var (owner, name, _) in group) Replace(owner.Length == 0 ? model : modules[owner], name, p32);
        }
    }

    static void Retie(nn.Module model, Dictionary<string, string> aliases)
    {
        if (aliases.Count == 0) return;
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (alias, original) in aliases)
        {
            int dot = alias.LastIndexOf('.');
            var owner = dot < 0 ? model : modules[alias[..dot]];
            Replace(owner, alias[(dot + 1)..], parameters[original]);
        }
    }

    // A registered parameter is swapped in two places: the module's registry (ConditionallyRegisterParameter replaces
    // an existing entry) and the field or property that forward reads (Linear.weight, our layers' public fields).
    static readonly System.Reflection.MethodInfo RegisterOrReplace = typeof(nn.Module).GetMethod("ConditionallyRegisterParameter",
        System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public,
        null, new[] { typeof(string), typeof(Parameter) }, null)!;

    static void Replace(nn.Module owner, string name, Parameter p)
    {
        const System.Reflection.BindingFlags flags = System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic;
        RegisterOrReplace.Invoke(owner, new object[] { name, p });
        var type = owner.GetType();
        var prop = type.GetProperty(name, flags);
        if (prop is not null && prop.CanWrite && prop.PropertyType.IsAssignableFrom(typeof(Parameter))) { prop.SetValue(owner, p); return; }
        for (var t = type; t is not null; t = t.BaseType)
        {
            var field = t.GetField(name, flags) ?? t.GetField("_" + name, flags);
            if (field is not null && field.FieldType.IsAssignableFrom(typeof(Parameter))) { field.SetValue(owner, p); return; }
        }
    }
}
