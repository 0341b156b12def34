using System.Text.RegularExpressions;
using Conveyor.Tests.Deploy;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Unit;

/// <summary>
/// The lanes of integration tests run at once in one process, so a test that observes what every
/// host shares must run alone (<see cref="ProcessWide"/>). These check that the guards fail a test that
/// does so from elsewhere, and that no test observes the process past them.
/// </summary>
public sealed partial class ProcessWideTests
{
    [Fact]
    public void A_listener_for_a_test_outside_the_alone_collection_is_refused_naming_the_class_and_the_fix()
    {
        var refused = Assert.Throws<InvalidOperationException>(ProcessWide.Listener);

        Assert.Contains(nameof(ProcessWideTests), refused.Message, StringComparison.Ordinal);
        Assert.Contains("[Collection(AloneCollection.Name)]", refused.Message, StringComparison.Ordinal);
        Assert.Contains("no collection", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_in_process_hosts_metrics_asked_for_outside_the_alone_collection_are_refused_before_any_request()
    {
        // Nothing listens on port 9 here: a request that went out would fail otherwise.
        using var client = new HttpClient(new ProcessWide.MetricsGuard()) { BaseAddress = new Uri("http://127.0.0.1:9") };

        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => client.GetStringAsync(new Uri("/metrics", UriKind.Relative)));

        Assert.Contains("/metrics", refused.Message, StringComparison.Ordinal);
        // Other paths are not observations of the process.
        await Assert.ThrowsAsync<HttpRequestException>(() => client.GetStringAsync(new Uri("/health/live", UriKind.Relative)));
    }

    [Fact]
    public void Listeners_a_test_makes_itself_keep_to_one_hosts_meters()
    {
        var unscoped = TestSources()
            .Where(file => OwnListener().IsMatch(file.Text) && !file.Text.Contains("Meter.Scope", StringComparison.Ordinal))
            .Select(file => file.Path)
            .ToList();

        Assert.True(unscoped.Count == 0,
            $"These make a MeterListener that hears every host in the process; use ProcessWide.Listener() (and the alone collection) or keep to one host's meters (Meter.Scope): {string.Join(", ", unscoped)}");
    }

    [Fact]
    public void Spans_exported_in_memory_are_observed_through_the_guard()
    {
        var unguarded = TestSources()
            .Where(file => file.Text.Contains("AddInMemoryExporter", StringComparison.Ordinal) && !file.Text.Contains("ProcessWide.Observe(", StringComparison.Ordinal))
            .Select(file => file.Path)
            .ToList();

        Assert.True(unguarded.Count == 0, $"These export every host's spans in memory without ProcessWide.Observe: {string.Join(", ", unguarded)}");
    }

    [Collection(AloneCollection.Name)]
    public sealed class InTheAloneCollection
    {
        [Fact]
        public void A_test_in_the_alone_collection_gets_its_listener()
        {
            using var listener = ProcessWide.Listener();

            Assert.NotNull(listener);
        }
    }

    /// <summary>The test project's own sources, but the guards' and these tests'.</summary>
    private static IEnumerable<(string Path, string Text)> TestSources()
    {
        var root = RepositoryRoot.Combine("tests", "Conveyor.Tests");
        var guards = new[] { Path.Combine(root, "Infrastructure", "ProcessWide.cs"), Path.Combine(root, "Infrastructure", "HostMeters.cs"), Path.Combine(root, "Unit", "ProcessWideTests.cs") };
        return Directory.EnumerateFiles(root, "*.cs", SearchOption.AllDirectories)
            .Where(path => !path.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                && !path.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                && !guards.Contains(path))
            .Select(path => (Path.GetRelativePath(root, path), File.ReadAllText(path)));
    }

    [GeneratedRegex(@"new MeterListener\(\)|MeterListener\s+\w+\s*=\s*new\(\)")]
    private static partial Regex OwnListener();
}
