// Architecture config records (VimConfig, DiffuSSMConfig, ...) as config.json fields, for every model family of the
// vision library (classifiers and diffusion models): snake_case names (Hugging Face style), presets found by
// reflection (a config type's public static properties of its own type), command-line overrides ("depth=8") checked
// against the record so that a typo or a value that does not bind is an error naming the field, never ignored.
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Ssm.Vision;

public static class ConfigRecords
{
    /// <summary>How config records are written: snake_case field names (Hugging Face style), enums as strings.</summary>
    public static JsonSerializerOptions Json { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The JSON name of a config property ("InChans" -> "in_chans").</summary>
    public static string Key(string property) => Json.PropertyNamingPolicy!.ConvertName(property);

    /// <summary>Preset names (lower case) and values: the config type's public static properties of its own type.</summary>
    public static IReadOnlyDictionary<string, object> Presets(Type configType) => configType
        .GetProperties(BindingFlags.Public | BindingFlags.Static)
        .Where(p => p.PropertyType == configType && p.GetIndexParameters().Length == 0)
        .ToDictionary(p => p.Name.ToLowerInvariant(), p => p.GetValue(null)!, StringComparer.OrdinalIgnoreCase);

    /// <summary>A config record's fields as a JSON object.</summary>
    public static JsonObject Fields(object config, Type configType) => (JsonObject)JsonSerializer.SerializeToNode(config, configType, Json)!;

    /// <summary>
    /// The preset <paramref name="preset"/> of <paramref name="configType"/> with <paramref name="fixedFields"/> set (the
    /// data decides them) and then <paramref name="overrides"/> (snake_case field = JSON value or plain text).
    /// </summary>
    /// <exception cref="ArgumentException">Unknown preset or field, a fixed field overridden, or a value that does not bind.</exception>
    public static object Build(string archName, Type configType, string preset, IReadOnlyDictionary<string, JsonNode?> fixedFields,
        IEnumerable<KeyValuePair<string, string>>? overrides)
    {
        var presets = Presets(configType);
        if (!presets.TryGetValue(preset, out var baseConfig))
            throw new ArgumentException($"unknown preset '{preset}' for {archName} (presets: {string.Join(", ", presets.Keys.Order())})");
        var fields = Fields(baseConfig, configType);
        foreach (var (k, v) in fixedFields) fields[k] = v?.DeepClone();
        var set = new List<string>();
        foreach (var (k, v) in overrides ?? [])
        {
            if (!fields.ContainsKey(k))
                throw new ArgumentException($"unknown config field '{k}' for {archName} (fields: {string.Join(", ", fields.Select(f => f.Key))})");
            if (fixedFields.ContainsKey(k)) throw new ArgumentException($"config field '{k}' is fixed by the data set");
            fields[k] = ParseValue(v);
            set.Add(k);
        }
        object config = Deserialize(fields, configType, archName, "config");
        // A field that did not bind (read-only, or a value of the wrong type silently dropped) must not pass unnoticed.
        var back = Fields(config, configType);
        foreach (var k in set)
            if (!JsonNode.DeepEquals(back[k], fields[k]))
                throw new ArgumentException($"config field '{k}' cannot be set to {fields[k]?.ToJsonString()}");
        return config;
    }

    /// <summary>A command-line value: JSON if it parses (numbers, true/false, arrays), else a string.</summary>
    public static JsonNode? ParseValue(string v)
    {
        try { return JsonNode.Parse(v); }
        catch (JsonException) { return JsonValue.Create(v); }
    }

    /// <summary>The record from its fields; a bad field is an ArgumentException naming <paramref name="source"/> and the path.</summary>
    public static object Deserialize(JsonObject fields, Type configType, string archName, string source)
    {
        try
        {
            return fields.Deserialize(configType, Json) ?? throw new InvalidDataException($"{source}: empty {archName} config");
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"{source}: invalid {archName} config{(e.Path is { } p ? $" at {p}" : "")}: {e.Message}", e);
        }
    }
}
