using TorchSharp;
public class SmokeTests
{
    [Fact]
    public void TorchLoads() => Assert.Equal(6.0f, torch.ones(6).sum().item<float>());
}
