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

public static class MixedPrecision
{
    /// <summary>Parameters that stay float32 under mixed precision (by the last part of their name).</summary>
    public static bool KeepsFp32(string name)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return last is "A_log" or "A_b_log" or "A_logs" or "D" or "D_b" or "Ds" or "dt_bias" or "dt_projs_bias"
            || name.EndsWith("dt_proj.bias", StringComparison.Ordinal) || name.EndsWith("dt_proj_b.bias", StringComparison.Ordinal);
    }

    public static ScalarType DType(Precision p) => p == Precision.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>
    /// Casts every floating parameter except those of <see cref="KeepsFp32"/> to the compute dtype, in place: each leaf
    /// module is converted with Module.to (TorchSharp cannot change a parameter's dtype in place), the float32
    /// exceptions are put back, and tied parameters (lm_head.weight = embeddings.weight) are tied again.
    /// </summary>
    public static void Apply(nn.Module model, Precision precision)
    {
        var dtype = DType(precision);
        if (precision == Precision.Fp32) { RestoreFp32(model, _ => true); return; }
        var aliases = Aliases(model);
        using (torch.no_grad())
        {
            foreach (var (name, m) in model.named_modules())
            {
                if (m.named_children().Any()) continue;                                   // leaves only
                var own = m.named_parameters(recurse: false).ToList();
                if (own.Count == 0 || own.All(p => KeepsFp32(Join(name, p.name)))) continue;
                m.to(dtype);
            }
        }
        RestoreFp32(model, KeepsFp32);
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
        foreach (var (name, p) in model.named_parameters().ToList())
        {
            if (!p.is_floating_point() || p.dtype == ScalarType.Float32 || !which(name)) continue;
            int dot = name.LastIndexOf('.');
            var owner = dot < 0 ? model : modules[name[..dot]];
            Replace(owner, name[(dot + 1)..], new Parameter(p.detach().to_type(ScalarType.Float32), p.requires_grad));
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
