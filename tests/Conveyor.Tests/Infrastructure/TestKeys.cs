namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// API keys every Api started by <see cref="ConveyorFixture.StartApiAsync"/> accepts (besides any a
/// test configures itself). <see cref="RunningApp.Client"/> of an Api sends <see cref="Admin"/>.
/// </summary>
public static class TestKeys
{
    public const string Admin = "test-key-admin-0123456789abcdef";
    public const string AdminName = "test-admin";
    public const string Publisher = "test-key-publisher-0123456789abcdef";
    public const string PublisherName = "test-publisher";
    public const string Reader = "test-key-reader-0123456789abcdef";
    public const string ReaderName = "test-reader";

    /// <summary>A valid key whose only scope grants nothing here.</summary>
    public const string Unrelated = "test-key-unrelated-0123456789abcdef";
    public const string UnrelatedName = "test-unrelated";

    /// <summary>The configuration entries for these keys; names rather than indexes, so a test's own <c>Auth:ApiKeys:0</c> adds to them.</summary>
    public static IReadOnlyDictionary<string, string?> Settings { get; } = new Dictionary<string, string?>
    {
        ["Auth:ApiKeys:test-admin:Name"] = AdminName,
        ["Auth:ApiKeys:test-admin:Key"] = Admin,
        ["Auth:ApiKeys:test-admin:Scopes"] = "admin",
        ["Auth:ApiKeys:test-publisher:Name"] = PublisherName,
        ["Auth:ApiKeys:test-publisher:Key"] = Publisher,
        ["Auth:ApiKeys:test-publisher:Scopes"] = "jobs:publish",
        ["Auth:ApiKeys:test-reader:Name"] = ReaderName,
        ["Auth:ApiKeys:test-reader:Key"] = Reader,
        ["Auth:ApiKeys:test-reader:Scopes"] = "jobs:read",
        ["Auth:ApiKeys:test-unrelated:Name"] = UnrelatedName,
        ["Auth:ApiKeys:test-unrelated:Key"] = Unrelated,
        ["Auth:ApiKeys:test-unrelated:Scopes"] = "reports:export",
    };

    /// <summary>A client of <paramref name="baseAddress"/> sending <paramref name="key"/> (none when null).</summary>
    public static HttpClient Client(Uri baseAddress, string? key)
    {
        var client = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(60) };
        if (key is not null)
        {
            client.DefaultRequestHeaders.Add("X-Api-Key", key);
        }

        return client;
    }
}
