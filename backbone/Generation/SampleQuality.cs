// Scores for generated samples computed from a classifier, as generative-model papers report them (images: FID and
// IS; SC09 audio in SaShiMi / Mamba: FID, IS, mIS, AM). One implementation for every domain; the domain supplies
// the classifier's features and class probabilities.
//
//   Frechet distance (Heusel et al. 2017, "FID"): between Gaussians fitted to two feature sets,
//     d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})
//     tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(S_1^{1/2} S_2 S_1^{1/2})) (a symmetric PSD matrix, so eigh applies)
//   Inception score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), p(y) the mean of p(y|x) over the samples.
//   Modified inception score (Gurumurthy et al. 2017, "mIS"): exp E_{x_i, x_j} KL(p(y|x_i) || p(y|x_j)), over pairs.
//   AM score (Zhou et al. 2018): KL(p_ref(y) || p(y)) + E_x H(p(y|x)), p_ref the class distribution of reference data.
// All computed in float64 on the CPU. Covariances are unbiased (numpy.cov's default, as the FID reference uses).
//
// Shapes: n, m sample counts, f feature width, k classes.
using TorchSharp;
using static TorchSharp.torch;

namespace Ssm.Backbone.Generation;

public static class SampleQuality
{
    /// <summary>Mean (f) and unbiased covariance (f, f) of features (n, f), float64 on the CPU.</summary>
    public static (Tensor Mean, Tensor Cov) Moments(Tensor features)
    {
        if (features.dim() != 2 || features.shape[0] < 2) throw new ArgumentException($"features must be (n >= 2, f), got ({string.Join(", ", features.shape)})");
        using var scope = torch.NewDisposeScope();
        var x = features.detach().to(torch.CPU).to_type(ScalarType.Float64);
        var mu = x.mean([0]);
        var c = x - mu;
        var cov = c.t().matmul(c) / (x.shape[0] - 1);
        return (mu.MoveToOuterDisposeScope(), cov.MoveToOuterDisposeScope());
    }

    /// <summary>The Frechet distance between the Gaussians of two feature sets (n, f) and (m, f).</summary>
    public static double FrechetDistance(Tensor a, Tensor b)
    {
        if (a.dim() != 2 || b.dim() != 2 || a.shape[1] != b.shape[1])
            throw new ArgumentException($"feature sets must be (n, f) and (m, f) with the same f, got ({string.Join(", ", a.shape)}) and ({string.Join(", ", b.shape)})");
        var (m1, s1) = Moments(a);
        var (m2, s2) = Moments(b);
        using (m1) using (s1) using (m2) using (s2) return FrechetDistance(m1, s1, m2, s2);
    }

    /// <summary>The Frechet distance between N(mu1, s1) and N(mu2, s2).</summary>
    public static double FrechetDistance(Tensor mu1, Tensor s1, Tensor mu2, Tensor s2)
    {
        using var scope = torch.NewDisposeScope();
        var (l1, v1) = torch.linalg.eigh(s1.to_type(ScalarType.Float64));
        var root1 = v1.matmul(torch.diag(l1.clamp_min(0).sqrt())).matmul(v1.t());        // S_1^{1/2}   (f f)
        var m = root1.matmul(s2.to_type(ScalarType.Float64)).matmul(root1);
        m = (m + m.t()) / 2;                                                              // symmetric against rounding
        var (lm, _) = torch.linalg.eigh(m);
        double trSqrt = lm.clamp_min(0).sqrt().sum().item<double>();
        double diff = (mu1 - mu2).square().sum().item<double>();
        return diff + s1.trace().item<double>() + s2.trace().item<double>() - 2 * trSqrt;
    }

    static Tensor Probabilities(Tensor probs)
    {
        if (probs.dim() != 2 || probs.shape[0] < 1) throw new ArgumentException($"probabilities must be (n, k), got ({string.Join(", ", probs.shape)})");
        return probs.detach().to(torch.CPU).to_type(ScalarType.Float64).clamp_min(1e-12);
    }

    /// <summary>Inception score of class probabilities p(y|x) (n, k).</summary>
    public static double InceptionScore(Tensor probs)
    {
        using var scope = torch.NewDisposeScope();
        var p = Probabilities(probs);
        var py = p.mean([0], keepdim: true);                                   // (1 k)
        var kl = (p * (p.log() - py.log())).sum(1);                          // (n)
        return Math.Exp(kl.mean().item<double>());
    }

    /// <summary>Modified inception score: KL averaged over all ordered pairs (i, j) (n^2 terms, in row blocks).</summary>
    public static double ModifiedInceptionScore(Tensor probs)
    {
        using var scope = torch.NewDisposeScope();
        var p = Probabilities(probs);
        var logp = p.log();
        // KL(p_i || p_j) = sum_k p_ik log p_ik - sum_k p_ik log p_jk: the second term for all pairs is p log(p)^T.
        var self = (p * logp).sum(1, keepdim: true);                          // (n 1)
        var cross = p.matmul(logp.t());                                        // (n n)
        return Math.Exp((self - cross).mean().item<double>());
    }

    /// <summary>AM score against the reference class distribution <paramref name="referenceClassProbs"/> (k).</summary>
    public static double AmScore(Tensor probs, Tensor referenceClassProbs)
    {
        using var scope = torch.NewDisposeScope();
        var p = Probabilities(probs);
        var r = referenceClassProbs.detach().to(torch.CPU).to_type(ScalarType.Float64).clamp_min(1e-12);
        if (r.dim() != 1 || r.shape[0] != p.shape[1]) throw new ArgumentException($"reference class distribution must be ({p.shape[1]}), got ({string.Join(", ", r.shape)})");
        var py = p.mean([0]);
        double kl = (r * (r.log() - py.log())).sum().item<double>();
        double entropy = (-(p * p.log()).sum(1)).mean().item<double>();
        return kl + entropy;
    }
}
