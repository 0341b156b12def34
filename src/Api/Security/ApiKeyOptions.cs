namespace Conveyor.Api.Security;

/// <summary>
/// The API keys the Api accepts. Configuration (keys from the environment or a secret store only):
/// <c>Auth__ApiKeys__0__Name=ops-alice</c>, <c>Auth__ApiKeys__0__Key=...</c>,
/// <c>Auth__ApiKeys__0__Scopes=admin</c> (several scopes separated by spaces or commas, or as a list:
/// <c>Auth__ApiKeys__0__Scopes__0=admin</c>).
/// </summary>
public sealed class ApiKeyOptions
{
    public const string SectionName = "Auth";

    /// <summary>Shorter keys are refused at start: they could be guessed.</summary>
    public const int MinimumKeyLength = 24;

    public IReadOnlyList<ApiKeyEntry> ApiKeys { get; set; } = [];

    /// <summary>
    /// Reads the keys; a scope list may be written as one string or as an array. A key is read without the
    /// whitespace around it (a secret file's trailing newline, an env file's trailing blanks): no request can
    /// carry that whitespace (HTTP drops it around a header value, and the key handler and the sign-in form
    /// trim what they are given), so kept, it made a key that nobody could ever present, and it counted
    /// toward <see cref="MinimumKeyLength"/>.
    /// </summary>
    public static ApiKeyOptions From(IConfiguration configuration)
    {
        var keys = new List<ApiKeyEntry>();
        foreach (var entry in configuration.GetSection(SectionName).GetSection("ApiKeys").GetChildren())
        {
            var scopes = entry.GetSection("Scopes");
            var listed = scopes.Value is { } text
                ? text.Split([' ', ','], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                : scopes.GetChildren().Select(s => s.Value?.Trim()).OfType<string>().Where(s => s.Length > 0);
            keys.Add(new ApiKeyEntry(entry.Path, entry["Name"] ?? "", entry["Key"]?.Trim() ?? "", [.. listed.Distinct(StringComparer.Ordinal)]));
        }

        return new ApiKeyOptions { ApiKeys = keys };
    }

    /// <summary>Problems that must stop the Api from starting; messages never contain a key.</summary>
    public IEnumerable<string> Validate()
    {
        foreach (var key in ApiKeys)
        {
            if (string.IsNullOrWhiteSpace(key.Name))
            {
                yield return $"{key.Path}:Name is required.";
            }

            if (key.Key.Length < MinimumKeyLength)
            {
                yield return $"{key.Path}:Key must be at least {MinimumKeyLength} characters long.";
            }

            if (key.Scopes.Count == 0)
            {
                yield return $"{key.Path}:Scopes must name at least one scope.";
            }
        }

        foreach (var name in ApiKeys.GroupBy(k => k.Name, StringComparer.Ordinal).Where(g => g.Count() > 1))
        {
            yield return $"API key name '{name.Key}' is used more than once.";
        }

        if (ApiKeys.GroupBy(k => k.Key, StringComparer.Ordinal).Any(g => g.Count() > 1))
        {
            yield return "Two API keys have the same value.";
        }
    }
}

/// <summary>One configured key. <see cref="ToString"/> leaves the key out, so it cannot reach a log.</summary>
public sealed record ApiKeyEntry(string Path, string Name, string Key, IReadOnlyList<string> Scopes)
{
    public override string ToString() => $"{Name} ({string.Join(' ', Scopes)})";

    /// <summary>The scopes no policy accepts (see <see cref="ApiScopes.Known"/>): they grant nothing.</summary>
    public IReadOnlyList<string> UnknownScopes() => [.. Scopes.Where(scope => !ApiScopes.Known.Contains(scope, StringComparer.Ordinal))];
}
