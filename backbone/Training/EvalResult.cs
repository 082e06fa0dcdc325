// The result of evaluating a classifier on one split: counts in a confusion matrix, from which accuracy, per-class
// recall, a JSON form and a text report follow. Shared by every classifier in the suite (images, spoken digits, DNA).
using System.Globalization;
using System.Text.Json.Nodes;

namespace Ssm.Backbone.Training;

/// <summary>Accuracy, loss, per-class accuracy and the confusion matrix of one evaluation.</summary>
public sealed record EvalResult(string Split, IReadOnlyList<string> Labels, long[,] Confusion, double Loss)
{
    public long Count { get { long n = 0; foreach (long v in Confusion) n += v; return n; } }

    public long Correct { get { long n = 0; for (int i = 0; i < Labels.Count; i++) n += Confusion[i, i]; return n; } }

    public double Accuracy => Count == 0 ? double.NaN : (double)Correct / Count;

    public long ClassCount(int i) { long n = 0; for (int j = 0; j < Labels.Count; j++) n += Confusion[i, j]; return n; }

    /// <summary>Recall of class i: the fraction of its samples predicted as i (NaN without samples).</summary>
    public double ClassAccuracy(int i) { long n = ClassCount(i); return n == 0 ? double.NaN : (double)Confusion[i, i] / n; }

    public JsonObject ToJson()
    {
        var perClass = new JsonArray();
        for (int i = 0; i < Labels.Count; i++)
        {
            double a = ClassAccuracy(i);
            perClass.Add(new JsonObject
            {
                ["index"] = i, ["label"] = Labels[i], ["count"] = ClassCount(i), ["correct"] = Confusion[i, i],
                ["accuracy"] = double.IsNaN(a) ? null : a,
            });
        }
        var rows = new JsonArray();
        for (int i = 0; i < Labels.Count; i++)
            rows.Add(new JsonArray(Enumerable.Range(0, Labels.Count).Select(j => (JsonNode?)JsonValue.Create(Confusion[i, j])).ToArray()));
        return new JsonObject
        {
            ["split"] = Split, ["count"] = Count, ["correct"] = Correct,
            ["accuracy"] = double.IsNaN(Accuracy) ? null : Accuracy, ["loss"] = double.IsNaN(Loss) ? null : Loss,
            ["per_class"] = perClass, ["confusion"] = rows,
        };
    }

    /// <summary>A plain-text report: accuracy, a per-class table and the confusion matrix.</summary>
    public string Format()
    {
        var sb = new System.Text.StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine(inv, $"{Split}: accuracy {Accuracy * 100:0.00}% ({Correct}/{Count}), loss {Loss:0.0000}");
        int w = Math.Max(5, Labels.Max(l => l.Length));
        sb.AppendLine(inv, $"{"#",3}  {"class".PadRight(w)}  {"count",6}  {"correct",7}  {"accuracy",8}");
        for (int i = 0; i < Labels.Count; i++)
        {
            double a = ClassAccuracy(i);
            sb.AppendLine(inv, $"{i,3}  {Labels[i].PadRight(w)}  {ClassCount(i),6}  {Confusion[i, i],7}  {(double.IsNaN(a) ? "-" : (a * 100).ToString("0.00", inv) + "%"),8}");
        }
        sb.AppendLine("confusion matrix (rows: true class, columns: predicted class):");
        int cw = Math.Max(4, Confusion.Cast<long>().Max().ToString(inv).Length + 1);
        sb.Append("   ");
        for (int j = 0; j < Labels.Count; j++) sb.Append(j.ToString(inv).PadLeft(cw));
        sb.AppendLine();
        for (int i = 0; i < Labels.Count; i++)
        {
            sb.Append(i.ToString(inv).PadLeft(3));
            for (int j = 0; j < Labels.Count; j++) sb.Append(Confusion[i, j].ToString(inv).PadLeft(cw));
            sb.AppendLine();
        }
        return sb.ToString();
    }
}
