// Linked into every test project: the library under test keeps the suite's dependency direction
// (apps -> domain libraries -> backbone; a domain never references another domain, the backbone no one).
using System.Reflection;

namespace Ssm.Tests.Shared;

public class LayeringTests
{
    /// <summary>"Vision.Tests" tests "Ssm.Vision".</summary>
    static string LibraryUnderTest => "Ssm." + typeof(LayeringTests).Assembly.GetName().Name!.Replace(".Tests", "");

    [Fact]
    public void LibraryReferencesOnlyTheBackbone()
    {
        var lib = Assembly.Load(LibraryUnderTest);
        var suite = lib.GetReferencedAssemblies().Select(a => a.Name!).Where(n => n.StartsWith("Ssm.")).ToList();
        if (LibraryUnderTest == "Ssm.Backbone") Assert.Empty(suite);
        else Assert.All(suite, n => Assert.Equal("Ssm.Backbone", n));
    }
}
