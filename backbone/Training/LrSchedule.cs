namespace Ssm.Backbone.Training;

/// <summary>Learning-rate schedules as pure functions of the step (so a resumed run needs no scheduler state).</summary>
public static class LrSchedule
{
    /// <summary>
    /// Linear warm-up from 0 to <paramref name="peak"/> over <paramref name="warmup"/> steps, then a half cosine down to
    /// <paramref name="minRatio"/> x peak at <paramref name="total"/> (transformers' get_cosine_schedule_with_warmup with a floor).
    /// <paramref name="step"/> counts from 0; the value is the rate used for that step's update.
    /// </summary>
    public static double WarmupCosine(long step, long total, long warmup, double peak, double minRatio = 0.1)
    {
        if (total <= 0) throw new ArgumentOutOfRangeException(nameof(total));
        if (warmup > 0 && step < warmup) return peak * (step + 1) / warmup;
        long span = Math.Max(1, total - warmup);
        double progress = Math.Clamp((double)(step - warmup) / span, 0, 1);
        return peak * (minRatio + (1 - minRatio) * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }
}
