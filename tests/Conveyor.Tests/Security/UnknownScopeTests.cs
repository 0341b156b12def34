using Conveyor.Api.Security;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Security;

/// <summary>
/// A scope no endpoint checks (a typo) leaves its key authenticated but useless, with nothing but 403s
/// to show for it; the Api names such keys in a warning when it starts, and still starts.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class UnknownScopeTests(ConveyorFixture fixture)
{
    private const string TypoKey = "test-key-typo-0123456789abcdef";

    private static readonly string Category = typeof(ApiKeyOptions).Namespace + ".UnknownScopeWarnings";

    [Fact]
    public async Task A_key_with_an_unknown_scope_is_named_in_a_warning_at_start()
    {
        var logs = new CapturedLogs();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:typo:Name"] = "ci-publisher",
            ["Auth:ApiKeys:typo:Key"] = TypoKey,
            ["Auth:ApiKeys:typo:Scopes"] = "jobs:read jobs:publsh",
        }, builder => builder.Logging.AddProvider(logs));

        var warnings = logs.Of(LogLevel.Warning, Category);
        var typo = Assert.Single(warnings, w => w.Message.Contains("ci-publisher", StringComparison.Ordinal));
        Assert.Contains("Auth:ApiKeys:typo", typo.Message, StringComparison.Ordinal);
        Assert.Contains("scopes no endpoint checks: jobs:publsh;", typo.Message, StringComparison.Ordinal);
        Assert.Contains("known scopes: admin, jobs:publish, jobs:read", typo.Message, StringComparison.Ordinal);
        // TestKeys' deliberately unrelated key is named too; the keys with known scopes only are not.
        Assert.Single(warnings, w => w.Message.Contains(TestKeys.UnrelatedName, StringComparison.Ordinal) && w.Message.Contains("reports:export", StringComparison.Ordinal));
        foreach (var name in new[] { TestKeys.AdminName, TestKeys.PublisherName, TestKeys.ReaderName })
        {
            Assert.DoesNotContain(warnings, w => w.Message.Contains(name, StringComparison.Ordinal));
        }

        Assert.Equal(2, warnings.Count);
        Assert.DoesNotContain(logs.Entries, e => e.Message.Contains(TypoKey, StringComparison.Ordinal) || e.Message.Contains(TestKeys.Unrelated, StringComparison.Ordinal));
    }

    [Fact]
    public void A_scope_is_known_only_if_a_policy_accepts_it()
    {
        var key = new ApiKeyEntry("Auth:ApiKeys:0", "ops", TypoKey, ["admin", "Admin", "jobs:read", "jobs:publsh"]);

        Assert.Equal(["Admin", "jobs:publsh"], key.UnknownScopes());
        Assert.Equal(["admin", "jobs:publish", "jobs:read"], ApiScopes.Known);
    }
}
